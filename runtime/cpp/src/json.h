// A small strict JSON reader for manifest.json (RFC 8259; depth-limited, no extensions).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace far {

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Json() = default;
    static Json parse(const std::string& text);   // throws JsonError

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::Null; }
    bool is_number() const { return type_ == Type::Number; }
    bool is_string() const { return type_ == Type::String; }
    bool is_array() const { return type_ == Type::Array; }
    bool is_object() const { return type_ == Type::Object; }
    bool is_integer() const;                       // a number written as an integer (16, not 16.0)

    double number() const { return number_; }
    bool boolean() const { return bool_; }
    const std::string& str() const { return string_; }
    const std::vector<Json>& items() const { return array_; }
    const std::vector<std::pair<std::string, Json>>& members() const { return object_; }
    const Json* find(const std::string& key) const;   // nullptr when absent or not an object

    // The value as JSON text, the way Python's repr shows small values in messages.
    std::string repr() const;
    std::string py_type() const;   // the type json.loads makes of it: dict, list, str, int, float, bool, NoneType

private:
    friend class JsonParser;
    Type type_ = Type::Null;
    bool bool_ = false;
    bool integral_ = false;   // written without a fraction or exponent
    double number_ = 0.0;
    std::string string_;
    std::vector<Json> array_;
    std::vector<std::pair<std::string, Json>> object_;
};

struct JsonError {
    std::string message;
};

}  // namespace far
