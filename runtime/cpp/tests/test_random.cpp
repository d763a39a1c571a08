// numpy's generator, ported: known values from numpy 2.x (the pytest compares whole runs).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "random.h"
#include "ziggurat.h"

using namespace far;

TEST(SeedSequence, MatchesNumpyForSeedZero) {
    // numpy.random.SeedSequence(0).generate_state(8)
    const std::vector<uint32_t> want = {2968811710u, 3677149159u, 745650761u, 2884920346u,
                                        2642120001u, 549907821u, 574372308u, 742431198u};
    EXPECT_EQ(seed_sequence_state(0, 8), want);
}

TEST(Pcg64, RawOutputsMatchNumpy) {
    Pcg64 g0(0);                       // numpy.random.PCG64(0).random_raw(2)
    EXPECT_EQ(g0.next64(), 11749869230777074271ULL);
    EXPECT_EQ(g0.next64(), 4976686463289251617ULL);
    Pcg64 g1(123);
    EXPECT_EQ(g1.next64(), 12587170189557361101ULL);
}

TEST(Pcg64, Next32TakesTheLowHalfFirst) {
    Pcg64 a(7), b(7);
    const uint64_t v = a.next64();
    EXPECT_EQ(b.next32(), static_cast<uint32_t>(v));
    EXPECT_EQ(b.next32(), static_cast<uint32_t>(v >> 32));
}

TEST(Randomness, PermutationMatchesNumpy) {
    // Generator(PCG64(0)).permutation(8) and Generator(PCG64(2**40 + 3)).permutation(10)
    Randomness r = draw_randomness(0, 1, 8, 1, 0);
    EXPECT_EQ(r.orders, (std::vector<int64_t>{2, 4, 3, 6, 5, 0, 1, 7}));
    Randomness s = draw_randomness((1ULL << 40) + 3, 1, 10, 1, 0);
    EXPECT_EQ(s.orders, (std::vector<int64_t>{2, 4, 6, 5, 7, 9, 0, 3, 8, 1}));
}

TEST(Randomness, StandardNormalFloat32MatchesNumpyBits) {
    // Generator(PCG64(0)).standard_normal(4, dtype=float32).view(uint32)
    Pcg64 g(0);
    const uint32_t want[4] = {1066339901u, 3216084303u, 3201984408u, 3209541605u};
    for (uint32_t w : want) {
        const float x = g.standard_normal_f();
        uint32_t bits;
        std::memcpy(&bits, &x, 4);
        EXPECT_EQ(bits, w);
    }
}

TEST(Randomness, OrdersArePermutations) {
    Randomness r = draw_randomness(5, 3, 256, 2, 2);
    for (int b = 0; b < 3; ++b) {
        std::vector<int64_t> o(r.orders.begin() + b * 256, r.orders.begin() + (b + 1) * 256);
        std::sort(o.begin(), o.end());
        for (int i = 0; i < 256; ++i) ASSERT_EQ(o[i], i);
    }
    EXPECT_EQ(r.noise.size(), 3u * 256 * 2);
    EXPECT_EQ(r.step_noise.size(), 2u * 3 * 256 * 2);
}

TEST(Randomness, IntervalStaysInRange) {
    Pcg64 g(3);
    for (uint64_t max : {1ULL, 2ULL, 7ULL, 255ULL, 1000ULL, (1ULL << 33) + 5}) {
        for (int i = 0; i < 200; ++i) ASSERT_LE(g.interval(max), max);
    }
    EXPECT_EQ(g.interval(0), 0u);
}

TEST(Ziggurat, TablesFollowTheirDefinition) {
    const ZigguratF& z = ziggurat_f();
    EXPECT_EQ(z.ki[1], 0u);
    EXPECT_EQ(z.ki[0], 0x007799ECu);            // numpy's first entries, as a spot check
    EXPECT_EQ(z.ki[2], 0x006045F5u);
    EXPECT_EQ(z.fi[0], 1.0f);
    for (int i = 1; i < 256; ++i) ASSERT_LT(z.fi[i], z.fi[i - 1]);
    EXPECT_FLOAT_EQ(z.wi[255] * 8388608.0f, z.r);
    EXPECT_FLOAT_EQ(z.fi[255], std::exp(-0.5f * z.r * z.r));
}
