#include "ort_backend.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "errors.h"
#include "graph_check.h"
#include "sizes.h"
#include "ort_api.h"

namespace far {
namespace {

// Which shared buffer feeds (or receives) each tensor of each call. Iterations that share
// a shape share buffers; the backbone's (or causal step's) z is the head's z without a copy.
// FAR-Causal's cache ping-pongs between two buffers: the prefill writes A, slot 1 reads A
// and writes B, slot 0 reads B and writes A (token i runs slot i % 2), so it never moves.
std::string role(const Call& call, const std::string& tensor) {
    const std::string& graph = call.graph;
    if (graph == "backbone") {
        if (tensor == "tokens") return "state";
        if (tensor == "labels") return "labels";
        if (tensor == "known_idx") return "known";
        if (tensor == "pred_idx") return "pred";
        if (tensor == "z") return "z";
    } else if (graph.rfind("head_fused_o", 0) == 0) {
        if (tensor == "noise") return "noise";
        if (tensor == "z") return "z";
        if (tensor == "cfg") return "cfg";
        if (tensor == "tokens") return "head_out";
    } else if (graph == "head_step") {
        if (tensor == "x") return "x";
        if (tensor == "t") return "t";
        if (tensor == "d") return "d";
        if (tensor == "z") return "z";
        if (tensor == "v") return "v";
        if (tensor == "out") return "eps_var";
    } else if (graph == "causal_prefill") {
        if (tensor == "labels") return "labels";
        if (tensor == "z") return "z";
        if (tensor == "cache") return "cache_a";
    } else if (graph == "causal_step") {
        const bool odd = call.dim("slot") == 1;
        if (tensor == "token") return "token";
        if (tensor == "pos") return "pos";
        if (tensor == "z") return "z";
        if (tensor == "cache") return odd ? "cache_a" : "cache_b";
        if (tensor == "cache_out") return odd ? "cache_b" : "cache_a";
    } else if (graph == "vae_decoder") {
        if (tensor == "tokens") return "vae_in";
        if (tensor == "image") return "image";
    }
    throw Error(Code::Bundle, "Graph '" + graph + "' of the bundle has a tensor '" + tensor +
                                  "' that this runtime does not know; rebuild the bundle with this toolkit.");
}

std::string ort_provider_name(const std::string& p) {
    if (p == "cpu") return "CPUExecutionProvider";
    if (p == "cuda") return "CUDAExecutionProvider";
    if (p == "tensorrt") return "TensorrtExecutionProvider";
    throw Error(Code::Input, "Execution provider must be 'cpu', 'cuda' or 'tensorrt', got " + py_repr(p) + ".");
}

// The cores this process may run on (its affinity mask, not the machine's count).
int usable_cores() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<int>(n) : 1;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s;
}

// Turn a failed OrtStatus into the runtime's refusal of a provider that cannot start.
void check_append(OrtStatus* status, const std::string& provider, const std::string& graph) {
    if (!status) return;
    std::string msg = Ort::GetApi().GetErrorMessage(status);
    Ort::GetApi().ReleaseStatus(status);
    msg = msg.substr(0, msg.find('\n')).substr(0, 200);
    throw Error(Code::Provider, provider + " was requested but ONNX Runtime could not start it for '" + graph + "' (" + msg +
                                    "); refusing to run silently on the CPU.");
}

template <typename T>
T* checked(const std::map<std::string, std::pair<T*, size_t>>& m, const std::string& graph, const std::string& name, size_t count) {
    auto it = m.find(name);
    if (it == m.end())
        throw Error(Code::Bundle, "Graph '" + graph + "' of the bundle has no tensor '" + name + "' of the type the loop feeds; rebuild the bundle.");
    if (it->second.second < count)
        throw Error(Code::Bundle, "Graph '" + graph + "' of the bundle binds tensor '" + name + "' with " +
                                      std::to_string(it->second.second) + " elements where the loop needs " + std::to_string(count) +
                                      "; rebuild the bundle.");
    return it->second.first;
}

}  // namespace

float* Entry::fptr(const std::string& name, size_t count) const { return checked(f, graph, name, count); }
int64_t* Entry::iptr(const std::string& name, size_t count) const { return checked(i, graph, name, count); }

Ort::Env& ort_env() {
    ort_api();                      // the C API version first (ort_api.h): refuses an older library
    static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "far_runtime");
    return env;
}

