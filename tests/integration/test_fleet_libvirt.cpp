// hvpatch fleet over libvirt domains, mixed with a qmp: target: two
// transient domains of the test guest (default kernel, named
// hvpt-fleet-<pid>-a/-b, one given by name and one by UUID, on -c URI; a
// with a shared RAM file, b with plain RAM as virt-install makes it) and a
// QEMU-launched guest with the cloud kernel, for which the sample patch does
// not fit, and a defined domain that is shut off. Checked from inside each
// guest (cat /proc/cmdline), in the fleet's report and exit code: apply =
// two applied + one skipped + one failed (shut off) (exit 6),
// revert = two reverted + one not-applied (exit 0). The children reach the
// domains only through the -c the fleet passes on ($LIBVIRT_DEFAULT_URI is
// cleared). --all-running is run on libvirt's test driver (test:///default,
// one running domain "test", no daemon): on the shared daemon it would take
// in other users' domains.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_domain.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr const char* kUri = "qemu:///system";
constexpr int kExitPartial = 6;

class FleetLibvirtTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        TestDomainOptions d;
        d.uri = kUri;
        d.vcpus = 1;
        d.name = test_domain_name("fleet", "a");
        a_ = TestDomain::boot(d).release();
        // b as virt-install makes a domain: no <memoryBacking>, its RAM
        // read out of the QEMU process.
        d.name = test_domain_name("fleet", "b");
        d.shared_ram = false;
        b_ = TestDomain::boot(d).release();
        TestGuestOptions cloud;
        cloud.vcpus = 1;
        cloud.flavour = "cloud-amd64";
        c_ = TestGuest::boot(cloud).release();
        char tmpl[] = "/tmp/hvpatch-fleet-libvirt.XXXXXX";
        dir_ = new std::string(mkdtemp(tmpl));
    }
    static void TearDownTestSuite() {
        delete a_;
        delete b_;
        delete c_;
        a_ = b_ = nullptr;
        c_ = nullptr;
        std::error_code ec;
        if (dir_) std::filesystem::remove_all(*dir_, ec);
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override {
        ASSERT_NE(a_, nullptr);
        ASSERT_NE(b_, nullptr);
        ASSERT_NE(c_, nullptr);
        ASSERT_NE(a_->release(), c_->release());
    }
    void TearDown() override {
        for (const GuestShell* g : std::vector<const GuestShell*>{a_, b_, c_})
            EXPECT_EQ(kernel_problems_shown(*g), "") << "kernel problems on a guest's console";
    }

    static CommandResult hvpatch(std::vector<std::string> args, const std::string& uri = kUri) {
        std::vector<std::string> argv = {hvpatch_binary(), "-c", uri, "--state-dir", *dir_ + "/state",
                                         "--audit-log", *dir_ + "/audit.jsonl"};
        argv.insert(argv.end(), args.begin(), args.end());
        CommandOptions options;
        options.timeout = 180s;
        options.env = {"LIBVIRT_DEFAULT_URI="};
        return run_command(argv, options);
    }
    static json parse(const CommandResult& r) {
        try {
            return json::parse(r.out);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.describe();
            return json::object();
        }
    }
    static std::string outcome(const json& report, const std::string& target) {
        for (const auto& t : report["targets"])
            if (t.value("target", "") == target) return t.value("outcome", "");
        ADD_FAILURE() << target << " not in the report:\n" << report.dump(2);
        return "";
    }

    static TestDomain* a_;
    static TestDomain* b_;
    static TestGuest* c_;
    static std::string* dir_;
};
TestDomain* FleetLibvirtTest::a_ = nullptr;
TestDomain* FleetLibvirtTest::b_ = nullptr;
TestGuest* FleetLibvirtTest::c_ = nullptr;
std::string* FleetLibvirtTest::dir_ = nullptr;

