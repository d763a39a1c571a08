// Buffer sizes computed with overflow checks: every buffer a run allocates is a product of
// bounded model fields and the batch, refused in one sentence above kMaxBufferElements,
// never wrapped around.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "bundle.h"
#include "errors.h"

namespace far {

constexpr uint64_t kMaxBufferElements = uint64_t{1} << 31;

// The product of dims into out; false when a dim is negative or the product exceeds cap.
bool product_within(const long long* dims, size_t n, uint64_t cap, size_t& out);
inline bool product_within(std::initializer_list<long long> dims, uint64_t cap, size_t& out) {
    return product_within(dims.begin(), dims.size(), cap, out);
}

// The product of dims, or Error(code) "<subject> needs a x b x c elements for <what>, more
// than the 2147483648 one buffer may hold; <advice>".
size_t buffer_elements(const std::string& subject, const std::string& what, std::initializer_list<long long> dims,
                       Code code, const std::string& advice);

// Every buffer a run of `batch` images allocates (randomness with `steps` diffusion steps,
// token state, backbone z, head outputs, FAR-Causal's KV cache, images), checked before any
// is allocated: at load for one image with CFG (a bundle error), and for each request (an input error).
void check_run_buffers(const ModelInfo& m, int batch, bool use_cfg, int steps, bool at_load);

}  // namespace far
