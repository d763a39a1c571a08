// The C API: every call catches everything, stores the sentence thread-locally and returns a
// code. Handles are keys of a table of loaded runtimes, looked up before every use (the
// header's misuse rules): a freed or unknown handle is a sentence, never a dereference.
#include "far_runtime.h"

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>

#include "errors.h"
#include "images.h"
#include "pipeline.h"
#include "sizes.h"

namespace {

thread_local std::string last_error;

// The loaded runtimes by handle. A call holds its own reference for its duration, so far_free
// during a call on another thread destroys the runtime when that call returns. Never destroyed
// itself (a runtime left loaded at exit is not torn down after ONNX Runtime's environment).
struct Registry {
    std::mutex mutex;
    std::unordered_map<uintptr_t, std::shared_ptr<far::Runtime>> loaded;
    uintptr_t next = 0;
};

Registry& registry() {
    static Registry* r = new Registry;
    return *r;
}

far_runtime* add(std::shared_ptr<far::Runtime> rt) {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    const uintptr_t h = (++r.next) << 4;          // never reused, never a valid address to dereference
    r.loaded.emplace(h, std::move(rt));
    return reinterpret_cast<far_runtime*>(h);
}

std::shared_ptr<far::Runtime> lookup(const far_runtime* h, const char* fn) {
    if (!h) throw far::Error(far::Code::Input, std::string(fn) + " needs a loaded far_runtime, got NULL.");
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.loaded.find(reinterpret_cast<uintptr_t>(h));
    if (it == r.loaded.end())
        throw far::Error(far::Code::Input, std::string(fn) + " was given a far_runtime that is not loaded "
                                                             "(freed already, or not returned by far_load).");
    return it->second;
}

template <class F>
int guarded(F&& f) {
    try {
        f();
        last_error.clear();
        return FAR_OK;
    } catch (const far::Error& e) {
        last_error = e.what();
        return static_cast<int>(e.code());
    } catch (const std::bad_alloc&) {
        last_error = "Out of memory.";
    } catch (const std::exception& e) {
        last_error = std::string("Internal error: ") + e.what() + ".";
    } catch (...) {
        last_error = "Internal error of unknown kind.";
    }
    return FAR_ERROR_INTERNAL;
}

void require(bool ok, const std::string& what) {
    if (!ok) throw far::Error(far::Code::Input, what);
}

// An options struct of this header's size (or `earlier`, an older version's, when not 0), or a
// sentence (the header's rule): its fields are read only once its size says the caller has them.
template <class T>
void check_size(const T* o, const char* type, const char* fill, size_t earlier = 0) {
    require(!o || o->size == sizeof(T) || (earlier && o->size == earlier),
            std::string(type) + ".size is " + std::to_string(o ? o->size : 0) + ", not sizeof(" + type + ") = " +
                std::to_string(sizeof(T)) + "; fill the options with " + fill + " first.");
}

// far_sample_options of API version 2: everything before head_schedule.
constexpr size_t kSampleOptionsV2 = offsetof(far_sample_options, head_schedule);

std::optional<std::string> optional(const char* s) { return s ? std::optional<std::string>(s) : std::nullopt; }

far::LoadOptions load_options(const far_load_options* o) {
    check_size(o, "far_load_options", "far_load_options_default");
    far::LoadOptions lo;
    if (!o) return lo;
    lo.provider = o->provider ? o->provider : "cpu";
    lo.device_id = o->device_id;
    lo.threads = o->threads;
    lo.check_hashes = o->check_hashes != 0;
    lo.trt_cache_dir = o->trt_cache_dir ? o->trt_cache_dir : "";
    lo.digest = o->digest ? o->digest : "";
    return lo;
}

far::SampleOptions sample_options(const far_sample_options* o) {
    check_size(o, "far_sample_options", "far_sample_options_default", kSampleOptionsV2);
    far::SampleOptions s;
    if (!o) return s;
    s.K = o->K;
    s.O = o->O;
    s.cfg = o->cfg;
    s.cfg_schedule = o->cfg_schedule ? o->cfg_schedule : "linear";
    s.temperature = o->temperature;
    s.seed = o->seed;
    s.head = o->head ? o->head : "auto";
    if (o->size < sizeof(far_sample_options)) return s;     // version 2: no accelerations
    s.head_schedule = optional(o->head_schedule);
    s.cfg_interval = optional(o->cfg_interval);
    s.cfg_cache = optional(o->cfg_cache);
    return s;
}

void fill_stats(far_run_stats* out, const far::RunStats& st) {
    if (!out) return;
    out->total_seconds += st.total_s;     // added to, as the C++ API's RunStats are
    out->ort_seconds += st.ort_s;
    out->graph_calls += st.calls;
}

// The checks every generate call shares: handle, labels, options (and the run's buffer sizes).
std::shared_ptr<far::Runtime> start(const far_runtime* h, const char* fn, const int64_t* labels, int batch,
                                    const far::SampleOptions& o, const void* out) {
    std::shared_ptr<far::Runtime> rt = lookup(h, fn);
    require(out, std::string(fn) + " needs an output buffer, got NULL.");
    require(labels || batch < 1, std::string(fn) + " needs batch class labels, got NULL.");
    rt->check(labels, batch, o);
    return rt;
}

}  // namespace

