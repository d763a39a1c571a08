// The C++ runtime's own loop arithmetic, alone (no ONNX Runtime): tests/loop_math.py builds it
// from runtime/cpp/src/{ddpm,plan,errors}.cpp with the library's flags and compares its bits
// with the Python runtime's, on this machine and (tests/aarch64/check.sh) across machines.
//
//   loop_math_probe exp32 < float32s > float32s    MAR's noise scale (ddpm.cpp's exp32)
//   loop_math_probe expf  < float32s > float32s    glibc's float32 exp (for the measurement)
//   loop_math_probe exp64 < float32s > float32s    glibc's double exp, rounded to float32
//   loop_math_probe mask L > int32s                 mask_len of every K in 1..256, iteration s < K
//   loop_math_probe ddpm RESPACING... > float32s    the six per-step coefficients the loop uses
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ddpm.h"
#include "plan.h"

namespace {

template <typename T>
void put(const std::vector<T>& v) { std::fwrite(v.data(), sizeof(T), v.size(), stdout); }

std::vector<float> read_floats() {
    std::vector<float> v;
    float buf[4096];
    size_t n;
    while ((n = std::fread(buf, sizeof(float), 4096, stdin)) > 0) v.insert(v.end(), buf, buf + n);
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) return 2;
    const std::string mode = argv[1];
    if (mode == "exp32" || mode == "expf" || mode == "exp64") {
        std::vector<float> v = read_floats();
        for (float& x : v)
            x = mode == "exp32" ? far::exp32(x) : mode == "expf" ? std::exp(x) : static_cast<float>(std::exp(static_cast<double>(x)));
        put(v);
    } else if (mode == "mask" && argc == 3) {
        std::vector<int32_t> out;
        for (int K = 1; K <= far::kMaxK; ++K)
            for (const far::Iteration& it : far::mask_schedule(K, std::atoi(argv[2]))) out.push_back(it.mask_len);
        put(out);
    } else if (mode == "ddpm") {
        for (int i = 2; i < argc; ++i) {
            const std::string r = argv[i];
            const far::DDPMSchedule s = r.find_first_not_of("0123456789") == std::string::npos
                                            ? far::ddpm_schedule(std::stoi(r))
                                            : far::ddpm_schedule(0, r);
            std::vector<float> out;
            for (const auto* a : {&s.sqrt_recip_ac, &s.sqrt_recipm1_ac, &s.coef1, &s.coef2, &s.log_var_min, &s.log_var_max})
                for (double d : *a) out.push_back(static_cast<float>(d));
            put(out);
        }
    } else {
        return 2;
    }
    return std::fflush(stdout) == 0 ? 0 : 1;
}
