#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "hvpatch/error.h"
#include "patch/applied_state.h"
#include "sample_applied_patch.h"

namespace hvpatch {
namespace {

VmState sample_state() {
    VmState state;
    state.vm_key = "uuid-1b4e28ba-2fa1-41d2-883f-0016d3cca427";
    state.vm_uuid = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
    state.vm_name = "web-01";
    state.target = "qmp:/run/vm.sock";
    state.boot_id = "0123456789abcdef0123456789abcdef";
    state.kernel_release = "6.1.0-56-amd64";
    AppliedPatch p = test::sample_applied_patch();
    p.phase = PatchPhase::Patching;
    state.patches = {p};
    return state;
}

TEST(AppliedState, RoundTripsThroughJson) {
    VmState state = sample_state();
    VmState back = vm_state_from_json(to_json(state));
    EXPECT_EQ(to_json(back), to_json(state));
    ASSERT_EQ(back.patches.size(), 1u);
    EXPECT_EQ(back.patches[0].phase, PatchPhase::Patching);
    EXPECT_EQ(back.patches[0].functions[0].original, (std::vector<std::uint8_t>{0x0f, 0x1f, 0x44, 0x00, 0x00}));
    EXPECT_EQ(back.patches[0].code[0].name, "livepatch_cmdline_proc_show");
}

TEST(AppliedState, ReplaceAndNopsRoundTripAndOlderRecordsReadWithout) {
    VmState state = sample_state();
    state.patches[0].replace = true;
    state.patches[0].replaces = {"stream_v1", "stream_v2"};
    state.patches[0].functions[0].nop = true;
    VmState back = vm_state_from_json(to_json(state));
    EXPECT_TRUE(back.patches[0].replace);
    EXPECT_EQ(back.patches[0].replaces, (std::vector<std::string>{"stream_v1", "stream_v2"}));
    EXPECT_TRUE(back.patches[0].functions[0].nop);
    // A record written before stacked and cumulative patches has none of the three.
    auto old = to_json(sample_state());
    old["patches"][0].erase("replace");
    old["patches"][0].erase("replaces");
    old["patches"][0]["functions"][0].erase("nop");
    VmState read = vm_state_from_json(old);
    EXPECT_FALSE(read.patches[0].replace);
    EXPECT_TRUE(read.patches[0].replaces.empty());
    EXPECT_FALSE(read.patches[0].functions[0].nop);
}

TEST(AppliedState, OnlyPatchingAppliedAndUnpatchingAreLive) {
    AppliedPatch p;
    for (PatchPhase phase : {PatchPhase::Loading, PatchPhase::Patching, PatchPhase::Applied, PatchPhase::Unpatching,
                             PatchPhase::Freeing}) {
        p.phase = phase;
        EXPECT_EQ(is_live(p), phase != PatchPhase::Loading && phase != PatchPhase::Freeing) << to_string(phase);
    }
}

TEST(AppliedState, EveryPhaseHasAName) {
    for (PatchPhase p : {PatchPhase::Loading, PatchPhase::Patching, PatchPhase::Applied, PatchPhase::Unpatching,
                         PatchPhase::Freeing})
        EXPECT_EQ(patch_phase_from_string(to_string(p)), p);
    EXPECT_THROW(patch_phase_from_string("half-applied"), Error);
}

TEST(AppliedState, MalformedRecordIsAnErrorNamingTheProblem) {
    auto json = to_json(sample_state());
    json["patches"][0].erase("base");
    try {
        vm_state_from_json(json);
        FAIL() << "accepted a record without base";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("base"), std::string::npos) << e.what();
    }
    auto wrong = to_json(sample_state());
    wrong["format"] = 2;
    EXPECT_THROW(vm_state_from_json(wrong), Error);
}

TEST(AppliedState, SavedAtomicallyAndRemovedWhenEmpty) {
    char tmpl[] = "/tmp/hvpatch-state-test.XXXXXX";
    std::string dir = mkdtemp(tmpl);
    VmState state = sample_state();
    save_vm_state(dir, state);
    auto loaded = load_vm_state(dir, state.vm_key);
    ASSERT_TRUE(loaded.has_value());
    EXPECT_EQ(to_json(*loaded), to_json(state));
    state.patches.clear();
    save_vm_state(dir, state);
    EXPECT_FALSE(std::filesystem::exists(vm_state_path(dir, state.vm_key)));
    EXPECT_FALSE(load_vm_state(dir, state.vm_key).has_value());
    std::ofstream(vm_state_path(dir, state.vm_key)) << "{ not json";
    EXPECT_THROW(load_vm_state(dir, state.vm_key), Error);
    std::filesystem::remove_all(dir);
}

TEST(AppliedState, PatchCodeForTheUnwinderIncludesFunctionsAndTrampolines) {
    auto code = foreign_code_of(sample_state());
    ASSERT_EQ(code.size(), 1u);
    EXPECT_EQ(code[0].name, "hvpatch:livepatch_cmdline");
    EXPECT_EQ(code[0].text_begin, 0xffffffffc0400000u);
    EXPECT_EQ(code[0].text_end, 0xffffffffc0401000u);
    EXPECT_EQ(code[0].orc_entries, 6u);
    ASSERT_EQ(code[0].functions.size(), 2u);
    EXPECT_EQ(code[0].functions[0].name, "livepatch_cmdline_proc_show");
    EXPECT_EQ(code[0].functions[1].begin, 0xffffffffc0400060u);
}

TEST(AppliedState, BytesPrintAsHex) { EXPECT_EQ(bytes_to_hex({0x0f, 0x1f, 0x44, 0x00, 0xe9}), "0f 1f 44 00 e9"); }

}  // namespace
}  // namespace hvpatch
