#include "graph_check.h"

#include <algorithm>
#include <string>
#include <vector>

#include "errors.h"
#include "sizes.h"

namespace far {
namespace {

struct Declared {
    std::string name;
    bool tensor = false;
    std::string dtype;                 // numpy's name, or the ONNX type number
    std::vector<int64_t> shape;        // -1: dynamic
    std::vector<std::string> symbols;  // the dynamic dims' names ("" when unnamed)
};

std::string dtype_name(ONNXTensorElementDataType t) {
    switch (t) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
        default: return "ONNX element type " + std::to_string(static_cast<int>(t));
    }
}

std::vector<Declared> declared(const Ort::Session& s, bool inputs) {
    Ort::AllocatorWithDefaultOptions alloc;
    const size_t n = inputs ? s.GetInputCount() : s.GetOutputCount();
    std::vector<Declared> out(n);
    for (size_t i = 0; i < n; ++i) {
        Declared& d = out[i];
        d.name = (inputs ? s.GetInputNameAllocated(i, alloc) : s.GetOutputNameAllocated(i, alloc)).get();
        const Ort::TypeInfo ti = inputs ? s.GetInputTypeInfo(i) : s.GetOutputTypeInfo(i);
        if (ti.GetONNXType() != ONNX_TYPE_TENSOR) continue;
        const auto info = ti.GetTensorTypeAndShapeInfo();
        d.tensor = true;
        d.dtype = dtype_name(info.GetElementType());
        d.shape = info.GetShape();
        // The two-argument form: the C++ headers of onnxruntime < 1.22 (JetPack 6's 1.23.2 builds
        // against Debian's 1.21 headers) have no overload returning a vector.
        std::vector<const char*> syms(d.shape.size(), nullptr);
        info.GetSymbolicDimensions(syms.data(), syms.size());
        for (const char* sym : syms) d.symbols.push_back(sym ? sym : "");
    }
    return out;
}

std::string show(const std::string& dtype, const std::vector<std::string>& dims) {
    std::string s = dtype + " [";
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + dims[i];
    return s + "]";
}

std::string show(const TensorDesc& t) {
    std::vector<std::string> dims;
    for (const Dim& d : t.dims) dims.push_back(d.value >= 0 ? std::to_string(d.value) : d.symbol);
    return show(t.dtype, dims);
}

std::string show(const Declared& d) {
    if (!d.tensor) return "a value that is not a tensor";
    std::vector<std::string> dims;
    for (size_t i = 0; i < d.shape.size(); ++i) {
        const std::string sym = i < d.symbols.size() ? d.symbols[i] : "";
        dims.push_back(d.shape[i] >= 0 ? std::to_string(d.shape[i]) : (sym.empty() ? "?" : sym));
    }
    return show(d.dtype, dims);
}

bool fits(const TensorDesc& t, const Declared& d) {
    if (!d.tensor || d.dtype != t.dtype || d.shape.size() != t.dims.size()) return false;
    for (size_t i = 0; i < d.shape.size(); ++i)
        if (d.shape[i] >= 0 && t.dims[i].value >= 0 && d.shape[i] != t.dims[i].value) return false;
    return true;
}

void check_side(const GraphInfo& g, const std::vector<TensorDesc>& spec, const std::vector<Declared>& graph, bool inputs) {
    const char* side = inputs ? "input" : "output";
    const std::string pre = "Graph '" + g.name + "' of the bundle ";
    const std::string post = "; the manifest does not describe this graph, rebuild the bundle.";
    for (const TensorDesc& t : spec) {
        const Declared* found = nullptr;
        for (const Declared& d : graph) if (d.name == t.name) found = &d;
        if (!found) throw Error(Code::Bundle, pre + "has no " + side + " " + py_repr(t.name) + ", which its model entry implies" + post);
        if (!fits(t, *found))
            throw Error(Code::Bundle, pre + "declares " + side + " " + py_repr(t.name) + " as " + show(*found) +
                                          ", but its model entry implies " + show(t) + post);
    }
    if (!inputs) return;               // an output nothing binds is ONNX Runtime's to allocate
    for (const Declared& d : graph) {
        bool known = false;
        for (const TensorDesc& t : spec) known = known || t.name == d.name;
        if (!known) throw Error(Code::Bundle, pre + "declares input " + py_repr(d.name) + ", which its model entry does not have" + post);
    }
}

// A spec dim as it is for one image: "batch" is 1, other names are not known here (-1).
std::vector<int64_t> one_image(const TensorDesc& t) {
    std::vector<int64_t> shape;
    for (const Dim& d : t.dims) shape.push_back(d.value >= 0 ? d.value : d.symbol == "batch" ? 1 : -1);
    return shape;
}

std::string show(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// A static spec dim of an output that the graph leaves dynamic: only a run can judge it.
bool unjudged(const GraphInfo& g, const std::vector<Declared>& outs) {
    for (const TensorDesc& t : g.outputs)
        for (const Declared& d : outs)
            if (d.name == t.name)
                for (size_t i = 0; i < d.shape.size() && i < t.dims.size(); ++i)
                    if (t.dims[i].value >= 0 && d.shape[i] < 0) return true;
    return false;
}

// One image of zeros through the graph, ONNX Runtime allocating the outputs, whose shapes must
// be the spec's. Only for graphs whose every dim is static or the batch (the VAE decoder, the
// FAR-Causal cache graphs): sizes for one image are within what load checked.
void probe(const GraphInfo& g, Ort::Session& session) {
    std::vector<std::vector<float>> floats;
    std::vector<std::vector<int64_t>> ints;
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (const TensorDesc& t : g.inputs) {
        const std::vector<int64_t> shape = one_image(t);
        const std::vector<long long> dims(shape.begin(), shape.end());
        size_t n = 0;
        if (!product_within(dims.data(), dims.size(), kMaxBufferElements, n)) return;
        if (t.dtype == "float32") {
            floats.emplace_back(std::max<size_t>(n, 1), 0.0f);
            values.push_back(Ort::Value::CreateTensor<float>(cpu, floats.back().data(), n, shape.data(), shape.size()));
        } else {
            ints.emplace_back(std::max<size_t>(n, 1), 0);
            values.push_back(Ort::Value::CreateTensor<int64_t>(cpu, ints.back().data(), n, shape.data(), shape.size()));
        }
        in_names.push_back(t.name.c_str());
    }
    for (const TensorDesc& t : g.outputs) out_names.push_back(t.name.c_str());
    Ort::RunOptions quiet;
    quiet.SetRunLogSeverityLevel(ORT_LOGGING_LEVEL_FATAL);
    std::vector<Ort::Value> outs;
    try {
        outs = session.Run(quiet, in_names.data(), values.data(), values.size(), out_names.data(), out_names.size());
    } catch (const Ort::Exception& e) {
        std::string msg = e.what();
        throw Error(Code::Bundle, "Graph '" + g.name + "' of the bundle cannot run on one image of zeros (" +
                                      py_repr(msg.substr(0, msg.find('\n')).substr(0, 200)) + "); rebuild the bundle.");
    }
    for (size_t i = 0; i < outs.size(); ++i) {
        const std::vector<int64_t> got = outs[i].GetTensorTypeAndShapeInfo().GetShape(), want = one_image(g.outputs[i]);
        if (got != want)
            throw Error(Code::Bundle, "Graph '" + g.name + "' of the bundle makes output " + py_repr(g.outputs[i].name) + " of shape " +
                                          show(got) + " for one image, but its model entry implies " + show(want) +
                                          "; the manifest does not describe this graph, rebuild the bundle.");
    }
}

bool probeable(const GraphInfo& g) {
    for (const auto* side : {&g.inputs, &g.outputs})
        for (const TensorDesc& t : *side) {
            if (t.dtype != "float32" && t.dtype != "int64") return false;
            for (const Dim& d : t.dims)
                if (d.value < 0 && d.symbol != "batch") return false;
        }
    return true;
}

}  // namespace

void check_graph_shapes(const GraphInfo& spec, Ort::Session& session) {
    check_side(spec, spec.inputs, declared(session, true), true);
    const std::vector<Declared> outs = declared(session, false);
    check_side(spec, spec.outputs, outs, false);
    if (unjudged(spec, outs) && probeable(spec)) probe(spec, session);
}

}  // namespace far
