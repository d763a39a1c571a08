// The C API: every call catches everything, stores the sentence thread-locally and returns a code.
#include "far_runtime.h"

#include <new>
#include <string>

#include "errors.h"
#include "images.h"
#include "pipeline.h"

struct far_runtime {
    std::unique_ptr<far::Runtime> rt;
};

namespace {

thread_local std::string last_error;

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

far::SampleOptions sample_options(const far_sample_options* o) {
    far::SampleOptions s;
    if (!o) return s;
    s.K = o->K;
    s.O = o->O;
    s.cfg = o->cfg;
    s.cfg_schedule = o->cfg_schedule ? o->cfg_schedule : "linear";
    s.temperature = o->temperature;
    s.seed = o->seed;
    s.head = o->head ? o->head : "auto";
    return s;
}

void require(bool ok, const char* what) {
    if (!ok) throw far::Error(far::Code::Input, what);
}

void fill_stats(far_run_stats* out, const far::RunStats& st) {
    if (!out) return;
    out->total_seconds += st.total_s;     // added to, as the C++ API's RunStats are
    out->ort_seconds += st.ort_s;
    out->graph_calls += st.calls;
}

}  // namespace

extern "C" {

void far_load_options_default(far_load_options* o) {
    if (!o) return;
    o->provider = "cpu";
    o->device_id = 0;
    o->threads = 0;
    o->check_hashes = 1;
    o->trt_cache_dir = nullptr;
}

void far_sample_options_default(far_sample_options* o) {
    if (!o) return;
    o->K = FAR_K_DEFAULT;
    o->O = 8;
    o->cfg = 1.0;
    o->cfg_schedule = "linear";
    o->temperature = 1.0;
    o->seed = 0;
    o->head = "auto";
}

int far_load(const char* bundle_dir, const far_load_options* options, far_runtime** out) {
    if (out) *out = nullptr;
    return guarded([&] {
        require(bundle_dir && out, "far_load needs a bundle folder and an output pointer.");
        far::LoadOptions lo;
        if (options) {
            lo.provider = options->provider ? options->provider : "cpu";
            lo.device_id = options->device_id;
            lo.threads = options->threads;
            lo.check_hashes = options->check_hashes != 0;
            lo.trt_cache_dir = options->trt_cache_dir ? options->trt_cache_dir : "";
        }
        auto h = std::make_unique<far_runtime>();
        h->rt = std::make_unique<far::Runtime>(bundle_dir, lo);
        *out = h.release();
    });
}

void far_free(far_runtime* runtime) { delete runtime; }

int far_model(const far_runtime* runtime, far_model_info* out) {
    return guarded([&] {
        require(runtime && out, "far_model needs a loaded runtime and an output struct.");
        const far::Bundle& b = runtime->rt->bundle();
        out->seq_len = b.model.seq_len;
        out->token_dim = b.model.token_dim;
        out->num_classes = b.model.num_classes;
        out->max_batch = b.max_batch;
        out->image_size = b.model.image_size;
        out->image_channels = b.model.image_channels;
        out->diffusion = b.model.diffusion() ? 1 : 0;
        out->diffusion_steps = runtime->rt->diffusion_steps();
    });
}

int far_generate(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                 uint8_t* out, size_t out_bytes, far_run_stats* stats) {
    return guarded([&] {
        require(runtime && out, "far_generate needs a loaded runtime and an output buffer.");
        const far::ModelInfo& m = runtime->rt->model();
        const far::SampleOptions o = sample_options(options);
        runtime->rt->check(labels, batch, o);
        const size_t need = static_cast<size_t>(batch) * m.image_size * m.image_size * m.image_channels;
        require(out_bytes >= need, "The output buffer is smaller than batch x image_size x image_size x 3 bytes.");
        far::RunStats st;
        runtime->rt->generate(labels, batch, o, nullptr, out, &st);
        fill_stats(stats, st);
    });
}

int far_generate_tokens(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                        float* out, size_t out_floats, far_run_stats* stats) {
    return guarded([&] {
        require(runtime && out, "far_generate_tokens needs a loaded runtime and an output buffer.");
        const far::ModelInfo& m = runtime->rt->model();
        const far::SampleOptions o = sample_options(options);
        runtime->rt->check(labels, batch, o);
        require(out_floats >= static_cast<size_t>(batch) * m.seq_len * m.token_dim,
                "The output buffer is smaller than batch x seq_len x token_dim floats.");
        far::RunStats st;
        runtime->rt->generate_tokens(labels, batch, o, nullptr, out, &st);
        fill_stats(stats, st);
    });
}

int far_draw_randomness(uint64_t seed, int batch, int seq_len, int token_dim, int steps, int64_t* orders,
                        float* noise, float* step_noise) {
    return guarded([&] {
        require(batch >= 1 && seq_len >= 1 && token_dim >= 1 && steps >= 0, "far_draw_randomness needs positive sizes.");
        require(orders && noise && (steps == 0 || step_noise), "far_draw_randomness needs output buffers.");
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
