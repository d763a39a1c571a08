#include "json.h"

#include "errors.h"

namespace far {
namespace {

// One pass over the bytes before the parser runs: the nesting depth and the number of values
// (every '[', '{', ',' and ':' outside strings starts or separates one), so neither a deep
// nor a wide document reaches the parser. Strings are skipped with their escapes.
void check_bounds(const std::string& text) {
    int depth = 0;
    size_t values = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') ++i;
            else if (c == '"') in_string = false;
            continue;
        }
        switch (c) {
            case '"': in_string = true; break;
            case '[': case '{':
                if (++depth > kMaxJsonDepth) throw JsonError{"nesting too deep at character " + std::to_string(i)};
                [[fallthrough]];
            case ',': case ':':
                if (++values > kMaxJsonValues) throw JsonTooLarge{};
                break;
            case ']': case '}': --depth; break;
            default: break;
        }
    }
}

// nlohmann's "[json.exception.parse_error.101] parse error at line 1, column 2: syntax error
// while parsing value - ..." as "syntax error while parsing value - ... at character N" (and
// its out_of_range "number overflow parsing '1e309'" as that), in printable ASCII (its "last
// read" part quotes the document) and at most 200 characters.
std::string reason(const Json::exception& e) {
    std::string what = e.what();
    const size_t tag = what.find("] ");
    if (tag != std::string::npos) what = what.substr(tag + 2);
    const size_t at = what.rfind("parse error", 0) == 0 ? what.find(": ") : std::string::npos;
    if (at != std::string::npos) what = what.substr(at + 2);
    std::string out;
    for (char c : what.substr(0, 200)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
    if (const auto* pe = dynamic_cast<const Json::parse_error*>(&e))
        out += " at character " + std::to_string(pe->byte > 0 ? pe->byte - 1 : 0);
    return out;
}

}  // namespace

Json parse_json(const std::string& text) {
    check_bounds(text);
    try {
        return Json::parse(text);
    } catch (const Json::exception& e) {     // parse_error, and out_of_range for a number past a double (1e309)
        throw JsonError{reason(e)};
    }
}

bool is_integer(const Json& v) { return v.is_number_integer(); }

bool integer_in(const Json& v, long long lo, long long hi, long long& out) {
    if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (hi < 0 || u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo))) return false;
        out = static_cast<long long>(u);
        return true;
    }
    if (!v.is_number_integer()) return false;
    const int64_t i = v.get<int64_t>();
    if (i < lo || i > hi) return false;
    out = i;
    return true;
}

const Json* find(const Json& obj, const std::string& key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
}

std::string repr(const Json& v) {
    switch (v.type()) {
        case Json::value_t::null: return "None";
        case Json::value_t::boolean: return v.get<bool>() ? "True" : "False";
        case Json::value_t::number_integer: return std::to_string(v.get<int64_t>());
        case Json::value_t::number_unsigned: return std::to_string(v.get<uint64_t>());
        case Json::value_t::number_float: return py_float(v.get<double>());
        case Json::value_t::string: return py_repr(v.get_ref<const std::string&>());
        case Json::value_t::array: {
            std::string s = "[";
            for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + repr(v[i]);
            return s + "]";
        }
        case Json::value_t::object: {
            std::string s = "{";
            bool first = true;
            for (const auto& [key, value] : v.items()) {
                s += (first ? "" : ", ") + py_repr(key) + ": " + repr(value);
                first = false;
            }
            return s + "}";
        }
        default: return "b''";   // binary: never made by the text parser
    }
}

std::string shown(const Json& v, size_t limit) {
    if ((v.is_array() || v.is_object()) && v.size() > limit) {     // never builds the repr of a huge value
        Json head = v.is_array() ? Json::array() : Json::object();
        size_t n = 0;
        for (auto it = v.begin(); it != v.end() && n < limit; ++it, ++n) {
            if (v.is_array()) head.push_back(*it);
            else head[it.key()] = it.value();
        }
        return shown(head, limit);
    }
    const std::string r = repr(v);
    return r.size() <= limit ? r : r.substr(0, limit) + "...";
}

std::string py_type(const Json& v) {
    if (v.is_object()) return "dict";
    if (v.is_array()) return "list";
    if (v.is_string()) return "str";
    if (v.is_boolean()) return "bool";
    if (v.is_number_integer()) return "int";
    if (v.is_number_float()) return "float";
    return "NoneType";
}

}  // namespace far
