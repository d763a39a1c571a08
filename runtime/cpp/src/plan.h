// The per-iteration shape schedule and the shape plans (schedule.py + plan.py, and
// variants/causal.py: CausalPlan): every graph call of a generate and its dims, known
// before the loop starts.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "accel.h"

namespace far {

constexpr int kMaxK = 256;
constexpr int kMaxHeadSteps = 128;

struct Iteration {
    int index, before, after, mask_len, seq_len;
    int n_known() const { return seq_len - before; }
    int n_pred() const { return before - after; }
};

struct Call {
    std::string graph;
    std::vector<std::pair<std::string, int>> dims;   // sorted by name: the shape key
    std::string key() const;
    int dim(const std::string& name) const;
};

struct IterationPlan {
    Iteration it;
    std::vector<Call> calls;    // backbone, then the head call(s); empty when n_pred == 0
    int head_steps = 0;         // O (FAR) or DDPM steps (MAR) of this iteration
    std::string head_mode;      // "fused" or "step"
    int rows = 0;               // backbone rows: 2 x batch when the unconditional rows run, else batch
    int n_out = 0;              // positions the backbone returns z for: n_pred, every masked one on a refresh
    bool guided = false;        // classifier-free guidance on this iteration
    Uncond uncond = Uncond::None;
};

struct ShapePlan {
    int batch = 0, rows = 0, num_iter = 0, head_steps = 0;   // rows, head_steps: the most of any iteration
    std::string head_mode;      // "fused" or "step" ("mixed" when a head schedule needs both)
    std::vector<IterationPlan> iterations;
    std::vector<Call> distinct() const;
};

// The head mode of O head steps ("fused" or "step"): one for every O, or chosen per O under
// a head schedule (variant.h's head_mode).
using ModeFor = std::function<std::string(int)>;

void check_k(long long k);
// 1..max_batch (max_batch 0: no upper bound), in plan.py's check_batch sentence, for every variant.
void check_batch(int batch, int max_batch);
bool valid_head_steps(long long o);
void check_head_steps(long long o, const std::string& what = "O (head steps)");
std::vector<Iteration> mask_schedule(int num_iter, int seq_len);
double cfg_at(const Iteration& it, double cfg, const std::string& schedule);
void check_cfg_schedule(const std::string& schedule);

std::string fused_name(int steps);
Call make_call(const std::string& graph, std::vector<std::pair<std::string, int>> dims);

// The head calls predicting n tokens for each of batch samples from zrows * n conditions
// (heads.py's head_calls).
std::vector<Call> head_calls(const std::string& mode, int steps, int batch, int zrows, int n);

// max_batch <= 0 means no limit. The acceleration options (accel.h) give each iteration its
// head steps (default head_steps; MAR: at most max_steps), guidance and backbone rows.
ShapePlan make_plan(int seq_len, bool diffusion, int batch, int num_iter, int head_steps, bool use_cfg,
                    const ModeFor& mode_for, int max_batch, const AccelOptions& accel = {}, int max_steps = 0);
ShapePlan make_plan(int seq_len, bool diffusion, int batch, int num_iter, int head_steps, bool use_cfg,
                    const std::string& head_mode, int max_batch);

// --- FAR-Causal: one token per step in raster order, so K = L -------------------------------

// variants/causal.py's TokenPlan: the calls that make token i.
struct TokenPlan {
    Call backbone;              // the prefill (i = 0) or causal_step slot i % 2
    std::vector<Call> head;
    int rows = 0;               // backbone rows (2 x batch while the unconditional rows run)
    bool guided = false;
    int head_steps = 0;
    std::string head_mode;
};

// variants/causal.py's CausalPlan (mode "cache"): the prefill, then token i >= 1 runs
// steps[i % 2] (the two slots of causal_step, each reading the cache the other wrote), then
// its head calls. Without the options every step has the same shapes; a guidance interval
// drops the unconditional rows after the last guided token (tokens[i].rows).
struct CausalPlan {
    int batch = 0, rows = 0, seq_len = 0, head_steps = 0;   // rows: the prefill's; head_steps: the most
    std::string head_mode;      // "fused" or "step" ("mixed" under a head schedule)
    Call prefill;
    Call steps[2];              // the two slots at the prefill's rows
    std::vector<Call> head;     // the head calls of token 0
    std::vector<TokenPlan> tokens;
    std::vector<Call> distinct() const;
};

// Backbone rows per token (variants/causal.py's token_rows, mode "cache"): 2 x batch up to
// and including the last guided token, then batch.
std::vector<int> token_rows(const std::vector<IterationOptions>& opts, int batch);

// K left out (0) or given as L; anything else is one sentence (variants/causal.py: Causal.check_k).
void check_causal_k(long long k, int seq_len);
// The linear ramp 1 + (cfg - 1)(i + 1) / L, or cfg (variants/causal.py's cfg_at).
double causal_cfg_at(int i, int seq_len, double cfg, const std::string& schedule);
// Sequence position of token i - 1 when it is fed to produce z_i (i >= 1): P + i - 1.
inline int step_position(int i, int class_tokens) { return class_tokens + i - 1; }
CausalPlan make_causal_plan(int seq_len, int batch, int head_steps, bool use_cfg, const ModeFor& mode_for, int max_batch,
                            const AccelOptions& accel = {});
CausalPlan make_causal_plan(int seq_len, int batch, int head_steps, bool use_cfg, const std::string& head_mode, int max_batch);

}  // namespace far
