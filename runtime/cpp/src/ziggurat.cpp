// The ziggurat for f(x) = exp(-x^2 / 2) with 256 layers of equal area v (Marsaglia & Tsang,
// "The Ziggurat Method for Generating Random Variables", 2000), scaled for 23-bit
// magnitudes as numpy's random_standard_normal_f consumes them:
//   x_255 = r, x_{i-1} = sqrt(-2 log(v / x_i + f(x_i))),  q = v / f(r)
//   ki[0] = round(2^23 r / q), ki[1] = 0, ki[i+1] = round(2^23 x_i / x_{i+1})
//   wi[0] = q / 2^23, wi[i] = x_i / 2^23,  fi[0] = 1, fi[i] = f(x_i)
// computed in double and rounded to float, which reproduces numpy's constants exactly
// (tests/test_cpp_runtime.py checks the generated normals against numpy bit for bit).
#include "ziggurat.h"

#include <cmath>

namespace far {
namespace {

constexpr double kR = 3.6541528853610087963519472518;
constexpr double kV = 4.928673233974655e-3;
constexpr double kM = 8388608.0;   // 2^23

ZigguratF build() {
    ZigguratF z{};
    const double f_r = std::exp(-0.5 * kR * kR);
    const double q = kV / f_r;
    z.ki[0] = static_cast<uint32_t>(std::llround(kR / q * kM));
    z.ki[1] = 0;
    z.wi[0] = static_cast<float>(q / kM);
    z.wi[255] = static_cast<float>(kR / kM);
    z.fi[0] = 1.0f;
    z.fi[255] = static_cast<float>(f_r);
    double dn = kR, tn = kR;
    for (int i = 254; i >= 1; --i) {
        dn = std::sqrt(-2.0 * std::log(kV / dn + std::exp(-0.5 * dn * dn)));
        z.ki[i + 1] = static_cast<uint32_t>(std::llround(dn / tn * kM));
        tn = dn;
        z.fi[i] = static_cast<float>(std::exp(-0.5 * dn * dn));
        z.wi[i] = static_cast<float>(dn / kM);
    }
    z.r = static_cast<float>(kR);
    z.inv_r = static_cast<float>(1.0 / kR);
    return z;
}

}  // namespace

const ZigguratF& ziggurat_f() {
    static const ZigguratF table = build();   // thread-safe static initialisation
    return table;
}

}  // namespace far
