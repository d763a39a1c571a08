// The FAR-Causal loop (variants/causal.py, mode "cache"): L steps of one token each in raster
// order. Token i's condition z_i comes from causal_prefill (i = 0: the labels fill the P
// class slots of the cache) or causal_step (token i - 1 at position P + i - 1, the cache);
// then the shortcut head turns temperature * noise[:, i] into token i, CFG inside the head
// (cond rows over their unconditional twins, which share the token and the noise).
//
// The cache never moves: the prefill writes buffer A; slot 1 (odd i) reads A and writes B,
// slot 0 (even i) reads B and writes A (ort_backend.cpp binds them so), each slot one
// IoBinding over preallocated buffers of the full static size T, so every step has the same
// shapes and no cache is copied. The randomness's orders are drawn but not used. The
// acceleration options (accel.h) give each token its O and its guidance; a guidance interval
// runs the unconditional rows up to the last guided token, then cuts the cache to the
// conditional rows once (the plan's TokenPlan rows).
#include <algorithm>
#include <cstring>

#include "errors.h"
#include "variant.h"

namespace far {
namespace {

// The cache `from` wrote ([depth, 2, batch, heads, T, head_dim] at its rows), cut to its first
// `rows` batch rows into the cache `to` reads (variants/causal.py: cache[:, :, :rows]), where a
// guidance interval ends the unconditional rows.
void cut_cache(Workspace& ws, const ModelInfo& m, const Call& from, const Call& to, int rows) {
    const size_t blocks = static_cast<size_t>(m.depth) * 2;
    const size_t per = static_cast<size_t>(m.heads) * m.context * m.head_dim;
    const size_t src_rows = static_cast<size_t>(from.dim("batch"));
    const float* src = ws.entry(from).fptr(from.graph == "causal_prefill" ? "cache" : "cache_out", blocks * src_rows * per);
    float* dst = ws.entry(to).fptr("cache", blocks * rows * per);
    for (size_t k = 0; k < blocks; ++k) std::memcpy(dst + k * rows * per, src + k * src_rows * per, sizeof(float) * rows * per);
}

class CausalLoop : public Variant {
public:
    explicit CausalLoop(const Bundle& b) : bundle_(b) {}
    int default_k() const override { return bundle_.model.seq_len; }
    void check(int batch, const SampleOptions& o) const override { plan(batch, o); }
    std::vector<std::string> graphs(int batch, const SampleOptions& o) const override {
        return graph_names(plan(batch, o).distinct());
    }
    void sample(LoopRun& run, float* out) const override;

private:
    // Pipeline.plan's checks, in its order: K, O, the options' syntax, head, graphs, batch and
    // the options against the run (in make_causal_plan).
    CausalPlan plan(int batch, const SampleOptions& o) const {
        const int L = bundle_.model.seq_len;
        check_causal_k(o.K, L);
        check_k(L);                    // check_sampling's range check of K = L
        check_head_steps(o.O);         // check_sampling's, also when a head schedule replaces O
        const AccelOptions accel = parse_accel(o.head_schedule, o.cfg_interval, o.cfg_cache);
        const ModeFor modes = head_modes(bundle_, o, accel);
        for (const char* g : {"causal_prefill", "causal_step"})
            if (!bundle_.has(g))
                throw Error(Code::Input, std::string("The bundle has no '") + g + "' graph, which mode 'cache' needs.");
        return make_causal_plan(L, batch, o.O, o.cfg != 1.0, modes, bundle_.max_batch, accel);
    }

    const Bundle& bundle_;
};

void CausalLoop::sample(LoopRun& run, float* out) const {
    const ModelInfo& m = bundle_.model;
    Workspace& ws = run.ws;
    RunStats& st = run.stats;
    const int B = static_cast<int>(run.labels.size()), L = m.seq_len, C = m.token_dim, D = m.cond_dim;
    const CausalPlan p = plan(B, run.o);
    ws.prepare(p.distinct());
    row_labels(ws, run.labels, p.rows, m.num_classes);
    const float temp = static_cast<float>(run.o.temperature);
    const size_t bc = static_cast<size_t>(B) * C;
    std::vector<float> x(bc);
    st.ort_s += ws.run(p.prefill);
    ++st.calls;
    const Call* prev = &p.prefill;                   // the call whose cache output the next step reads
    for (int i = 0; i < L; ++i) {
        const TokenPlan& tp = p.tokens[i];
        const int rows = tp.rows, reps = rows / B;
        if (i > 0) {
            const Call& call = tp.backbone;
            Entry& se = ws.entry(call);
            if (prev->dim("batch") != rows) cut_cache(ws, m, *prev, call, rows);
            float* token = se.fptr("token", static_cast<size_t>(rows) * C);   // token i - 1 of every row
            for (int r = 0; r < reps; ++r)
                for (int b = 0; b < B; ++b)
                    std::memcpy(token + (static_cast<size_t>(r) * B + b) * C, out + (static_cast<size_t>(b) * L + i - 1) * C,
                                sizeof(float) * C);
            se.iptr("pos", 1)[0] = step_position(i, m.class_tokens);
            st.ort_s += ws.run(call);
            ++st.calls;
            prev = &call;
        }
        // The backbone's z [rows, D] is the head's z (one buffer) unless the head takes the
        // conditional rows only while the unconditional ones still run for the cache.
        const float* z = ws.entry(tp.backbone).fptr("z", static_cast<size_t>(rows) * D);
        if (!tp.guided && rows != B) {
            float* hz = ws.entry(tp.head[0]).fptr("z", static_cast<size_t>(B) * D);
            std::copy(z, z + static_cast<size_t>(B) * D, hz);
        }
        const float cfg = static_cast<float>(tp.guided ? causal_cfg_at(i, L, run.o.cfg, run.o.cfg_schedule) : 1.0);
        for (int b = 0; b < B; ++b) {
            const float* noise = run.rnd.noise.data() + (static_cast<size_t>(b) * L + i) * C;
            for (int c = 0; c < C; ++c) x[static_cast<size_t>(b) * C + c] = noise[c] * temp;
        }
        shortcut_head(ws, tp.head.data(), tp.head_mode, tp.head_steps, x, B, C, tp.guided, cfg, st);
        for (int b = 0; b < B; ++b)
            std::memcpy(out + (static_cast<size_t>(b) * L + i) * C, &x[static_cast<size_t>(b) * C], sizeof(float) * C);
        if (run.progress) run.progress(i);
    }
}

}  // namespace

std::unique_ptr<Variant> make_causal_loop(const Bundle& bundle) { return std::make_unique<CausalLoop>(bundle); }

}  // namespace far
