// The shape schedule and plan (schedule.py, plan.py).
#include <gtest/gtest.h>

#include "ddpm.h"
#include "errors.h"
#include "plan.h"

using namespace far;

TEST(Schedule, EveryTokenIsPredictedOnce) {
    for (int L : {16, 256})
        for (int K : {1, 2, 16, 64, 256}) {
            const auto its = mask_schedule(K, L);
            ASSERT_EQ(static_cast<int>(its.size()), K);
            int total = 0;
            for (const auto& it : its) total += it.n_pred();
            EXPECT_EQ(total, L);
            EXPECT_EQ(its.back().after, 0);
        }
}

TEST(Schedule, MoreIterationsThanTokensLeaveSomeEmpty) {
    int empty = 0;
    for (const auto& it : mask_schedule(64, 16)) empty += it.n_pred() == 0;
    EXPECT_EQ(empty, 48);   // schedule.py gives the same count
    for (const auto& it : mask_schedule(256, 256)) EXPECT_EQ(it.n_pred(), 1);
}

TEST(Schedule, LinearCfgRampsToTheFullScale) {
    const auto its = mask_schedule(4, 256);
    EXPECT_DOUBLE_EQ(cfg_at(its.back(), 3.0, "linear"), 1.0 + 2.0 * (256 - its.back().mask_len) / 256);
    EXPECT_DOUBLE_EQ(cfg_at(its[0], 3.0, "constant"), 3.0);
    EXPECT_THROW(cfg_at(its[0], 3.0, "cosine"), Error);
}

TEST(Schedule, RefusesBadKAndO) {
    try {
        check_k(0);
        FAIL();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "K (autoregressive iterations) must be an integer in 1..256, got 0.");
    }
    try {
        check_head_steps(3);
        FAIL();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "O (head steps) must be a power of two in 1..128, got 3.");
    }
    for (int o : {1, 2, 4, 8, 128}) EXPECT_TRUE(valid_head_steps(o));
    for (int o : {0, 3, 256, -2}) EXPECT_FALSE(valid_head_steps(o));
}

TEST(Plan, CallsAndDistinctShapes) {
    const ShapePlan fused = make_plan(16, false, 2, 4, 8, true, "fused", 8);
    EXPECT_EQ(fused.rows, 4);
    for (const auto& ip : fused.iterations) {
        ASSERT_EQ(ip.calls.size(), 2u);
        EXPECT_EQ(ip.calls[1].dim("zrows"), 4 * ip.it.n_pred());
        EXPECT_EQ(ip.calls[1].dim("rows"), 2 * ip.it.n_pred());
    }
    const ShapePlan step = make_plan(16, false, 1, 2, 4, false, "step", 8);
    EXPECT_EQ(step.iterations[0].calls.size(), 5u);
    EXPECT_EQ(step.distinct().size(), 4u);      // 2 backbone + 2 head shapes
    const ShapePlan mar = make_plan(16, true, 1, 2, 3, false, "fused", 8);
    EXPECT_EQ(mar.head_mode, "step");
    try {
        make_plan(16, false, 9, 4, 8, false, "fused", 8);
        FAIL();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "Batch size must be at least 1 and at most 8 (the bundle's max batch), got 9.");
    }
}

TEST(CausalPlan, OneTokenPerStepOverTwoCacheSlots) {
    const CausalPlan fused = make_causal_plan(16, 3, 2, true, "fused", 8);
    EXPECT_EQ(fused.rows, 6);
    EXPECT_EQ(fused.prefill.key(), "causal_prefill|batch=6");
    EXPECT_EQ(fused.steps[0].key(), "causal_step|batch=6|slot=0");
    EXPECT_EQ(fused.steps[1].key(), "causal_step|batch=6|slot=1");
    ASSERT_EQ(fused.head.size(), 1u);
    EXPECT_EQ(fused.head[0].key(), "head_fused_o2|rows=3|zrows=6");
    EXPECT_EQ(fused.distinct().size(), 4u);         // prefill, two slots, the head
    const CausalPlan step = make_causal_plan(16, 1, 4, false, "step", 8);
    EXPECT_EQ(step.head.size(), 4u);
    EXPECT_EQ(step.distinct().size(), 4u);
    EXPECT_EQ(step.head[0].dim("rows"), 1);
    try {
        make_causal_plan(16, 9, 2, false, "fused", 8);
        FAIL();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "Batch size must be at least 1 and at most 8 (the bundle's max batch), got 9.");
    }
}

TEST(CausalPlan, KIsLAndTheLinearRamp) {
    check_causal_k(0, 16);                           // left out
    check_causal_k(16, 16);
    try {
        check_causal_k(8, 16);
        FAIL();
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "FAR-Causal predicts one token per step, so K is L = 16 by construction; got K=8 (leave K out).");
    }
    EXPECT_DOUBLE_EQ(causal_cfg_at(15, 16, 3.0, "linear"), 3.0);
    EXPECT_DOUBLE_EQ(causal_cfg_at(0, 16, 3.0, "linear"), 1.0 + 2.0 / 16);
    EXPECT_DOUBLE_EQ(causal_cfg_at(4, 16, 3.0, "constant"), 3.0);
    EXPECT_THROW(causal_cfg_at(0, 16, 3.0, "cosine"), Error);
    EXPECT_EQ(step_position(1, 2), 2);               // token 0 sits after the P = 2 class slots
}

TEST(DDPM, RespacedScheduleIsConsistent) {
    const DDPMSchedule s = ddpm_schedule(100);
    ASSERT_EQ(s.steps(), 100);
    EXPECT_EQ(s.timestep_map.front(), 0);
    EXPECT_EQ(s.timestep_map.back(), 999);
    for (int i = 0; i < s.steps(); ++i) {
        EXPECT_GT(s.betas[i], 0.0);
        EXPECT_LE(s.log_var_min[i], s.log_var_max[i] + 1e-12);
    }
    EXPECT_EQ(ddpm_schedule(1).steps(), 1);
    EXPECT_THROW(ddpm_schedule(0), Error);
}

TEST(DDPM, RespacingAsMarPicksIt) {
    std::vector<int> ddim;
    for (int t = 0; t < 1000; t += 40) ddim.push_back(t);
    EXPECT_EQ(respaced_timesteps(1000, 25, "ddim25"), ddim);
    EXPECT_EQ(ddpm_schedule(25, "ddim25").steps(), 25);
    // 21 steps over 1000: the running index idx += 999/20 rounds differently from i * stride.
    const std::vector<int> s21 = respaced_timesteps(1000, 21);
    EXPECT_EQ(s21, (std::vector<int>{0, 50, 100, 150, 200, 250, 300, 350, 400, 450, 499, 549, 599, 649, 699, 749, 799, 849, 899, 949, 999}));
    EXPECT_EQ(respaced_timesteps(1000, 45, "10,15,20").size(), 45u);
    EXPECT_THROW(respaced_timesteps(1000, 0, "ddimx"), Error);
    EXPECT_THROW(respaced_timesteps(1000, 0, "10,a"), Error);
}
