// Which ONNX Runtime C API the runtime uses, agreed with the library it runs against.
//
// ONNX Runtime's C API is versioned (onnxruntime 1.N serves versions 1..N; OrtApi only ever
// grows at its end). The runtime asks for the oldest version that has every function it calls,
// kOrtApiVersion, so one build runs against any library from that version on (JetPack 6's
// onnxruntime 1.23, today's 1.32, ...) whatever the headers' version, and refuses an older
// library in one sentence naming both versions instead of crashing.
#pragma once

#include <onnxruntime_c_api.h>

#include <cstdint>

namespace far {

// 18 (onnxruntime 1.18): AddExternalInitializersFromFilesInMemory is the newest function the
// runtime calls; every other one is in version 11 or older.
constexpr uint32_t kOrtApiVersion = 18;

// The library's API at kOrtApiVersion, installed for the C++ wrapper (Ort::InitApi) on the first
// call. Only that version's functions are kept: the entries of later versions are cleared, so a
// call to a function newer than kOrtApiVersion fails in every test run, on every library, instead
// of only on old ones. Throws Error(Code::Provider) when the library is older.
const OrtApi& ort_api();

}  // namespace far
