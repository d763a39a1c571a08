#include "errors.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

namespace far {

std::string py_repr(const std::string& s) {
    const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
    const char quote = dq ? '"' : '\'';
    static const char* hex = "0123456789abcdef";
    std::string out(1, quote);
    for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\\' || c == static_cast<unsigned char>(quote)) { out += '\\'; out += static_cast<char>(c); }
        else if (c == '\n') out += "\\n";
        else if (c == '\r') out += "\\r";
        else if (c == '\t') out += "\\t";
        else if (c < 0x20 || c == 0x7f) { out += "\\x"; out += hex[c >> 4]; out += hex[c & 15]; }
        else if (c == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                   static_cast<unsigned char>(s[i + 1]) <= 0xa0) {
            const unsigned char cp = static_cast<unsigned char>(s[++i]);      // U+0080..U+00A0: C1 controls, NBSP
            out += "\\x"; out += hex[cp >> 4]; out += hex[cp & 15];
        } else if (c == 0xe2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
                   (static_cast<unsigned char>(s[i + 2]) == 0xa8 || static_cast<unsigned char>(s[i + 2]) == 0xa9)) {
            out += static_cast<unsigned char>(s[i + 2]) == 0xa8 ? "\\u2028" : "\\u2029";   // line and paragraph separators
            i += 2;
        } else out += static_cast<char>(c);
    }
    return out + quote;
}

// Locale-independent: std::to_chars gives the shortest round-trip digits, laid out as
// Python's repr lays them out (fixed for exponents -4..15, else d.ddde+XX).
std::string py_float(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[64];
    const auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
    std::string sci(buf, res.ptr);
    const size_t e = sci.find('e');
    const int exp = std::atoi(sci.c_str() + e + 1);
    if (exp < -4 || exp >= 16) return sci;
    std::string mant = sci.substr(0, e), sign;
    if (mant[0] == '-') { sign = "-"; mant.erase(0, 1); }
    std::string digits;
    for (char c : mant) if (c != '.') digits += c;
    std::string out;
    if (exp < 0) {
        out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    } else if (static_cast<int>(digits.size()) <= exp + 1) {
        out = digits + std::string(static_cast<size_t>(exp + 1) - digits.size(), '0') + ".0";
    } else {
        out = digits.substr(0, static_cast<size_t>(exp + 1)) + "." + digits.substr(static_cast<size_t>(exp + 1));
    }
    return sign + out;
}

}  // namespace far
