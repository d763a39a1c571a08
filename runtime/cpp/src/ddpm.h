// MAR's DDPM schedule (ddpm.py): 1000-step cosine betas, respaced, learned-range variance,
// computed in double exactly as numpy does, for the diffusion head's update.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace far {

struct DDPMSchedule {
    std::vector<int64_t> timestep_map;   // [S] original timestep fed to the head
    std::vector<double> betas, sqrt_recip_ac, sqrt_recipm1_ac, coef1, coef2, log_var_min, log_var_max;
    int steps() const { return static_cast<int>(timestep_map.size()); }
};

constexpr int kTrainSteps = 1000;

// The kept original timesteps, as ddpm.py's respaced_timesteps/space_timesteps pick them:
// `respacing` is one of MAR's string forms ("100", "10,15,20", "ddim25"); when it is empty,
// the plain count `sampling_steps` (checked to lie in 1..num_steps).
std::vector<int> respaced_timesteps(int num_steps, int sampling_steps, const std::string& respacing = "");
// MAR's noise scale exp(0.5 * log_var): exp32.py's float32 exp, built from correctly rounded
// operations only, so its bits are the same on every platform and in both runtimes.
float exp32(float x);

// The schedule for the manifest's model: its timestep_respacing, or else its diffusion_steps.
DDPMSchedule ddpm_schedule(int sampling_steps, const std::string& respacing = "");

}  // namespace far
