#include "images.h"

#include <png.h>
#include <zlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "errors.h"
#include "sizes.h"

namespace far {

Image grid(const uint8_t* images, int batch, int height, int width, int channels, int cols, int pad) {
    if (batch < 1 || height < 1 || width < 1 || channels < 1 || pad < 0)
        throw Error(Code::Input, "A grid needs at least one image of positive size.");
    const std::string advice = "write fewer or smaller images.";
    buffer_elements("The grid", "its images", {batch, height, width, channels}, Code::Input, advice);
    if (cols <= 0) cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(batch))));
    const long long rows = (static_cast<long long>(batch) + cols - 1) / cols;
    const long long gh = rows * (height + static_cast<long long>(pad)) + pad, gw = cols * (width + static_cast<long long>(pad)) + pad;
    Image g;
    g.pixels.assign(buffer_elements("The grid", "its pixels", {gh, gw, channels}, Code::Input, advice), 255);
    g.height = static_cast<int>(gh);
    g.width = static_cast<int>(gw);
    g.channels = channels;
    for (int i = 0; i < batch; ++i) {
        const int r = i / cols, c = i % cols;
        const int y0 = pad + r * (height + pad), x0 = pad + c * (width + pad);
        for (int y = 0; y < height; ++y)
            std::memcpy(&g.pixels[(static_cast<size_t>(y0 + y) * g.width + x0) * channels],
                        images + ((static_cast<size_t>(i) * height + y) * width) * channels,
                        static_cast<size_t>(width) * channels);
    }
    return g;
}

namespace {

struct PngBuffer {
    std::string data;
};

// libpng's callbacks are called from C frames: no C++ exception may pass through them. An
// error is recorded and libpng longjmps back to encode_rows' setjmp; the throw comes after.
struct PngError {
    char message[200] = {0};
};

void png_append(png_structp png, png_bytep bytes, png_size_t n) {
    bool failed = false;
    try {
        static_cast<PngBuffer*>(png_get_io_ptr(png))->data.append(reinterpret_cast<const char*>(bytes), n);
    } catch (...) {
        failed = true;
    }
    if (failed) png_error(png, "out of memory");
}

void png_flush(png_structp) {}

[[noreturn]] void png_fail(png_structp png, png_const_charp msg) {
    auto* e = static_cast<PngError*>(png_get_error_ptr(png));
    std::snprintf(e->message, sizeof e->message, "%s", msg ? msg : "unknown error");
    png_longjmp(png, 1);
}

// Every libpng call of one PNG, under its setjmp; only trivially destructible locals here.
bool encode_rows(png_structp png, png_infop info, const Image& image, size_t raw) {
    if (setjmp(png_jmpbuf(png))) return false;
    // The same stream as Python's zlib.compress(raw, 9): filter byte 0 on every row,
    // default strategy, 32 KiB window, memLevel 8, and the whole stream in one IDAT.
    png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_NONE);
    png_set_compression_level(png, 9);
    png_set_compression_strategy(png, 0 /* Z_DEFAULT_STRATEGY */);
    png_set_compression_window_bits(png, 15);
    png_set_compression_mem_level(png, 8);
    png_set_compression_buffer_size(png, raw + raw / 1000 + 1024);   // larger than the stream: one IDAT
    const int color = image.channels == 3 ? PNG_COLOR_TYPE_RGB : image.channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGBA;
    png_set_IHDR(png, info, image.width, image.height, 8, color, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_BASE,
                 PNG_FILTER_TYPE_BASE);
    png_write_info(png, info);
    for (int y = 0; y < image.height; ++y)
        png_write_row(png, const_cast<png_bytep>(&image.pixels[static_cast<size_t>(y) * image.width * image.channels]));
    png_write_end(png, nullptr);
    return true;
}

void png_warn(png_structp, png_const_charp) {}

uint32_t be32(const std::string& s, size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(s[at])) << 24) | (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(s[at + 2])) << 8) | static_cast<uint32_t>(static_cast<uint8_t>(s[at + 3]));
}

// libpng lowers the window size in the zlib header of small images (its CMF optimisation;
// the deflate data itself is unchanged). Python's zlib.compress always writes 32 KiB
// (0x78 0xDA at level 9): write that header too, and the IDAT CRC that goes with it, so
// both runtimes write the same bytes.
void normalize_zlib_window(std::string& png) {
    const size_t at = 8 + 12 + 13;                       // signature, then the IHDR chunk
    if (png.size() < at + 10 || png.compare(at + 4, 4, "IDAT") != 0) return;
    const uint32_t len = be32(png, at);
    if (len < 2 || png.size() < at + 12 + len) return;
    if (png[at + 8] == '\x78' && png[at + 9] == '\xda') return;
    png[at + 8] = '\x78';
    png[at + 9] = '\xda';
    const uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(png.data() + at + 4), len + 4));
    for (int i = 0; i < 4; ++i) png[at + 8 + len + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
}

std::string encode_png(const Image& image) {
    PngBuffer buf;
    PngError err;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_fail, png_warn);
    if (!png) throw Error(Code::Internal, "libpng could not start a PNG.");
    png_infop info = png_create_info_struct(png);
    struct Guard {
        png_structp* p;
        png_infop* i;
        ~Guard() { png_destroy_write_struct(p, i); }
    } guard{&png, &info};
    if (!info) throw Error(Code::Internal, "libpng could not start a PNG.");
    png_set_write_fn(png, &buf, png_append, png_flush);
    const size_t raw = (static_cast<size_t>(image.width) * image.channels + 1) * image.height;
    if (!encode_rows(png, info, image, raw)) throw Error(Code::Io, std::string("libpng failed: ") + err.message + ".");
    normalize_zlib_window(buf.data);
    return buf.data;
}

}  // namespace

namespace {

// os.makedirs(dir, exist_ok=True)
void make_dirs(const std::string& dir) {
    struct stat st{};
    if (dir.empty() || stat(dir.c_str(), &st) == 0) return;
    const size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0) make_dirs(dir.substr(0, slash));
    if (::mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST)
        throw Error(Code::Io, "Cannot create folder " + dir + " (" + std::strerror(errno) + ").");
}

}  // namespace

void atomic_write(const std::string& path, const std::string& data) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    make_dirs(dir);
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string tmpl = dir + "/.tmp-XXXXXX" + base;
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    const int fd = mkstemps(name.data(), static_cast<int>(base.size()));
    if (fd < 0) throw Error(Code::Io, "Cannot write " + path + " (" + std::strerror(errno) + ").");
    const std::string tmp(name.data());
    size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n <= 0) {
            const int err = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw Error(Code::Io, "Cannot write " + path + " (" + std::strerror(err) + ").");
        }
        done += static_cast<size_t>(n);
    }
    const mode_t mask = ::umask(0);
    ::umask(mask);
    ::fchmod(fd, 0666 & ~mask);                       // mkstemp makes 0600; give the usual file mode
    if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw Error(Code::Io, "Cannot write " + path + " (" + std::strerror(err) + ").");
    }
}

void write_png(const std::string& path, const Image& image) { atomic_write(path, encode_png(image)); }

}  // namespace far
