// System states across the patches on a VM (patch/system_states.h): the
// core's compatibility rule and what klp_get_prev_state() answers, on
// synthetic records.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "patch/system_states.h"

namespace hvpatch::test {
namespace {

AppliedPatch patch_with_states(const std::string& name, std::vector<AppliedPatch::State> states,
                               PatchPhase phase = PatchPhase::Applied) {
    AppliedPatch p;
    p.name = name;
    p.phase = phase;
    p.states = std::move(states);
    return p;
}

PatchState declared(std::uint64_t id, std::uint64_t version) { return {id, version, 0, 0}; }

TEST(SystemStates, ACumulativePatchMustKeepEveryStateOnTheVm) {
    VmState s;
    s.patches = {patch_with_states("v1", {{1, 1, 0x1000}})};
    EXPECT_EQ(state_refusal(s, "v2", {declared(1, 1)}, true), "");
    EXPECT_EQ(state_refusal(s, "v2", {declared(1, 2)}, true), "") << "a newer version takes over";
    std::string why = state_refusal(s, "v2", {}, true);
    EXPECT_NE(why.find("patch v1 introduced system state 1 (version 1)"), std::string::npos) << why;
    EXPECT_EQ(state_refusal(s, "v2", {}, false), "") << "a non-cumulative patch need not declare it";
}

TEST(SystemStates, AnOlderVersionIsNeverCompatible) {
    VmState s;
    s.patches = {patch_with_states("state2", {{1, 2, 0x1000}})};
    std::string why = state_refusal(s, "state", {declared(1, 1)}, true);
    EXPECT_NE(why.find("system state 1 in version 1, older than version 2 of patch state2"), std::string::npos) << why;
    EXPECT_NE(state_refusal(s, "state", {declared(1, 1)}, false), "") << "replace or not";
}

TEST(SystemStates, OnlyLivePatchesOtherThanTheNewOneCount) {
    VmState s;
    s.patches = {patch_with_states("gone", {{1, 9, 0x1000}}, PatchPhase::Freeing),
                 patch_with_states("same", {{2, 9, 0x2000}})};
    EXPECT_EQ(state_refusal(s, "same", {}, true), "") << "a freeing patch and the patch itself do not count";
}

TEST(SystemStates, PrevStateWalksThePatchesBeforeInOrder) {
    VmState s;
    s.patches = {patch_with_states("a", {{1, 1, 0xa1}, {2, 1, 0xa2}}), patch_with_states("b", {{1, 2, 0xb1}}),
                 patch_with_states("new", {{1, 3, 0xc1}}, PatchPhase::Patching),
                 patch_with_states("later", {{1, 4, 0xd1}})};
    auto prev = previous_states(s, s.patches[2]);
    EXPECT_EQ(prev, (std::vector<std::pair<std::uint64_t, std::uint64_t>>{{1, 0xa1}, {2, 0xa2}, {1, 0xb1}}))
        << "the patches before it, in order; not itself, not later ones";
}

TEST(SystemStates, PrevStateKeepsReplacedPatchesUntilFreed) {
    VmState s;
    s.patches = {patch_with_states("v1", {{1, 1, 0xa1}}, PatchPhase::Freeing),
                 patch_with_states("other", {{7, 1, 0xe1}}, PatchPhase::Freeing),
                 patch_with_states("v2", {{1, 1, 0xb1}})};
    s.patches[2].replace = true;
    s.patches[2].replaces = {"v1"};
    auto prev = previous_states(s, s.patches[2]);
    EXPECT_EQ(prev, (std::vector<std::pair<std::uint64_t, std::uint64_t>>{{1, 0xa1}}))
        << "v1 is still on the core's list during v2's post_patch; an unrelated freeing patch is not";
}

}  // namespace
}  // namespace hvpatch::test
