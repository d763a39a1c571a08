// The sampling accelerations (accel.h; far_runtime/accel.py): syntax, per-iteration
// schedule and the plans they shape. Expected values are accel.py's for the same inputs.
#include <gtest/gtest.h>

#include "accel.h"
#include "errors.h"
#include "plan.h"

using namespace far;

namespace {

std::string refusal(const std::optional<std::string>& h, const std::optional<std::string>& i, const std::optional<std::string>& c) {
    try {
        parse_accel(h, i, c);
    } catch (const Error& e) {
        EXPECT_EQ(e.code(), Code::Input);
        return e.what();
    }
    return "";
}

std::vector<int> known_of(const std::vector<Iteration>& its) {
    std::vector<int> k;
    for (const auto& it : its) k.push_back(it.n_known());
    return k;
}

std::vector<bool> runs_of(const std::vector<Iteration>& its) {
    std::vector<bool> r;
    for (const auto& it : its) r.push_back(it.n_pred() > 0);
    return r;
}

std::string unconds(const std::vector<IterationOptions>& opts) {
    std::string s;
    for (const auto& o : opts) s += "-CFU"[static_cast<int>(o.uncond)];
    return s;
}

}  // namespace

TEST(Accel, OffByDefault) {
    EXPECT_TRUE(parse_accel(std::nullopt, std::nullopt, std::nullopt).off());
    const AccelOptions a = parse_accel(" 8 :\xc2\xa0" "1 ", "\t.25:1.", "0:1");   // str.strip's whitespace, NBSP included
    EXPECT_EQ(a.head, (std::vector<long long>{8, 1}));
    EXPECT_FALSE(a.head_list);
    EXPECT_EQ(a.lo, 0.25);
    EXPECT_EQ(a.hi, 1.0);
    EXPECT_EQ(a.w, 0);
    EXPECT_EQ(a.n, 1);
    EXPECT_EQ(parse_accel("8,8,4", std::nullopt, std::nullopt).head, (std::vector<long long>{8, 8, 4}));
    EXPECT_EQ(parse_accel(std::nullopt, "0.1:0.30000000000000004", std::nullopt).hi, 0.30000000000000004);
}

TEST(Accel, RefusalsArePythonsSentences) {
    const auto none = std::nullopt;
    EXPECT_EQ(refusal("8:1:2", none, none), "--head-schedule must be 'A:B' (e.g. '8:1'), got '8:1:2'.");
    EXPECT_EQ(refusal("", none, none), "--head-schedule takes non-negative whole numbers, got ''.");
    EXPECT_EQ(refusal("8,-1", none, none), "--head-schedule takes non-negative whole numbers, got '8,-1'.");
    EXPECT_EQ(refusal("8,0", none, none), "--head-schedule values must be at least 1, got '8,0'.");
    EXPECT_EQ(refusal("1000001:1", none, none), "--head-schedule values must be at least 1, got '1000001:1'.");
    EXPECT_EQ(refusal(none, "0.5", none),
              "--cfg-interval must be 'LO:HI', fractions of the iterations such as '0.25:1', got '0.5'.");
    EXPECT_EQ(refusal(none, "1e-1:1", none),
              "--cfg-interval takes two plain decimal fractions 'LO:HI' such as '0.25:1', got '1e-1:1'.");
    EXPECT_EQ(refusal(none, ".:1", none),
              "--cfg-interval takes two plain decimal fractions 'LO:HI' such as '0.25:1', got '.:1'.");
    EXPECT_EQ(refusal(none, "0.5:0.5", none), "--cfg-interval must satisfy 0 <= LO < HI <= 1, got '0.5:0.5'.");
    EXPECT_EQ(refusal(none, none, "2"), "--cfg-cache must be 'W:N' (unconditional rows computed on the first W iterations "
                                        "and every N-th after), e.g. '2:3', got '2'.");
    EXPECT_EQ(refusal(none, none, "2:0"), "--cfg-cache 'W:N' needs N >= 1, got '2:0'.");
    EXPECT_EQ(refusal("x", "0.5", "2:0"), "--head-schedule takes non-negative whole numbers, got 'x'.");   // in accel.py's order
}

TEST(Accel, HeadStepsAnnealAsAccelPy) {
    const AccelOptions a = parse_accel("8:1", "0.25:1", "2:3");
    const auto its = mask_schedule(16, 16);
    const auto opts = resolve(a, 16, 8, true, known_of(its), 16, true, 0, runs_of(its), true);
    std::vector<int> steps;
    for (const auto& o : opts) steps.push_back(o.head_steps);
    EXPECT_EQ(steps, (std::vector<int>{8, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 1, 1}));
    EXPECT_EQ(unconds(opts), "----FFUUFUUFUUFU");
    const AccelOptions mar = parse_accel("100:10", std::nullopt, std::nullopt);
    std::vector<int> ddpm;
    for (int s = 0; s < 16; ++s) ddpm.push_back(head_steps_at(mar, 100, s, 16, s, false));
    EXPECT_EQ(ddpm, (std::vector<int>{100, 94, 88, 83, 77, 71, 66, 60, 55, 49, 43, 38, 32, 26, 21, 15}));
}

