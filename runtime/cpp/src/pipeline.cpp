#include "pipeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "errors.h"

namespace far {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Known positions (already predicted) and positions predicted in this iteration, each
// sorted in position order per sample (randomness.py's iteration_indices).
void iteration_indices(const Randomness& r, int before, int after, std::vector<int64_t>& known,
                       std::vector<int64_t>& pred) {
    const int B = r.batch, L = r.seq_len, nk = L - before, np_ = before - after;
    known.resize(static_cast<size_t>(B) * nk);
    pred.resize(static_cast<size_t>(B) * np_);
    for (int b = 0; b < B; ++b) {
        const int64_t* o = r.orders.data() + static_cast<size_t>(b) * L;
        int64_t* k = known.data() + static_cast<size_t>(b) * nk;
        int64_t* p = pred.data() + static_cast<size_t>(b) * np_;
        std::copy(o + before, o + L, k);
        std::sort(k, k + nk);
        std::copy(o + after, o + before, p);
        std::sort(p, p + np_);
    }
}

}  // namespace

struct Runtime::Lease {
    Runtime& rt;
    std::unique_ptr<Workspace> ws;
    explicit Lease(Runtime& r) : rt(r), ws(r.acquire()) {}
    ~Lease() { rt.release(std::move(ws)); }
};