TEST_F(FleetLibvirtTest, DomainsByNameAndUuidBesideAQmpTarget) {
    const std::string oracle(kCmdlineOracle);
    const std::string original_a = a_->run_ok(oracle), original_b = b_->run_ok(oracle), original_c = c_->run_ok(oracle);
    ASSERT_NE(original_a, kCmdlinePatchedOutput);
    const std::string ko = example_patch_ko(Example::Cmdline, a_->release());
    // A domain that is defined but shut off: a copy of a's definition
    // (which names no UUID) under another name.
    const std::string off = test_domain_name("fleet", "off");
    std::string xml = a_->definition();
    xml.replace(xml.find(a_->name()), a_->name().size(), off);
    std::ofstream(*dir_ + "/off.xml") << xml;
    ASSERT_EQ(run_command({"virsh", "-c", kUri, "define", *dir_ + "/off.xml"}, 60s).exit_code, 0);

    CommandResult applied = hvpatch(
        {"fleet", "apply", ko, a_->name(), b_->uuid(), c_->target(), off, "--parallel", "3", "--json"});
    EXPECT_EQ(run_command({"virsh", "-c", kUri, "undefine", off}, 60s).exit_code, 0);
    EXPECT_EQ(applied.exit_code, kExitPartial) << applied.describe();
    json report = parse(applied);
    EXPECT_EQ(outcome(report, off), "failed") << report.dump(2);
    for (const auto& t : report["targets"]) {
        if (t.value("target", "") == off) {
            EXPECT_NE(t.value("reason", "").find("is shut off"), std::string::npos) << t.dump(2);
        }
    }
    EXPECT_EQ(outcome(report, a_->name()), "applied") << report.dump(2);
    EXPECT_EQ(outcome(report, b_->uuid()), "applied") << report.dump(2);
    EXPECT_EQ(outcome(report, c_->target()), "skipped") << report.dump(2);
    EXPECT_EQ(a_->run_ok(oracle), kCmdlinePatchedOutput);
    EXPECT_EQ(b_->run_ok(oracle), kCmdlinePatchedOutput);
    EXPECT_EQ(c_->run_ok(oracle), original_c);

    CommandResult reverted =
        hvpatch({"fleet", "revert", "livepatch_cmdline", a_->name(), b_->uuid(), c_->target(), "--parallel", "3", "--json"});
    EXPECT_EQ(reverted.exit_code, 0) << reverted.describe();
    json back = parse(reverted);
    EXPECT_EQ(outcome(back, a_->name()), "reverted") << back.dump(2);
    EXPECT_EQ(outcome(back, b_->uuid()), "reverted") << back.dump(2);
    EXPECT_EQ(outcome(back, c_->target()), "not-applied") << back.dump(2);
    EXPECT_EQ(a_->run_ok(oracle), original_a);
    EXPECT_EQ(b_->run_ok(oracle), original_b);

    // Each child read its domain the fastest way that domain allows.
    std::map<std::string, std::set<std::string>> paths;
    for (const auto& rec : read_audit_log(*dir_ + "/audit.jsonl"))
        if (rec.contains("vm") && rec.contains("memory_path"))
            paths[rec["vm"].value("name", "")].insert(rec["memory_path"].get<std::string>());
    EXPECT_EQ(paths[a_->name()], std::set<std::string>{"mapped-file"});
    EXPECT_EQ(paths[b_->name()], std::set<std::string>{"process-memory"});
}

TEST_F(FleetLibvirtTest, AllRunningTakesEveryActiveDomainOfTheConnection) {
    // The test driver's domain has no QEMU monitor: each child fails to open
    // it, naming the connection it was given.
    CommandResult r = hvpatch({"fleet", "revert", "livepatch_cmdline", "--all-running", "--json"}, "test:///default");
    EXPECT_EQ(r.exit_code, 7) << r.describe();
    json report = parse(r);
    ASSERT_EQ(report["targets"].size(), 1u) << report.dump(2);
    EXPECT_EQ(report["targets"][0]["target"], "test");
    EXPECT_EQ(report["targets"][0]["outcome"], "failed");
    EXPECT_NE(report["targets"][0]["reason"].get<std::string>().find("test:///default"), std::string::npos)
        << report.dump(2);
}

}  // namespace
}  // namespace hvpatch::test
