#include "accel.h"

#include <algorithm>
#include <charconv>

#include "errors.h"
#include "plan.h"

namespace far {
namespace {

constexpr long long kMaxInt = 1000000;   // accel.py's MAX_INT

// The length of the whitespace character (str.isspace) starting at i, or 0: ASCII's and the
// Unicode spaces, in UTF-8.
size_t space_at(const std::string& s, size_t i) {
    const auto u = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
    const unsigned c = u(i);
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f)) return 1;
    if (c == 0xc2 && (u(i + 1) == 0x85 || u(i + 1) == 0xa0)) return 2;
    if (c == 0xe1 && u(i + 1) == 0x9a && u(i + 2) == 0x80) return 3;                 // U+1680
    if (c == 0xe2 && u(i + 1) == 0x80 && ((u(i + 2) >= 0x80 && u(i + 2) <= 0x8a) || u(i + 2) == 0xa8 ||
                                           u(i + 2) == 0xa9 || u(i + 2) == 0xaf))
        return 3;                                                                     // U+2000..200A, 2028, 2029, 202F
    if (c == 0xe2 && u(i + 1) == 0x81 && u(i + 2) == 0x9f) return 3;                 // U+205F
    if (c == 0xe3 && u(i + 1) == 0x80 && u(i + 2) == 0x80) return 3;                 // U+3000
    return 0;
}

// Python's str.strip() (UTF-8 text).
std::string py_strip(const std::string& s) {
    size_t a = 0, b = s.size();
    while (a < b) {
        const size_t n = space_at(s, a);
        if (!n) break;
        a += n;
    }
    for (bool more = true; more && b > a;) {
        more = false;
        for (size_t n = 1; n <= 3 && n <= b - a; ++n)
            if (space_at(s, b - n) == n) {
                b -= n;
                more = true;
                break;
            }
    }
    return s.substr(a, b - a);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out(1);
    for (char c : s) {
        if (c == sep) out.emplace_back();
        else out.back() += c;
    }
    return out;
}

bool digits(const std::string& s, size_t a, size_t b) {
    for (size_t i = a; i < b; ++i)
        if (s[i] < '0' || s[i] > '9') return false;
    return true;
}

// accel.py's _int: 1..7 ASCII digits, surrounding whitespace allowed.
long long whole(const std::string& text, const std::string& what, const std::string& spec) {
    const std::string t = py_strip(text);
    if (t.empty() || t.size() > 7 || !digits(t, 0, t.size()))
        throw Error(Code::Input, what + " takes non-negative whole numbers, got " + py_repr(spec) + ".");
    return std::stoll(t);
}

// accel.py's _DEC: [0-9]{1,9}(\.[0-9]{0,17})? or \.[0-9]{1,17}.
bool plain_fraction(const std::string& t) {
    const size_t dot = t.find('.');
    const size_t ip = dot == std::string::npos ? t.size() : dot;
    if (!digits(t, 0, ip) || ip > 9) return false;
    if (dot == std::string::npos) return ip >= 1;
    const size_t fp = t.size() - dot - 1;
    return digits(t, dot + 1, t.size()) && fp <= 17 && (ip >= 1 || fp >= 1);
}

double fraction(const std::string& t) {      // the nearest double, whatever the C locale says
    double v = 0.0;
    std::from_chars(t.data(), t.data() + t.size(), v);
    return v;
}

// accel.py's _pair: exactly one ':'.
void pair(const std::string& value, const std::string& what, const std::string& form, std::string& a, std::string& b) {
    if (std::count(value.begin(), value.end(), ':') != 1)
        throw Error(Code::Input, what + " must be " + form + ", got " + py_repr(value) + ".");
    const size_t colon = value.find(':');
    a = value.substr(0, colon);
    b = value.substr(colon + 1);
}

}  // namespace

