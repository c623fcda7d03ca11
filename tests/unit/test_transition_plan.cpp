// The per-function stacks and the transition plans computed from a VM's
// record (patch/transition_plan.h), on synthetic records: which sites move,
// from which bytes to which, where each side of a trampoline goes, and
// which code the stack check looks for.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "guest-shim/trampoline.h"
#include "hvpatch/error.h"
#include "patch/guest_livepatch.h"
#include "patch/transition_plan.h"

namespace hvpatch::test {
namespace {

constexpr std::uint64_t kVersionEntry = 0xffffffff81400000, kCmdlineEntry = 0xffffffff81500000;
const std::vector<std::uint8_t> kNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};

// A patch `name` at `base` redirecting the functions at `entries`; each
// function's new code, trampoline and jumps are distinct per patch.
AppliedPatch patch(const std::string& name, std::uint64_t base, std::vector<std::uint64_t> entries,
                   PatchPhase phase = PatchPhase::Applied) {
    AppliedPatch p;
    p.name = name;
    p.phase = phase;
    p.base = base;
    p.size = 0x3000;
    p.text_size = 0x1000;
    std::uint8_t tag = static_cast<std::uint8_t>(base >> 16);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        RedirectedFunction f;
        f.object = "vmlinux";
        f.name = entries[i] == kVersionEntry ? "version_proc_show" : "cmdline_proc_show";
        f.new_symbol = name + "_" + f.name;
        f.entry = entries[i];
        f.size = 0x40;
        f.site = entries[i] + 4;
        f.new_address = base + 0x100 * (i + 1);
        f.new_size = 0x20;
        f.trampoline = base + 0x800 + i * shim::trampoline_size();
        f.original = kNop;
        f.to_trampoline = {0xe9, tag, static_cast<std::uint8_t>(i), 0x01, 0x00};
        f.to_new = {0xe9, tag, static_cast<std::uint8_t>(i), 0x02, 0x00};
        p.functions.push_back(f);
    }
    return p;
}

VmState state_of(std::vector<AppliedPatch> patches) {
    VmState s;
    s.patches = std::move(patches);
    return s;
}

const SiteMove* move_at(const TransitionPlan& plan, std::uint64_t entry) {
    for (const auto& m : plan.moves)
        if (m.site == entry + 4) return &m;
    return nullptr;
}

bool checks(const TransitionPlan& plan, std::uint64_t begin, std::uint64_t end) {
    for (const auto& c : plan.checked)
        if (c.start == begin && c.end == end) return true;
    return false;
}

TEST(TransitionPlan, FirstPatchMovesFromTheOriginalCode) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry}, PatchPhase::Patching)});
    TransitionPlan plan = plan_patching(s, "a");
    EXPECT_EQ(plan.target, kKlpPatched);
    ASSERT_EQ(plan.moves.size(), 1u);
    const SiteMove& m = plan.moves[0];
    const RedirectedFunction& f = s.patches[0].functions[0];
    EXPECT_EQ(m.rest_before, kNop);
    EXPECT_EQ(m.via, f.to_trampoline);
    EXPECT_EQ(m.rest_after, f.to_new);
    EXPECT_EQ(m.unpatched_target, f.site + 5) << "unpatched tasks continue after the ftrace NOP";
    EXPECT_EQ(m.patched_target, f.new_address);
    EXPECT_TRUE(checks(plan, kVersionEntry, kVersionEntry + 0x40)) << "tasks leave the original function";
    EXPECT_TRUE(checks(plan, f.trampoline, f.trampoline + shim::trampoline_size()));
    EXPECT_TRUE(plan.replaced.empty());
}

