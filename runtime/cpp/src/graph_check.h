// The graphs' own word on their shapes: a session's declared inputs and outputs (names,
// element types, ranks, static dims) checked against the tensors the manifest's model entry
// implies, before any buffer of that graph is allocated. The graphs are hashed and the
// manifest is not, so a model entry that lies about a size (token_dim, image_size, the
// cache's depth or context...) is refused here in one sentence instead of sizing buffers.
#pragma once

#include <onnxruntime_cxx_api.h>

#include "bundle.h"

namespace far {

// Throws Error(Bundle) when the graph declares an input the spec lacks, lacks a tensor the
// spec has, or declares one with another element type, rank or static dim. An output dim the
// graph leaves dynamic where the spec has a size (the exported VAE decoder's height and width)
// is judged by running the graph once on one image of zeros, when every dim of the graph is
// static or the batch; otherwise (the backbone's z) by the graph that reads it, and at run
// time by ONNX Runtime's check of the bound buffers.
void check_graph_shapes(const GraphInfo& spec, Ort::Session& session);

}  // namespace far