AccelOptions parse_accel(const std::optional<std::string>& head_schedule, const std::optional<std::string>& cfg_interval,
                         const std::optional<std::string>& cfg_cache) {
    AccelOptions o;
    if (head_schedule) {
        const std::string& v = *head_schedule;
        const std::string what = "--head-schedule";
        o.head_on = true;
        if (v.find(':') != std::string::npos) {
            std::string a, b;
            pair(v, what, "'A:B' (e.g. '8:1')", a, b);
            o.head = {whole(a, what, v), whole(b, what, v)};
        } else {
            o.head_list = true;
            for (const std::string& part : split(v, ',')) o.head.push_back(whole(part, what, v));
        }
        for (long long n : o.head)
            if (n < 1 || n > kMaxInt) throw Error(Code::Input, what + " values must be at least 1, got " + py_repr(v) + ".");
    }
    if (cfg_interval) {
        const std::string& v = *cfg_interval;
        const std::string what = "--cfg-interval";
        std::string a, b;
        pair(v, what, "'LO:HI', fractions of the iterations such as '0.25:1'", a, b);
        a = py_strip(a);
        b = py_strip(b);
        if (!plain_fraction(a) || !plain_fraction(b))
            throw Error(Code::Input, what + " takes two plain decimal fractions 'LO:HI' such as '0.25:1', got " + py_repr(v) + ".");
        o.lo = fraction(a);
        o.hi = fraction(b);
        if (!(0.0 <= o.lo && o.lo < o.hi && o.hi <= 1.0))
            throw Error(Code::Input, what + " must satisfy 0 <= LO < HI <= 1, got " + py_repr(v) + ".");
        o.interval_on = true;
    }
    if (cfg_cache) {
        const std::string& v = *cfg_cache;
        const std::string what = "--cfg-cache";
        std::string a, b;
        pair(v, what, "'W:N' (unconditional rows computed on the first W iterations and every N-th after), e.g. '2:3'", a, b);
        o.w = whole(a, what, v);
        o.n = whole(b, what, v);
        if (o.n < 1) throw Error(Code::Input, what + " 'W:N' needs N >= 1, got " + py_repr(v) + ".");
        o.cache_on = true;
    }
    return o;
}

int head_steps_at(const AccelOptions& a, int default_steps, int n_known, int seq_len, int index, bool power_of_two) {
    if (!a.head_on) return default_steps;
    if (a.head_list) return static_cast<int>(a.head[index]);
    const long long A = a.head[0], B = a.head[1], L = seq_len;
    const long long num = A * L - (A - B) * n_known;    // (A + (B - A) n_known / L) * L, exact
    if (!power_of_two) return static_cast<int>(num / L);  // num > 0: floor
    long long p = 1;
    while (2 * p * L <= num) p *= 2;
    return static_cast<int>(p);
}

namespace {

// accel.py's check_head_schedule.
void check_head_schedule(const AccelOptions& a, int count, bool shortcut, int max_steps) {
    if (!a.head_on) return;
    if (a.head_list && static_cast<long long>(a.head.size()) != count)
        throw Error(Code::Input, "--head-schedule lists " + std::to_string(a.head.size()) + " values but the run has " +
                                     std::to_string(count) + " iterations; give one per iteration or 'A:B'.");
    if (shortcut) {
        for (long long v : a.head)
            if (!valid_head_steps(v))
                throw Error(Code::Input, "--head-schedule values are shortcut head steps, powers of two in 1.." +
                                             std::to_string(kMaxHeadSteps) + "; got " + std::to_string(v) + ".");
    } else {
        const long long most = *std::max_element(a.head.begin(), a.head.end());
        if (most > max_steps)
            throw Error(Code::Input, "--head-schedule values are DDPM steps per iteration, at most the model's " +
                                         std::to_string(max_steps) + " (its randomness holds that many step-noise rows); got " +
                                         std::to_string(most) + ".");
    }
}

}  // namespace

std::vector<IterationOptions> resolve(const AccelOptions& a, int count, int default_steps, bool use_cfg,
                                      const std::vector<int>& known, int seq_len, bool shortcut, int max_steps,
                                      const std::vector<bool>& runs, bool cache_allowed) {
    check_head_schedule(a, count, shortcut, max_steps);
    if (a.cache_on && !cache_allowed)
        throw Error(Code::Input, "--cfg-cache reuses the unconditional condition across iterations of FAR and MAR; FAR-Causal's "
                                 "KV cache needs every unconditional step, so it does not apply.");
    std::vector<IterationOptions> out;
    bool kept = false;
    for (int s = 0; s < count; ++s) {
        IterationOptions io;
        io.head_steps = head_steps_at(a, default_steps, known[s], seq_len, s, shortcut);
        // IEEE double products, compared as accel.py's guided_at compares them.
        io.guided = use_cfg && (!a.interval_on || (a.lo * count <= s && s < a.hi * count));
        if (io.guided && !a.cache_on) {
            io.uncond = Uncond::Computed;
        } else if (io.guided && runs[s]) {
            if (!kept || s < a.w || (s - a.w) % a.n == 0) {
                io.uncond = Uncond::Refresh;
                kept = true;
            } else {
                io.uncond = Uncond::Reuse;
            }
        } else if (io.guided) {
            io.uncond = Uncond::Computed;     // predicts nothing: no call, nothing refreshed
        }
        out.push_back(io);
    }
    return out;
}

}  // namespace far
