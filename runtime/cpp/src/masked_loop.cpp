// The masked loop of FAR and MAR (pipeline.py's generate_tokens): K iterations over each
// sample's random order; per iteration a backbone call on the known tokens, then the head on
// the tokens that leave the mask: FAR's shortcut head, or MAR's diffusion head with the DDPM
// update (respaced, learned-range variance) done here in numpy's float32 order.
#include <algorithm>
#include <cstring>

#include "ddpm.h"
#include "errors.h"
#include "variant.h"

namespace far {
namespace {

constexpr int kDefaultK = 16;     // defaults.py's DEFAULT_K

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

class MaskedLoop : public Variant {
public:
    explicit MaskedLoop(const Bundle& b) : bundle_(b) {
        if (b.model.diffusion())   // pipeline.py's respacing(): the manifest's respacing, or the plain count
            ddpm_ = std::make_unique<DDPMSchedule>(ddpm_schedule(b.model.diffusion_steps, b.model.timestep_respacing));
    }
    int default_k() const override { return kDefaultK; }
    int diffusion_steps() const override { return ddpm_ ? ddpm_->steps() : 0; }
    void check(int batch, const SampleOptions& o) const override { plan(batch, o); }
    std::vector<std::string> graphs(int batch, const SampleOptions& o) const override {
        return graph_names(plan(batch, o).distinct());
    }
    void sample(LoopRun& run, float* out) const override;

private:
    ShapePlan plan(int batch, const SampleOptions& o) const {
        check_k(o.K);
        const int steps = bundle_.model.diffusion() ? bundle_.model.diffusion_steps : o.O;
        const std::string mode = head_mode(bundle_, o.O, o.head);
        return make_plan(bundle_.model.seq_len, bundle_.model.diffusion(), batch, o.K, steps, o.cfg != 1.0, mode,
                         bundle_.max_batch);
    }
    // MAR: the DDPM steps on x [bn, C] (the predicted tokens' noise, unscaled).
    void diffusion(LoopRun& run, const IterationPlan& ip, const std::vector<int64_t>& pred, std::vector<float>& x,
                   int rows, float cfg) const;

    const Bundle& bundle_;
    std::unique_ptr<DDPMSchedule> ddpm_;
};

void MaskedLoop::sample(LoopRun& run, float* out) const {
    const ModelInfo& m = bundle_.model;
    const Randomness& rnd = run.rnd;
    Workspace& ws = run.ws;
    RunStats& st = run.stats;
    const int B = static_cast<int>(run.labels.size()), L = m.seq_len, C = m.token_dim, D = m.cond_dim;
    const bool use_cfg = run.o.cfg != 1.0;
    const ShapePlan p = plan(B, run.o);
    ws.prepare(p.distinct());
    const int rows = p.rows, reps = rows / B;
    float* tokens = ws.floats("state", static_cast<size_t>(rows) * L * C);
    std::fill(tokens, tokens + static_cast<size_t>(rows) * L * C, 0.0f);
    row_labels(ws, run.labels, rows, m.num_classes);
    const float temp = static_cast<float>(run.o.temperature);
    std::vector<int64_t> known, pred;
    std::vector<float> x;
    for (const IterationPlan& ip : p.iterations) {
        const Iteration& it = ip.it;
        if (!ip.calls.empty()) {
            iteration_indices(rnd, it.before, it.after, known, pred);
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
            const double cfg_iter = use_cfg ? cfg_at(it, run.o.cfg, run.o.cfg_schedule) : 1.0;
            const float cfg_f = static_cast<float>(cfg_iter);
            const size_t bn = static_cast<size_t>(B) * n;
            // The initial noise of the predicted positions, [B * n, C].
            x.resize(bn * C);
            for (int b = 0; b < B; ++b)
                for (int j = 0; j < n; ++j) {
                    const int64_t pos = pred[static_cast<size_t>(b) * n + j];
                    std::memcpy(&x[(static_cast<size_t>(b) * n + j) * C],
                                &rnd.noise[(static_cast<size_t>(b) * L + pos) * C], sizeof(float) * C);
                }
            if (m.diffusion()) {
                diffusion(run, ip, pred, x, rows, cfg_f);
            } else {
                for (float& v : x) v *= temp;
                shortcut_head(ws, &ip.calls[1], p.head_mode, p.head_steps, x, bn, C, use_cfg, cfg_f, st);
            }
            for (int r = 0; r < reps; ++r)
                for (int b = 0; b < B; ++b)
                    for (int j = 0; j < n; ++j) {
                        const int64_t pos = pred[static_cast<size_t>(b) * n + j];
                        std::memcpy(tokens + ((static_cast<size_t>(r) * B + b) * L + pos) * C,
                                    &x[(static_cast<size_t>(b) * n + j) * C], sizeof(float) * C);
                    }
        }
        if (run.progress) run.progress(it.index);
    }
    std::memcpy(out, tokens, sizeof(float) * static_cast<size_t>(B) * L * C);
}

void MaskedLoop::diffusion(LoopRun& run, const IterationPlan& ip, const std::vector<int64_t>& pred, std::vector<float>& x,
                           int rows, float cfg_f) const {
    const DDPMSchedule& sc = *ddpm_;
    const Randomness& rnd = run.rnd;
    Workspace& ws = run.ws;
    const int B = static_cast<int>(run.labels.size()), L = bundle_.model.seq_len, C = bundle_.model.token_dim;
    const int n = ip.it.n_pred(), reps = rows / B, S = sc.steps();
    const bool use_cfg = rows != B;
    const size_t bn = static_cast<size_t>(B) * n;
    const float temp = static_cast<float>(run.o.temperature);
    const int S_run = std::min<int>(S, static_cast<int>(ip.calls.size()) - 1);   // Python's zip
    for (int j = 0; j < S_run; ++j) {
        const int i = S - 1 - j;
        const Call& call = ip.calls[1 + j];
        Entry& he = ws.entry(call);
        float* xin = he.fptr("x", rows * static_cast<size_t>(n) * C);
        float* t = he.fptr("t", rows * static_cast<size_t>(n));
        for (int r = 0; r < reps; ++r) std::copy(x.begin(), x.end(), xin + r * bn * C);
        std::fill(t, t + rows * static_cast<size_t>(n), static_cast<float>(static_cast<double>(sc.timestep_map[i])));
        run.stats.ort_s += ws.run(call);
        ++run.stats.calls;
        const float* out = he.fptr("out", rows * static_cast<size_t>(n) * 2 * C);   // [rows * n, 2C]: eps, then the variance range
        const float a = static_cast<float>(sc.sqrt_recip_ac[i]), bcoef = static_cast<float>(sc.sqrt_recipm1_ac[i]);
        const float c1 = static_cast<float>(sc.coef1[i]), c2 = static_cast<float>(sc.coef2[i]);
        const float lmax = static_cast<float>(sc.log_var_max[i]), lmin = static_cast<float>(sc.log_var_min[i]);
        for (size_t row = 0; row < bn; ++row) {
            const int b = static_cast<int>(row / n);
            const int64_t pos = pred[row];
            const float* sn = rnd.step_noise.data() + ((static_cast<size_t>(j) * B + b) * L + pos) * C;
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
                    xv = mean + exp32(0.5f * log_var) * sn[c] * temp;
                } else {
                    xv = mean;
                }
            }
        }
    }
}

}  // namespace

std::unique_ptr<Variant> make_masked_loop(const Bundle& bundle) { return std::make_unique<MaskedLoop>(bundle); }

}  // namespace far
