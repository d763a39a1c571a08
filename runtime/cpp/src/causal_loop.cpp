// The FAR-Causal loop (variants/causal.py, mode "cache"): L steps of one token each in raster
// order. Token i's condition z_i comes from causal_prefill (i = 0: the labels fill the P
// class slots of the cache) or causal_step (token i - 1 at position P + i - 1, the cache);
// then the shortcut head turns temperature * noise[:, i] into token i, CFG inside the head
// (cond rows over their unconditional twins, which share the token and the noise).
//
// The cache never moves: the prefill writes buffer A; slot 1 (odd i) reads A and writes B,
// slot 0 (even i) reads B and writes A (ort_backend.cpp binds them so), each slot one
// IoBinding over preallocated buffers of the full static size T, so every step has the same
// shapes and no cache is copied. The randomness's orders are drawn but not used.
#include <algorithm>
#include <cstring>

#include "errors.h"
#include "variant.h"

namespace far {
namespace {

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
    // Pipeline.plan's checks, in its order: K, head, graphs, batch (in make_causal_plan).
    CausalPlan plan(int batch, const SampleOptions& o) const {
        const int L = bundle_.model.seq_len;
        check_causal_k(o.K, L);
        check_k(L);                    // check_sampling's range check of K = L
        const std::string mode = head_mode(bundle_, o.O, o.head);
        for (const char* g : {"causal_prefill", "causal_step"})
            if (!bundle_.has(g))
                throw Error(Code::Input, std::string("The bundle has no '") + g + "' graph, which mode 'cache' needs.");
        return make_causal_plan(L, batch, o.O, o.cfg != 1.0, mode, bundle_.max_batch);
    }

    const Bundle& bundle_;
};

void CausalLoop::sample(LoopRun& run, float* out) const {
    const ModelInfo& m = bundle_.model;
    Workspace& ws = run.ws;
    RunStats& st = run.stats;
    const int B = static_cast<int>(run.labels.size()), L = m.seq_len, C = m.token_dim, D = m.cond_dim;
    const bool use_cfg = run.o.cfg != 1.0;
    const CausalPlan p = plan(B, run.o);
    ws.prepare(p.distinct());
    const int rows = p.rows, reps = rows / B;
    row_labels(ws, run.labels, rows, m.num_classes);
    const float temp = static_cast<float>(run.o.temperature);
    const size_t bc = static_cast<size_t>(B) * C;
    std::vector<float> x(bc);
    st.ort_s += ws.run(p.prefill);
    ++st.calls;
    ws.entry(p.prefill).fptr("z", static_cast<size_t>(rows) * D);   // [rows, D], bound as the head's z
    for (int i = 0; i < L; ++i) {
        if (i > 0) {
            const Call& call = p.steps[i % 2];
            Entry& se = ws.entry(call);
            float* token = se.fptr("token", static_cast<size_t>(rows) * C);   // token i - 1 of every row
            for (int r = 0; r < reps; ++r)
                for (int b = 0; b < B; ++b)
                    std::memcpy(token + (static_cast<size_t>(r) * B + b) * C, out + (static_cast<size_t>(b) * L + i - 1) * C,
                                sizeof(float) * C);
            se.iptr("pos", 1)[0] = step_position(i, m.class_tokens);
            st.ort_s += ws.run(call);
            ++st.calls;
            se.fptr("z", static_cast<size_t>(rows) * D);
        }
        const float cfg = static_cast<float>(use_cfg ? causal_cfg_at(i, L, run.o.cfg, run.o.cfg_schedule) : 1.0);
        for (int b = 0; b < B; ++b) {
            const float* noise = run.rnd.noise.data() + (static_cast<size_t>(b) * L + i) * C;
            for (int c = 0; c < C; ++c) x[static_cast<size_t>(b) * C + c] = noise[c] * temp;
        }
        shortcut_head(ws, p.head.data(), p.head_mode, p.head_steps, x, B, C, use_cfg, cfg, st);
        for (int b = 0; b < B; ++b)
            std::memcpy(out + (static_cast<size_t>(b) * L + i) * C, &x[static_cast<size_t>(b) * C], sizeof(float) * C);
        if (run.progress) run.progress(i);
    }
}

}  // namespace

std::unique_ptr<Variant> make_causal_loop(const Bundle& bundle) { return std::make_unique<CausalLoop>(bundle); }

}  // namespace far
