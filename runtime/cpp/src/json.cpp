#include "json.h"

#include "errors.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace far {

class JsonParser {
public:
    explicit JsonParser(const std::string& s) : s_(s) {}

    Json document() {
        Json v = value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("extra data after the JSON value");
        return v;
    }

private:
    static constexpr int kMaxDepth = 64;
    const std::string& s_;
    size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& what) {
        std::ostringstream os;
        os << what << " at character " << pos_;
        throw JsonError{os.str()};
    }

    void skip_ws() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }

    bool literal(const char* word) {
        const size_t n = std::strlen(word);
        if (s_.compare(pos_, n, word) == 0) {
            pos_ += n;
            return true;
        }
        return false;
    }

    Json value(int depth) {
        if (depth > kMaxDepth) fail("nesting too deep");
        skip_ws();
        if (pos_ >= s_.size()) fail("unexpected end of data");
        Json v;
        const char c = s_[pos_];
        if (c == '{') {
            v.type_ = Json::Type::Object;
            ++pos_;
            skip_ws();
            if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return v; }
            for (;;) {
                skip_ws();
                if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
                std::string key = string();
                skip_ws();
                if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
                ++pos_;
                Json item = value(depth + 1);
                bool replaced = false;                     // Python keeps the last duplicate
                for (auto& m : v.object_) if (m.first == key) { m.second = std::move(item); replaced = true; break; }
                if (!replaced) v.object_.emplace_back(std::move(key), std::move(item));
                skip_ws();
                if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
                if (pos_ < s_.size() && s_[pos_] == '}') { ++pos_; return v; }
                fail("expected ',' or '}'");
            }
        }
        if (c == '[') {
            v.type_ = Json::Type::Array;
            ++pos_;
            skip_ws();
            if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return v; }
            for (;;) {
                v.array_.push_back(value(depth + 1));
                skip_ws();
                if (pos_ < s_.size() && s_[pos_] == ',') { ++pos_; continue; }
                if (pos_ < s_.size() && s_[pos_] == ']') { ++pos_; return v; }
                fail("expected ',' or ']'");
            }
        }
        if (c == '"') {
            v.type_ = Json::Type::String;
            v.string_ = string();
            return v;
        }
        if (literal("true")) { v.type_ = Json::Type::Bool; v.bool_ = true; return v; }
        if (literal("false")) { v.type_ = Json::Type::Bool; return v; }
        if (literal("null")) return v;
        if (c == '-' || (c >= '0' && c <= '9')) { v.type_ = Json::Type::Number; v.number_ = number(v.integral_); return v; }
        fail("unexpected character");
    }

    // A number without a fraction or exponent is an integer, as json.loads makes an int of
    // it and not of 16.0 (bundle.py's _is_int); parsed with from_chars, whatever the locale.
    double number(bool& integral) {
        const size_t start = pos_;
        if (s_[pos_] == '-') ++pos_;
        auto digits = [&] {
            const size_t d = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == d) fail("malformed number");
        };
        if (pos_ < s_.size() && s_[pos_] == '0') ++pos_; else digits();
        integral = true;
        if (pos_ < s_.size() && s_[pos_] == '.') { ++pos_; digits(); integral = false; }
        if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            ++pos_;
            integral = false;
            if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
            digits();
        }
        double value = 0.0;
        const auto res = std::from_chars(s_.data() + start, s_.data() + pos_, value);
        if (res.ec == std::errc::result_out_of_range) value = s_[start] == '-' ? -HUGE_VAL : HUGE_VAL;
        return value;
    }

    unsigned hex4() {
        if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; ++i) {
            const char h = s_[pos_++];
            v <<= 4;
            if (h >= '0' && h <= '9') v |= h - '0';
            else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
            else fail("bad \\u escape");
        }
        return v;
    }

    static void utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) out += static_cast<char>(cp);
        else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
        else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    std::string string() {
        ++pos_;   // opening quote
        std::string out;
        while (pos_ < s_.size()) {
            const char c = s_[pos_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
            if (c != '\\') { out += c; continue; }
            if (pos_ >= s_.size()) break;
            const char e = s_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
                        pos_ += 2;
                        const unsigned lo = hex4();
                        if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        else fail("bad surrogate pair");
                    }
                    utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
        fail("unterminated string");
    }
};

Json Json::parse(const std::string& text) { return JsonParser(text).document(); }

bool Json::is_integer() const {
    return type_ == Type::Number && integral_ && std::isfinite(number_);
}

const Json* Json::find(const std::string& key) const {
    if (type_ != Type::Object) return nullptr;
    for (const auto& m : object_) if (m.first == key) return &m.second;
    return nullptr;
}

std::string Json::py_type() const {
    switch (type_) {
        case Type::Null: return "NoneType";
        case Type::Bool: return "bool";
        case Type::Number: return integral_ ? "int" : "float";
        case Type::String: return "str";
        case Type::Array: return "list";
        case Type::Object: return "dict";
    }
    return "";
}

std::string Json::repr() const {
    switch (type_) {
        case Type::Null: return "None";
        case Type::Bool: return bool_ ? "True" : "False";
        case Type::Number: {
            if (is_integer() && std::fabs(number_) < 1e15) return std::to_string(static_cast<long long>(number_));
            return py_float(number_);
        }
        case Type::String: return "'" + string_ + "'";
        case Type::Array: return "[...]";
        case Type::Object: return "{...}";
    }
    return "";
}

}  // namespace far