Runtime::Runtime(const std::string& root, const LoadOptions& options)
    : bundle_(load_bundle(root, options.check_hashes)), backend_(bundle_, options) {
    if (bundle_.model.diffusion())   // pipeline.py's respacing(): the manifest's respacing, or the plain count
        ddpm_ = std::make_unique<DDPMSchedule>(ddpm_schedule(bundle_.model.diffusion_steps, bundle_.model.timestep_respacing));
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

int Runtime::diffusion_steps() const { return ddpm_ ? ddpm_->steps() : 0; }

std::vector<int64_t> Runtime::check_labels(const int64_t* labels, int batch) const {
    if (batch <= 0 || !labels) throw Error(Code::Input, "Batch size must be at least 1: no class labels were given.");
    const int n = bundle_.model.num_classes;
    for (int i = 0; i < batch; ++i)
        if (labels[i] < 0 || labels[i] >= n)
            throw Error(Code::Input, "Class " + std::to_string(labels[i]) + " is unknown: this model has classes 0.." +
                                         std::to_string(n - 1) + ".");
    return {labels, labels + batch};
}

std::string Runtime::head_mode(int O, const std::string& head) const {
    if (head != "auto" && head != "fused" && head != "step")
        throw Error(Code::Input, "head must be 'auto', 'fused' or 'step', got " + py_repr(head) + ".");
    if (bundle_.model.diffusion()) return "step";
    check_head_steps(O);
    const bool fused = bundle_.has(fused_name(O));
    if (head == "step" || (head == "auto" && !fused)) {
        if (!bundle_.has("head_step"))
            throw Error(Code::Input, "The bundle has no head graph for O=" + std::to_string(O) + ": it has fused graphs for O in " +
                                         bundle_.head_steps_repr() + " and no step graph.");
        return "step";
    }
    if (!fused)
        throw Error(Code::Input, "The bundle has no fused head graph for O=" + std::to_string(O) + "; it has " +
                                     bundle_.head_steps_repr() + " (re-export with --head-steps " + std::to_string(O) + ").");
    return "fused";
}

ShapePlan Runtime::plan(int batch, const SampleOptions& o, bool use_cfg) const {
    check_k(o.K);
    const int steps = bundle_.model.diffusion() ? bundle_.model.diffusion_steps : o.O;
    const std::string mode = head_mode(o.O, o.head);
    return make_plan(bundle_.model.seq_len, bundle_.model.diffusion(), batch, o.K, steps, use_cfg, mode, bundle_.max_batch);
}

void Runtime::check(const int64_t* labels, int batch, const SampleOptions& o) const {
    check_labels(labels, batch);
    plan(batch, o, o.cfg != 1.0);
    check_cfg_schedule(o.cfg_schedule);
    if (!std::isfinite(o.cfg)) throw Error(Code::Input, "The CFG scale must be a finite number, got " + py_float(o.cfg) + ".");
    if (!std::isfinite(o.temperature))
        throw Error(Code::Input, "The temperature must be a finite number, got " + py_float(o.temperature) + ".");
    if (o.temperature < 0) throw Error(Code::Input, "The temperature must be >= 0, got " + py_float(o.temperature) + ".");
}

void Runtime::generate_tokens(const int64_t* labels, int batch, const SampleOptions& o, const Randomness* rnd,
                              float* out_tokens, RunStats* stats, const std::function<void(int)>& progress) {
    const auto t_start = Clock::now();
    const std::vector<int64_t> lab = check_labels(labels, batch);
    const ModelInfo& m = bundle_.model;
    const int B = batch, L = m.seq_len, C = m.token_dim, D = m.cond_dim;
    const bool use_cfg = o.cfg != 1.0;
    const ShapePlan p = plan(B, o, use_cfg);
    check(labels, batch, o);
    const bool diffusion = m.diffusion();
    const int S = diffusion_steps();
    Randomness drawn;
    if (!rnd) {
        drawn = draw_randomness(o.seed, B, L, C, S);
        rnd = &drawn;
    }
    if (rnd->batch != B || rnd->seq_len != L || rnd->token_dim != C || rnd->steps != S)
        throw Error(Code::Input, "The randomness given does not fit this run (batch, tokens, token size or diffusion steps differ).");
    Lease lease(*this);
    Workspace& ws = *lease.ws;
    ws.prepare(p);
    RunStats st;
    const int rows = p.rows, reps = rows / B;
    float* tokens = ws.floats("state", static_cast<size_t>(rows) * L * C);
    std::fill(tokens, tokens + static_cast<size_t>(rows) * L * C, 0.0f);
    int64_t* row_labels = ws.ints("labels", rows);
    for (int b = 0; b < B; ++b) {
        row_labels[b] = lab[b];
        if (use_cfg) row_labels[B + b] = m.num_classes;
    }
    const float temp = static_cast<float>(o.temperature);
    std::vector<int64_t> known, pred;
    std::vector<float> x;
    for (const IterationPlan& ip : p.iterations) {
        const Iteration& it = ip.it;
        if (!ip.calls.empty()) {
            iteration_indices(*rnd, it.before, it.after, known, pred);
            const int n = it.n_pred(), nk = it.n_known();
            const Call& bcall = ip.calls[0];
            Entry& be = ws.entry(bcall);
            int64_t* kidx = be.iptr("known_idx", static_cast<size_t>(rows) * nk);
            int64_t* pidx = be.iptr("pred_idx", static_cast<size_t>(rows) * n);
            for (int r = 0; r < reps; ++r) {
                std::copy(known.begin(), known.end(), kidx + static_cast<size_t>(r) * B * nk);
                std::copy(pred.begin(), pred.end(), pidx + static_cast<size_t>(r) * B * n);
            }
            st.ort_s += ws.run(bcall);
            ++st.calls;
            be.fptr("z", static_cast<size_t>(rows) * n * D);   // [rows * n, D], bound as the head's z
            const double cfg_iter = use_cfg ? cfg_at(it, o.cfg, o.cfg_schedule) : 1.0;
            const float cfg_f = static_cast<float>(cfg_iter);
            const size_t bn = static_cast<size_t>(B) * n;
            // The initial noise of the predicted positions, [B * n, C].
            x.resize(bn * C);
            for (int b = 0; b < B; ++b)
                for (int j = 0; j < n; ++j) {
                    const int64_t pos = pred[static_cast<size_t>(b) * n + j];
                    std::memcpy(&x[(static_cast<size_t>(b) * n + j) * C],
                                &rnd->noise[(static_cast<size_t>(b) * L + pos) * C], sizeof(float) * C);
                }
            if (diffusion) {
                const DDPMSchedule& sc = *ddpm_;
                const int S_run = std::min<int>(S, static_cast<int>(ip.calls.size()) - 1);   // Python's zip
                for (int j = 0; j < S_run; ++j) {
                    const int i = S - 1 - j;
                    const Call& call = ip.calls[1 + j];
                    Entry& he = ws.entry(call);
                    float* xin = he.fptr("x", rows * static_cast<size_t>(n) * C);
                    float* t = he.fptr("t", rows * static_cast<size_t>(n));
                    for (int r = 0; r < reps; ++r) std::copy(x.begin(), x.end(), xin + r * bn * C);
                    std::fill(t, t + rows * static_cast<size_t>(n), static_cast<float>(static_cast<double>(sc.timestep_map[i])));
                    st.ort_s += ws.run(call);
                    ++st.calls;
                    const float* out = he.fptr("out", rows * static_cast<size_t>(n) * 2 * C);   // [rows * n, 2C]: eps, then the variance range
                    const float a = static_cast<float>(sc.sqrt_recip_ac[i]), bcoef = static_cast<float>(sc.sqrt_recipm1_ac[i]);
                    const float c1 = static_cast<float>(sc.coef1[i]), c2 = static_cast<float>(sc.coef2[i]);
                    const float lmax = static_cast<float>(sc.log_var_max[i]), lmin = static_cast<float>(sc.log_var_min[i]);
                    for (size_t row = 0; row < bn; ++row) {
                        const int b = static_cast<int>(row / n);
                        const int64_t pos = pred[row];
                        const float* sn = rnd->step_noise.data() + ((static_cast<size_t>(j) * B + b) * L + pos) * C;
                        for (int c = 0; c < C; ++c) {
                            float eps = out[row * 2 * C + c];
                            if (use_cfg) {
                                const float eu = out[(bn + row) * 2 * C + c];
                                eps = eu + cfg_f * (eps - eu);
                            }
                            const float var = out[row * 2 * C + C + c];
                            float& xv = x[row * C + c];
                            const float x0 = a * xv - bcoef * eps;
                            const float mean = c1 * x0 + c2 * xv;
                            if (i > 0) {
                                const float frac = (var + 1.0f) / 2.0f;
                                const float log_var = frac * lmax + (1.0f - frac) * lmin;
                                xv = mean + numpy_expf(0.5f * log_var) * sn[c] * temp;
                            } else {
                                xv = mean;
                            }
                        }
                    }
                }
            } else if (p.head_mode == "fused") {
                const Call& call = ip.calls[1];
                Entry& he = ws.entry(call);
                float* noise = he.fptr("noise", bn * C);
                for (size_t k = 0; k < bn * C; ++k) noise[k] = x[k] * temp;
                he.fptr("cfg", 1)[0] = cfg_f;
                st.ort_s += ws.run(call);
                ++st.calls;
                const float* outp = he.fptr("tokens", bn * C);
                std::copy(outp, outp + bn * C, x.begin());
            } else {
                const int O = p.head_steps;
                const double d = 1.0 / O;
                const float df = static_cast<float>(d);
                for (float& v : x) v *= temp;
                for (int i = 0; i < O; ++i) {
                    const Call& call = ip.calls[1 + i];
                    Entry& he = ws.entry(call);
                    const size_t nrows = static_cast<size_t>(rows) * n;
                    float* xin = he.fptr("x", nrows * C);
                    for (int r = 0; r < reps; ++r) std::copy(x.begin(), x.end(), xin + r * bn * C);
                    std::fill(he.fptr("t", nrows), he.fptr("t", nrows) + nrows, static_cast<float>(i * d));
                    std::fill(he.fptr("d", nrows), he.fptr("d", nrows) + nrows, df);
                    st.ort_s += ws.run(call);
                    ++st.calls;
                    const float* v = he.fptr("v", nrows * C);
                    for (size_t k = 0; k < bn * C; ++k) {
                        float vv = v[k];
                        if (use_cfg) {
                            const float vu = v[bn * C + k];
                            vv = vu + cfg_f * (vv - vu);
                        }
                        x[k] = x[k] + vv * df;
                    }
                }
            }
            for (int r = 0; r < reps; ++r)
                for (int b = 0; b < B; ++b)
                    for (int j = 0; j < n; ++j) {
                        const int64_t pos = pred[static_cast<size_t>(b) * n + j];
                        std::memcpy(tokens + ((static_cast<size_t>(r) * B + b) * L + pos) * C,
                                    &x[(static_cast<size_t>(b) * n + j) * C], sizeof(float) * C);
                    }
        }
        if (progress) progress(it.index);
    }
    std::memcpy(out_tokens, tokens, sizeof(float) * static_cast<size_t>(B) * L * C);
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
