// Grid layout, the PNG stream (decoded back with libpng) and the .npz container.
#include <gtest/gtest.h>
#include <png.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "errors.h"
#include "images.h"
#include "npz.h"

using namespace far;

TEST(Images, GridPlacesImagesWithPadding) {
    std::vector<uint8_t> imgs(3 * 2 * 2 * 3);
    for (size_t i = 0; i < imgs.size(); ++i) imgs[i] = static_cast<uint8_t>(i);
    const Image g = grid(imgs.data(), 3, 2, 2, 3);
    EXPECT_EQ(g.width, 2 * 4 + 2);
    EXPECT_EQ(g.height, 2 * 4 + 2);
    EXPECT_EQ(g.pixels[0], 255);
    EXPECT_EQ(g.pixels[(2 * g.width + 2) * 3], imgs[0]);                 // image 0 at (2, 2)
    EXPECT_EQ(g.pixels[(2 * g.width + 6) * 3], imgs[12]);                // image 1 at (2, 6)
    EXPECT_EQ(g.pixels[(6 * g.width + 2) * 3], imgs[24]);                // image 2 at (6, 2)
}

TEST(Images, PngDecodesToTheSamePixels) {
    Image img{5, 7, 3, {}};
    for (int i = 0; i < 5 * 7 * 3; ++i) img.pixels.push_back(static_cast<uint8_t>(i * 37));
    char tmpl[] = "/tmp/far-png-XXXXXX";
    const std::string path = std::string(mkdtemp(tmpl)) + "/x.png";
    write_png(path, img);
    png_image r{};
    r.version = PNG_IMAGE_VERSION;
    ASSERT_TRUE(png_image_begin_read_from_file(&r, path.c_str()));
    r.format = PNG_FORMAT_RGB;
    std::vector<uint8_t> back(PNG_IMAGE_SIZE(r));
    ASSERT_TRUE(png_image_finish_read(&r, nullptr, back.data(), 0, nullptr));
    EXPECT_EQ(r.width, 7u);
    EXPECT_EQ(r.height, 5u);
    EXPECT_EQ(back, img.pixels);
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string bytes = ss.str();
    EXPECT_EQ(bytes.find("IDAT", bytes.find("IDAT") + 1), std::string::npos);   // one IDAT chunk
}

TEST(Npz, HoldsNpyMembersWithPaddedHeaders) {
    const int64_t a[3] = {1, 2, 3};
    const std::string z = npz_bytes({{"orders", "<i8", {3}, a, sizeof a}});
    EXPECT_EQ(z.substr(0, 4), std::string("PK\x03\x04", 4));
    const size_t npy = z.find("\x93NUMPY");
    ASSERT_NE(npy, std::string::npos);
    const size_t hlen = static_cast<uint8_t>(z[npy + 8]) | (static_cast<uint8_t>(z[npy + 9]) << 8);
    EXPECT_EQ((10 + hlen) % 64, 0u);
    EXPECT_NE(z.find("'shape': (3,)"), std::string::npos);
}

TEST(Images, ALibpngErrorIsOneSentenceAndNothingIsWritten) {
    char tmpl[] = "/tmp/far-png-test-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    Image empty;                                   // width 0: libpng refuses the IHDR
    empty.height = 4;
    try {
        write_png(dir + "/x.png", empty);
        FAIL() << "a zero-width PNG was written";
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), Code::Io);
        EXPECT_EQ(std::string(e.what()).rfind("libpng failed: ", 0), 0u) << e.what();
    }
    std::ifstream f(dir + "/x.png");
    EXPECT_FALSE(f.good());
}
