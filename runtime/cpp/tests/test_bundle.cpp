// Bundle checks on real files in a temporary folder: JSON, structure, containment, sha256.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "bundle.h"
#include "errors.h"
#include "json.h"

using namespace far;

namespace {

std::string temp_dir() {
    char tmpl[] = "/tmp/far-bundle-test-XXXXXX";
    return mkdtemp(tmpl);
}

void write(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::string manifest(const std::string& file, const std::string& files_json) {
    return R"({"format": "far-export-bundle", "format_version": 1,
      "model": {"seq_len": 16, "token_dim": 4, "cond_dim": 32, "num_classes": 10, "head_kind": "shortcut",
                "diffusion_steps": 0, "image_size": 8, "image_channels": 3},
      "max_batch": 8, "head_steps": [1],
      "graphs": {"head_step": {"file": ")" + file + R"(", "files": )" + files_json + R"(,
                       "spec": {"inputs": [{"name": "x", "dtype": "float32", "dims": ["rows", 4]},
                                           {"name": "t", "dtype": "float32", "dims": ["rows"]},
                                           {"name": "d", "dtype": "float32", "dims": ["rows"]},
                                           {"name": "z", "dtype": "float32", "dims": ["rows", 32]}],
                                "outputs": [{"name": "v", "dtype": "float32", "dims": ["rows", 4]}]}}}})";
}

std::string error_of(const std::string& root) {
    try {
        load_bundle(root);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST(Json, ParsesAndRefuses) {
    const Json j = parse_json(R"({"a": [1, 2.5, "x\u00e9", true, null], "b": {"c": -3e2}})");
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(find(j, "a")->size(), 5u);
    EXPECT_EQ((*find(j, "a"))[2].get<std::string>(), "x\xc3\xa9");
    EXPECT_DOUBLE_EQ(find(*find(j, "b"), "c")->get<double>(), -300.0);
    for (const char* bad : {"{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "nan", "[1] 2"}) EXPECT_THROW(parse_json(bad), JsonError) << bad;
    EXPECT_THROW(parse_json(std::string(100, '[') + std::string(100, ']')), JsonError);
    try {                                     // found by fuzz_manifest: nlohmann's out_of_range, not a parse_error
        parse_json("[1e309]");
        ADD_FAILURE() << "1e309 parsed";
    } catch (const JsonError& e) {
        EXPECT_EQ(e.message, "number overflow parsing '1e309'");
    }
    EXPECT_NO_THROW(parse_json(std::string(kMaxJsonDepth, '[') + std::string(kMaxJsonDepth, ']')));
    std::string wide = "[";
    for (size_t i = 0; i < kMaxJsonValues; ++i) wide += "0,";
    EXPECT_THROW(parse_json(wide + "0]"), JsonTooLarge);
}

TEST(Json, ReprIsPythons) {
    const Json j = parse_json(R"({"a": [1, "it's", "x\ny", null, true, 2.0], "b": {"c": "q\"'"}})");
    EXPECT_EQ(repr(j), R"({'a': [1, "it's", 'x\ny', None, True, 2.0], 'b': {'c': 'q"\''}})");
    EXPECT_EQ(py_type(j), "dict");
    std::string zeros = "[0";
    for (int i = 0; i < 100000; ++i) zeros += ", 0";
    EXPECT_EQ(shown(parse_json(zeros + "]"), 10), "[0, 0, 0, ...");     // cut without the whole repr
    EXPECT_EQ(shown(parse_json("\"short\""), 10), "'short'");
    EXPECT_EQ(py_repr("a\x01\tb"), "'a\\x01\\tb'");
    EXPECT_EQ(py_repr("\xe2\x80\xa8"), "'\\u2028'");      // a line separator never breaks a sentence
}

TEST(Bundle, LoadsAGoodBundleAndRefusesTampering) {
    const std::string d = temp_dir();
    write(d + "/g.onnx", "graph bytes");
    const std::string digest = sha256_file(d + "/g.onnx");
    EXPECT_EQ(digest.size(), 64u);
    write(d + "/manifest.json", manifest("g.onnx", R"({"g.onnx": ")" + digest + "\"}"));
    const Bundle b = load_bundle(d);
    EXPECT_EQ(b.model.seq_len, 16);
    EXPECT_EQ(b.graph("head_step").inputs[0].dims[0].symbol, "rows");
    EXPECT_EQ(b.graph("head_step").inputs[0].dims[1].value, 4);
    write(d + "/g.onnx", "graph bytez");
    EXPECT_EQ(error_of(d), "Graph file " + d + "/g.onnx does not match the sha256 in the manifest (modified or corrupt); rebuild the bundle.");
    unlink((d + "/g.onnx").c_str());
    EXPECT_EQ(error_of(d), "Graph file " + d + "/g.onnx named in the manifest is missing.");
}

TEST(Bundle, RefusesPathsOutsideTheFolder) {
    const std::string d = temp_dir();
    const std::string outside = temp_dir() + "/secret.onnx";
    write(outside, "secret");
    const std::string digest = sha256_file(outside);
    write(d + "/manifest.json", manifest("../x.onnx", R"({"../x.onnx": ")" + digest + "\"}"));
    EXPECT_NE(error_of(d).find("lies outside the bundle folder"), std::string::npos);
    write(d + "/manifest.json", manifest(outside, "{\"" + outside + "\": \"" + digest + "\"}"));
    EXPECT_NE(error_of(d).find("lies outside the bundle folder"), std::string::npos);
    ASSERT_EQ(symlink(outside.c_str(), (d + "/link.onnx").c_str()), 0);
    write(d + "/manifest.json", manifest("link.onnx", R"({"link.onnx": ")" + digest + "\"}"));
    EXPECT_NE(error_of(d).find("lies outside the bundle folder"), std::string::npos);
}

TEST(Bundle, RefusesAFileNotAmongTheHashedFiles) {
    const std::string d = temp_dir();
    write(d + "/g.onnx", "graph");
    write(d + "/manifest.json", manifest("g.onnx", R"({"other.onnx": ")" + std::string(64, 'a') + "\"}"));
    EXPECT_NE(error_of(d).find("is not among the graph's hashed files"), std::string::npos);
}

