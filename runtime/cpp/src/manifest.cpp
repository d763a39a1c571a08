// The checks of bundle.py's check_structure (and variants/causal.py's check_model), in its
// order and with its sentences; every integer field of the model entry is bounded
// (kModelFields, kCausalFields), so every size derived from them is small enough to multiply.
#include "manifest.h"

#include <climits>
#include <regex>
#include <set>

#include "errors.h"
#include "specs.h"

namespace far {
namespace {

constexpr const char* kFormat = "far-export-bundle";
constexpr int kFormatVersion = 1;

[[noreturn]] void bad(const std::string& mpath, const std::string& what) {
    throw Error(Code::Bundle, mpath + " is not a usable bundle manifest: " + what + "; rebuild the bundle.");
}

// model.<key> as an int in [lo, hi], or the sentence "model.<key> is <repr>, not an integer in lo..hi".
int bounded(const Json& model, const FieldBound& f, const std::string& mpath) {
    const Json* v = find(model, f.key);
    long long out = 0;
    if (!v || !integer_in(*v, f.lo, f.hi, out))
        bad(mpath, std::string("model.") + f.key + " is " + (v ? shown(*v, 40) : "None") + ", not an integer in " +
                       std::to_string(f.lo) + ".." + std::to_string(f.hi));
    return static_cast<int>(out);
}

std::vector<Dim> parse_dims(const Json& dims, const std::string& mpath, const std::string& what) {
    std::vector<Dim> out;
    if (!dims.is_array()) bad(mpath, what + " has no dims");
    for (const Json& d : dims) {
        Dim dim;
        long long v = 0;
        if (integer_in(d, 0, INT_MAX, v)) dim.value = static_cast<int>(v);
        else if (d.is_string()) dim.symbol = d.get<std::string>();
        else bad(mpath, what + " has a dim that is neither a size nor a name");
        out.push_back(dim);
    }
    return out;
}

std::vector<TensorDesc> parse_tensors(const Json* list, const std::string& mpath, const std::string& what) {
    std::vector<TensorDesc> out;
    if (!list || !list->is_array()) bad(mpath, what + " is missing");
    for (const Json& t : *list) {
        const Json* name = find(t, "name");
        const Json* dtype = find(t, "dtype");
        const Json* dims = find(t, "dims");
        if (!name || !name->is_string() || !dtype || !dtype->is_string() || !dims)
            bad(mpath, what + " has a tensor without name, dtype and dims");
        const std::string n = name->get<std::string>();
        out.push_back({n, dtype->get<std::string>(), parse_dims(*dims, mpath, what + " " + py_repr(n))});
    }
    return out;
}

// bundle.py's check_model_kind: model.kind absent (or null: FAR/MAR) or "causal", whose
// cache shapes must fit together; the same sentences in the same order.
void check_model_kind(const Json& model, ModelInfo& mi, const std::string& mpath) {
    const Json* kind = find(model, "kind");
    if (!kind || kind->is_null()) return;
    if (!kind->is_string() || kind->get<std::string>() != "causal")
        bad(mpath, "model.kind is " + shown(*kind, 40) + ", not 'causal' (or absent for FAR/MAR)");
    mi.kind = "causal";
    int* fields[] = {&mi.class_tokens, &mi.context, &mi.depth, &mi.heads, &mi.head_dim};
    for (size_t i = 0; i < std::size(kCausalFields); ++i) *fields[i] = bounded(model, kCausalFields[i], mpath);
    const long long context = static_cast<long long>(mi.class_tokens) + mi.seq_len - 1;
    if (mi.context != context)
        bad(mpath, "model.context is " + std::to_string(mi.context) + ", not class_tokens + seq_len - 1 = " +
                       std::to_string(context));
    const long long heads_x_dim = static_cast<long long>(mi.heads) * mi.head_dim;
    if (heads_x_dim != mi.cond_dim)
        bad(mpath, "model.heads x model.head_dim is " + std::to_string(heads_x_dim) + ", not model.cond_dim " +
                       std::to_string(mi.cond_dim));
    if (mi.head_kind != "shortcut")
        bad(mpath, "a causal model has head_kind " + py_repr(mi.head_kind) + ", not 'shortcut'");
}

void parse_model(const Json& m, ModelInfo& mi, const std::string& mpath) {
    const Json* model = find(m, "model");
    if (!model || !model->is_object()) bad(mpath, "it has no 'model' object");
    int* fields[] = {&mi.seq_len, &mi.token_dim, &mi.cond_dim, &mi.num_classes, &mi.diffusion_steps, &mi.image_size,
                     &mi.image_channels};
    for (size_t i = 0; i < std::size(kModelFields); ++i) *fields[i] = bounded(*model, kModelFields[i], mpath);
    const Json* kind = find(*model, "head_kind");
    if (!kind || !kind->is_string() || (*kind != "shortcut" && *kind != "diffusion"))
        bad(mpath, "model.head_kind is " + (kind ? shown(*kind, 40) : std::string("None")) + ", not 'shortcut' or 'diffusion'");
    mi.head_kind = kind->get<std::string>();
    if (mi.diffusion() && mi.diffusion_steps < 1) bad(mpath, "a diffusion model has no diffusion_steps");
    if (const Json* rs = find(*model, "timestep_respacing")) {
        if (!rs->is_string() || rs->get<std::string>().size() > 256)      // bundle.py's MAX_RESPACING_CHARS
            bad(mpath, "model.timestep_respacing is not a string of at most 256 characters");
        mi.timestep_respacing = rs->get<std::string>();
    }
    check_model_kind(*model, mi, mpath);
}

}  // namespace

Manifest parse_manifest(const std::string& text, const std::string& root, const std::string& mpath) {
    if (text.size() > kMaxManifestBytes) throw Error(Code::Bundle, mpath + " is too large to be a bundle manifest.");
    Manifest out;
    try {
        out.doc = parse_json(text);
    } catch (const JsonError& e) {
        throw Error(Code::Bundle, mpath + " is not valid JSON (" + e.message + ").");
    } catch (const JsonTooLarge&) {
        throw Error(Code::Bundle, mpath + " is too large to be a bundle manifest.");
    }
    const Json& m = out.doc;
    if (!m.is_object())
        throw Error(Code::Bundle, mpath + " is not a far-export bundle manifest (a JSON " + py_type(m) + ", not an object).");
    const Json* fmt = find(m, "format");
    if (!fmt || !fmt->is_string() || *fmt != kFormat) throw Error(Code::Bundle, mpath + " is not a far-export bundle manifest.");
    const Json* ver = find(m, "format_version");
    if (!ver || !ver->is_number() || ver->get<double>() != kFormatVersion)     // Python's != : 1.0 == 1
        throw Error(Code::Bundle, mpath + " has bundle format version " + (ver ? shown(*ver, 40) : "None") +
                                      ", but this runtime reads version " + std::to_string(kFormatVersion) +
                                      "; rebuild the bundle with this toolkit.");
    Bundle& b = out.bundle;
    b.root = root;
    parse_model(m, b.model, mpath);
    const Json* mb = find(m, "max_batch");
    long long max_batch = 0;
    if (!mb || !integer_in(*mb, 1, kMaxBatchLimit, max_batch))
        bad(mpath, "max_batch is " + (mb ? shown(*mb, 40) : std::string("None")) + ", not an integer in 1.." +
                       std::to_string(kMaxBatchLimit));
    b.max_batch = static_cast<int>(max_batch);
    const Json* hs = find(m, "head_steps");
    const auto bad_steps = [&] { bad(mpath, "head_steps is " + (hs ? shown(*hs, 60) : std::string("None")) + ", not a list of powers of two in 1..128"); };
    if (!hs || !hs->is_array() || hs->size() > 8) bad_steps();     // bundle.py: at most 8, each a valid O
    for (const Json& o : *hs) {
        long long v = 0;
        if (!integer_in(o, 1, 128, v) || (v & (v - 1))) bad_steps();
        b.head_steps.push_back(static_cast<int>(v));
    }
    const Json* graphs = find(m, "graphs");
    if (!graphs || !graphs->is_object() || graphs->empty()) bad(mpath, "it has no 'graphs' object naming at least one graph");
    static const std::regex sha_re("^[0-9a-f]{64}$");
    for (const auto& [name, g] : graphs->items()) {
        const Json* files = find(g, "files");
        if (!files || !files->is_object() || files->empty()) bad(mpath, "graph " + py_repr(name) + " has no 'files' object");
        for (const auto& [fname, digest] : files->items())
            if (!digest.is_string() || !std::regex_match(digest.get_ref<const std::string&>(), sha_re))
                bad(mpath, "graph " + py_repr(name) + " lists " + py_repr(fname) + " without a sha256");
        const Json* file = find(g, "file");
        if (!file || !file->is_string() || !find(*files, file->get<std::string>()))
            throw Error(Code::Bundle, mpath + " names " + (file ? repr(*file) : std::string("None")) + " as the file of graph " +
                                          py_repr(name) + ", but that file is not among the graph's hashed files; "
                                          "refusing an unverified graph.");
        GraphInfo gi;
        gi.name = name;
        gi.file = file->get<std::string>();
        for (const auto& [fname, digest] : files->items()) gi.files[fname] = digest.get<std::string>();
        b.graphs.emplace(name, std::move(gi));
    }
    if (find(*graphs, "vae_decoder") && b.model.image_channels != 3)
        bad(mpath, "model.image_channels is " + std::to_string(b.model.image_channels) +
                       ", but the vae_decoder's images are written as RGB, which needs 3");
    return out;
}

void attach_specs(Manifest& man, const std::string& mpath) {
    Bundle& b = man.bundle;
    // Only the fused head graphs the manifest has: a long head_steps list makes no specs.
    std::set<int> fused;
    for (int o : b.head_steps)
        if (b.has("head_fused_o" + std::to_string(o))) fused.insert(o);
    const auto expected = component_specs(b.model, {fused.begin(), fused.end()});
    const Json& graphs = *find(man.doc, "graphs");
    for (const auto& [name, g] : graphs.items()) {
        auto want = expected.find(name);
        if (want == expected.end()) continue;       // a graph this runtime never runs
        GraphInfo& gi = b.graphs.at(name);
        gi.inputs = want->second.inputs;
        gi.outputs = want->second.outputs;
        if (const Json* spec = find(g, "spec")) {
            if (!spec->is_object()) bad(mpath, "graph " + py_repr(name) + " has a 'spec' that is not an object");
            if (parse_tensors(find(*spec, "inputs"), mpath, "the inputs of graph " + py_repr(name)) != gi.inputs ||
                parse_tensors(find(*spec, "outputs"), mpath, "the outputs of graph " + py_repr(name)) != gi.outputs)
                bad(mpath, "the spec of graph " + py_repr(name) + " differs from the one its model entry implies");
        }
    }
}

}  // namespace far
