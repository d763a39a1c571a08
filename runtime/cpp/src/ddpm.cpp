#include "ddpm.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <string>

#include "errors.h"

namespace far {
namespace {

std::vector<double> cosine_betas(int num_steps = kTrainSteps, double max_beta = 0.999) {
    auto alpha_bar = [](double t) {
        const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
        return c * c;                                   // Python's ** 2 on a float is x * x
    };
    std::vector<double> b(num_steps);
    for (int i = 0; i < num_steps; ++i)
        b[i] = std::min(1 - alpha_bar(static_cast<double>(i + 1) / num_steps) / alpha_bar(static_cast<double>(i) / num_steps), max_beta);
    return b;
}

// Python's round(): half to even.
long long py_round(double x) { return static_cast<long long>(std::nearbyint(x)); }

}  // namespace

namespace {

std::string strip(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\n\r\f\v");
    if (a == std::string::npos) return "";
    return s.substr(a, s.find_last_not_of(" \t\n\r\f\v") - a + 1);
}

// Python's int() of a str: surrounding whitespace, a sign, digits with single underscores.
bool py_int(const std::string& text, long long& out) {
    const std::string t = strip(text);
    size_t i = 0;
    bool neg = false;
    if (i < t.size() && (t[i] == '+' || t[i] == '-')) neg = t[i++] == '-';
    if (i >= t.size() || !std::isdigit(static_cast<unsigned char>(t[i]))) return false;
    long long v = 0;
    for (; i < t.size(); ++i) {
        if (t[i] == '_' && i + 1 < t.size() && std::isdigit(static_cast<unsigned char>(t[i + 1])) &&
            std::isdigit(static_cast<unsigned char>(t[i - 1])))
            continue;
        if (!std::isdigit(static_cast<unsigned char>(t[i]))) return false;
        if (v > 1000000000000LL) return false;          // far beyond any step count: refused below
        v = v * 10 + (t[i] - '0');
    }
    out = neg ? -v : v;
    return true;
}

}  // namespace

std::vector<int> respaced_timesteps(int num_steps, int sampling_steps, const std::string& respacing) {
    std::vector<long long> counts;
    if (respacing.empty()) {
        if (sampling_steps < 1 || sampling_steps > num_steps)
            throw Error(Code::Input, "Diffusion sampling steps must be in 1.." + std::to_string(num_steps) + ", got " +
                                         std::to_string(sampling_steps) + ".");
        counts = {sampling_steps};
    } else {
        const std::string text = strip(respacing);
        if (text.rfind("ddim", 0) == 0) {
            long long want = 0;
            if (!py_int(text.substr(4), want))
                throw Error(Code::Input, "Diffusion sampling steps " + py_repr(respacing) + " is not 'ddimN' with an integer N.");
            for (int stride = 1; stride < num_steps; ++stride)
                if ((num_steps + stride - 1) / stride == want) {
                    std::vector<int> use;
                    for (int t = 0; t < num_steps; t += stride) use.push_back(t);
                    return use;
                }
            throw Error(Code::Input, "Diffusion sampling steps " + py_repr(respacing) + ": no integer stride takes exactly " +
                                         std::to_string(want) + " of the " + std::to_string(num_steps) + " original steps.");
        }
        if (text.empty()) {
            counts = {num_steps};
        } else {
            size_t pos = 0;
            while (true) {
                const size_t comma = text.find(',', pos);
                long long c = 0;
                if (!py_int(text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos), c))
                    throw Error(Code::Input, "Diffusion sampling steps " + py_repr(respacing) + " is not a form MAR reads: use a count "
                                             "such as '100', per-section counts such as '10,15,20', or 'ddimN'.");
                counts.push_back(c);
                if (comma == std::string::npos) break;
                pos = comma + 1;
            }
        }
    }
    for (long long c : counts)
        if (c < 1) throw Error(Code::Input, "Diffusion sampling steps must be positive counts, got " + py_repr(respacing) + ".");
    const int sections = static_cast<int>(counts.size());
    const int size_per = num_steps / sections, extra = num_steps % sections;
    int start = 0;
    std::set<int> use;
    for (int i = 0; i < sections; ++i) {
        const int size = size_per + (i < extra ? 1 : 0);
        const long long count = counts[i];
        if (count > size)
            throw Error(Code::Input, "Diffusion sampling steps " + py_repr(respacing) + ": a section of " + std::to_string(size) +
                                         " original steps cannot be divided into " + std::to_string(count) + ".");
        const double stride = count == 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(count - 1);
        double idx = 0.0;                      // the running index MAR advances (not i * stride)
        for (long long k = 0; k < count; ++k) {
            use.insert(start + static_cast<int>(py_round(idx)));
            idx += stride;
        }
        start += size;
    }
    return {use.begin(), use.end()};
}

