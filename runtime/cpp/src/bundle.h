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
    bool operator==(const Dim& o) const { return value == o.value && symbol == o.symbol; }
};

struct TensorDesc {
    std::string name;
    std::string dtype;     // numpy dtype name: float32, int64
    std::vector<Dim> dims;
    bool operator==(const TensorDesc& o) const { return name == o.name && dtype == o.dtype && dims == o.dims; }
    bool operator!=(const TensorDesc& o) const { return !(*this == o); }
};

struct GraphInfo {
    std::string name;
    std::string path;      // the manifest's "file", resolved inside the bundle folder
    std::string file;      // the manifest's "file" as written
    std::map<std::string, std::string> files;   // every hashed file of the graph -> its sha256
    std::vector<TensorDesc> inputs, outputs;
    const TensorDesc& input(const std::string& n) const;
    const TensorDesc& output(const std::string& n) const;
};

struct ModelInfo {
    int seq_len = 0, token_dim = 0, cond_dim = 0, num_classes = 0;
    std::string head_kind;           // "shortcut" (FAR) or "diffusion" (MAR)
    int diffusion_steps = 0;
    int image_size = 0, image_channels = 0;
    std::string timestep_respacing;  // MAR's respacing ("ddim25", "10,15,20"), empty for the plain count
    std::string kind;                // "" (FAR/MAR: the masked loop) or "causal" (FAR-Causal)
    // FAR-Causal only (variants/causal.py): P class slots, the cache's T = P + L - 1 positions,
    // and the backbone's depth, heads and head_dim (heads x head_dim = cond_dim).
    int class_tokens = 0, context = 0, depth = 0, heads = 0, head_dim = 0;
    bool diffusion() const { return head_kind == "diffusion"; }
    bool causal() const { return kind == "causal"; }
};

struct Bundle {
    std::string root;
    ModelInfo model;
    int max_batch = 0;
    std::vector<int> head_steps;     // O values with a fused head graph
    std::map<std::string, GraphInfo> graphs;
    // The bundle digest (README "Bundle digest"; bundle.py's digest_of): sha256 over the lines
    // "<sha256>  <name>\n" of manifest.json and every file the manifest names, by UTF-8 name.
    std::string digest;
    bool has(const std::string& graph) const { return graphs.count(graph) != 0; }
    const GraphInfo& graph(const std::string& name) const;
    std::string head_steps_repr() const;   // "[1, 2, 8]", as Python prints the list
    // The bytes of one file of a graph (its "file" when fname is empty), read once and
    // checked against the manifest's sha256, so what a session runs is what was checked.
    std::vector<char> read_verified(const std::string& graph, const std::string& fname = "") const;
};

// Read and check a bundle: format and version, every path inside the bundle folder, every
// file present with its recorded sha256; with expected_digest (64 hex digits), the bundle
// digest too, before any graph file is hashed. Throws far::Error with one sentence.
Bundle load_bundle(const std::string& root, bool check_hashes = true, const std::string& expected_digest = "");
// An expected digest as a user gave it: 64 hex digits (either case), lower-cased; else one
// sentence naming ``option`` (bundle.py's check_digest_text).
std::string check_digest_text(const std::string& text, const std::string& option = "digest");

std::string sha256_file(const std::string& path);   // lowercase hex
std::string path_join(const std::string& a, const std::string& b);   // os.path.join
std::string realpath_py(const std::string& p);   // os.path.realpath: symlinks followed, ".." lexical, missing tails kept

}  // namespace far
