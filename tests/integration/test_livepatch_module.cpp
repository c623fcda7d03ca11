// LivepatchModule on the real example patch: examples/patches/livepatch-cmdline
// built by scripts/build-example-patches with kbuild against the test
// guest's linux-headers, decoded with the klp_* layouts of the booted test
// guest's BTF.
//
// Needs linux-headers-<release> of the test guest (scripts/install-deps);
// without them the tests FAIL with the install hint (never skip).
#include <gtest/gtest.h>

#include <elf.h>

#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "patch/livepatch_module.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
    return s;
}

class LivepatchModuleGuestTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        CommandResult built = run_command({source_dir() + "/scripts/build-example-patches"}, 300s);
        if (built.exit_code != 0) {
            error_ = new std::string("scripts/build-example-patches failed (are the test guest's kernel headers "
                                     "installed? run scripts/install-deps): " + built.describe());
            return;
        }
        std::string out = trim(built.out);
        ko_path_ = new std::string(out.substr(out.find_last_of('\n') + 1) + "/livepatch_cmdline.ko");

        guest_ = TestGuest::boot().release();
        auto machine = open_machine(guest_->target());
        PauseGuard pause(*machine);
        auto kernel = GuestKernel::open(*machine);
        if (!kernel->layouts().livepatch) {
            error_ = new std::string("the test guest's BTF has no klp_* layouts (CONFIG_LIVEPATCH off?)");
            return;
        }
        layouts_ = new GuestLayouts::Livepatch(*kernel->layouts().livepatch);
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        delete layouts_;
        layouts_ = nullptr;
        delete ko_path_;
        ko_path_ = nullptr;
        delete error_;
        error_ = nullptr;
    }
    void SetUp() override {
        if (error_) FAIL() << *error_;
        ASSERT_NE(guest_, nullptr);
        ASSERT_NE(layouts_, nullptr);
    }
    LivepatchModule open() const { return LivepatchModule::open(*ko_path_); }

    static TestGuest* guest_;
    static GuestLayouts::Livepatch* layouts_;
    static std::string* ko_path_;
    static std::string* error_;
};
TestGuest* LivepatchModuleGuestTest::guest_ = nullptr;
GuestLayouts::Livepatch* LivepatchModuleGuestTest::layouts_ = nullptr;
std::string* LivepatchModuleGuestTest::ko_path_ = nullptr;
std::string* LivepatchModuleGuestTest::error_ = nullptr;

TEST_F(LivepatchModuleGuestTest, ReadsTheModinfo) {
    auto m = open();
    EXPECT_EQ(m.name(), "livepatch_cmdline");
    EXPECT_EQ(m.modinfo_value("livepatch"), "Y");
    EXPECT_EQ(m.license(), "GPL");
    EXPECT_TRUE(m.depends().empty());
    EXPECT_NE(m.find_section(".gnu.linkonce.this_module"), nullptr);
}

TEST_F(LivepatchModuleGuestTest, VermagicMatchesTheGuestRelease) {
    auto m = open();
    std::string uname = trim(guest_->run_ok("uname -r"));
    EXPECT_EQ(uname, guest_->release());
    EXPECT_EQ(m.vermagic_release(), uname) << "vermagic: " << m.vermagic();
    EXPECT_NO_THROW(m.check_compatible(uname));
    EXPECT_THROW(m.check_compatible("6.1.0-0-amd64"), Error);
}

TEST_F(LivepatchModuleGuestTest, DecodesTheKlpPatchWithTheGuestLayouts) {
    auto m = open();
    // The BTF sizes agree with the module's own object sizes (sentinel included).
    const KoSymbol* patch = m.find_symbol("cmdline_patch");
    const KoSymbol* objs = m.find_symbol("cmdline_objs");
    const KoSymbol* funcs = m.find_symbol("cmdline_funcs");
    ASSERT_TRUE(patch && objs && funcs);
    EXPECT_EQ(patch->size, layouts_->patch.size);
    EXPECT_EQ(objs->size, 2 * layouts_->object.size);
    EXPECT_EQ(funcs->size, 2 * layouts_->func.size);

    EXPECT_EQ(m.klp_patch_location(*layouts_), "cmdline_patch");
    auto patched = m.patched_functions(*layouts_);
    ASSERT_EQ(patched.size(), 1u);
    EXPECT_EQ(patched[0], (PatchedFunction{"", "cmdline_proc_show", 0, "livepatch_cmdline_proc_show"}));
}

TEST_F(LivepatchModuleGuestTest, Sha256MatchesSha256sum) {
    auto m = open();
    CommandResult sum = run_command({"sha256sum", *ko_path_}, 30s);
    ASSERT_EQ(sum.exit_code, 0) << sum.describe();
    EXPECT_EQ(m.sha256(), sum.out.substr(0, 64));
}

TEST_F(LivepatchModuleGuestTest, ListsItsSpecialSectionsAndIsSupported) {
    auto m = open();
    std::ostringstream listed;
    bool mcount = false, orc = false;
    for (const auto& s : m.special_sections()) {
        listed << s.name << " (" << s.size << " bytes): " << s.handling << "\n";
        mcount |= s.name == "__mcount_loc";
        orc |= s.name == ".orc_unwind";
        EXPECT_FALSE(s.refused) << s.name;
    }
    std::cout << "[ info     ] special sections of " << *ko_path_ << ":\n" << listed.str();
    EXPECT_TRUE(mcount) << listed.str();
    EXPECT_TRUE(orc) << listed.str();
    EXPECT_NO_THROW(m.check_supported());
    EXPECT_TRUE(m.klp_symbols().empty());
    EXPECT_TRUE(m.klp_rela_sections().empty());
}

// Every example module (examples/patches/README) decodes with the guest's
// layouts to the functions it is documented to replace, and is supported.
TEST_F(LivepatchModuleGuestTest, EveryExamplePatchDecodesAndIsSupported) {
    const std::map<Example, std::vector<PatchedFunction>> expected = {
        {Example::Cmdline, {{"", "cmdline_proc_show", 0, "livepatch_cmdline_proc_show"}}},
        {Example::Sleeper, {{"", "do_nanosleep", 0, "livepatch_do_nanosleep"}}},
        {Example::Prototype,
         {{"", "proc_pid_statm", 0, "livepatch_proc_pid_statm"}, {"", "task_statm", 0, "livepatch_task_statm"}}},
        {Example::Alternatives, {{"", "version_proc_show", 0, "livepatch_version_proc_show"}}},
    };
    for (const auto& example : example_patches()) {
        SCOPED_TRACE(std::string(example.module));
        auto m = LivepatchModule::open(example_patch_ko(example.id, guest_->release()));
        EXPECT_EQ(m.name(), example.module);
        EXPECT_EQ(m.modinfo_value("livepatch"), "Y");
        EXPECT_EQ(m.vermagic_release(), guest_->release());
        auto patched = m.patched_functions(*layouts_);
        EXPECT_EQ(patched, expected.at(example.id));
        ASSERT_EQ(patched.size(), example.replaced.size());
        for (std::size_t i = 0; i < patched.size(); ++i) EXPECT_EQ(patched[i].old_name, example.replaced[i]);
        std::ostringstream listed;
        for (const auto& s : m.special_sections()) listed << " " << s.name;
        std::cout << "[ info     ] " << example.module << " special sections:" << listed.str() << "\n";
        EXPECT_NO_THROW(m.check_supported());
        EXPECT_TRUE(m.klp_symbols().empty());
        EXPECT_TRUE(m.klp_rela_sections().empty());
    }
}

}  // namespace
}  // namespace hvpatch::test