float exp32(float x) {
    // exp32.py's operations in its order (module doc there); each is correctly rounded, and
    // the library is compiled with -ffp-contract=off, so no multiply-add is fused.
    if (std::isnan(x)) return x;
    static const double taylor[] = {   // 1/n! for n = 13 .. 0
        0x1.6124613a86d09p-33, 0x1.1eed8eff8d898p-29, 0x1.ae64567f544e4p-26, 0x1.27e4fb7789f5cp-22,
        0x1.71de3a556c734p-19, 0x1.a01a01a01a01ap-16, 0x1.a01a01a01a01ap-13, 0x1.6c16c16c16c17p-10,
        0x1.1111111111111p-7,  0x1.5555555555555p-5,  0x1.5555555555555p-3,  0x1.0000000000000p-1,
        0x1.0000000000000p+0,  0x1.0000000000000p+0};
    const double inv_ln2 = 0x1.71547652b82fep+0, ln2_hi = 0x1.62e42fee00000p-1, ln2_lo = 0x1.a39ef35793c76p-33;
    const double xd = std::min(std::max(static_cast<double>(x), -104.0), 89.0);
    const double k = std::nearbyint(xd * inv_ln2);          // ties to even, as numpy's rint
    const double r = (xd - k * ln2_hi) - k * ln2_lo;
    double p = taylor[0];
    for (size_t i = 1; i < sizeof(taylor) / sizeof(taylor[0]); ++i) p = p * r + taylor[i];
    const double y = std::ldexp(p, static_cast<int>(k));
    // Beyond float32's range the IEEE rounding numpy's cast performs gives inf.
    if (y >= 0x1.ffffffp+127) return HUGE_VALF;
    return static_cast<float>(y);
}

DDPMSchedule ddpm_schedule(int sampling_steps, const std::string& respacing) {
    const std::vector<double> base_betas = cosine_betas();
    std::vector<double> base_ac(base_betas.size());
    double acc = 1.0;
    for (size_t i = 0; i < base_betas.size(); ++i) base_ac[i] = acc = acc * (1.0 - base_betas[i]);
    const std::vector<int> use = respaced_timesteps(kTrainSteps, sampling_steps, respacing);
    DDPMSchedule s;
    double last = 1.0;
    for (int i : use) {
        s.timestep_map.push_back(i);
        s.betas.push_back(1.0 - base_ac[i] / last);
        last = base_ac[i];
    }
    const size_t n = s.betas.size();
    std::vector<double> ac(n), ac_prev(n), post_var(n);
    acc = 1.0;
    for (size_t i = 0; i < n; ++i) {
        ac_prev[i] = acc;
        ac[i] = acc = acc * (1.0 - s.betas[i]);
    }
    for (size_t i = 0; i < n; ++i) post_var[i] = s.betas[i] * (1.0 - ac_prev[i]) / (1.0 - ac[i]);
    for (size_t i = 0; i < n; ++i) {
        const double alpha = 1.0 - s.betas[i];
        const double clipped = n > 1 ? (i == 0 ? post_var[1] : post_var[i]) : post_var[i];
        s.sqrt_recip_ac.push_back(std::sqrt(1.0 / ac[i]));
        s.sqrt_recipm1_ac.push_back(std::sqrt(1.0 / ac[i] - 1.0));
        s.coef1.push_back(s.betas[i] * std::sqrt(ac_prev[i]) / (1.0 - ac[i]));
        s.coef2.push_back((1.0 - ac_prev[i]) * std::sqrt(alpha) / (1.0 - ac[i]));
        s.log_var_min.push_back(std::log(std::max(clipped, 1e-20)));
        s.log_var_max.push_back(std::log(s.betas[i]));
    }
    return s;
}

}  // namespace far
