// The sampling loop of a model variant, picked at load from the manifest's model.kind:
// - the masked loop (FAR, MAR; pipeline.py): K iterations over a random order, a backbone
//   call per iteration, then the head on the tokens that leave the mask;
// - the causal loop (FAR-Causal, kind "causal"; variants/causal.py): L steps of one token
//   each in raster order over a KV cache (causal_prefill, then causal_step ping-ponging
//   between two preallocated cache buffers), K = L by construction.
// Both run the same shortcut head (a fused graph, or O head_step calls, CFG inside); what
// surrounds the loop (labels, options, randomness, workspaces, decode) is Runtime's.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bundle.h"
#include "ort_backend.h"
#include "plan.h"
#include "random.h"

namespace far {

struct SampleOptions {
    int K = 0;                        // 0: the variant's default (16 for FAR/MAR, L for FAR-Causal)
    int O = 8;
    double cfg = 1.0;
    std::string cfg_schedule = "linear";
    double temperature = 1.0;
    uint64_t seed = 0;
    std::string head = "auto";        // auto, fused, step
    // The acceleration options (accel.h; far_runtime/ACCEL.md), off when absent.
    std::optional<std::string> head_schedule;   // "A:B" or "v0,v1,..."
    std::optional<std::string> cfg_interval;    // "LO:HI"
    std::optional<std::string> cfg_cache;       // "W:N" (FAR, MAR)
};

struct RunStats {
    double total_s = 0.0;             // the whole call
    double ort_s = 0.0;               // inside ONNX Runtime's Run
    int calls = 0;                    // graph calls
};

// One run as a loop sees it: K already resolved, labels, randomness and options checked.
struct LoopRun {
    Workspace& ws;
    const std::vector<int64_t>& labels;   // [B]
    const SampleOptions& o;
    const Randomness& rnd;
    RunStats& stats;
    const std::function<void(int)>& progress;   // after each iteration / token, with its index
};

class Variant {
public:
    virtual ~Variant() = default;
    virtual int default_k() const = 0;          // the K that SampleOptions::K = 0 stands for
    virtual int diffusion_steps() const { return 0; }   // S of the randomness (MAR's DDPM steps)
    // Every option the loop's plan depends on (K, O, head, batch, graphs), refused in one
    // sentence as the Python runtime's plan() refuses it; no work.
    virtual void check(int batch, const SampleOptions& o) const = 0;
    // The graphs a checked run of these options calls (its plan's), whose sessions the
    // runtime opens, and checks against the model entry, before it allocates the run.
    virtual std::vector<std::string> graphs(int batch, const SampleOptions& o) const = 0;
    // Token latents [B, L, C] into out.
    virtual void sample(LoopRun& run, float* out) const = 0;
};

// The loop of the bundle's model (its model.kind).
std::unique_ptr<Variant> make_variant(const Bundle& bundle);
std::unique_ptr<Variant> make_masked_loop(const Bundle& bundle);
std::unique_ptr<Variant> make_causal_loop(const Bundle& bundle);

// The distinct graph names of a plan's calls.
std::vector<std::string> graph_names(const std::vector<Call>& calls);

// --- shared by the loops --------------------------------------------------------------------

// "fused" or "step" (pipeline.py's head_mode): which head graphs serve O steps.
std::string head_mode(const Bundle& bundle, int O, const std::string& head);
// The head modes of a run (pipeline.py's plan): without a head schedule, the mode of O for
// every iteration (checked now); with one, `head` checked now and the mode chosen per
// scheduled O as the plan asks for it.
ModeFor head_modes(const Bundle& bundle, const SampleOptions& o, const AccelOptions& accel);

// The rows' labels [rows] in the workspace's shared "labels" buffer: the batch's classes,
// then (with CFG) as many unconditional twins (label num_classes).
int64_t* row_labels(Workspace& ws, const std::vector<int64_t>& labels, int rows, int num_classes);

// The shortcut head on n tokens (pipeline.py's fused call or _shortcut_steps) through calls[0]
// (fused) or calls[0..O-1] (step): x [n, C] holds
// the initial noise already scaled by the temperature and receives the tokens. The head's z
// ([rows, D], rows = n or 2n with CFG, cond rows first) is already in its bound buffer.
void shortcut_head(Workspace& ws, const Call* calls, const std::string& mode, int O, std::vector<float>& x,
                   size_t n, int C, bool use_cfg, float cfg, RunStats& stats);

}  // namespace far
