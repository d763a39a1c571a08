// numpy's float32 ziggurat tables for the standard normal, computed at first use from the
// Marsaglia-Tsang definition (256 layers, tail start r, layer area v, 23-bit magnitudes).
#pragma once

#include <cstdint>

namespace far {

struct ZigguratF {
    uint32_t ki[256];
    float wi[256];
    float fi[256];
    float r;        // 3.6541528853610088 as float
    float inv_r;    // 1 / r as float
};

const ZigguratF& ziggurat_f();

}  // namespace far
