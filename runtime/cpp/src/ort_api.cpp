#include "ort_api.h"

#include <onnxruntime_cxx_api.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>

#include "errors.h"

#if ORT_API_VERSION < 18
#error "The far runtime needs the headers of ONNX Runtime 1.18 or later (C API 18); build.sh fetches matching ones."
#endif
#ifndef ORT_API_MANUAL_INIT
#error "The far runtime is compiled with ORT_API_MANUAL_INIT (CMakeLists.txt): ort_api() installs the API."
#endif

namespace far {
namespace {

// OrtApi's function pointers up to the last one of version 18 (ONNX Runtime's own
// onnxruntime_c_api.cc asserts this offset for version 18).
constexpr size_t kSlots = offsetof(OrtApi, AddExternalInitializersFromFilesInMemory) / sizeof(void*) + 1;
static_assert(kSlots == 280, "C API version 18 ends at its 280th function");

// The minor version of "1.N.p" (onnxruntime 1.N serves C API N), or -1 when it is not that form.
long api_of(const char* version) {
    if (!version || std::strncmp(version, "1.", 2) != 0) return -1;
    char* end = nullptr;
    const long minor = std::strtol(version + 2, &end, 10);
    return end != version + 2 ? minor : -1;
}

OrtApi kept{};   // zero: every entry past version kOrtApiVersion stays null

const OrtApi* negotiate() {
    const OrtApiBase* base = OrtGetApiBase();
    const char* version = base->GetVersionString();
    const std::string refusal = "This ONNX Runtime library is version " + std::string(version ? version : "unknown") +
                                ", but the far runtime needs onnxruntime 1." + std::to_string(kOrtApiVersion) +
                                " or later (C API " + std::to_string(kOrtApiVersion) +
                                "); install a newer onnxruntime and rebuild the runtime against it.";
    // Read the version first: asked for a version it lacks, the library prints its own line.
    const long api = api_of(version);
    if (api >= 0 && api < static_cast<long>(kOrtApiVersion)) throw Error(Code::Provider, refusal);
    const OrtApi* full = base->GetApi(kOrtApiVersion);
    if (!full) throw Error(Code::Provider, refusal);
    std::memcpy(static_cast<void*>(&kept), full, kSlots * sizeof(void*));
    return &kept;
}

}  // namespace

const OrtApi& ort_api() {
    static const OrtApi* api = [] {     // a throw leaves it unset: the next call refuses again
        const OrtApi* a = negotiate();
        Ort::InitApi(a);
        return a;
    }();
    return *api;
}

}  // namespace far
