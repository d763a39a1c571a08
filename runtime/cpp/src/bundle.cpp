// Bundle loading: the same checks, in the same order and with the same sentences, as
// far_runtime/bundle.py. A bundle is untrusted input: a manifest of the wrong structure,
// a path that resolves outside the bundle folder (absolute, "..", or a symlink leading
// out), a graph whose "file" is not among its hashed "files", and a file whose sha256
// differs from the manifest are all refused before any graph is opened.
#include "bundle.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <sstream>

#include "errors.h"
#include "json.h"
#include "specs.h"

namespace far {
namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kFormat = "far-export-bundle";
constexpr int kFormatVersion = 1;
constexpr int kMaxBatchLimit = 1024;
constexpr size_t kMaxManifestBytes = 64u << 20;

bool is_dir(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode); }
bool is_file(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode); }

[[noreturn]] void bad(const std::string& mpath, const std::string& what) {
    throw Error(Code::Bundle, mpath + " is not a usable bundle manifest: " + what + "; rebuild the bundle.");
}

int get_int(const Json& obj, const std::string& key, int lo, const std::string& mpath, const std::string& where) {
    const Json* v = obj.find(key);
    if (!v || !v->is_integer() || v->number() < lo || v->number() > INT_MAX)
        bad(mpath, where + key + " is " + (v ? v->repr() : "None") + ", not an integer >= " + std::to_string(lo));
    return static_cast<int>(v->number());
}

std::vector<Dim> parse_dims(const Json& dims, const std::string& mpath, const std::string& what) {
    std::vector<Dim> out;
    if (!dims.is_array()) bad(mpath, what + " has no dims");
    for (const Json& d : dims.items()) {
        Dim dim;
        if (d.is_integer() && d.number() >= 0 && d.number() <= INT_MAX) dim.value = static_cast<int>(d.number());
        else if (d.is_string()) dim.symbol = d.str();
        else bad(mpath, what + " has a dim that is neither a size nor a name");
        out.push_back(dim);
    }
    return out;
}

std::vector<TensorDesc> parse_tensors(const Json* list, const std::string& mpath, const std::string& what) {
    std::vector<TensorDesc> out;
    if (!list || !list->is_array()) bad(mpath, what + " is missing");
    for (const Json& t : list->items()) {
        const Json* name = t.find("name");
        const Json* dtype = t.find("dtype");
        const Json* dims = t.find("dims");
        if (!name || !name->is_string() || !dtype || !dtype->is_string() || !dims)
            bad(mpath, what + " has a tensor without name, dtype and dims");
        out.push_back({name->str(), dtype->str(), parse_dims(*dims, mpath, what + " " + py_repr(name->str()))});
    }
    return out;
}

std::string read_manifest(const std::string& mpath) {
    std::ifstream f(mpath, std::ios::binary);
    if (!f) throw Error(Code::Bundle, mpath + " cannot be read (Permission denied).");
    std::string text;
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    if (size < 0 || static_cast<size_t>(size) > kMaxManifestBytes)
        throw Error(Code::Bundle, mpath + " is too large to be a bundle manifest.");
    text.resize(static_cast<size_t>(size));
    f.seekg(0);
    f.read(&text[0], size);
    return text;
}

// bundle.py's check_model_kind: model.kind absent (or null: FAR/MAR) or "causal", whose
// cache shapes must fit together; the same sentences in the same order.
void check_model_kind(const Json& model, ModelInfo& mi, const std::string& mpath) {
    const Json* kind = model.find("kind");
    if (!kind || kind->is_null()) return;
    if (!kind->is_string() || kind->str() != "causal")
        bad(mpath, "model.kind is " + kind->repr() + ", not 'causal' (or absent for FAR/MAR)");
    mi.kind = kind->str();
    mi.class_tokens = get_int(model, "class_tokens", 1, mpath, "model.");
    mi.context = get_int(model, "context", 1, mpath, "model.");
    mi.depth = get_int(model, "depth", 1, mpath, "model.");
    mi.heads = get_int(model, "heads", 1, mpath, "model.");
    mi.head_dim = get_int(model, "head_dim", 1, mpath, "model.");
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

}  // namespace

