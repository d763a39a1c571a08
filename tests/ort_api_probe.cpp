// far::ort_api() alone (runtime/cpp/src/ort_api.cpp), linked against any libonnxruntime:
// prints the negotiated C API and how many of its functions are kept, or the refusal (exit 2).
// tests/test_cpp_ort_api.py builds it against libraries older and newer than the runtime needs.
#include <cstdio>

#include "errors.h"
#include "ort_api.h"

int main() {
    try {
        const OrtApi& api = far::ort_api();
        const void* const* slot = reinterpret_cast<const void* const*>(&api);
        size_t kept = 0;
        for (size_t i = 0; i < sizeof(OrtApi) / sizeof(void*); ++i) kept += slot[i] != nullptr;
        std::printf("C API %u of onnxruntime %s: %zu functions\n", far::kOrtApiVersion,
                    OrtGetApiBase()->GetVersionString(), kept);
        return 0;
    } catch (const far::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
}
