// far-generate: the C++ twin of `far-runtime generate` (same options, same defaults, same
// PNG). Every error a user can cause is one sentence on stderr and exit status 2.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "accel.h"
#include "errors.h"
#include "images.h"
#include "npz.h"
#include "pipeline.h"

namespace {

const char* kUsage =
    "Usage: far-generate [OPTIONS] BUNDLE\n"
    "\n"
    "  Generate images with the C++ runtime and write a PNG grid.\n"
    "\n"
    "Options:\n"
    "  --class TEXT                    Class label(s), comma-separated; repeated to fill --num.  [default: 0]\n"
    "  --num INTEGER                   Images to generate.  [default: 8]\n"
    "  --K INTEGER                     Autoregressive iterations (1..256); default 16 for FAR/MAR, and L\n"
    "                                  (the only valid K: one token per step) for FAR-Causal.\n"
    "  --O INTEGER                     Shortcut head steps.  [default: 8]\n"
    "  --cfg FLOAT                     Classifier-free guidance scale.  [default: 3.0]\n"
    "  --cfg-schedule [linear|constant]\n"
    "  --temperature FLOAT             [default: 1.0]\n"
    "  --seed INTEGER                  [default: 0]\n"
    "  --head-schedule TEXT            Head steps per iteration: 'A:B' anneals from A to B as the known\n"
    "                                  fraction grows (FAR: O, rounded down to a power of two; MAR: DDPM\n"
    "                                  steps), or one value per iteration 'v0,v1,...'. Replaces --O.\n"
    "  --cfg-interval TEXT             'LO:HI': guidance only on iterations s with LO*K <= s < HI*K; the\n"
    "                                  others run no unconditional rows.\n"
    "  --cfg-cache TEXT                'W:N' (FAR, MAR): LazyMAR's condition cache; the unconditional rows\n"
    "                                  run on the first W iterations and every N-th after, and their z\n"
    "                                  difference is reused in between.\n"
    "  --head [auto|fused|step]        Fused O-step head graph or one call per step.  [default: auto]\n"
    "  --threads INTEGER               ONNX Runtime intra-op threads.\n"
    "  --save-randomness TEXT          Write the run's orders and noise to this .npz.\n"
    "  --out TEXT                      PNG grid to write.  [default: out/grid.png]\n"
    "  --provider [cpu|cuda|tensorrt]  Execution provider (no silent CPU fallback).  [default: cpu]\n"
    "  --device-id INTEGER             GPU ordinal for cuda and tensorrt.  [default: 0]\n"
    "  --digest TEXT                   Run the bundle only if its digest is this one (far-runtime info prints it).\n"
    "  --stats                         Print the time inside and outside ONNX Runtime.\n"
    "  --repeat INTEGER                With --stats: time this many more runs after the first (warm).\n"
    "  --help                          Show this message and exit.\n";

struct UsageError {
    std::string message;
};

long long parse_int(const std::string& opt, const std::string& v) {
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end || errno) throw UsageError{"Invalid value for '" + opt + "': '" + v + "' is not a valid integer."};
    return x;
}

// strtoll, saturated at the long long range (the range checks then refuse it).
long long parse_int_clamped(const std::string& v) {
    errno = 0;
    return std::strtoll(v.c_str(), nullptr, 10);
}

// An integer click would accept (any size); the seed range is checked later, as Python does.
void parse_int_or_big(const std::string& opt, const std::string& v) {
    size_t i = (!v.empty() && (v[0] == '-' || v[0] == '+')) ? 1 : 0;
    if (i == v.size() || v.find_first_not_of("0123456789", i) != std::string::npos)
        throw UsageError{"Invalid value for '" + opt + "': '" + v + "' is not a valid integer."};
}

// numpy's PCG64 takes any non-negative integer; this runtime takes those below 2^64.
uint64_t parse_seed(const std::string& v) {
    if (!v.empty() && v[0] == '-' && v.find_first_not_of('0', 1) != std::string::npos)
        throw far::Error(far::Code::Input, "The seed must be a non-negative integer, got " + v + ".");
    errno = 0;
    const unsigned long long x = std::strtoull(v[0] == '-' ? "0" : v.c_str(), nullptr, 10);
    if (errno == ERANGE) throw far::Error(far::Code::Input, "The seed must be below 2^64 in the C++ runtime, got " + v + ".");
    return x;
}

