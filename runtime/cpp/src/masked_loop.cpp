// The masked loop of FAR and MAR (pipeline.py's generate_tokens): K iterations over each
// sample's random order; per iteration a backbone call on the known tokens, then the head on
// the tokens that leave the mask: FAR's shortcut head, or MAR's diffusion head with the DDPM
// update (respaced, learned-range variance) done here in numpy's float32 order. The
// acceleration options (accel.h) shape each iteration: its head steps, its guidance, and
// whether the unconditional rows run, are refreshed or reused (the plan's IterationPlan).
#include <algorithm>
#include <cstring>
#include <map>

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

// The still-masked positions of each sample, sorted (a refresh's pred_idx: orders[b, :before]).
void masked_positions(const Randomness& r, int before, std::vector<int64_t>& out) {
    const int B = r.batch, L = r.seq_len;
    out.resize(static_cast<size_t>(B) * before);
    for (int b = 0; b < B; ++b) {
        const int64_t* o = r.orders.data() + static_cast<size_t>(b) * L;
        int64_t* d = out.data() + static_cast<size_t>(b) * before;
        std::copy(o, o + before, d);
        std::sort(d, d + before);
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
    // Pipeline.plan's checks, in generate_tokens' order: K, O (shortcut heads), the options'
    // syntax, head, batch, then the options against the run (make_plan).
    ShapePlan plan(int batch, const SampleOptions& o) const {
        check_k(o.K);
        const bool diffusion = bundle_.model.diffusion();
        if (!diffusion) check_head_steps(o.O);
        const AccelOptions accel = parse_accel(o.head_schedule, o.cfg_interval, o.cfg_cache);
        const ModeFor modes = head_modes(bundle_, o, accel);
        return make_plan(bundle_.model.seq_len, diffusion, batch, o.K, diffusion ? diffusion_steps() : o.O, o.cfg != 1.0,
                         modes, bundle_.max_batch, accel, diffusion_steps());
    }
    // The head's z [zrows * n, D] of a refresh or reuse iteration, from the backbone's z
    // (accel.h): a refresh keeps z_u - z_c at every masked position in diff and gathers the
    // predicted ones; a reuse adds the kept difference to the conditional rows.
    void condition(LoopRun& run, const IterationPlan& ip, const std::vector<int64_t>& pred,
                   const std::vector<int64_t>& out_idx, std::vector<float>& diff) const;
    // MAR: the DDPM steps on x [bn, C] (the predicted tokens' noise, unscaled).
    void diffusion(LoopRun& run, const IterationPlan& ip, const DDPMSchedule& sc, const std::vector<int64_t>& pred,
                   std::vector<float>& x, float cfg) const;

    const Bundle& bundle_;
    std::unique_ptr<DDPMSchedule> ddpm_;
};

void MaskedLoop::sample(LoopRun& run, float* out) const {
    const ModelInfo& m = bundle_.model;
    const Randomness& rnd = run.rnd;
    Workspace& ws = run.ws;
    RunStats& st = run.stats;
    const int B = static_cast<int>(run.labels.size()), L = m.seq_len, C = m.token_dim;
    const ShapePlan p = plan(B, run.o);
    ws.prepare(p.distinct());
    const size_t state = static_cast<size_t>(B) * L * C;
    std::vector<float> tokens(state, 0.0f);
    const float temp = static_cast<float>(run.o.temperature);
    std::map<int, DDPMSchedule> schedules;      // MAR under a head schedule: one per step count
    std::vector<int64_t> known, pred, masked;
    std::vector<float> x, diff;
    for (const IterationPlan& ip : p.iterations) {
        const Iteration& it = ip.it;
        if (!ip.calls.empty()) {
            iteration_indices(rnd, it.before, it.after, known, pred);
            const bool refresh = ip.uncond == Uncond::Refresh;
            if (refresh) masked_positions(rnd, it.before, masked);
            const std::vector<int64_t>& out_idx = refresh ? masked : pred;
            const int n = it.n_pred(), nk = it.n_known(), rows = ip.rows, reps = rows / B;
            const Call& bcall = ip.calls[0];
            Entry& be = ws.entry(bcall);
            float* tin = be.fptr("tokens", static_cast<size_t>(rows) * L * C);
            int64_t* kidx = be.iptr("known_idx", static_cast<size_t>(rows) * nk);
            int64_t* pidx = be.iptr("pred_idx", static_cast<size_t>(rows) * ip.n_out);
            row_labels(ws, run.labels, rows, m.num_classes);
            for (int r = 0; r < reps; ++r) {
                std::copy(tokens.begin(), tokens.end(), tin + r * state);
                std::copy(known.begin(), known.end(), kidx + static_cast<size_t>(r) * B * nk);
                std::copy(out_idx.begin(), out_idx.end(), pidx + static_cast<size_t>(r) * B * ip.n_out);
            }
            st.ort_s += ws.run(bcall);
            ++st.calls;
            // The backbone's z is the head's z (one buffer) unless the condition cache acts.
            if (refresh || ip.uncond == Uncond::Reuse) condition(run, ip, pred, out_idx, diff);
            const double cfg_iter = ip.guided ? cfg_at(it, run.o.cfg, run.o.cfg_schedule) : 1.0;
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
                // heads.py's schedule_for: the model's own respacing at its step count, else MAR's
                // respacing of the training steps to this iteration's count.
                const DDPMSchedule* sc = ddpm_.get();
                if (ip.head_steps != ddpm_->steps()) {
                    auto found = schedules.find(ip.head_steps);
                    if (found == schedules.end()) found = schedules.emplace(ip.head_steps, ddpm_schedule(ip.head_steps)).first;
                    sc = &found->second;
                }
                diffusion(run, ip, *sc, pred, x, cfg_f);
            } else {
                for (float& v : x) v *= temp;
                shortcut_head(ws, &ip.calls[1], ip.head_mode, ip.head_steps, x, bn, C, ip.guided, cfg_f, st);
            }
            for (int b = 0; b < B; ++b)
                for (int j = 0; j < n; ++j) {
                    const int64_t pos = pred[static_cast<size_t>(b) * n + j];
                    std::memcpy(&tokens[(static_cast<size_t>(b) * L + pos) * C], &x[(static_cast<size_t>(b) * n + j) * C],
                                sizeof(float) * C);
                }
        }
        if (run.progress) run.progress(it.index);
    }
    std::memcpy(out, tokens.data(), sizeof(float) * state);
}

