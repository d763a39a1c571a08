// libFuzzer target: MAR's timestep_respacing text (the manifest's, read as Python's
// space_timesteps reads it) and a sampling step count, through the DDPM schedule.
#include <cstdint>
#include <string>

#include "ddpm.h"
#include "fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const int steps = (data[0] | (data[1] << 8)) % 1100;    // past kTrainSteps too
    const std::string text(reinterpret_cast<const char*>(data + 2), size - 2);
    try {
        const far::DDPMSchedule s = far::ddpm_schedule(steps, text);
        if (s.steps() < 1 || s.steps() > far::kTrainSteps) std::abort();
        for (size_t i = 1; i < s.timestep_map.size(); ++i)
            if (s.timestep_map[i] <= s.timestep_map[i - 1] || s.timestep_map[i] >= far::kTrainSteps) std::abort();
    } catch (const far::Error& e) {
        far_fuzz::check_sentence(e, {far::Code::Input});
    }
    return 0;
}
