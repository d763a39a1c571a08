#include "npz.h"

#include <zlib.h>

#include "images.h"

namespace far {
namespace {

void put16(std::string& s, uint32_t v) { s += static_cast<char>(v & 0xff); s += static_cast<char>((v >> 8) & 0xff); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xffff); put16(s, v >> 16); }

// The .npy format, version 1.0: magic, header length, a Python-dict header padded to 64 bytes.
std::string npy(const NpyArray& a) {
    // numpy writes "(3,)" for one dim and "(2, 3)" for more.
    std::string shape = "(";
    for (size_t i = 0; i < a.shape.size(); ++i) {
        if (i) shape += ", ";
        shape += std::to_string(a.shape[i]);
    }
    shape += a.shape.size() == 1 ? ",)" : ")";
    std::string header = "{'descr': '" + a.descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    const size_t total = 10 + header.size() + 1;
    header += std::string((64 - total % 64) % 64, ' ') + "\n";
    std::string out = "\x93NUMPY";
    out += '\x01';
    out += '\x00';
    put16(out, static_cast<uint32_t>(header.size()));
    out += header;
    out.append(static_cast<const char*>(a.data), a.bytes);
    return out;
}

}  // namespace

std::string npz_bytes(const std::vector<NpyArray>& arrays) {
    std::string zip, central;
    for (const NpyArray& a : arrays) {
        const std::string body = npy(a);
        const std::string name = a.name + ".npy";
        const uint32_t crc = static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size())));
        const uint32_t offset = static_cast<uint32_t>(zip.size());
        put32(zip, 0x04034b50); put16(zip, 20); put16(zip, 0); put16(zip, 0);     // local header, stored
        put16(zip, 0); put16(zip, 0x21);                                            // time, date (1980-01-01)
        put32(zip, crc); put32(zip, static_cast<uint32_t>(body.size())); put32(zip, static_cast<uint32_t>(body.size()));
        put16(zip, static_cast<uint32_t>(name.size())); put16(zip, 0);
        zip += name;
        zip += body;
        put32(central, 0x02014b50); put16(central, 20); put16(central, 20); put16(central, 0); put16(central, 0);
        put16(central, 0); put16(central, 0x21);
        put32(central, crc); put32(central, static_cast<uint32_t>(body.size())); put32(central, static_cast<uint32_t>(body.size()));
        put16(central, static_cast<uint32_t>(name.size())); put16(central, 0); put16(central, 0);
        put16(central, 0); put16(central, 0); put32(central, 0); put32(central, offset);
        central += name;
    }
    const uint32_t cd_offset = static_cast<uint32_t>(zip.size());
    zip += central;
    put32(zip, 0x06054b50); put16(zip, 0); put16(zip, 0);
    put16(zip, static_cast<uint32_t>(arrays.size())); put16(zip, static_cast<uint32_t>(arrays.size()));
    put32(zip, static_cast<uint32_t>(central.size())); put32(zip, cd_offset); put16(zip, 0);
    return zip;
}

void save_randomness(const std::string& path, const Randomness& r) {
    std::vector<NpyArray> arrays = {
        {"orders", "<i8", {r.batch, r.seq_len}, r.orders.data(), r.orders.size() * sizeof(int64_t)},
        {"noise", "<f4", {r.batch, r.seq_len, r.token_dim}, r.noise.data(), r.noise.size() * sizeof(float)},
    };
    if (r.steps > 0)
        arrays.push_back({"step_noise", "<f4", {r.steps, r.batch, r.seq_len, r.token_dim}, r.step_noise.data(),
                          r.step_noise.size() * sizeof(float)});
    atomic_write(path, npz_bytes(arrays));
}

}  // namespace far