TEST(Bundle, OneSentenceForMissingAndMalformed) {
    EXPECT_EQ(error_of("/nonexistent/bundle"), "Bundle folder /nonexistent/bundle does not exist; create one with 'far-export build'.");
    const std::string d = temp_dir();
    EXPECT_EQ(error_of(d), d + " has no manifest.json, so it is not a far-export bundle (or its export did not finish).");
    write(d + "/manifest.json", "{not json");
    EXPECT_EQ(error_of(d).rfind(d + "/manifest.json is not valid JSON (", 0), 0u);
    write(d + "/manifest.json", R"({"format": "far-export-bundle", "format_version": 2})");
    EXPECT_EQ(error_of(d), d + "/manifest.json has bundle format version 2, but this runtime reads version 1; rebuild the bundle with this toolkit.");
    write(d + "/manifest.json", R"({"format": "far-export-bundle", "format_version": 1, "model": {"seq_len": "16"}})");
    EXPECT_NE(error_of(d).find("is not a usable bundle manifest: model.seq_len is '16'"), std::string::npos);
}

TEST(Bundle, RefusesASpecThatDiffersFromTheModel) {
    const std::string d = temp_dir();
    write(d + "/g.onnx", "graph bytes");
    const std::string digest = sha256_file(d + "/g.onnx");
    std::string m = manifest("g.onnx", R"({"g.onnx": ")" + digest + "\"}");
    const std::string x = R"("x", "dtype": "float32", "dims": ["rows", 4])";
    m.replace(m.find(x), x.size(), R"("x", "dtype": "float32", "dims": ["rows", 4000])");     // a huge x buffer
    write(d + "/manifest.json", m);
    EXPECT_EQ(error_of(d), d + "/manifest.json is not a usable bundle manifest: the spec of graph 'head_step' differs from "
                               "the one its model entry implies; rebuild the bundle.");
}

