#include "plan.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "errors.h"

namespace far {

std::string Call::key() const {
    std::string k = graph;
    for (const auto& d : dims) k += "|" + d.first + "=" + std::to_string(d.second);
    return k;
}

int Call::dim(const std::string& name) const {
    for (const auto& d : dims) if (d.first == name) return d.second;
    throw Error(Code::Bundle, "Graph '" + graph + "' of the bundle has a dim '" + name +
                                  "' that this runtime does not know; rebuild the bundle with this toolkit.");
}

std::vector<Call> ShapePlan::distinct() const {
    std::set<std::string> seen;
    std::vector<Call> out;
    for (const auto& ip : iterations)
        for (const auto& c : ip.calls)
            if (seen.insert(c.key()).second) out.push_back(c);
    return out;
}

void check_k(long long k) {
    if (k < 1 || k > kMaxK)
        throw Error(Code::Input, "K (autoregressive iterations) must be an integer in 1.." + std::to_string(kMaxK) +
                                     ", got " + std::to_string(k) + ".");
}

bool valid_head_steps(long long o) { return o >= 1 && o <= kMaxHeadSteps && !(o & (o - 1)); }

void check_head_steps(long long o, const std::string& what) {
    if (!valid_head_steps(o))
        throw Error(Code::Input, what + " must be a power of two in 1.." + std::to_string(kMaxHeadSteps) + ", got " +
                                     std::to_string(o) + ".");
}

std::vector<Iteration> mask_schedule(int num_iter, int seq_len) {
    check_k(num_iter);
    std::vector<Iteration> plan;
    int before = seq_len;
    for (int s = 0; s < num_iter; ++s) {
        const double ratio = std::cos(M_PI / 2.0 * (s + 1) / num_iter);   // same evaluation order as Python
        const int floor_len = static_cast<int>(std::floor(seq_len * ratio));
        const int mask_len = std::max(1, std::min(before - 1, floor_len));
        const int after = s == num_iter - 1 ? 0 : mask_len;
        plan.push_back({s, before, after, mask_len, seq_len});
        before = after;
    }
    return plan;
}

void check_cfg_schedule(const std::string& schedule) {
    if (schedule != "linear" && schedule != "constant")
        throw Error(Code::Input, "CFG schedule must be 'linear' or 'constant', got " + py_repr(schedule) + ".");
}

double cfg_at(const Iteration& it, double cfg, const std::string& schedule) {
    check_cfg_schedule(schedule);
    if (schedule == "linear") return 1.0 + (cfg - 1.0) * (it.seq_len - it.mask_len) / it.seq_len;
    return cfg;
}

std::string fused_name(int steps) { return "head_fused_o" + std::to_string(steps); }

Call make_call(const std::string& graph, std::vector<std::pair<std::string, int>> dims) {
    std::sort(dims.begin(), dims.end());
    return Call{graph, std::move(dims)};
}

void check_batch(int batch, int max_batch) {
    if (batch < 1 || (max_batch > 0 && batch > max_batch)) {
        const std::string limit = max_batch > 0 ? " and at most " + std::to_string(max_batch) + " (the bundle's max batch)" : "";
        throw Error(Code::Input, "Batch size must be at least 1" + limit + ", got " + std::to_string(batch) + ".");
    }
}

std::vector<Call> head_calls(const std::string& mode, int steps, int batch, int zrows, int n) {
    if (mode == "fused") return {make_call(fused_name(steps), {{"rows", batch * n}, {"zrows", zrows * n}})};
    return std::vector<Call>(static_cast<size_t>(steps), make_call("head_step", {{"rows", zrows * n}}));
}

namespace {

std::string joint_mode(const std::set<std::string>& modes) { return modes.size() == 1 ? *modes.begin() : "mixed"; }

}  // namespace

ShapePlan make_plan(int seq_len, bool diffusion, int batch, int num_iter, int head_steps, bool use_cfg,
                    const ModeFor& mode_for, int max_batch, const AccelOptions& accel, int max_steps) {
    check_batch(batch, max_batch);
    const std::vector<Iteration> its = mask_schedule(num_iter, seq_len);
    std::vector<int> known;
    std::vector<bool> runs;
    for (const Iteration& it : its) {
        known.push_back(it.n_known());
        runs.push_back(it.n_pred() > 0);
    }
    const std::vector<IterationOptions> opts =
        resolve(accel, num_iter, head_steps, use_cfg, known, seq_len, !diffusion, max_steps, runs, true);
    ShapePlan p;
    p.batch = batch;
    p.num_iter = num_iter;
    std::set<std::string> modes;
    for (size_t s = 0; s < its.size(); ++s) {
        const Iteration& it = its[s];
        const IterationOptions& o = opts[s];
        IterationPlan ip;
        ip.it = it;
        ip.head_steps = o.head_steps;
        ip.head_mode = diffusion ? "step" : mode_for(o.head_steps);
        ip.rows = o.uncond == Uncond::Computed || o.uncond == Uncond::Refresh ? 2 * batch : batch;
        ip.n_out = o.uncond == Uncond::Refresh ? it.before : it.n_pred();
        ip.guided = o.guided;
        ip.uncond = o.uncond;
        if (it.n_pred()) {
            ip.calls.push_back(make_call("backbone", {{"batch", ip.rows}, {"n_known", it.n_known()}, {"n_pred", ip.n_out}}));
            for (Call& c : head_calls(ip.head_mode, o.head_steps, batch, o.guided ? 2 * batch : batch, it.n_pred()))
                ip.calls.push_back(std::move(c));
        }
        p.rows = std::max(p.rows, ip.rows);
        p.head_steps = std::max(p.head_steps, ip.head_steps);
        modes.insert(ip.head_mode);
        p.iterations.push_back(std::move(ip));
    }
    p.head_mode = joint_mode(modes);
    return p;
}

ShapePlan make_plan(int seq_len, bool diffusion, int batch, int num_iter, int head_steps, bool use_cfg,
                    const std::string& head_mode, int max_batch) {
    return make_plan(seq_len, diffusion, batch, num_iter, head_steps, use_cfg, [&](int) { return head_mode; }, max_batch);
}

// --- FAR-Causal ---------------------------------------------------------------------------

std::vector<Call> CausalPlan::distinct() const {
    std::set<std::string> seen;
    std::vector<Call> out;
    for (const TokenPlan& t : tokens) {
        if (seen.insert(t.backbone.key()).second) out.push_back(t.backbone);
        for (const Call& c : t.head)
            if (seen.insert(c.key()).second) out.push_back(c);
    }
    return out;
}

std::vector<int> token_rows(const std::vector<IterationOptions>& opts, int batch) {
    int last = -1;
    for (size_t i = 0; i < opts.size(); ++i)
        if (opts[i].guided) last = static_cast<int>(i);
    std::vector<int> rows;
    for (int i = 0; i < static_cast<int>(opts.size()); ++i) rows.push_back(i <= last ? 2 * batch : batch);
    return rows;
}

void check_causal_k(long long k, int seq_len) {
    if (k != 0 && k != seq_len)
        throw Error(Code::Input, "FAR-Causal predicts one token per step, so K is L = " + std::to_string(seq_len) +
                                     " by construction; got K=" + std::to_string(k) + " (leave K out).");
}

double causal_cfg_at(int i, int seq_len, double cfg, const std::string& schedule) {
    check_cfg_schedule(schedule);
    if (schedule == "linear") return 1.0 + (cfg - 1.0) * (i + 1) / seq_len;   // Python's order: ((cfg-1)(i+1))/L
    return cfg;
}

CausalPlan make_causal_plan(int seq_len, int batch, int head_steps, bool use_cfg, const ModeFor& mode_for, int max_batch,
                            const AccelOptions& accel) {
    check_batch(batch, max_batch);
    std::vector<int> known;
    for (int i = 0; i < seq_len; ++i) known.push_back(i);
    const std::vector<IterationOptions> opts =
        resolve(accel, seq_len, head_steps, use_cfg, known, seq_len, true, 0, std::vector<bool>(seq_len, true), false);
    const std::vector<int> rows = token_rows(opts, batch);
    CausalPlan p;
    p.batch = batch;
    p.rows = rows[0];
    p.seq_len = seq_len;
    std::set<std::string> modes;
    for (int i = 0; i < seq_len; ++i) {
        const IterationOptions& o = opts[i];
        TokenPlan t;
        t.backbone = i == 0 ? make_call("causal_prefill", {{"batch", rows[0]}})
                            : make_call("causal_step", {{"batch", rows[i]}, {"slot", i % 2}});
        t.rows = rows[i];
        t.guided = o.guided;
        t.head_steps = o.head_steps;
        t.head_mode = mode_for(o.head_steps);
        t.head = head_calls(t.head_mode, o.head_steps, batch, o.guided ? 2 * batch : batch, 1);
        p.head_steps = std::max(p.head_steps, t.head_steps);
        modes.insert(t.head_mode);
        p.tokens.push_back(std::move(t));
    }
    p.head_mode = joint_mode(modes);
    p.prefill = p.tokens[0].backbone;
    for (int s = 0; s < 2; ++s) p.steps[s] = make_call("causal_step", {{"batch", p.rows}, {"slot", s}});
    p.head = p.tokens[0].head;
    return p;
}

CausalPlan make_causal_plan(int seq_len, int batch, int head_steps, bool use_cfg, const std::string& head_mode, int max_batch) {
    return make_causal_plan(seq_len, batch, head_steps, use_cfg, [&](int) { return head_mode; }, max_batch);
}

}  // namespace far
