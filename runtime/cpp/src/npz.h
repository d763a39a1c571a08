// Saving a run's randomness as .npz (numpy's savez layout: a stored zip of .npy files),
// so `far-generate --save-randomness` writes what `far-runtime generate` writes and
// numpy.load reads it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "random.h"

namespace far {

struct NpyArray {
    std::string name;                 // member name without ".npy"
    std::string descr;                // "<i8", "<f4"
    std::vector<int64_t> shape;
    const void* data;
    size_t bytes;
};

std::string npz_bytes(const std::vector<NpyArray>& arrays);
void save_randomness(const std::string& path, const Randomness& r);

}  // namespace far
