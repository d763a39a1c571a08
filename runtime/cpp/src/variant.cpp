#include "variant.h"

#include <algorithm>

#include "errors.h"

namespace far {

std::unique_ptr<Variant> make_variant(const Bundle& bundle) {
    return bundle.model.causal() ? make_causal_loop(bundle) : make_masked_loop(bundle);
}

std::vector<std::string> graph_names(const std::vector<Call>& calls) {
    std::vector<std::string> out;
    for (const Call& c : calls)
        if (std::find(out.begin(), out.end(), c.graph) == out.end()) out.push_back(c.graph);
    return out;
}

std::string head_mode(const Bundle& bundle, int O, const std::string& head) {
    if (head != "auto" && head != "fused" && head != "step")
        throw Error(Code::Input, "head must be 'auto', 'fused' or 'step', got " + py_repr(head) + ".");
    if (bundle.model.diffusion()) return "step";
    check_head_steps(O);
    const bool fused = bundle.has(fused_name(O));
    if (head == "step" || (head == "auto" && !fused)) {
        if (!bundle.has("head_step"))
            throw Error(Code::Input, "The bundle has no head graph for O=" + std::to_string(O) + ": it has fused graphs for O in " +
                                         bundle.head_steps_repr() + " and no step graph.");
        return "step";
    }
    if (!fused)
        throw Error(Code::Input, "The bundle has no fused head graph for O=" + std::to_string(O) + "; it has " +
                                     bundle.head_steps_repr() + " (re-export with --head-steps " + std::to_string(O) + ").");
    return "fused";
}

ModeFor head_modes(const Bundle& bundle, const SampleOptions& o, const AccelOptions& accel) {
    if (!accel.head_on) {
        const std::string mode = head_mode(bundle, o.O, o.head);
        return [mode](int) { return mode; };
    }
    if (o.head != "auto" && o.head != "fused" && o.head != "step")
        throw Error(Code::Input, "head must be 'auto', 'fused' or 'step', got " + py_repr(o.head) + ".");
    const std::string head = o.head;
    return [&bundle, head](int steps) { return head_mode(bundle, steps, head); };
}

int64_t* row_labels(Workspace& ws, const std::vector<int64_t>& labels, int rows, int num_classes) {
    const int B = static_cast<int>(labels.size());
    int64_t* out = ws.ints("labels", rows);
    for (int b = 0; b < B; ++b) {
        out[b] = labels[b];
        if (rows != B) out[B + b] = num_classes;
    }
    return out;
}

void shortcut_head(Workspace& ws, const Call* calls, const std::string& mode, int O, std::vector<float>& x,
                   size_t n, int C, bool use_cfg, float cfg, RunStats& st) {
    const size_t nc = n * C;
    if (mode == "fused") {
        const Call& call = calls[0];
        Entry& he = ws.entry(call);
        std::copy(x.begin(), x.begin() + nc, he.fptr("noise", nc));
        he.fptr("cfg", 1)[0] = cfg;
        st.ort_s += ws.run(call);
        ++st.calls;
        const float* out = he.fptr("tokens", nc);
        std::copy(out, out + nc, x.begin());
        return;
    }
    // O Euler steps x += v(x, t = i/O, d = 1/O, z) / O; with CFG the rows are [x, x] and
    // v = v_u + cfg (v_c - v_u), in numpy's float32 order.
    const double d = 1.0 / O;
    const float df = static_cast<float>(d);
    const int reps = use_cfg ? 2 : 1;
    const size_t nrows = n * reps;
    for (int i = 0; i < O; ++i) {
        const Call& call = calls[i];
        Entry& he = ws.entry(call);
        float* xin = he.fptr("x", nrows * C);
        for (int r = 0; r < reps; ++r) std::copy(x.begin(), x.begin() + nc, xin + r * nc);
        float* t = he.fptr("t", nrows);
        float* dd = he.fptr("d", nrows);
        std::fill(t, t + nrows, static_cast<float>(i * d));
        std::fill(dd, dd + nrows, df);
        st.ort_s += ws.run(call);
        ++st.calls;
        const float* v = he.fptr("v", nrows * C);
        for (size_t k = 0; k < nc; ++k) {
            float vv = v[k];
            if (use_cfg) {
                const float vu = v[nc + k];
                vv = vu + cfg * (vv - vu);
            }
            x[k] = x[k] + vv * df;
        }
    }
}

}  // namespace far
