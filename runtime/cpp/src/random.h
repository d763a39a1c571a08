// numpy's Generator(PCG64(seed)), ported exactly for what draw_randomness uses.
//
// The Python runtime draws every random number of a run with
// numpy.random.Generator(numpy.random.PCG64(seed)): permutation(L) per sample, then
// standard_normal(dtype=float32). This file reproduces that stream bit for bit:
// SeedSequence (entropy pool of 4 words, hashmix/mix), PCG64 (128-bit LCG, XSL-RR output,
// 32-bit draws taken low half first then high half from one 64-bit draw), the masked
// rejection sampler random_interval used by Generator.shuffle, and numpy's float32
// ziggurat (256 layers; tables rebuilt from their defining formulas in ziggurat.cpp).
#pragma once

#include <cstdint>
#include <vector>

namespace far {

class Pcg64 {
public:
    explicit Pcg64(uint64_t seed);            // as numpy.random.PCG64(seed)
    uint64_t next64();
    uint32_t next32();                         // numpy's buffered halves: low, then high
    float next_float();                        // (next32 >> 8) * 2^-24
    uint64_t interval(uint64_t max);           // numpy's random_interval: uniform in [0, max]
    float standard_normal_f();                 // numpy's random_standard_normal_f

private:
    unsigned __int128 state_ = 0, inc_ = 0;
    bool has32_ = false;
    uint32_t buffered32_ = 0;
};

// SeedSequence(seed).generate_state(n_words, uint32).
std::vector<uint32_t> seed_sequence_state(uint64_t seed, int n_words);

// Everything random in one run, in the order draw_randomness draws it.
struct Randomness {
    int batch = 0, seq_len = 0, token_dim = 0, steps = 0;
    std::vector<int64_t> orders;       // [B, L]
    std::vector<float> noise;          // [B, L, C]
    std::vector<float> step_noise;     // [S, B, L, C] (diffusion heads only)
};

Randomness draw_randomness(uint64_t seed, int batch, int seq_len, int token_dim, int steps);

}  // namespace far