TEST(Bundle, ChecksTheCausalModelEntryAsPythonDoes) {
    const std::string d = temp_dir();
    write(d + "/g.onnx", "graph bytes");
    const std::string good = manifest("g.onnx", R"({"g.onnx": ")" + sha256_file(d + "/g.onnx") + "\"}");
    const std::string anchor = R"("image_channels": 3)";
    auto with = [&](const std::string& fields) {
        std::string m = good;
        m.replace(m.find(anchor), anchor.size(), anchor + ", " + fields);
        write(d + "/manifest.json", m);
        return error_of(d);
    };
    const std::string ok = R"("kind": "causal", "class_tokens": 2, "context": 17, "depth": 2, "heads": 2, "head_dim": 16)";
    EXPECT_EQ(with(ok), "");
    EXPECT_TRUE(load_bundle(d).model.causal());
    EXPECT_EQ(load_bundle(d).model.context, 17);
    EXPECT_EQ(with(R"("kind": null)"), "");            // null is absent: FAR/MAR
    EXPECT_FALSE(load_bundle(d).model.causal());
    const std::string pre = d + "/manifest.json is not a usable bundle manifest: ";
    EXPECT_EQ(with(R"("kind": "gpt")"), pre + "model.kind is 'gpt', not 'causal' (or absent for FAR/MAR); rebuild the bundle.");
    EXPECT_EQ(with(R"("kind": "causal")"), pre + "model.class_tokens is None, not an integer in 1..4096; rebuild the bundle.");
    auto swapped = [&](const std::string& from, const std::string& to) {
        std::string f = ok;
        f.replace(f.find(from), from.size(), to);
        return with(f);
    };
    EXPECT_EQ(swapped(R"("depth": 2)", R"("depth": true)"), pre + "model.depth is True, not an integer in 1..1024; rebuild the bundle.");
    EXPECT_EQ(swapped(R"("context": 17)", R"("context": 18)"),
              pre + "model.context is 18, not class_tokens + seq_len - 1 = 17; rebuild the bundle.");
    EXPECT_EQ(swapped(R"("heads": 2)", R"("heads": 4)"),
              pre + "model.heads x model.head_dim is 64, not model.cond_dim 32; rebuild the bundle.");
}

TEST(Json, IntegersAreWrittenAsIntegers) {
    const Json j = parse_json(R"([16, 16.0, 1e3, -2, 18446744073709551615, true])");
    EXPECT_TRUE(is_integer(j[0]));
    EXPECT_FALSE(is_integer(j[1]));
    EXPECT_FALSE(is_integer(j[2]));
    EXPECT_TRUE(is_integer(j[3]));
    EXPECT_TRUE(is_integer(j[4]));
    EXPECT_FALSE(is_integer(j[5]));
    long long v = 0;
    EXPECT_FALSE(integer_in(j[4], 0, 1 << 30, v));
    EXPECT_TRUE(integer_in(j[3], -2, 0, v));
    EXPECT_EQ(v, -2);
    EXPECT_EQ(repr(j[1]), "16.0");
    EXPECT_EQ(repr(j[2]), "1000.0");
    EXPECT_EQ(repr(j[4]), "18446744073709551615");
    EXPECT_EQ(py_float(1e-5), "1e-05");
    EXPECT_EQ(py_float(1e16), "1e+16");
    EXPECT_EQ(py_float(123456.0), "123456.0");
    EXPECT_EQ(py_float(-0.25), "-0.25");
    EXPECT_EQ(py_float(0.1), "0.1");
}