TEST(TransitionPlan, StackedPatchMovesFromThePatchBelow) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry, kCmdlineEntry}),
                          patch("b", 0xffffffffc0020000, {kVersionEntry}, PatchPhase::Patching)});
    TransitionPlan plan = plan_patching(s, "b");
    ASSERT_EQ(plan.moves.size(), 1u);
    const RedirectedFunction& below = s.patches[0].functions[0];
    const RedirectedFunction& f = s.patches[1].functions[0];
    EXPECT_EQ(plan.moves[0].rest_before, below.to_new);
    EXPECT_EQ(plan.moves[0].unpatched_target, below.new_address);
    EXPECT_EQ(plan.moves[0].patched_target, f.new_address);
    EXPECT_TRUE(checks(plan, below.new_address, below.new_address + below.new_size));
    EXPECT_FALSE(checks(plan, kVersionEntry, kVersionEntry + 0x40)) << "the original no longer runs";
    EXPECT_EQ(function_stack(s, f.site).size(), 2u);
    EXPECT_EQ(function_stack(s, f.site).back().patch->name, "b");
}

TEST(TransitionPlan, RevertingTheTopFallsBackToThePatchBelow) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry}),
                          patch("b", 0xffffffffc0020000, {kVersionEntry}, PatchPhase::Unpatching)});
    TransitionPlan plan = plan_unpatching(s, "b");
    EXPECT_EQ(plan.target, kKlpUnpatched);
    ASSERT_EQ(plan.moves.size(), 1u);
    const RedirectedFunction& below = s.patches[0].functions[0];
    const RedirectedFunction& f = s.patches[1].functions[0];
    EXPECT_EQ(plan.moves[0].rest_before, f.to_new);
    EXPECT_EQ(plan.moves[0].rest_after, below.to_new);
    EXPECT_EQ(plan.moves[0].unpatched_target, below.new_address);
    EXPECT_TRUE(checks(plan, f.new_address, f.new_address + f.new_size)) << "tasks leave b's function";
}

TEST(TransitionPlan, RevertingThePatchBeneathMovesOnlyWhereItIsTheTop) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry, kCmdlineEntry}, PatchPhase::Unpatching),
                          patch("b", 0xffffffffc0020000, {kVersionEntry})});
    TransitionPlan plan = plan_unpatching(s, "a");
    ASSERT_EQ(plan.moves.size(), 1u) << "version_proc_show stays on b";
    EXPECT_EQ(move_at(plan, kVersionEntry), nullptr);
    const SiteMove* cmdline = move_at(plan, kCmdlineEntry);
    ASSERT_NE(cmdline, nullptr);
    EXPECT_EQ(cmdline->rest_after, kNop);
    // a's code under b may still be on a stack: checked all the same.
    const RedirectedFunction& covered = s.patches[0].functions[0];
    EXPECT_TRUE(checks(plan, covered.new_address, covered.new_address + covered.new_size));
    // What the site holds meanwhile: b's jump, untouched.
    EXPECT_EQ(expected_site_bytes(s, covered.site), s.patches[1].functions[0].to_new);
}