std::string path_join(const std::string& a, const std::string& b) {
    if (!b.empty() && b[0] == '/') return b;
    if (a.empty() || a.back() == '/') return a + b;
    return a + "/" + b;
}

// posixpath.realpath(strict=False): walk the components, following symlinks and taking
// ".." lexically, so "missing/../../x" resolves (and is judged) exactly as Python does.
static std::string join_real(std::string path, const std::string& rest, int depth) {
    if (depth > 40) return path_join(path, rest);       // a symlink loop: Python leaves it unresolved too
    size_t pos = 0;
    while (pos <= rest.size()) {
        size_t end = rest.find('/', pos);
        if (end == std::string::npos) end = rest.size();
        const std::string name = rest.substr(pos, end - pos);
        pos = end + 1;
        if (name.empty() || name == ".") continue;
        if (name == "..") {
            const size_t slash = path.find_last_of('/');
            path = slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
            continue;
        }
        const std::string next = path_join(path, name);
        struct stat st{};
        if (lstat(next.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) { path = next; continue; }
        std::vector<char> buf(PATH_MAX + 1);
        const ssize_t n = readlink(next.c_str(), buf.data(), PATH_MAX);
        if (n < 0) { path = next; continue; }
        const std::string target(buf.data(), static_cast<size_t>(n));
        path = join_real(target[0] == '/' ? "/" : path, target, depth + 1);
    }
    return path;
}

std::string realpath_py(const std::string& p) {
    std::string start = "/";
    if (p.empty() || p[0] != '/') {
        std::vector<char> cwd(PATH_MAX + 1);
        if (getcwd(cwd.data(), cwd.size())) start = join_real("/", cwd.data(), 0);
    }
    return join_real(start, p, 0);
}

namespace {
// One sha256 digest: start it, feed it, read it as lowercase hex.
class Sha256 {
public:
    Sha256() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
        if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) != 1)
            throw Error(Code::Internal, "OpenSSL could not start a sha256 digest.");
    }
    void update(const unsigned char* data, size_t size) { EVP_DigestUpdate(ctx_.get(), data, size); }
    std::string hex() {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        EVP_DigestFinal_ex(ctx_.get(), md, &len);
        static const char* digits = "0123456789abcdef";
        std::string out;
        for (unsigned i = 0; i < len; ++i) { out += digits[md[i] >> 4]; out += digits[md[i] & 15]; }
        return out;
    }
private:
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};
}  // namespace

static std::string sha256_hex(const unsigned char* data, size_t size) {
    Sha256 digest;
    digest.update(data, size);
    return digest.hex();
}

std::string sha256_file(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) throw Error(Code::Bundle, "Graph file " + path + " cannot be read.");
    Sha256 digest;
    std::vector<unsigned char> buf(1 << 20);
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) digest.update(buf.data(), n);
    if (std::ferror(f.get())) throw Error(Code::Bundle, "Graph file " + path + " cannot be read.");
    return digest.hex();
}

const TensorDesc& GraphInfo::input(const std::string& n) const {
    for (const auto& t : inputs) if (t.name == n) return t;
    throw Error(Code::Bundle, "Graph '" + name + "' of the bundle has no input '" + n + "'; rebuild the bundle.");
}

const TensorDesc& GraphInfo::output(const std::string& n) const {
    for (const auto& t : outputs) if (t.name == n) return t;
    throw Error(Code::Bundle, "Graph '" + name + "' of the bundle has no output '" + n + "'; rebuild the bundle.");
}

const GraphInfo& Bundle::graph(const std::string& name) const {
    auto it = graphs.find(name);
    if (it == graphs.end()) throw Error(Code::Input, "The bundle has no '" + name + "' graph.");
    return it->second;
}

// root/name with symlinks followed, refused unless it stays inside root (bundle.py's inside()).
static std::string inside(const std::string& root, const std::string& name) {
    if (name.empty() || name.find('\0') != std::string::npos)
        throw Error(Code::Bundle, "The bundle manifest names a graph file " + py_repr(name) + ", which is not a file name.");
    const std::string base = realpath_py(root);
    const std::string real = realpath_py(path_join(base, name));
    const bool within = real.size() > base.size() && real.compare(0, base.size(), base) == 0 &&
                        (base == "/" || real[base.size()] == '/');
    if (name[0] == '/' || !within)
        throw Error(Code::Bundle, "The bundle names " + py_repr(name) + ", which lies outside the bundle folder " +
                                      root + "; refusing to read it.");
    return real;
}