TEST(Accel, CacheSkipsIterationsThatPredictNothing) {
    const auto its = mask_schedule(32, 16);
    const auto opts = resolve(parse_accel(std::nullopt, std::nullopt, "1:4"), 32, 8, true, known_of(its), 16, true, 0,
                              runs_of(its), true);
    EXPECT_EQ(unconds(opts), "FFUUUFUUUFUUUFUCCCCCCCCCCCCCCCCU");
    const auto off = resolve(parse_accel(std::nullopt, std::nullopt, "1:4"), 32, 8, false, known_of(its), 16, true, 0,
                             runs_of(its), true);
    EXPECT_EQ(unconds(off), std::string(32, '-'));      // cfg 1: no guidance, nothing cached
}

TEST(Accel, ScheduleMustFitTheHead) {
    const auto its = mask_schedule(4, 16);
    auto fails = [&](const char* spec, bool shortcut, const char* want) {
        try {
            resolve(parse_accel(spec, std::nullopt, std::nullopt), 4, 8, true, known_of(its), 16, shortcut, 100, runs_of(its), true);
            ADD_FAILURE() << spec;
        } catch (const Error& e) {
            EXPECT_STREQ(e.what(), want);
        }
    };
    fails("8,8", true, "--head-schedule lists 2 values but the run has 4 iterations; give one per iteration or 'A:B'.");
    fails("8:3", true, "--head-schedule values are shortcut head steps, powers of two in 1..128; got 3.");
    fails("256:1", true, "--head-schedule values are shortcut head steps, powers of two in 1..128; got 256.");
    fails("101:3", false, "--head-schedule values are DDPM steps per iteration, at most the model's 100 (its randomness "
                          "holds that many step-noise rows); got 101.");
    try {
        resolve(parse_accel(std::nullopt, std::nullopt, "1:2"), 16, 2, true, std::vector<int>(16, 0), 16, true, 0,
                std::vector<bool>(16, true), false);
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "--cfg-cache reuses the unconditional condition across iterations of FAR and MAR; FAR-Causal's "
                               "KV cache needs every unconditional step, so it does not apply.");
    }
}

TEST(Accel, PlanRowsFollowTheOptions) {
    const AccelOptions a = parse_accel(std::nullopt, "0:0.5", "0:2");
    const ShapePlan p = make_plan(16, false, 2, 8, 8, true, [](int) { return std::string("fused"); }, 8, a, 0);
    // Guided on s < 4: a refresh where s % 2 == 0, a reuse (B rows) between; unguided after.
    const int rows[] = {4, 2, 4, 2, 2, 2, 2, 2};
    for (int s = 0; s < 8; ++s) {
        const IterationPlan& ip = p.iterations[s];
        EXPECT_EQ(ip.rows, rows[s]) << s;
        EXPECT_EQ(ip.calls[0].dim("batch"), rows[s]);
        EXPECT_EQ(ip.calls[0].dim("n_pred"), ip.uncond == Uncond::Refresh ? ip.it.before : ip.it.n_pred());
        EXPECT_EQ(ip.calls[1].dim("zrows"), (s < 4 ? 4 : 2) * ip.it.n_pred());   // the head: 2B rows where guided
    }
    EXPECT_EQ(p.rows, 4);
    const ShapePlan mixed = make_plan(16, false, 1, 4, 8, false, [](int o) { return std::string(o == 8 ? "fused" : "step"); }, 8,
                                      parse_accel("8,4,2,1", std::nullopt, std::nullopt), 0);
    EXPECT_EQ(mixed.head_mode, "mixed");
    EXPECT_EQ(mixed.head_steps, 8);
    EXPECT_EQ(mixed.iterations[1].calls.size(), 1u + 4u);   // the backbone, four head_step calls
}

TEST(Accel, CausalRowsEndAfterTheLastGuidedToken) {
    const CausalPlan p = make_causal_plan(16, 3, 2, true, [](int) { return std::string("fused"); }, 8,
                                          parse_accel("2:1", "0.25:0.5", std::nullopt));
    for (int i = 0; i < 16; ++i) {
        EXPECT_EQ(p.tokens[i].rows, i < 8 ? 6 : 3) << i;
        EXPECT_EQ(p.tokens[i].guided, i >= 4 && i < 8) << i;
        EXPECT_EQ(p.tokens[i].head_steps, i == 0 ? 2 : 1) << i;
        EXPECT_EQ(p.tokens[i].head[0].dim("zrows"), p.tokens[i].guided ? 6 : 3);
    }
    EXPECT_EQ(p.tokens[8].backbone.key(), "causal_step|batch=3|slot=0");
    EXPECT_EQ(p.distinct().size(), 8u);   // prefill, 2 slots x 2 row counts, o1 at 2 zrows counts, o2 at 1
}
