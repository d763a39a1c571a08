// What every fuzz target holds its code to: a loader of untrusted bytes either accepts them
// or throws far::Error with one sentence (one line, ending in '.'), of the code the caller
// expects; anything else (another exception, a crash, an ASan report) is a finding.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "errors.h"

namespace far_fuzz {

inline void check_sentence(const far::Error& e, std::initializer_list<far::Code> allowed) {
    const std::string s = e.what();
    bool code_ok = false;
    for (far::Code c : allowed) code_ok = code_ok || c == e.code();
    if (!code_ok || s.empty() || s.back() != '.' || s.find('\n') != std::string::npos ||
        s.find('\r') != std::string::npos) {
        std::fprintf(stderr, "not one sentence of an expected code (%d): %s\n", static_cast<int>(e.code()), s.c_str());
        std::abort();
    }
}

}  // namespace far_fuzz