double parse_float(const std::string& opt, const std::string& v) {
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    if (v.empty() || *end) throw UsageError{"Invalid value for '" + opt + "': '" + v + "' is not a valid float."};
    return x;
}

std::string choice(const std::string& opt, const std::string& v, const std::vector<std::string>& allowed) {
    for (const auto& a : allowed) if (a == v) return v;
    std::string list;
    for (size_t i = 0; i < allowed.size(); ++i) list += (i ? ", " : "") + ("'" + allowed[i] + "'");
    throw UsageError{"Invalid value for '" + opt + "': '" + v + "' is not one of " + list + "."};
}

std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\n\r\f\v"), b = s.find_last_not_of(" \t\n\r\f\v");
    return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// cli.py's parse_labels.
constexpr long long kMaxNum = 1024;   // options.py's MAX_NUM: no batch is allocated before this check

std::vector<int64_t> parse_labels(const std::string& classes, long long num, const std::string& num_text) {
    if (num < 1 || num > kMaxNum)
        throw far::Error(far::Code::Input, "--num must be in 1.." + std::to_string(kMaxNum) + ", got " + num_text + ".");
    std::vector<int64_t> base;
    size_t start = 0;
    for (;;) {
        const size_t comma = classes.find(',', start);
        const std::string part = trim(classes.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (!part.empty()) {
            errno = 0;
            char* end = nullptr;
            const long long v = std::strtoll(part.c_str(), &end, 10);
            if (*end || errno)
                throw far::Error(far::Code::Input, "--class takes integers separated by commas, got " + far::py_repr(classes) + ".");
            base.push_back(v);
        }
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    if (base.empty()) throw far::Error(far::Code::Input, "--class needs at least one class label.");
    std::vector<int64_t> labels(static_cast<size_t>(num));
    for (long long i = 0; i < num; ++i) labels[i] = base[i % base.size()];
    return labels;
}

// os.path.abspath: joined with the working folder and normalised lexically.
std::string abspath(const std::string& path) {
    std::string full = path;
    if (path.empty() || path[0] != '/') {
        std::vector<char> cwd(4096);
        full = std::string(getcwd(cwd.data(), cwd.size()) ? cwd.data() : ".") + "/" + path;
    }
    std::vector<std::string> parts;
    size_t pos = 0;
    while (pos <= full.size()) {
        size_t end = full.find('/', pos);
        if (end == std::string::npos) end = full.size();
        const std::string name = full.substr(pos, end - pos);
        pos = end + 1;
        if (name.empty() || name == ".") continue;
        if (name == "..") { if (!parts.empty()) parts.pop_back(); continue; }
        parts.push_back(name);
    }
    std::string out;
    for (const auto& p : parts) out += "/" + p;
    return out.empty() ? "/" : out;
}

std::string dirname(const std::string& p) {
    const size_t slash = p.find_last_of('/');
    return slash == 0 || slash == std::string::npos ? "/" : p.substr(0, slash);
}

bool exists(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0; }
bool is_dir(const std::string& p) { struct stat st{}; return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode); }

// files.py's check_writable_file: refuse, before any work, a path that cannot be written (a
// folder, a path under a file, a folder where no file can be created). Creates nothing.
void check_writable_file(const std::string& path, const std::string& option) {
    if (trim(path).empty()) throw far::Error(far::Code::Input, option + " needs a file path, got " + far::py_repr(path) + ".");
    const std::string full = abspath(path);
    if (is_dir(full))
        throw far::Error(far::Code::Input, option + " " + path + " is a folder; pass a file path such as " +
                                               (path.back() == '/' ? path + "out.png" : path + "/out.png") + ".");
    std::string parent = dirname(full);
    while (!exists(parent)) parent = dirname(parent);
    if (!is_dir(parent))
        throw far::Error(far::Code::Input, option + " " + path + " lies under " + parent + ", which is a file, not a folder.");
    std::string probe = parent + (parent == "/" ? "" : "/") + ".tmp-probe-XXXXXX";
    const int fd = mkstemp(&probe[0]);
    if (fd < 0)
        throw far::Error(far::Code::Input, option + " " + path + " cannot be written: no files can be created in " + parent +
                                               " (" + std::strerror(errno) + ").");
    ::close(fd);
    ::unlink(probe.c_str());
}

int run(int argc, char** argv) {
    std::string bundle, classes = "0", cfg_schedule = "linear", head = "auto", save_randomness, out = "out/grid.png";
    std::string provider = "cpu";
    std::string digest;               // --digest: the expected bundle digest
    bool digest_given = false;
    long long num = 8, K = 0, O = 8, threads = 0, device_id = 0;
    bool k_given = false;            // --K left out: the model's default (16, or L for FAR-Causal)
    long long repeat = 0;
    bool threads_given = false;
    std::string seed_text = "0", num_text = "8";
    double cfg = 3.0, temperature = 1.0;
    bool stats = false;
    std::optional<std::string> head_schedule, cfg_interval, cfg_cache;   // off unless given
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i], value;
        if (a == "--help" || a == "-h") {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (a == "--stats") { stats = true; continue; }
        if (a.rfind("--", 0) != 0) {
            if (!bundle.empty()) throw UsageError{"Got unexpected extra argument (" + a + ")"};
            bundle = a;
            continue;
        }
        const size_t eq = a.find('=');
        if (eq != std::string::npos) {
            value = a.substr(eq + 1);
            a = a.substr(0, eq);
        } else {
            if (i + 1 >= argc) throw UsageError{"Option '" + a + "' requires an argument."};
            value = argv[++i];
        }
        if (a == "--class") classes = value;
        else if (a == "--num") {
            parse_int_or_big(a, value);
            num_text = std::to_string(parse_int_clamped(value));
            num = parse_int_clamped(value);
            if (num == LLONG_MAX || num == LLONG_MIN) num_text = value;   // Python prints the whole integer
        }
        else if (a == "--K") { K = parse_int(a, value); k_given = true; }
        else if (a == "--O") O = parse_int(a, value);
        else if (a == "--cfg") cfg = parse_float(a, value);
        else if (a == "--cfg-schedule") cfg_schedule = choice(a, value, {"linear", "constant"});
        else if (a == "--temperature") temperature = parse_float(a, value);
        else if (a == "--seed") { parse_int_or_big(a, value); seed_text = value; }
        else if (a == "--head") head = choice(a, value, {"auto", "fused", "step"});
        else if (a == "--head-schedule") head_schedule = value;
        else if (a == "--cfg-interval") cfg_interval = value;
        else if (a == "--cfg-cache") cfg_cache = value;
        else if (a == "--threads") { threads = parse_int(a, value); threads_given = true; }
        else if (a == "--save-randomness") save_randomness = value;
        else if (a == "--out") out = value;
        else if (a == "--provider") provider = choice(a, value, {"cpu", "cuda", "tensorrt"});
        else if (a == "--device-id") device_id = parse_int(a, value);
        else if (a == "--digest") { digest = value; digest_given = true; }
        else if (a == "--repeat") repeat = parse_int(a, value);
        else throw UsageError{"No such option: " + a};
    }
    if (bundle.empty()) throw UsageError{"Missing argument 'BUNDLE'."};
    // cli.py's order: every option checked before any work, and before anything is written,
    // so a refused run leaves nothing behind; then load, labels and plan, generate, save.
    const std::vector<int64_t> labels = parse_labels(classes, num, num_text);
    if (digest_given) far::check_digest_text(digest, "--digest");
    if (k_given && (K < 1 || K > far::kMaxK)) far::check_k(K);   // cli.py checks 16 when --K is left out
    if (!std::isfinite(cfg)) throw far::Error(far::Code::Input, "The CFG scale must be a finite number, got " + far::py_float(cfg) + ".");
    if (!std::isfinite(temperature))
        throw far::Error(far::Code::Input, "The temperature must be a finite number, got " + far::py_float(temperature) + ".");
    if (temperature < 0) throw far::Error(far::Code::Input, "The temperature must be >= 0, got " + far::py_float(temperature) + ".");
    const uint64_t seed = parse_seed(seed_text);
    far::parse_accel(head_schedule, cfg_interval, cfg_cache);   // their syntax (accel.py's sentences)
    if (threads_given && threads < 1) throw far::Error(far::Code::Input, "--threads must be at least 1, got " + std::to_string(threads) + ".");
    check_writable_file(out, "--out");
    if (!save_randomness.empty()) check_writable_file(save_randomness, "--save-randomness");
    far::LoadOptions lo;
    lo.provider = provider;
    lo.device_id = static_cast<int>(device_id);
    lo.threads = static_cast<int>(std::min(threads, 4096LL));
    lo.digest = digest;
    far::Runtime rt(bundle, lo);
    const int max_batch = rt.bundle().max_batch;
    if (num > max_batch)
        throw far::Error(far::Code::Input, "--num " + std::to_string(num) + " is larger than the bundle's max batch " +
                                               std::to_string(max_batch) + "; re-export with --max-batch " + std::to_string(num) +
                                               " or generate fewer.");
    far::SampleOptions o;
    o.K = k_given ? static_cast<int>(K) : 0;           // 0: the variant's default, resolved by the runtime
    o.O = static_cast<int>(std::max(std::min(O, 1LL << 30), -(1LL << 30)));
    if (O != o.O) far::check_head_steps(O);
    o.cfg = cfg;
    o.cfg_schedule = cfg_schedule;
    o.temperature = temperature;
    o.seed = seed;
    o.head = head;
    o.head_schedule = head_schedule;
    o.cfg_interval = cfg_interval;
    o.cfg_cache = cfg_cache;
    const int B = static_cast<int>(num);
    rt.check(labels.data(), B, o);                      // labels, plan (O, head, batch), schedule, buffer sizes
    rt.open(B, o, true);                                // the graphs' sessions, checked against the model entry
    const far::ModelInfo& m = rt.model();
    const far::Randomness rnd = far::draw_randomness(o.seed, B, m.seq_len, m.token_dim, rt.diffusion_steps());
    std::vector<uint8_t> images(static_cast<size_t>(B) * m.image_size * m.image_size * 3);
    far::RunStats st;
    rt.generate(labels.data(), B, o, &rnd, images.data(), &st);
    if (repeat > 0) {                                   // warm runs: sessions and buffers exist already
        st = far::RunStats{};
        for (long long i = 0; i < repeat; ++i) rt.generate(labels.data(), B, o, &rnd, images.data(), &st);
    }
    if (!save_randomness.empty()) far::save_randomness(save_randomness, rnd);
    far::write_png(out, far::grid(images.data(), B, m.image_size, m.image_size, 3));
    std::set<int64_t> distinct(labels.begin(), labels.end());
    std::string cls = "[";
    for (auto it = distinct.begin(); it != distinct.end(); ++it) cls += (it == distinct.begin() ? "" : ", ") + std::to_string(*it);
    std::printf("wrote %s (%lld images, classes %s])\n", out.c_str(), num, cls.c_str());
    if (stats)
        std::fprintf(stderr, "%s: generate %.6f s per run, inside ONNX Runtime %.6f s (%d graph calls), outside %.6f s (%.3f%%)\n",
                     repeat > 0 ? ("mean of " + std::to_string(repeat) + " warm runs").c_str() : "first run",
                     st.total_s / std::max(1LL, repeat), st.ort_s / std::max(1LL, repeat), st.calls, (st.total_s - st.ort_s) / std::max(1LL, repeat),
                     100.0 * (st.total_s - st.ort_s) / st.total_s);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%sError: %s\n", kUsage, e.message.c_str());
        return 2;
    } catch (const far::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: internal error: %s\n", e.what());
        return 1;
    }
}
