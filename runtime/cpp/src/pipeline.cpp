#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "errors.h"
#include "sizes.h"

namespace far {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

struct Runtime::Lease {
    Runtime& rt;
    std::unique_ptr<Workspace> ws;
    explicit Lease(Runtime& r) : rt(r), ws(r.acquire()) {}
    ~Lease() { rt.release(std::move(ws)); }
};

Runtime::Runtime(const std::string& root, const LoadOptions& options)
    : bundle_(load_bundle(root, options.check_hashes, options.digest)), backend_(bundle_, options), variant_(make_variant(bundle_)) {
    check_run_buffers(bundle_.model, 1, true, diffusion_steps(), true);   // one image with CFG fits, or a bundle error
    // A GPU provider starts every session now, so a missing GPU or a CPU fallback is refused
    // at load, not halfway through the first image.
    if (options.provider != "cpu") backend_.create_all();
}

Runtime::~Runtime() = default;

std::unique_ptr<Workspace> Runtime::acquire() {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (pool_.empty()) return std::make_unique<Workspace>(backend_, bundle_);
    std::unique_ptr<Workspace> ws = std::move(pool_.back());
    pool_.pop_back();
    return ws;
}

void Runtime::release(std::unique_ptr<Workspace> ws) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    pool_.push_back(std::move(ws));
}

std::vector<int64_t> Runtime::check_labels(const int64_t* labels, int batch) const {
    if (batch <= 0 || !labels) throw Error(Code::Input, "Batch size must be at least 1: no class labels were given.");
    const int n = bundle_.model.num_classes;
    for (int i = 0; i < batch; ++i)
        if (labels[i] < 0 || labels[i] >= n)
            throw Error(Code::Input, "Class " + std::to_string(labels[i]) + " is unknown: this model has classes 0.." +
                                         std::to_string(n - 1) + ".");
    return {labels, labels + batch};
}

SampleOptions Runtime::resolved(const SampleOptions& o) const {
    SampleOptions r = o;
    if (r.K == 0) r.K = variant_->default_k();
    return r;
}

void Runtime::check(const int64_t* labels, int batch, const SampleOptions& o) const {
    check_labels(labels, batch);
    variant_->check(batch, resolved(o));
    check_cfg_schedule(o.cfg_schedule);
    if (!std::isfinite(o.cfg)) throw Error(Code::Input, "The CFG scale must be a finite number, got " + py_float(o.cfg) + ".");
    if (!std::isfinite(o.temperature))
        throw Error(Code::Input, "The temperature must be a finite number, got " + py_float(o.temperature) + ".");
    if (o.temperature < 0) throw Error(Code::Input, "The temperature must be >= 0, got " + py_float(o.temperature) + ".");
    check_run_buffers(bundle_.model, batch, o.cfg != 1.0, diffusion_steps(), false);
}

void Runtime::open(int batch, const SampleOptions& o, bool decode) {
    std::vector<std::string> graphs = variant_->graphs(batch, resolved(o));
    if (decode) graphs.push_back("vae_decoder");
    for (const std::string& g : graphs) backend_.session(g);
}

void Runtime::generate_tokens(const int64_t* labels, int batch, const SampleOptions& options, const Randomness* rnd,
                              float* out_tokens, RunStats* stats, const std::function<void(int)>& progress) {
    const auto t_start = Clock::now();
    const std::vector<int64_t> lab = check_labels(labels, batch);
    const SampleOptions o = resolved(options);
    check(labels, batch, o);
    open(batch, o, false);
    const ModelInfo& m = bundle_.model;
    const int S = diffusion_steps();
    Randomness drawn;
    if (!rnd) {
        drawn = draw_randomness(o.seed, batch, m.seq_len, m.token_dim, S);
        rnd = &drawn;
    }
    if (rnd->batch != batch || rnd->seq_len != m.seq_len || rnd->token_dim != m.token_dim || rnd->steps != S)
        throw Error(Code::Input, "The randomness given does not fit this run (batch, tokens, token size or diffusion steps differ).");
    Lease lease(*this);
    RunStats st;
    LoopRun run{*lease.ws, lab, o, *rnd, st, progress};
    variant_->sample(run, out_tokens);
    st.total_s = seconds_since(t_start);
    if (stats) {
        stats->total_s += st.total_s;
        stats->ort_s += st.ort_s;
        stats->calls += st.calls;
    }
}

