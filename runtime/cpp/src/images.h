// Images (images.py): a grid of uint8 images and an 8-bit RGB PNG written with libpng,
// byte-identical to the Python runtime's writer (one IDAT, no filtering, zlib level 9).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace far {

struct Image {
    int height = 0, width = 0, channels = 3;
    std::vector<uint8_t> pixels;     // [H, W, C]
};

// [B, H, W, C] uint8 to one image, ceil(sqrt(B)) columns, 2-pixel white padding.
Image grid(const uint8_t* images, int batch, int height, int width, int channels, int cols = 0, int pad = 2);

// Writes atomically (a temporary file in the same folder, then a rename); throws far::Error.
void write_png(const std::string& path, const Image& image);

// Write bytes to path atomically; throws far::Error(Io).
void atomic_write(const std::string& path, const std::string& data);

}  // namespace far
