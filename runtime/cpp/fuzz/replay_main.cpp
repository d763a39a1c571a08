// The corpus replayer: a fuzz target's LLVMFuzzerTestOneInput over files, without libFuzzer,
// so the ordinary build replays tests/fuzz/cpp/<target>/ as a test (tests/test_cpp_fuzz.py).
//   far-fuzz-replay-<target> FILE...       exit 0 when every file passes; a finding aborts
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::ifstream f(argv[i], std::ios::binary);
        if (!f) {
            std::fprintf(stderr, "cannot read %s\n", argv[i]);
            return 2;
        }
        const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        std::fprintf(stderr, "%s\n", argv[i]);      // the file a crash was on is the last line
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    }
    std::printf("replayed %d files\n", argc - 1);
    return 0;
}
