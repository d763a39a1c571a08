#include "sizes.h"

namespace far {

bool product_within(const long long* dims, size_t n, uint64_t cap, size_t& out) {
    for (size_t i = 0; i < n; ++i) {
        if (dims[i] < 0) return false;
        if (dims[i] == 0) { out = 0; return true; }
    }
    uint64_t p = 1;
    for (size_t i = 0; i < n; ++i)
        if (__builtin_mul_overflow(p, static_cast<uint64_t>(dims[i]), &p) || p > cap) return false;
    out = static_cast<size_t>(p);
    return true;
}

size_t buffer_elements(const std::string& subject, const std::string& what, std::initializer_list<long long> dims,
                       Code code, const std::string& advice) {
    size_t n = 0;
    if (product_within(dims, kMaxBufferElements, n)) return n;
    std::string factors;
    for (long long d : dims) factors += (factors.empty() ? "" : " x ") + std::to_string(d);
    throw Error(code, subject + " needs " + factors + " elements for " + what + ", more than the " + std::to_string(kMaxBufferElements) +
                          " one buffer may hold; " + advice);
}

void check_run_buffers(const ModelInfo& m, int batch, bool use_cfg, int steps, bool at_load) {
    const Code code = at_load ? Code::Bundle : Code::Input;
    const std::string who = at_load ? "One image of the bundle's model" : "A batch of " + std::to_string(batch);
    const std::string advice = at_load ? "rebuild the bundle." : "generate a smaller batch.";
    const long long B = batch, rows = use_cfg ? 2LL * batch : batch, L = m.seq_len, C = m.token_dim, D = m.cond_dim;
    const std::string cfg = use_cfg ? " with CFG" : "";
    auto check = [&](const char* what, std::initializer_list<long long> dims) { buffer_elements(who + cfg, what, dims, code, advice); };
    check("the noise", {B, L, C});
    check("the diffusion step noise", {steps, B, L, C});
    check("the token state", {rows, L, 2 * C});          // MAR's head writes [rows, 2C] per token
    check("the conditions", {rows, L, D});
    check("the images", {B, m.image_channels, m.image_size, m.image_size});
    if (m.causal()) check("the KV cache", {m.depth, 2, rows, m.heads, m.context, m.head_dim});
}

}  // namespace far
