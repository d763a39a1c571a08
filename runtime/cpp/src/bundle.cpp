// Bundle loading: the same checks, in the same order and with the same sentences, as
// far_runtime/bundle.py. A bundle is untrusted input: a manifest of the wrong structure,
// a path that resolves outside the bundle folder (absolute, "..", or a symlink leading
// out), a graph whose "file" is not among its hashed "files", and a file whose sha256
// differs from the manifest are all refused before any graph is opened.
#include "bundle.h"

#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>
#include <sstream>

#include "errors.h"
#include "manifest.h"

namespace far {
namespace {

constexpr const char* kManifest = "manifest.json";

bool is_dir(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode); }
bool is_file(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode); }

// The manifest's bytes, refused over kMaxManifestBytes before any is read.
std::string read_manifest(const std::string& mpath) {
    std::ifstream f(mpath, std::ios::binary);
    if (!f) throw Error(Code::Bundle, mpath + " cannot be read (Permission denied).");
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    if (size < 0 || static_cast<unsigned long long>(size) > kMaxManifestBytes)
        throw Error(Code::Bundle, mpath + " is too large to be a bundle manifest.");
    std::string text(static_cast<size_t>(size), '\0');
    f.seekg(0);
    f.read(&text[0], size);
    text.resize(static_cast<size_t>(f.gcount()));     // a file that shrank meanwhile: what was there
    return text;
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
        throw Error(Code::Bundle, "The bundle manifest names " + py_repr(name) + ", which lies outside the bundle folder " +
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

namespace {

std::string sha256_text(const std::string& bytes) {
    Sha256 h;
    h.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
    return h.hex();
}

}  // namespace

// bundle.py's check_digest_text: 64 hex digits, either case, surrounding blanks ignored.
std::string check_digest_text(const std::string& text, const std::string& option) {
    const size_t a = text.find_first_not_of(" \t\n\r\f\v"), b = text.find_last_not_of(" \t\n\r\f\v");
    std::string d = a == std::string::npos ? "" : text.substr(a, b - a + 1);
    for (char& c : d) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    static const std::regex hex("^[0-9a-f]{64}$");
    if (!std::regex_match(d, hex))
        throw Error(Code::Input, "The expected " + option + " must be 64 hexadecimal digits (a bundle digest as "
                                 "'far-runtime info' prints it).");
    return d;
}

namespace {

std::string digest_of(const std::string& manifest_sha256, const Json& graphs) {
    std::map<std::string, std::string> files{{kManifest, manifest_sha256}};    // std::string order = UTF-8 byte order
    for (const auto& [name, g] : graphs.items())
        for (const auto& [fname, digest] : find(g, "files")->items()) files[fname] = digest.get<std::string>();
    std::string lines;
    for (const auto& [name, sha] : files) lines += sha + "  " + name + "\n";
    return sha256_text(lines);
}

}  // namespace

Bundle load_bundle(const std::string& root, bool check_hashes, const std::string& expected_digest) {
    const std::string want = expected_digest.empty() ? "" : check_digest_text(expected_digest);
    const std::string mpath = path_join(root, kManifest);
    if (is_file(root))
        throw Error(Code::Bundle, root + " is a file, not a bundle folder; pass the folder that holds " + kManifest + ".");
    if (!is_dir(root))
        throw Error(Code::Bundle, "Bundle folder " + root + " does not exist; create one with 'far-export build'.");
    if (!is_file(mpath))
        throw Error(Code::Bundle, root + " has no " + kManifest +
                                      ", so it is not a far-export bundle (or its export did not finish).");
    inside(root, kManifest);   // a manifest that is a symlink out of the folder is refused too
    const std::string text = read_manifest(mpath);
    Manifest man = parse_manifest(text, root, mpath);
    man.bundle.digest = digest_of(sha256_text(text), *find(man.doc, "graphs"));
    if (!want.empty() && man.bundle.digest != want)
        throw Error(Code::Bundle, "Bundle " + root + " has digest " + man.bundle.digest + ", not the expected " + want +
                                      "; refusing a bundle other than the one pinned.");
    for (const auto& [name, g] : find(man.doc, "graphs")->items()) {   // in the manifest's order, as Python
        GraphInfo& gi = man.bundle.graphs.at(name);
        for (const auto& [fname, digest] : find(g, "files")->items()) {
            const std::string p = inside(root, fname);
            if (!is_file(p)) throw Error(Code::Bundle, "Graph file " + path_join(root, fname) + " named in the manifest is missing.");
            if (check_hashes && sha256_file(p) != digest.get<std::string>())
                throw Error(Code::Bundle, "Graph file " + p + " does not match the sha256 in the manifest "
                                              "(modified or corrupt); rebuild the bundle.");
        }
        gi.path = inside(root, gi.file);
    }
    attach_specs(man, mpath);
    return std::move(man.bundle);
}

}  // namespace far
