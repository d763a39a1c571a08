// The runtime around the sampling loop (pipeline.py): a bundle, its sessions, the checks of
// every option, the run's randomness and the VAE decode; the loop itself is the model's
// variant (variant.h: FAR/MAR's masked loop or FAR-Causal's cached loop), reading the same
// manifest and drawing the same randomness as the Python runtime.
//
// Thread safety: one Runtime may be used from several threads at once. Sessions are
// shared; every buffer and IoBinding lives in a workspace taken from a pool for the
// duration of one call, and each generate keeps its own state there.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bundle.h"
#include "ort_backend.h"
#include "random.h"
#include "variant.h"

namespace far {

class Runtime {
public:
    Runtime(const std::string& root, const LoadOptions& options);
    ~Runtime();
    const Bundle& bundle() const { return bundle_; }
    const ModelInfo& model() const { return bundle_.model; }

    std::vector<int64_t> check_labels(const int64_t* labels, int batch) const;
    int default_k() const { return variant_->default_k(); }   // what K = 0 means: 16, or L for FAR-Causal
    SampleOptions resolved(const SampleOptions& o) const;      // K = 0 replaced by default_k()
    void check(const int64_t* labels, int batch, const SampleOptions& o) const;   // every option error, no work
    int diffusion_steps() const { return variant_->diffusion_steps(); }   // S of the randomness (0 for shortcut heads)
    // The sessions of a checked run's graphs (and the decoder's with `decode`), each created on
    // first use and checked against the model entry (graph_check.h): called before a run
    // allocates anything sized by the model entry.
    void open(int batch, const SampleOptions& o, bool decode);

    // Token latents [B, L, C] after the loop. rnd: the run's randomness (drawn from o.seed
    // when null). progress: called after each iteration (FAR-Causal: each token) with its index.
    void generate_tokens(const int64_t* labels, int batch, const SampleOptions& o, const Randomness* rnd,
                         float* out_tokens, RunStats* stats = nullptr,
                         const std::function<void(int)>& progress = nullptr);
    // Images [B, C, H, W] in [-1, 1] from token latents [B, L, C].
    void decode(const float* tokens, int batch, float* out_images, RunStats* stats = nullptr);
    // uint8 images [B, H, W, 3].
    void generate(const int64_t* labels, int batch, const SampleOptions& o, const Randomness* rnd, uint8_t* out_images,
                  RunStats* stats = nullptr, const std::function<void(int)>& progress = nullptr);

private:
    struct Lease;
    std::unique_ptr<Workspace> acquire();
    void release(std::unique_ptr<Workspace> ws);

    Bundle bundle_;
    OrtBackend backend_;
    std::unique_ptr<Variant> variant_;
    std::mutex pool_mutex_;
    std::vector<std::unique_ptr<Workspace>> pool_;
};

// [B, 3, H, W] in [-1, 1] to [B, H, W, 3] uint8 (images.py's to_uint8).
void to_uint8(const float* images, int batch, int channels, int size, uint8_t* out);

}  // namespace far
