#include "ddpm.h"

#include <algorithm>
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

std::vector<int> respaced_timesteps(int num_steps, int sampling_steps) {
    if (sampling_steps < 1 || sampling_steps > num_steps)
        throw Error(Code::Input, "Diffusion sampling steps must be in 1.." + std::to_string(num_steps) + ", got " +
                                     std::to_string(sampling_steps) + ".");
    if (sampling_steps == 1) return {0};
    const double stride = static_cast<double>(num_steps - 1) / (sampling_steps - 1);
    std::set<int> use;
    for (int i = 0; i < sampling_steps; ++i) use.insert(static_cast<int>(py_round(i * stride)));
    return {use.begin(), use.end()};
}

DDPMSchedule ddpm_schedule(int sampling_steps) {
    const std::vector<double> base_betas = cosine_betas();
    std::vector<double> base_ac(base_betas.size());
    double acc = 1.0;
    for (size_t i = 0; i < base_betas.size(); ++i) base_ac[i] = acc = acc * (1.0 - base_betas[i]);
    const std::vector<int> use = respaced_timesteps(kTrainSteps, sampling_steps);
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
