// A bundle on disk: manifest.json plus the graphs it names, checked before use
// (the C++ twin of far_runtime/bundle.py, reading the same manifest).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace far {

struct Dim {
    int value = -1;        // static size, or -1 when symbolic
    std::string symbol;    // batch, n_known, n_pred, rows, zrows
};

struct TensorDesc {
    std::string name;
    std::string dtype;     // numpy dtype name: float32, int64
    std::vector<Dim> dims;
};

struct GraphInfo {
    std::string name;
    std::string path;      // root joined with the manifest's "file"
    std::vector<TensorDesc> inputs, outputs;
    const TensorDesc& input(const std::string& n) const;
    const TensorDesc& output(const std::string& n) const;
};

struct ModelInfo {
    int seq_len = 0, token_dim = 0, cond_dim = 0, num_classes = 0;
    std::string head_kind;           // "shortcut" (FAR) or "diffusion" (MAR)
    int diffusion_steps = 0;
    int image_size = 0, image_channels = 0;
    bool diffusion() const { return head_kind == "diffusion"; }
};

struct Bundle {
    std::string root;
    ModelInfo model;
    int max_batch = 0;
    std::vector<int> head_steps;     // O values with a fused head graph
    std::map<std::string, GraphInfo> graphs;
    bool has(const std::string& graph) const { return graphs.count(graph) != 0; }
    const GraphInfo& graph(const std::string& name) const;
    std::string head_steps_repr() const;   // "[1, 2, 8]", as Python prints the list
};

// Read and check a bundle: format and version, every path inside the bundle folder, every
// file present with its recorded sha256. Throws far::Error with one sentence.
Bundle load_bundle(const std::string& root, bool check_hashes = true);

std::string sha256_file(const std::string& path);   // lowercase hex
std::string path_join(const std::string& a, const std::string& b);   // os.path.join

}  // namespace far
