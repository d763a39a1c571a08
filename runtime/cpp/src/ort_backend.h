// ONNX Runtime behind the loop (backends.py's OrtBackend): one session per graph shared by
// all threads, and per-workspace IoBindings over preallocated buffers, one per distinct
// call shape of the plan. A workspace is used by one thread at a time; the runtime keeps a
// pool of them so concurrent generates never share a buffer.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bundle.h"
#include "plan.h"

namespace far {

struct LoadOptions {
    std::string provider = "cpu";     // cpu, cuda, tensorrt
    int device_id = 0;
    int threads = 0;                  // intra-op threads; 0 = ONNX Runtime's default
    bool check_hashes = true;
    std::string trt_cache_dir;        // TensorRT engine cache folder (empty: no cache)
    std::string digest;               // the expected bundle digest (empty: not pinned)
};

// A stable array of one element type, shared by the entries of a workspace by name and size.
struct Array {
    std::vector<float> f;
    std::vector<int64_t> i;
};

class Workspace;

// One distinct call shape: its session, its binding and the arrays bound to it.
struct Entry {
    Ort::Session* session = nullptr;
    std::unique_ptr<Ort::IoBinding> binding;
    Ort::RunOptions run_options;
    std::vector<Ort::Value> values;                 // keep the bound tensors alive
    std::string graph;
    std::string inputs, outputs;                    // "name [dims], ..." of the bound tensors, for error sentences
    std::map<std::string, std::pair<float*, size_t>> f;     // tensor name -> bound float buffer, elements
    std::map<std::string, std::pair<int64_t*, size_t>> i;   // tensor name -> bound int64 buffer, elements
    // The bound buffer of a tensor, refused (a bundle error) unless it holds at least `count`
    // elements, so a loop that writes by the model's sizes never runs past a binding.
    float* fptr(const std::string& name, size_t count) const;
    int64_t* iptr(const std::string& name, size_t count) const;
};

class OrtBackend {
public:
    OrtBackend(const Bundle& bundle, const LoadOptions& options);
    Ort::Session& session(const std::string& graph);     // created on first use, thread-safe
    void create_all();                                   // every graph's session now (GPU providers: at load)
    const std::string& provider_name() const { return provider_; }

private:
    Ort::SessionOptions session_options(const std::string& graph) const;
    const Bundle& bundle_;
    LoadOptions options_;
    std::string provider_;                               // ONNX Runtime's name of the provider
    std::mutex mutex_;
    std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
};

class Workspace {
public:
    explicit Workspace(OrtBackend& backend, const Bundle& bundle) : backend_(backend), bundle_(bundle) {}
    Entry& entry(const Call& call);                      // created (and bound) on first use
    void prepare(const std::vector<Call>& calls);       // bind every distinct call of a plan now
    // Run one call; returns the seconds spent inside ONNX Runtime.
    double run(const Call& call);
    float* floats(const std::string& key, size_t count);  // a stable shared buffer
    int64_t* ints(const std::string& key, size_t count);

private:
    OrtBackend& backend_;
    const Bundle& bundle_;
    std::map<std::string, Array> arrays_;
    std::map<std::string, std::unique_ptr<Entry>> entries_;
};

Ort::Env& ort_env();

}  // namespace far
