// The training-free sampling accelerations of issue #24 (far_runtime/accel.py; the exact
// rules are far_runtime/ACCEL.md): three options of the loops, each one string, off when
// absent:
// - head_schedule "A:B" or "v0,v1,...": the head steps of each iteration (FAR, FAR-Causal: O;
//   MAR: DDPM steps through MAR's respacing);
// - cfg_interval "LO:HI": guidance only on iterations s with LO*K <= s < HI*K;
// - cfg_cache "W:N" (FAR, MAR): LazyMAR's condition cache, the unconditional rows run on
//   refresh iterations only, their z difference reused in between.
// parse_accel checks the syntax (accel.py's sentences); resolve decides, per iteration, its
// head steps, its guidance and what its unconditional rows do, as accel.py's resolve does.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace far {

struct AccelOptions {
    bool head_on = false;
    bool head_list = false;           // "v0,v1,...": one value per iteration; else "A:B"
    std::vector<long long> head;      // A, B (or the list)
    bool interval_on = false;
    double lo = 0.0, hi = 1.0;
    bool cache_on = false;
    long long w = 0, n = 1;
    bool off() const { return !head_on && !interval_on && !cache_on; }
};

// The three options' syntax checked, in accel.py's order and sentences (std::nullopt: off;
// an empty string is a value, refused as Python refuses it).
AccelOptions parse_accel(const std::optional<std::string>& head_schedule, const std::optional<std::string>& cfg_interval,
                         const std::optional<std::string>& cfg_cache);

// What the unconditional rows of an iteration do (accel.py's IterationOptions.uncond).
enum class Uncond { None, Computed, Refresh, Reuse };

struct IterationOptions {
    int head_steps = 0;
    bool guided = false;
    Uncond uncond = Uncond::None;
};

// One iteration's head steps: `default_steps` without a schedule, else the list's value or
// the A:B line at `n_known` of `seq_len` (a power of two for shortcut heads, floor for MAR).
int head_steps_at(const AccelOptions& a, int default_steps, int n_known, int seq_len, int index, bool power_of_two);

// Per iteration (FAR-Causal: per token): head steps, guidance, the unconditional rows.
// known[s]: tokens known when iteration s starts; runs[s]: it predicts at least one token.
// Refused in one sentence: a list of another length than `count`, values the head cannot take
// (shortcut: powers of two <= 128; MAR: 1..max_steps), the cache where !cache_allowed.
std::vector<IterationOptions> resolve(const AccelOptions& a, int count, int default_steps, bool use_cfg,
                                      const std::vector<int>& known, int seq_len, bool shortcut, int max_steps,
                                      const std::vector<bool>& runs, bool cache_allowed);

}  // namespace far