OrtBackend::OrtBackend(const Bundle& bundle, const LoadOptions& options)
    : bundle_(bundle), options_(options), provider_(ort_provider_name(options.provider)) {
    ort_env();
    const std::vector<std::string> available = Ort::GetAvailableProviders();
    std::vector<std::string> wanted = {provider_};
    if (options.provider == "tensorrt") wanted.push_back("CUDAExecutionProvider");
    for (const auto& p : wanted)
        if (std::find(available.begin(), available.end(), p) == available.end())
            throw Error(Code::Provider, "Execution provider " + p + " is not available in this onnxruntime (available: " +
                                            join(available) + ").");
    if (options.threads < 0) throw Error(Code::Input, "--threads must be at least 1, got " + std::to_string(options.threads) + ".");
}

Ort::SessionOptions OrtBackend::session_options(const std::string& graph) const {
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    // Every failure ONNX Runtime reports reaches the caller as one sentence of this runtime;
    // its own log lines would be a second, multi-line copy on stderr.
    so.SetLogSeverityLevel(ORT_LOGGING_LEVEL_FATAL);
    if (options_.threads > 0) {
        so.SetIntraOpNumThreads(options_.threads);
        so.SetInterOpNumThreads(1);
    }
    // backends.py's rule: when every usable core is an intra-op worker, a spinning worker takes
    // the core the calling thread needs, so workers do not spin.
    const int cores = usable_cores();
    if (cores > 1 && (options_.threads == 0 || options_.threads >= cores)) {
        so.AddConfigEntry("session.intra_op.allow_spinning", "0");
        so.AddConfigEntry("session.inter_op.allow_spinning", "0");
    }
    const OrtApi& api = Ort::GetApi();
    const std::string device = std::to_string(options_.device_id);
    // A GPU session may not quietly place nodes on the CPU (the Python runtime's refusal of a
    // silent CPU fallback); ONNX Runtime then fails the session, which is refused below.
    if (options_.provider != "cpu") so.AddConfigEntry("session.disable_cpu_ep_fallback", "1");
    if (options_.provider == "tensorrt") {
        OrtTensorRTProviderOptionsV2* trt = nullptr;
        check_append(api.CreateTensorRTProviderOptions(&trt), provider_, graph);
        std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)> hold(
            trt, api.ReleaseTensorRTProviderOptions);
        std::vector<const char*> keys = {"device_id"}, values = {device.c_str()};
        if (!options_.trt_cache_dir.empty()) {
            keys.push_back("trt_engine_cache_enable");
            values.push_back("1");
            keys.push_back("trt_engine_cache_path");
            values.push_back(options_.trt_cache_dir.c_str());
        }
        check_append(api.UpdateTensorRTProviderOptions(trt, keys.data(), values.data(), keys.size()), provider_, graph);
        check_append(api.SessionOptionsAppendExecutionProvider_TensorRT_V2(so, trt), provider_, graph);
    }
    if (options_.provider == "cuda" || options_.provider == "tensorrt") {
        // With TensorRT, CUDA takes the nodes TensorRT cannot, as in the Python runtime's list.
        OrtCUDAProviderOptionsV2* cuda = nullptr;
        check_append(api.CreateCUDAProviderOptions(&cuda), "CUDAExecutionProvider", graph);
        std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> hold(cuda, api.ReleaseCUDAProviderOptions);
        const char* keys[] = {"device_id"};
        const char* values[] = {device.c_str()};
        check_append(api.UpdateCUDAProviderOptions(cuda, keys, values, 1), "CUDAExecutionProvider", graph);
        check_append(api.SessionOptionsAppendExecutionProvider_CUDA_V2(so, cuda), "CUDAExecutionProvider", graph);
    }
    return so;
}

Ort::Session& OrtBackend::session(const std::string& graph) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sessions_.find(graph);
    if (it != sessions_.end()) return *it->second;
    const GraphInfo& g = bundle_.graph(graph);
    Ort::SessionOptions so = session_options(graph);
    // The session runs the very bytes that were hashed (backends.py's _create): the graph file
    // and its external data are read once, checked and handed to ONNX Runtime from memory;
    // external data resolves only inside the bundle folder.
    const std::vector<char> model = bundle_.read_verified(graph);
    std::vector<std::vector<char>> extra;
    std::vector<std::string> names;
    for (const auto& [fname, digest] : g.files) {
        (void)digest;
        if (fname == g.file) continue;
        extra.push_back(bundle_.read_verified(graph, fname));
        names.push_back(fname);
    }
    std::unique_ptr<Ort::Session> s;
    try {
        so.AddConfigEntry("session.model_external_initializers_file_folder_path", realpath_py(bundle_.root).c_str());
        if (!extra.empty()) {
            std::vector<char*> buffers;
            std::vector<size_t> sizes;
            for (auto& x : extra) { buffers.push_back(x.data()); sizes.push_back(x.size()); }
            so.AddExternalInitializersFromFilesInMemory(names, buffers, sizes);
        }
        s = std::make_unique<Ort::Session>(ort_env(), model.data(), model.size(), so);
        if (!g.inputs.empty() || !g.outputs.empty()) check_graph_shapes(g, *s);   // before any buffer is bound
    } catch (const Ort::Exception& e) {
        std::string msg = e.what();
        msg = msg.substr(0, msg.find('\n')).substr(0, 200);
        if (options_.provider != "cpu")
            throw Error(Code::Provider, provider_ + " was requested but ONNX Runtime could not start it for '" + graph + "' (" +
                                            msg + "); refusing to run silently on the CPU.");
        throw Error(Code::Bundle, "ONNX Runtime cannot load graph '" + graph + "' of the bundle (" + msg + ").");
    }
    return *(sessions_[graph] = std::move(s));
}