TEST(TransitionPlan, ReplaceTakesOverEveryLivePatchWithNopsForWhatItDoesNotPatch) {
    VmState s = state_of({patch("v1", 0xffffffffc0010000, {kVersionEntry, kCmdlineEntry}),
                          patch("gone", 0xffffffffc0030000, {kCmdlineEntry}, PatchPhase::Freeing)});
    AppliedPatch v2 = patch("v2", 0xffffffffc0020000, {kVersionEntry}, PatchPhase::Patching);
    auto nops = replace_nops(s, "v2", v2.functions);
    ASSERT_EQ(nops.size(), 1u) << "one nop for cmdline_proc_show, however many patches redirect it";
    EXPECT_TRUE(nops[0].nop);
    EXPECT_EQ(nops[0].site, kCmdlineEntry + 4);
    EXPECT_EQ(nops[0].to_new, kNop);
    EXPECT_EQ(replaced_by(s, "v2"), std::vector<std::string>{"v1"}) << "a freeing patch is not live";

    RedirectedFunction nop = nops[0];
    nop.trampoline = v2.base + 0x900;
    nop.to_trampoline = {0xe9, 0x02, 0x09, 0x01, 0x00};
    v2.functions.push_back(nop);
    v2.replace = true;
    v2.replaces = {"v1"};
    s.patches.push_back(v2);
    TransitionPlan plan = plan_patching(s, "v2");
    EXPECT_EQ(plan.replaced, std::vector<std::string>{"v1"});
    ASSERT_EQ(plan.moves.size(), 2u);
    const SiteMove* restored = move_at(plan, kCmdlineEntry);
    ASSERT_NE(restored, nullptr);
    const RedirectedFunction& v1_cmdline = s.patches[0].functions[1];
    EXPECT_EQ(restored->rest_before, v1_cmdline.to_new);
    EXPECT_EQ(restored->rest_after, kNop) << "the nop's site ends with the original bytes";
    EXPECT_EQ(restored->unpatched_target, v1_cmdline.new_address) << "unpatched tasks keep v1's code";
    EXPECT_EQ(restored->patched_target, kCmdlineEntry + 4 + 5) << "patched tasks run the original";
    EXPECT_TRUE(checks(plan, v1_cmdline.new_address, v1_cmdline.new_address + v1_cmdline.new_size));

    // Rolled back (or an interrupted replace reverted): the nop goes back to v1.
    s.patches.back().phase = PatchPhase::Unpatching;
    TransitionPlan back = plan_unpatching(s, "v2");
    const SiteMove* undone = move_at(back, kCmdlineEntry);
    ASSERT_NE(undone, nullptr);
    EXPECT_EQ(undone->rest_before, kNop);
    EXPECT_EQ(undone->rest_after, v1_cmdline.to_new);
    EXPECT_TRUE(checks(back, kCmdlineEntry, kCmdlineEntry + 0x40)) << "unpatching a nop checks the original";
}

TEST(TransitionPlan, RevertingACompletedReplaceRestoresTheOriginal) {
    AppliedPatch v2 = patch("v2", 0xffffffffc0020000, {kVersionEntry}, PatchPhase::Unpatching);
    v2.replace = true;
    v2.replaces = {"v1"};
    VmState s = state_of({v2});
    TransitionPlan plan = plan_unpatching(s, "v2");
    ASSERT_EQ(plan.moves.size(), 1u);
    EXPECT_EQ(plan.moves[0].rest_after, kNop);
    EXPECT_TRUE(plan.replaced.empty()) << "only a patching plan replaces";
}

TEST(TransitionPlan, ExpectedSiteBytesFollowTheTopsPhase) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry})});
    const RedirectedFunction& f = s.patches[0].functions[0];
    EXPECT_EQ(expected_site_bytes(s, f.site), f.to_new);
    s.patches[0].phase = PatchPhase::Patching;
    EXPECT_EQ(expected_site_bytes(s, f.site), f.to_trampoline);
    s.patches[0].phase = PatchPhase::Freeing;
    EXPECT_EQ(expected_site_bytes(s, f.site), kNop) << "nothing live: the original";
    EXPECT_TRUE(expected_site_bytes(s, 0x1234).empty()) << "a site no record knows";
}

TEST(TransitionPlan, CodeRunningNowIsTheNewestPatchsOrTheOriginal) {
    VmState s = state_of({patch("a", 0xffffffffc0010000, {kVersionEntry}), patch("b", 0xffffffffc0020000, {kVersionEntry})});
    RedirectedFunction candidate = s.patches[0].functions[0];
    CheckedFunction now = code_running_now(s, candidate);
    const RedirectedFunction& newest = s.patches[1].functions[0];
    EXPECT_EQ(now.start, newest.new_address);
    EXPECT_EQ(now.end, newest.new_address + newest.new_size);
    s.patches[1].phase = PatchPhase::Freeing;
    EXPECT_EQ(code_running_now(s, candidate).start, s.patches[0].functions[0].new_address);
    s.patches[0].phase = PatchPhase::Freeing;
    now = code_running_now(s, candidate);
    EXPECT_EQ(now.start, kVersionEntry);
    EXPECT_EQ(now.end, kVersionEntry + 0x40);
}

TEST(TransitionPlan, UnknownPatchIsAnInternalError) {
    VmState s;
    EXPECT_THROW(plan_patching(s, "nothing"), Error);
}

}  // namespace
}  // namespace hvpatch::test
