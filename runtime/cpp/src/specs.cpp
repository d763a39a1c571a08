#include "specs.h"

namespace far {
namespace {

Dim sym(const char* s) { Dim d; d.symbol = s; return d; }
Dim num(int v) { Dim d; d.value = v; return d; }
TensorDesc t(const char* name, const char* dtype, std::vector<Dim> dims) { return {name, dtype, std::move(dims)}; }

}  // namespace

std::map<std::string, GraphInfo> component_specs(const ModelInfo& m, const std::vector<int>& head_steps) {
    const int L = m.seq_len, C = m.token_dim, D = m.cond_dim, H = m.image_size;
    std::map<std::string, GraphInfo> specs;
    GraphInfo& bb = specs["backbone"];
    bb.inputs = {t("tokens", "float32", {sym("batch"), num(L), num(C)}), t("labels", "int64", {sym("batch")}),
                 t("known_idx", "int64", {sym("batch"), sym("n_known")}), t("pred_idx", "int64", {sym("batch"), sym("n_pred")})};
    bb.outputs = {t("z", "float32", {sym("batch"), sym("n_pred"), num(D)})};
    GraphInfo& hs = specs["head_step"];
    if (!m.diffusion()) {
        hs.inputs = {t("x", "float32", {sym("rows"), num(C)}), t("t", "float32", {sym("rows")}),
                     t("d", "float32", {sym("rows")}), t("z", "float32", {sym("rows"), num(D)})};
        hs.outputs = {t("v", "float32", {sym("rows"), num(C)})};
        for (int o : head_steps) {
            GraphInfo& f = specs["head_fused_o" + std::to_string(o)];
            f.inputs = {t("noise", "float32", {sym("rows"), num(C)}), t("z", "float32", {sym("zrows"), num(D)}),
                        t("cfg", "float32", {num(1)})};
            f.outputs = {t("tokens", "float32", {sym("rows"), num(C)})};
        }
    } else {
        hs.inputs = {t("x", "float32", {sym("rows"), num(C)}), t("t", "float32", {sym("rows")}),
                     t("z", "float32", {sym("rows"), num(D)})};
        hs.outputs = {t("out", "float32", {sym("rows"), num(2 * C)})};
    }
    if (m.causal()) {   // variants/causal.py: the shared head and decoder graphs, no backbone
        specs.erase("backbone");
        const std::vector<Dim> cache = {num(m.depth), num(2), sym("batch"), num(m.heads), num(m.context), num(m.head_dim)};
        const TensorDesc z = t("z", "float32", {sym("batch"), num(D)});
        GraphInfo& prefill = specs["causal_prefill"];
        prefill.inputs = {t("labels", "int64", {sym("batch")})};
        prefill.outputs = {z, t("cache", "float32", cache)};
        GraphInfo& step = specs["causal_step"];
        step.inputs = {t("token", "float32", {sym("batch"), num(C)}), t("pos", "int64", {num(1)}),
                       t("cache", "float32", cache)};
        step.outputs = {z, t("cache_out", "float32", cache)};
        GraphInfo& rec = specs["causal_recompute"];
        rec.inputs = {t("tokens", "float32", {sym("batch"), sym("n_known"), num(C)}), t("labels", "int64", {sym("batch")})};
        rec.outputs = {z};
    }
    GraphInfo& vae = specs["vae_decoder"];
    vae.inputs = {t("tokens", "float32", {sym("batch"), num(L), num(C)})};
    vae.outputs = {t("image", "float32", {sym("batch"), num(m.image_channels), num(H), num(H)})};
    for (auto& [name, g] : specs) g.name = name;
    return specs;
}

}  // namespace far