std::vector<char> Bundle::read_verified(const std::string& graph_name, const std::string& fname) const {
    const GraphInfo& g = graph(graph_name);
    const std::string f = fname.empty() ? g.file : fname;
    auto digest = g.files.find(f);
    if (digest == g.files.end())
        throw Error(Code::Bundle, "Graph '" + graph_name + "' of the bundle has no hashed file " + py_repr(f) + "; rebuild the bundle.");
    const std::string p = inside(root, f);
    std::ifstream in(p, std::ios::binary);
    std::vector<char> data;
    if (in) data.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (!in && !in.eof()) throw Error(Code::Bundle, "Graph file " + p + " named in the manifest cannot be read.");
    if (sha256_hex(reinterpret_cast<const unsigned char*>(data.data()), data.size()) != digest->second)
        throw Error(Code::Bundle, "Graph file " + p + " does not match the sha256 in the manifest "
                                      "(modified or corrupt since the bundle was checked); rebuild the bundle.");
    return data;
}

std::string Bundle::head_steps_repr() const {
    std::string s = "[";
    for (size_t i = 0; i < head_steps.size(); ++i) s += (i ? ", " : "") + std::to_string(head_steps[i]);
    return s + "]";
}

Bundle load_bundle(const std::string& root, bool check_hashes) {
    const std::string mpath = path_join(root, kManifest);
    if (is_file(root))
        throw Error(Code::Bundle, root + " is a file, not a bundle folder; pass the folder that holds " + kManifest + ".");
    if (!is_dir(root))
        throw Error(Code::Bundle, "Bundle folder " + root + " does not exist; create one with 'far-export build'.");
    if (!is_file(mpath))
        throw Error(Code::Bundle, root + " has no " + kManifest +
                                      ", so it is not a far-export bundle (or its export did not finish).");
    inside(root, kManifest);   // a manifest that is a symlink out of the folder is refused too
    Json m;
    try {
        m = Json::parse(read_manifest(mpath));
    } catch (const JsonError& e) {
        throw Error(Code::Bundle, mpath + " is not valid JSON (" + e.message + ").");
    }
    if (!m.is_object())
        throw Error(Code::Bundle, mpath + " is not a far-export bundle manifest (a JSON " + m.py_type() + ", not an object).");
    const Json* fmt = m.find("format");
    if (!fmt || !fmt->is_string() || fmt->str() != kFormat)
        throw Error(Code::Bundle, mpath + " is not a far-export bundle manifest.");
    const Json* ver = m.find("format_version");
    if (!ver || !ver->is_number() || ver->number() != kFormatVersion)     // Python's != : 1.0 == 1
        throw Error(Code::Bundle, mpath + " has bundle format version " + (ver ? ver->repr() : "None") +
                                      ", but this runtime reads version " + std::to_string(kFormatVersion) +
                                      "; rebuild the bundle with this toolkit.");
    Bundle b;
    b.root = root;
    const Json* model = m.find("model");
    if (!model || !model->is_object()) bad(mpath, "it has no 'model' object");
    ModelInfo& mi = b.model;
    mi.seq_len = get_int(*model, "seq_len", 1, mpath, "model.");
    mi.token_dim = get_int(*model, "token_dim", 1, mpath, "model.");
    mi.cond_dim = get_int(*model, "cond_dim", 1, mpath, "model.");
    mi.num_classes = get_int(*model, "num_classes", 1, mpath, "model.");
    mi.diffusion_steps = get_int(*model, "diffusion_steps", 0, mpath, "model.");
    mi.image_size = get_int(*model, "image_size", 0, mpath, "model.");
    mi.image_channels = get_int(*model, "image_channels", 0, mpath, "model.");
    const Json* kind = model->find("head_kind");
    if (!kind || !kind->is_string() || (kind->str() != "shortcut" && kind->str() != "diffusion"))
        bad(mpath, "model.head_kind is " + (kind ? kind->repr() : std::string("None")) + ", not 'shortcut' or 'diffusion'");
    mi.head_kind = kind->str();
    if (mi.diffusion() && mi.diffusion_steps < 1) bad(mpath, "a diffusion model has no diffusion_steps");
    if (const Json* rs = model->find("timestep_respacing")) {
        if (!rs->is_string()) bad(mpath, "model.timestep_respacing is not a string");
        mi.timestep_respacing = rs->str();
    }
    check_model_kind(*model, mi, mpath);
    const Json* mb = m.find("max_batch");
    if (!mb || !mb->is_integer() || mb->number() < 1 || mb->number() > kMaxBatchLimit)
        bad(mpath, "max_batch is " + (mb ? mb->repr() : std::string("None")) + ", not an integer in 1.." +
                       std::to_string(kMaxBatchLimit));
    b.max_batch = static_cast<int>(mb->number());
    const Json* hs = m.find("head_steps");
    if (!hs || !hs->is_array()) bad(mpath, "head_steps is " + (hs ? hs->repr() : std::string("None")) + ", not a list of positive integers");
    for (const Json& o : hs->items()) {
        if (!o.is_integer() || o.number() < 1 || o.number() > INT_MAX) bad(mpath, "head_steps is not a list of positive integers");
        b.head_steps.push_back(static_cast<int>(o.number()));
    }
    const Json* graphs = m.find("graphs");
    if (!graphs || !graphs->is_object() || graphs->members().empty())
        bad(mpath, "it has no 'graphs' object naming at least one graph");
    static const std::regex sha_re("^[0-9a-f]{64}$");
    for (const auto& [name, g] : graphs->members()) {
        const Json* files = g.find("files");
        if (!files || !files->is_object() || files->members().empty()) bad(mpath, "graph " + py_repr(name) + " has no 'files' object");
        for (const auto& [fname, digest] : files->members())
            if (!digest.is_string() || !std::regex_match(digest.str(), sha_re))
                bad(mpath, "graph " + py_repr(name) + " lists " + py_repr(fname) + " without a sha256");
        const Json* file = g.find("file");
        if (!file || !file->is_string() || !files->find(file->str()))
            throw Error(Code::Bundle, mpath + " names " + (file ? file->repr() : std::string("None")) + " as the file of graph " +
                                          py_repr(name) + ", but that file is not among the graph's hashed files; "
                                          "refusing an unverified graph.");
    }
    if (graphs->find("vae_decoder") && mi.image_channels != 3)
        bad(mpath, "model.image_channels is " + std::to_string(mi.image_channels) +
                       ", but the vae_decoder's images are written as RGB, which needs 3");
    const auto expected = component_specs(mi, b.head_steps);
    for (const auto& [name, g] : graphs->members()) {
        GraphInfo gi;
        gi.name = name;
        gi.file = g.find("file")->str();
        for (const auto& [fname, digest] : g.find("files")->members()) {
            const std::string p = inside(root, fname);
            if (!is_file(p)) throw Error(Code::Bundle, "Graph file " + path_join(root, fname) + " named in the manifest is missing.");
            if (check_hashes && sha256_file(p) != digest.str())
                throw Error(Code::Bundle, "Graph file " + p + " does not match the sha256 in the manifest "
                                              "(modified or corrupt); rebuild the bundle.");
            gi.files[fname] = digest.str();
        }
        gi.path = inside(root, gi.file);
        auto want = expected.find(name);
        if (want != expected.end()) {
            // The tensors come from the model entry (as Python rebuilds them); a manifest spec,
            // which no hash covers, may only repeat them.
            gi.inputs = want->second.inputs;
            gi.outputs = want->second.outputs;
            if (const Json* spec = g.find("spec")) {
                if (!spec->is_object()) bad(mpath, "graph " + py_repr(name) + " has a 'spec' that is not an object");
                if (parse_tensors(spec->find("inputs"), mpath, "the inputs of graph " + py_repr(name)) != gi.inputs ||
                    parse_tensors(spec->find("outputs"), mpath, "the outputs of graph " + py_repr(name)) != gi.outputs)
                    bad(mpath, "the spec of graph " + py_repr(name) + " differs from the one its model entry implies");
            }
        }
        b.graphs.emplace(name, std::move(gi));
    }
    return b;
}

}  // namespace far