void MaskedLoop::condition(LoopRun& run, const IterationPlan& ip, const std::vector<int64_t>& pred,
                           const std::vector<int64_t>& out_idx, std::vector<float>& diff) const {
    const int B = static_cast<int>(run.labels.size()), L = bundle_.model.seq_len, D = bundle_.model.cond_dim;
    const int n = ip.it.n_pred(), n_out = ip.n_out;
    const size_t bn = static_cast<size_t>(B) * n;
    const float* z = run.ws.entry(ip.calls[0]).fptr("z", static_cast<size_t>(ip.rows) * n_out * D);
    std::vector<float> head(2 * bn * D);             // conditional rows, then their unconditional twins
    if (diff.empty()) diff.assign(static_cast<size_t>(B) * L * D, 0.0f);
    for (int b = 0; b < B; ++b) {
        const int64_t* outs = out_idx.data() + static_cast<size_t>(b) * n_out;
        if (ip.uncond == Uncond::Refresh)
            for (int k = 0; k < n_out; ++k) {
                const float* zc = z + (static_cast<size_t>(b) * n_out + k) * D;
                const float* zu = z + (static_cast<size_t>(B + b) * n_out + k) * D;
                float* d = &diff[(static_cast<size_t>(b) * L + outs[k]) * D];
                for (int c = 0; c < D; ++c) d[c] = zu[c] - zc[c];
            }
        for (int j = 0; j < n; ++j) {
            const int64_t pos = pred[static_cast<size_t>(b) * n + j];
            float* hc = &head[(static_cast<size_t>(b) * n + j) * D];
            float* hu = &head[(bn + static_cast<size_t>(b) * n + j) * D];
            if (ip.uncond == Uncond::Refresh) {       // pred is a subset of the sorted out_idx
                const size_t k = std::lower_bound(outs, outs + n_out, pos) - outs;
                std::memcpy(hc, z + (static_cast<size_t>(b) * n_out + k) * D, sizeof(float) * D);
                std::memcpy(hu, z + (static_cast<size_t>(B + b) * n_out + k) * D, sizeof(float) * D);
            } else {
                const float* zc = z + (static_cast<size_t>(b) * n + j) * D;
                const float* d = &diff[(static_cast<size_t>(b) * L + pos) * D];
                std::memcpy(hc, zc, sizeof(float) * D);
                for (int c = 0; c < D; ++c) hu[c] = zc[c] + d[c];
            }
        }
    }
    float* hz = run.ws.entry(ip.calls[1]).fptr("z", head.size());
    std::copy(head.begin(), head.end(), hz);
}

void MaskedLoop::diffusion(LoopRun& run, const IterationPlan& ip, const DDPMSchedule& sc, const std::vector<int64_t>& pred,
                           std::vector<float>& x, float cfg_f) const {
    const Randomness& rnd = run.rnd;
    Workspace& ws = run.ws;
    const int B = static_cast<int>(run.labels.size()), L = bundle_.model.seq_len, C = bundle_.model.token_dim;
    const bool use_cfg = ip.guided;
    const int rows = use_cfg ? 2 * B : B;           // the head's rows (zrows / n)
    const int n = ip.it.n_pred(), reps = rows / B, S = sc.steps();
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
