// manifest.json as text: its structure, its model entry (every field bounded) and its graphs,
// checked as far_runtime/bundle.py's check_structure checks them, with nothing read from
// disk. bundle.cpp reads the file and checks the files it names; the fuzz target
// (fuzz/fuzz_manifest.cpp) feeds this any bytes.
#pragma once

#include <string>

#include "bundle.h"
#include "json.h"

namespace far {

constexpr size_t kMaxManifestBytes = 64u << 20;
constexpr int kMaxBatchLimit = 1024;

// The largest value of every integer field of a model entry (and the smallest): what no real
// model comes near, and small enough that products of them are computed without overflow.
struct FieldBound {
    const char* key;
    int lo, hi;
};
constexpr FieldBound kModelFields[] = {
    {"seq_len", 1, 65536}, {"token_dim", 1, 4096}, {"cond_dim", 1, 65536}, {"num_classes", 1, 1000000},
    {"diffusion_steps", 0, 1000}, {"image_size", 0, 8192}, {"image_channels", 0, 16},
};
constexpr FieldBound kCausalFields[] = {   // variants/causal.py's MODEL_INTS; context = P + L - 1 at most
    {"class_tokens", 1, 4096}, {"context", 1, 4096 + 65536 - 1}, {"depth", 1, 1024}, {"heads", 1, 1024},
    {"head_dim", 1, 4096},
};

struct Manifest {
    Json doc;
    Bundle bundle;    // root, model, max_batch, head_steps, graphs (name, file, files): no tensors yet
};

// Parse and check manifest text (mpath: the path sentences name). Throws far::Error(Bundle)
// with one sentence.
Manifest parse_manifest(const std::string& text, const std::string& root, const std::string& mpath);

// Every graph's tensors, from the model entry (specs.cpp, as Python rebuilds them); a graph's
// own "spec" entry, which no hash covers, may only repeat them.
void attach_specs(Manifest& m, const std::string& mpath);

}  // namespace far
