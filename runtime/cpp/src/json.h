// JSON for manifest.json: nlohmann/json (Debian's nlohmann-json3-dev, header-only), with the
// document bounded before it is parsed and the few helpers the manifest checks need to speak
// as Python's json.loads + repr() speak.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace far {

// Objects keep their keys in document order (a duplicate key keeps its first place and its
// last value, as a Python dict does), so graphs are checked in the order Python checks them.
using Json = nlohmann::ordered_json;

struct JsonError {
    std::string message;   // the parser's reason, printable ASCII only
};

struct JsonTooLarge {};    // more values than any manifest has (kMaxJsonValues)

constexpr int kMaxJsonDepth = 64;            // nesting of arrays and objects
constexpr size_t kMaxJsonValues = 1u << 20;  // arrays, objects and separators: bounds the parsed tree

// Parse one document: RFC 8259, UTF-8, nothing after the value. A document nested deeper
// than kMaxJsonDepth is a JsonError; one with more than kMaxJsonValues values is JsonTooLarge
// (both found by a scan before the parser allocates anything).
Json parse_json(const std::string& text);

// A number written as an integer (16, not 16.0 or 1e3), as json.loads makes an int of it;
// true/false are not integers (bundle.py's _is_int).
bool is_integer(const Json& v);
// The integer in [lo, hi] into out; false for anything else (another type, a float, out of range).
bool integer_in(const Json& v, long long lo, long long hi, long long& out);
// obj[key], or nullptr when obj is not an object or has no such key.
const Json* find(const Json& obj, const std::string& key);

std::string repr(const Json& v);      // Python's repr() of what json.loads makes of v
// repr(v) cut to `limit` characters and "..." (the Python runtime's limits.shown): a value
// from the file in a sentence, never the whole of a large one.
std::string shown(const Json& v, size_t limit);
std::string py_type(const Json& v);   // its type name: dict, list, str, int, float, bool, NoneType

}  // namespace far