extern "C" {

int far_api_version(void) { return FAR_RUNTIME_API_VERSION; }

void far_load_options_default(far_load_options* o) {
    if (!o) return;
    o->size = sizeof(far_load_options);
    o->provider = "cpu";
    o->device_id = 0;
    o->threads = 0;
    o->check_hashes = 1;
    o->trt_cache_dir = nullptr;
    o->digest = nullptr;
}

void far_sample_options_default(far_sample_options* o) {
    if (!o) return;
    o->size = sizeof(far_sample_options);
    o->K = FAR_K_DEFAULT;
    o->O = 8;
    o->cfg = 1.0;
    o->cfg_schedule = "linear";
    o->temperature = 1.0;
    o->seed = 0;
    o->head = "auto";
    o->head_schedule = nullptr;
    o->cfg_interval = nullptr;
    o->cfg_cache = nullptr;
}

int far_load(const char* bundle_dir, const far_load_options* options, far_runtime** out) {
    if (out) *out = nullptr;
    return guarded([&] {
        require(bundle_dir && out, "far_load needs a bundle folder and an output pointer.");
        const far::LoadOptions lo = load_options(options);
        *out = add(std::make_shared<far::Runtime>(bundle_dir, lo));
    });
}

void far_free(far_runtime* runtime) {
    if (!runtime) return;
    std::shared_ptr<far::Runtime> gone;          // destroyed after the lock is released
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.loaded.find(reinterpret_cast<uintptr_t>(runtime));
    if (it == r.loaded.end()) return;
    gone = std::move(it->second);
    r.loaded.erase(it);
}

int far_model(const far_runtime* runtime, far_model_info* out) {
    return guarded([&] {
        const std::shared_ptr<far::Runtime> rt = lookup(runtime, "far_model");
        require(out, "far_model needs a far_model_info to fill, got NULL.");
        const far::Bundle& b = rt->bundle();
        out->seq_len = b.model.seq_len;
        out->token_dim = b.model.token_dim;
        out->num_classes = b.model.num_classes;
        out->max_batch = b.max_batch;
        out->image_size = b.model.image_size;
        out->image_channels = b.model.image_channels;
        out->diffusion = b.model.diffusion() ? 1 : 0;
        out->diffusion_steps = rt->diffusion_steps();
    });
}

int far_generate(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                 uint8_t* out, size_t out_bytes, far_run_stats* stats) {
    return guarded([&] {
        const far::SampleOptions o = sample_options(options);
        const auto rt = start(runtime, "far_generate", labels, batch, o, out);
        const far::ModelInfo& m = rt->model();
        const size_t need = far::buffer_elements("far_generate", "its images", {batch, m.image_size, m.image_size, m.image_channels},
                                                 far::Code::Input, "generate a smaller batch.");
        require(out_bytes >= need, "The output buffer is smaller than batch x image_size x image_size x 3 bytes.");
        far::RunStats st;
        rt->generate(labels, batch, o, nullptr, out, &st);
        fill_stats(stats, st);
    });
}

int far_generate_tokens(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                        float* out, size_t out_floats, far_run_stats* stats) {
    return guarded([&] {
        const far::SampleOptions o = sample_options(options);
        const auto rt = start(runtime, "far_generate_tokens", labels, batch, o, out);
        const far::ModelInfo& m = rt->model();
        const size_t need = far::buffer_elements("far_generate_tokens", "its tokens", {batch, m.seq_len, m.token_dim},
                                                 far::Code::Input, "generate a smaller batch.");
        require(out_floats >= need, "The output buffer is smaller than batch x seq_len x token_dim floats.");
        far::RunStats st;
        rt->generate_tokens(labels, batch, o, nullptr, out, &st);
        fill_stats(stats, st);
    });
}

int far_draw_randomness(uint64_t seed, int batch, int seq_len, int token_dim, int steps, int64_t* orders,
                        float* noise, float* step_noise) {
    return guarded([&] {
        require(batch >= 1 && seq_len >= 1 && token_dim >= 1 && steps >= 0, "far_draw_randomness needs positive sizes.");
        require(orders && noise && (steps == 0 || step_noise), "far_draw_randomness needs output buffers.");
        const std::string advice = "draw a smaller batch.";
        far::buffer_elements("far_draw_randomness", "the noise", {batch, seq_len, token_dim}, far::Code::Input, advice);
        far::buffer_elements("far_draw_randomness", "the step noise", {steps, batch, seq_len, token_dim}, far::Code::Input, advice);
        const far::Randomness r = far::draw_randomness(seed, batch, seq_len, token_dim, steps);
        std::copy(r.orders.begin(), r.orders.end(), orders);
        std::copy(r.noise.begin(), r.noise.end(), noise);
        if (steps) std::copy(r.step_noise.begin(), r.step_noise.end(), step_noise);
    });
}

int far_write_png_grid(const char* path, const uint8_t* images, int batch, int height, int width) {
    return guarded([&] {
        require(path && images && batch >= 1 && height >= 1 && width >= 1, "far_write_png_grid needs a path and images.");
        far::write_png(path, far::grid(images, batch, height, width, 3));
    });
}

const char* far_last_error(void) { return last_error.c_str(); }

}  // extern "C"