void OrtBackend::create_all() {
    for (const auto& [name, g] : bundle_.graphs) {
        (void)g;
        session(name);
    }
}

float* Workspace::floats(const std::string& key, size_t count) {
    Array& a = arrays_[key + "#" + std::to_string(count)];
    if (a.f.empty()) a.f.assign(std::max<size_t>(count, 1), 0.0f);   // never a null pointer, even for 0 elements
    return a.f.data();
}

int64_t* Workspace::ints(const std::string& key, size_t count) {
    Array& a = arrays_[key + "#" + std::to_string(count)];
    if (a.i.empty()) a.i.assign(std::max<size_t>(count, 1), 0);
    return a.i.data();
}

Entry& Workspace::entry(const Call& call) {
    const std::string key = call.key();
    auto found = entries_.find(key);
    if (found != entries_.end()) return *found->second;
    const GraphInfo& g = bundle_.graph(call.graph);
    auto e = std::make_unique<Entry>();
    e->graph = call.graph;
    e->session = &backend_.session(call.graph);
    e->binding = std::make_unique<Ort::IoBinding>(*e->session);
    e->run_options.SetRunLogSeverityLevel(ORT_LOGGING_LEVEL_FATAL);
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    auto bind = [&](const TensorDesc& t, bool input) {
        std::vector<int64_t> shape;
        std::vector<long long> dims;
        for (const Dim& d : t.dims) {
            shape.push_back(d.value >= 0 ? d.value : call.dim(d.symbol));
            dims.push_back(shape.back());
        }
        size_t count = 0;
        if (!product_within(dims.data(), dims.size(), kMaxBufferElements, count))
            throw Error(Code::Bundle, "Graph '" + call.graph + "' of the bundle has tensor '" + t.name + "' of more elements than " +
                                          std::to_string(kMaxBufferElements) + " for this call; rebuild the bundle.");
        const std::string r = role(call, t.name);
        Ort::Value value{nullptr};
        if (t.dtype == "float32") {
            float* p = floats(r, count);
            e->f[t.name] = {p, count};
            value = Ort::Value::CreateTensor<float>(cpu, p, count, shape.data(), shape.size());
        } else if (t.dtype == "int64") {
            int64_t* p = ints(r, count);
            e->i[t.name] = {p, count};
            value = Ort::Value::CreateTensor<int64_t>(cpu, p, count, shape.data(), shape.size());
        } else {
            throw Error(Code::Bundle, "Graph '" + call.graph + "' of the bundle has tensor '" + t.name + "' of dtype " +
                                          t.dtype + ", which this runtime does not feed; rebuild the bundle.");
        }
        std::string shown;
        for (int64_t v : shape) shown += (shown.empty() ? "" : ", ") + std::to_string(v);
        std::string& list = input ? e->inputs : e->outputs;
        list += (list.empty() ? "" : ", ") + t.name + " [" + shown + "]";
        if (input) e->binding->BindInput(t.name.c_str(), value);
        else e->binding->BindOutput(t.name.c_str(), value);
        e->values.push_back(std::move(value));
    };
    for (const auto& t : g.inputs) bind(t, true);
    for (const auto& t : g.outputs) bind(t, false);
    return *(entries_[key] = std::move(e));
}

void Workspace::prepare(const std::vector<Call>& calls) {
    for (const Call& c : calls) entry(c);
}

double Workspace::run(const Call& call) {
    Entry& e = entry(call);
    const auto t0 = std::chrono::steady_clock::now();
    try {
        e.session->Run(e.run_options, *e.binding);
        e.binding->SynchronizeOutputs();
    } catch (const Ort::Exception& ex) {
        const std::string msg = ex.what();
        throw Error(Code::Runtime, "ONNX Runtime failed running '" + call.graph + "' on " + e.inputs + " into " + e.outputs + " (" +
                                       py_repr(msg.substr(0, msg.find('\n')).substr(0, 300)) + ").");
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace far
