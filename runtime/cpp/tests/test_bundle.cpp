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
    Json j = Json::parse(R"({"a": [1, 2.5, "x\u00e9", true, null], "b": {"c": -3e2}})");
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j.find("a")->items().size(), 5u);
    EXPECT_EQ(j.find("a")->items()[2].str(), "x\xc3\xa9");
    EXPECT_DOUBLE_EQ(j.find("b")->find("c")->number(), -300.0);
    for (const char* bad : {"{", "[1,]", "{\"a\" 1}", "01", "\"\\x\"", "nan", "[1] 2"}) EXPECT_THROW(Json::parse(bad), JsonError) << bad;
    EXPECT_THROW(Json::parse(std::string(100, '[') + std::string(100, ']')), JsonError);
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
    EXPECT_EQ(with(R"("kind": "causal")"), pre + "model.class_tokens is None, not an integer >= 1; rebuild the bundle.");
    auto swapped = [&](const std::string& from, const std::string& to) {
        std::string f = ok;
        f.replace(f.find(from), from.size(), to);
        return with(f);
    };
    EXPECT_EQ(swapped(R"("depth": 2)", R"("depth": true)"), pre + "model.depth is True, not an integer >= 1; rebuild the bundle.");
    EXPECT_EQ(swapped(R"("context": 17)", R"("context": 18)"),
              pre + "model.context is 18, not class_tokens + seq_len - 1 = 17; rebuild the bundle.");
    EXPECT_EQ(swapped(R"("heads": 2)", R"("heads": 4)"),
              pre + "model.heads x model.head_dim is 64, not model.cond_dim 32; rebuild the bundle.");
}

TEST(Json, IntegersAreWrittenAsIntegers) {
    const Json j = Json::parse(R"([16, 16.0, 1e3, -2])");
    EXPECT_TRUE(j.items()[0].is_integer());
    EXPECT_FALSE(j.items()[1].is_integer());
    EXPECT_FALSE(j.items()[2].is_integer());
    EXPECT_TRUE(j.items()[3].is_integer());
    EXPECT_EQ(j.items()[1].repr(), "16.0");
    EXPECT_EQ(j.items()[2].repr(), "1000.0");
    EXPECT_EQ(py_float(1e-5), "1e-05");
    EXPECT_EQ(py_float(1e16), "1e+16");
    EXPECT_EQ(py_float(123456.0), "123456.0");
    EXPECT_EQ(py_float(-0.25), "-0.25");
    EXPECT_EQ(py_float(0.1), "0.1");
}
