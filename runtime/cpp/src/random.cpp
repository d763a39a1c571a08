// numpy's SeedSequence + PCG64 + Generator.permutation + standard_normal(float32), ported.
// Learned from numpy/random (bit_generator.pyx, src/pcg64, src/distributions); own code.
#include "random.h"

#include <cmath>
#include <numeric>

#include "ziggurat.h"

namespace far {
namespace {

constexpr uint32_t kInitA = 0x43b0d7e5u, kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu, kMultB = 0x58f38dedu;
constexpr uint32_t kMixL = 0xca01f9ddu, kMixR = 0x4973f715u;
constexpr int kPoolSize = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
    value ^= hash_const;
    hash_const *= kMultA;
    value *= hash_const;
    value ^= value >> 16;
    return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = kMixL * x - kMixR * y;
    r ^= r >> 16;
    return r;
}

unsigned __int128 u128(uint64_t high, uint64_t low) {
    return (static_cast<unsigned __int128>(high) << 64) | low;
}

const unsigned __int128 kMult = u128(2549297995355413924ULL, 4865540595714422341ULL);

}  // namespace

std::vector<uint32_t> seed_sequence_state(uint64_t seed, int n_words) {
    // Entropy words: the seed as little-endian 32-bit words (0 is one word [0]).
    std::vector<uint32_t> entropy;
    if (seed == 0) entropy.push_back(0);
    for (uint64_t n = seed; n > 0; n >>= 32) entropy.push_back(static_cast<uint32_t>(n));
    uint32_t pool[kPoolSize];
    uint32_t hc = kInitA;
    for (int i = 0; i < kPoolSize; ++i)
        pool[i] = hashmix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0u, hc);
    for (int src = 0; src < kPoolSize; ++src)
        for (int dst = 0; dst < kPoolSize; ++dst)
            if (src != dst) pool[dst] = mix(pool[dst], hashmix(pool[src], hc));
    for (size_t src = kPoolSize; src < entropy.size(); ++src)
        for (int dst = 0; dst < kPoolSize; ++dst) pool[dst] = mix(pool[dst], hashmix(entropy[src], hc));
    std::vector<uint32_t> out(n_words);
    uint32_t hb = kInitB;
    for (int i = 0; i < n_words; ++i) {
        uint32_t v = pool[i % kPoolSize];
        v ^= hb;
        hb *= kMultB;
        v *= hb;
        v ^= v >> 16;
        out[i] = v;
    }
    return out;
}

Pcg64::Pcg64(uint64_t seed) {
    // generate_state(4, uint64): pairs of 32-bit words, little-endian; seed = words 0-1
    // (high, low), increment = words 2-3.
    std::vector<uint32_t> w = seed_sequence_state(seed, 8);
    uint64_t v[4];
    for (int i = 0; i < 4; ++i) v[i] = static_cast<uint64_t>(w[2 * i]) | (static_cast<uint64_t>(w[2 * i + 1]) << 32);
    unsigned __int128 initstate = u128(v[0], v[1]), initseq = u128(v[2], v[3]);
    state_ = 0;
    inc_ = (initseq << 1) | 1u;
    state_ = state_ * kMult + inc_;
    state_ += initstate;
    state_ = state_ * kMult + inc_;
}

uint64_t Pcg64::next64() {
    state_ = state_ * kMult + inc_;
    const uint64_t high = static_cast<uint64_t>(state_ >> 64), low = static_cast<uint64_t>(state_);
    const unsigned rot = static_cast<unsigned>(state_ >> 122);
    const uint64_t x = high ^ low;
    return (x >> rot) | (x << ((64 - rot) & 63));
}

uint32_t Pcg64::next32() {
    if (has32_) {
        has32_ = false;
        return buffered32_;
    }
    const uint64_t next = next64();
    has32_ = true;
    buffered32_ = static_cast<uint32_t>(next >> 32);
    return static_cast<uint32_t>(next & 0xffffffffu);
}

float Pcg64::next_float() {
    return static_cast<float>(next32() >> 8) * (1.0f / 16777216.0f);
}

uint64_t Pcg64::interval(uint64_t max) {
    if (max == 0) return 0;
    uint64_t mask = max;
    for (int s = 1; s <= 32; s <<= 1) mask |= mask >> s;
    uint64_t value;
    if (max <= 0xffffffffULL) {
        while ((value = (next32() & mask)) > max) {}
    } else {
        while ((value = (next64() & mask)) > max) {}
    }
    return value;
}

float Pcg64::standard_normal_f() {
    const ZigguratF& z = ziggurat_f();
    for (;;) {
        const uint32_t r = next32();
        const uint32_t idx = r & 0xffu;
        const uint32_t sign = (r >> 8) & 0x1u;
        const uint32_t rabs = (r >> 9) & 0x0007fffffu;
        float x = static_cast<float>(rabs) * z.wi[idx];
        if (sign) x = -x;
        if (rabs < z.ki[idx]) return x;
        if (idx == 0) {
            for (;;) {
                const float xx = -z.inv_r * std::log1p(-next_float());
                const float yy = -std::log1p(-next_float());
                if (yy + yy > xx * xx) return ((rabs >> 8) & 0x1u) ? -(z.r + xx) : z.r + xx;
            }
        }
        const float u = next_float();
        if (((z.fi[idx - 1] - z.fi[idx]) * u + z.fi[idx]) < std::exp(-0.5 * x * x)) return x;
    }
}

Randomness draw_randomness(uint64_t seed, int batch, int seq_len, int token_dim, int steps) {
    Randomness r;
    r.batch = batch;
    r.seq_len = seq_len;
    r.token_dim = token_dim;
    r.steps = steps;
    Pcg64 g(seed);
    r.orders.resize(static_cast<size_t>(batch) * seq_len);
    for (int b = 0; b < batch; ++b) {
        int64_t* o = r.orders.data() + static_cast<size_t>(b) * seq_len;
        std::iota(o, o + seq_len, int64_t{0});
        for (int i = seq_len - 1; i >= 1; --i) {     // Generator.shuffle (Fisher-Yates, from the end)
            const uint64_t j = g.interval(static_cast<uint64_t>(i));
            std::swap(o[i], o[j]);
        }
    }
    r.noise.resize(static_cast<size_t>(batch) * seq_len * token_dim);
    for (float& v : r.noise) v = g.standard_normal_f();
    if (steps > 0) {
        r.step_noise.resize(static_cast<size_t>(steps) * batch * seq_len * token_dim);
        for (float& v : r.step_noise) v = g.standard_normal_f();
    }
    return r;
}

}  // namespace far
