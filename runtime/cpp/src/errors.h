// The one exception type of the library: a code for callers and one sentence for users.
// The C API turns it into a status code plus message; nothing throws across that boundary.
#pragma once

#include <stdexcept>
#include <string>

namespace far {

enum class Code {
    Input = 1,     // an option or request the bundle cannot serve (FarError in Python)
    Bundle = 2,    // missing, malformed or tampered bundle (FarError in Python)
    Provider = 3,  // an execution provider that is missing or would fall back to the CPU
    Runtime = 4,   // ONNX Runtime failed while running a graph
    Io = 5,        // a file could not be written
    Internal = 6,  // out of memory or a bug
};

class Error : public std::runtime_error {
public:
    Error(Code code, const std::string& sentence) : std::runtime_error(sentence), code_(code) {}
    Code code() const { return code_; }

private:
    Code code_;
};

// Python's repr() of a str, as the Python runtime's messages show them: quoted as Python
// quotes, with backslashes, quotes and control characters escaped, so no text from a file
// can break a sentence across lines.
std::string py_repr(const std::string& s);

// Python's str() of a float: shortest repr that round-trips ("3.0", "0.1", "nan", "inf").
std::string py_float(double v);

}  // namespace far