void Runtime::decode(const float* tokens, int batch, float* out_images, RunStats* stats) {
    if (!bundle_.has("vae_decoder"))
        throw Error(Code::Input, "The bundle has no vae_decoder graph; export it with --components ...,vae.");
    const ModelInfo& m = bundle_.model;
    const size_t per_in = static_cast<size_t>(m.seq_len) * m.token_dim;
    const size_t per_out = static_cast<size_t>(m.image_channels) * m.image_size * m.image_size;
    const auto t0 = Clock::now();
    RunStats st;
    Lease lease(*this);
    for (int start = 0; start < batch; start += bundle_.max_batch) {
        const int b = std::min(bundle_.max_batch, batch - start);
        const Call call = make_call("vae_decoder", {{"batch", b}});
        Entry& e = lease.ws->entry(call);
        std::memcpy(e.fptr("tokens", b * per_in), tokens + start * per_in, sizeof(float) * b * per_in);
        st.ort_s += lease.ws->run(call);
        ++st.calls;
        std::memcpy(out_images + start * per_out, e.fptr("image", b * per_out), sizeof(float) * b * per_out);
    }
    if (stats) {
        stats->total_s += seconds_since(t0);
        stats->ort_s += st.ort_s;
        stats->calls += st.calls;
    }
}

void to_uint8(const float* images, int batch, int channels, int size, uint8_t* out) {
    const size_t hw = static_cast<size_t>(size) * size;
    for (int b = 0; b < batch; ++b)
        for (size_t p = 0; p < hw; ++p)
            for (int c = 0; c < channels; ++c) {
                float v = (images[(static_cast<size_t>(b) * channels + c) * hw + p] + 1.0f) * 127.5f;
                v = std::nearbyint(std::min(std::max(v, 0.0f), 255.0f));   // np.rint: half to even
                out[(static_cast<size_t>(b) * hw + p) * channels + c] = std::isnan(v) ? 0 : static_cast<uint8_t>(v);
            }
}

void Runtime::generate(const int64_t* labels, int batch, const SampleOptions& o, const Randomness* rnd,
                       uint8_t* out_images, RunStats* stats, const std::function<void(int)>& progress) {
    // The whole generate is timed (allocations, the finite check and to_uint8 included), so the
    // overhead figure counts everything outside ONNX Runtime.
    const auto t0 = Clock::now();
    const ModelInfo& m = bundle_.model;
    if (!bundle_.has("vae_decoder"))
        throw Error(Code::Input, "The bundle has no vae_decoder graph; export it with --components ...,vae.");
    check(labels, batch, o);
    open(batch, o, true);
    RunStats st;
    std::vector<float> tokens(static_cast<size_t>(batch) * m.seq_len * m.token_dim);
    generate_tokens(labels, batch, o, rnd, tokens.data(), &st, progress);
    std::vector<float> images(static_cast<size_t>(batch) * m.image_channels * m.image_size * m.image_size);
    decode(tokens.data(), batch, images.data(), &st);
    for (float v : images)
        if (!std::isfinite(v))
            throw Error(Code::Runtime, "The run produced NaN or infinite values (the graphs or the options overflow), so no image was made.");
    to_uint8(images.data(), batch, m.image_channels, m.image_size, out_images);
    if (stats) {
        stats->total_s += seconds_since(t0);
        stats->ort_s += st.ort_s;
        stats->calls += st.calls;
    }
}

}  // namespace far
