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

ShapePlan make_plan(int seq_len, bool diffusion, int batch, int num_iter, int head_steps, bool use_cfg,
                    std::string head_mode, int max_batch) {
    check_batch(batch, max_batch);
    ShapePlan p;
    p.batch = batch;
    p.rows = use_cfg ? 2 * batch : batch;
    p.num_iter = num_iter;
    p.head_steps = head_steps;
    p.head_mode = diffusion ? "step" : head_mode;
    for (const Iteration& it : mask_schedule(num_iter, seq_len)) {
        IterationPlan ip{it, {}};
        if (it.n_pred()) {
            const int n = it.n_pred();
            ip.calls.push_back(make_call("backbone", {{"batch", p.rows}, {"n_known", it.n_known()}, {"n_pred", n}}));
            if (p.head_mode == "fused") {
                ip.calls.push_back(make_call(fused_name(head_steps), {{"rows", batch * n}, {"zrows", p.rows * n}}));
            } else {
                const Call step = make_call("head_step", {{"rows", p.rows * n}});
                for (int i = 0; i < head_steps; ++i) ip.calls.push_back(step);
            }
        }
        p.iterations.push_back(std::move(ip));
    }
    return p;
}

// --- FAR-Causal ---------------------------------------------------------------------------

std::vector<Call> CausalPlan::distinct() const {
    std::set<std::string> seen;
    std::vector<Call> out;
    for (const Call* c : {&prefill, &steps[0], &steps[1]})
        if (seen.insert(c->key()).second) out.push_back(*c);
    for (const Call& c : head)
        if (seen.insert(c.key()).second) out.push_back(c);
    return out;
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

CausalPlan make_causal_plan(int seq_len, int batch, int head_steps, bool use_cfg, std::string head_mode, int max_batch) {
    check_batch(batch, max_batch);
    CausalPlan p;
    p.batch = batch;
    p.rows = use_cfg ? 2 * batch : batch;
    p.seq_len = seq_len;
    p.head_steps = head_steps;
    p.head_mode = std::move(head_mode);
    p.prefill = make_call("causal_prefill", {{"batch", p.rows}});
    for (int s = 0; s < 2; ++s) p.steps[s] = make_call("causal_step", {{"batch", p.rows}, {"slot", s}});
    if (p.head_mode == "fused")
        p.head = {make_call(fused_name(head_steps), {{"rows", batch}, {"zrows", p.rows}})};
    else
        p.head.assign(static_cast<size_t>(head_steps), make_call("head_step", {{"rows", p.rows}}));
    return p;
}

}  // namespace far
