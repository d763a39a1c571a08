// The tensor specs of every graph, rebuilt from the manifest's model entry exactly as
// far_runtime/specs.py's component_specs builds them. The runtime binds buffers from these,
// never from the manifest's own (unhashed) "spec" entries, which must agree with them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "bundle.h"

namespace far {

// graph name -> its inputs and outputs (name, dtype, dims), for backbone, head_step,
// head_fused_o{O} (FAR, one per head step count) and vae_decoder; a FAR-Causal model
// (variants/causal.py) has causal_prefill, causal_step and causal_recompute instead of backbone.
std::map<std::string, GraphInfo> component_specs(const ModelInfo& model, const std::vector<int>& head_steps);

}  // namespace far
