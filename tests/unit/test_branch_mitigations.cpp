// derive_branch_mitigations() on synthetic guest values: each decision and
// each cross-check that refuses a guest whose bits hvpatch would misread.
#include "introspect/branch_mitigations.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvpatch::test {
namespace {

using ::testing::HasSubstr;

// spectre_v2_mitigation of 5.10-7.x: NONE, RETPOLINE, LFENCE, EIBRS,
// EIBRS_RETPOLINE, EIBRS_LFENCE, IBRS; its_mitigation of 6.12 (no AUTO):
// OFF, VMEXIT_ONLY, ALIGNED_THUNKS, RETPOLINE_STUFF.
BranchMitigationInputs guest(std::uint32_t spectre_v2) {
    BranchMitigationInputs in;
    in.caps.assign(24, 0);
    in.spectre_v2_enabled = spectre_v2;
    in.v2_retpoline = 1;
    in.v2_lfence = 2;
    in.v2_eibrs_retpoline = 4;
    in.v2_eibrs_lfence = 5;
    in.x86_return_thunk = 0xffffffff81e02000;
    in.bare_return_thunk = 0xffffffff81e02000;
    in.its_mitigation = 0;
    in.its_aligned_thunks = 2;
    in.thunks_initialized = 0;
    return in;
}
void set(BranchMitigationInputs& in, unsigned feature) { in.caps[feature / 32] |= 1u << (feature % 32); }

TEST(BranchMitigations, NoMitigationInlinesEverything) {
    auto m = derive_branch_mitigations(guest(0));
    EXPECT_EQ(m.problem, "");
    EXPECT_FALSE(m.retpoline || m.retpoline_lfence || m.rethunk || m.indirect_its_thunks || m.call_depth_tracking);
}

TEST(BranchMitigations, RetpolineModesMatchTheirBits) {
    for (std::uint32_t mode : {1u, 4u}) {
        auto in = guest(mode);
        set(in, kFeatureRetpoline);
        auto m = derive_branch_mitigations(in);
        EXPECT_EQ(m.problem, "") << mode;
        EXPECT_TRUE(m.retpoline);
        EXPECT_FALSE(m.retpoline_lfence);
    }
    for (std::uint32_t mode : {2u, 5u}) {
        auto in = guest(mode);
        set(in, kFeatureRetpoline);
        set(in, kFeatureRetpolineLfence);
        auto m = derive_branch_mitigations(in);
        EXPECT_EQ(m.problem, "") << mode;
        EXPECT_TRUE(m.retpoline && m.retpoline_lfence);
    }
}

TEST(BranchMitigations, BitsThatContradictTheSpectreV2ModeAreAProblem) {
    auto m = derive_branch_mitigations(guest(1));  // retpoline mode, bit clear
    EXPECT_THAT(m.problem, HasSubstr("spectre_v2_enabled (1) implies 1/0"));
    auto in = guest(3);  // eIBRS: no retpoline, yet the bit reads set
    set(in, kFeatureRetpoline);
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("read 1/0"));
}

TEST(BranchMitigations, WithoutTheSpectreV2StateNothingIsCrossChecked) {
    auto in = guest(0);
    in.spectre_v2_enabled.reset();
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("no spectre_v2_enabled"));
    in = guest(0);
    in.v2_eibrs_lfence.reset();
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("SPECTRE_V2_* enumerators"));
}

TEST(BranchMitigations, AMovedReturnThunkNeedsTheRethunkBit) {
    auto in = guest(0);
    in.x86_return_thunk = 0xffffffff81e02040;  // retbleed_return_thunk, say
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("X86_FEATURE_RETHUNK"));
    set(in, kFeatureRethunk);
    auto m = derive_branch_mitigations(in);
    EXPECT_EQ(m.problem, "");
    EXPECT_TRUE(m.rethunk);
}

TEST(BranchMitigations, ItsThunksFollowTheItsMitigationUnlessRetpolinesAreOn) {
    auto in = guest(0);
    in.its_mitigation = 2;
    EXPECT_TRUE(derive_branch_mitigations(in).indirect_its_thunks);
    in = guest(1);
    set(in, kFeatureRetpoline);
    in.its_mitigation = 2;
    EXPECT_FALSE(derive_branch_mitigations(in).indirect_its_thunks);
    in = guest(0);
    in.its_mitigation = 3;  // RETPOLINE_STUFF
    EXPECT_FALSE(derive_branch_mitigations(in).indirect_its_thunks);
    in = guest(0);
    in.its_mitigation.reset();  // a kernel without ITS support
    auto m = derive_branch_mitigations(in);
    EXPECT_FALSE(m.indirect_its_thunks);
    EXPECT_EQ(m.problem, "");
    in = guest(0);
    in.its_aligned_thunks.reset();
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("ITS_MITIGATION_ALIGNED_THUNKS"));
}

TEST(BranchMitigations, CallDepthTrackingFromThunksInitialized) {
    auto in = guest(0);
    in.thunks_initialized = 1;
    EXPECT_TRUE(derive_branch_mitigations(in).call_depth_tracking);
    in.thunks_initialized.reset();
    EXPECT_FALSE(derive_branch_mitigations(in).call_depth_tracking);
}

TEST(BranchMitigations, TooFewCapabilityWordsIsAProblem) {
    auto in = guest(0);
    in.caps.resize(4);
    EXPECT_THAT(derive_branch_mitigations(in).problem, HasSubstr("4 capability words"));
}

}  // namespace
}  // namespace hvpatch::test
