// hvpatch's state in a libvirt domain's XML, with a real (persistent)
// domain of the test guest:
//   1. apply by domain name writes the hvpatch:state element (live and
//      persistent definition) and no state file; a fresh hvpatch with an
//      empty state directory reads status back from the domain and reverts;
//      the element is gone after the last revert; the audit record names
//      the connection and the domain;
//   2. after a guest reset the record is stale: status says so, revert of
//      its patch is refused, and the next apply replaces the record;
//   3. two hvpatch runs on one domain: while an apply runs, a second one
//      (naming the domain by UUID, with another state directory) is refused
//      at once naming the holder, and the first one is not disturbed;
//   4. a domain the operator suspended (`virsh suspend`) is patched and
//      unpatched while paused and is "paused (user)" again after each, as
//      libvirt recorded it, though the guest had to run for the guest calls.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "hvpatch/machine.h"
#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/proc_oracles.h"
#include "support/run_command.h"
#include "support/test_domain.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kUri = "qemu:///system";

CommandResult virsh(const std::vector<std::string>& args) { return run_virsh(kUri, args); }
std::string domstate(const std::string& domain) { return virsh_domstate(kUri, domain); }

std::string dumpxml(const std::string& domain, bool inactive = false) {
    std::vector<std::string> args{"dumpxml", domain};
    if (inactive) args.push_back("--inactive");
    CommandResult r = virsh(args);
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    return r.out;
}

class LibvirtDomainStateTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        TestDomainOptions o;
        o.name = test_domain_name("state", "persistent");
        o.persistent = true;
        domain_ = TestDomain::boot(o).release();
        char tmpl[] = "/tmp/hvpt-state-test.XXXXXX";
        dir_ = new std::string(mkdtemp(tmpl));
    }
    static void TearDownTestSuite() {
        delete domain_;
        domain_ = nullptr;
        std::error_code ec;
        if (dir_) fs::remove_all(*dir_, ec);
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(domain_, nullptr) << "the test domain did not boot"; }
    void TearDown() override { EXPECT_EQ(kernel_problems_shown(*domain_), "") << "kernel problems on its console"; }

    static std::string audit_log() { return *dir_ + "/audit.jsonl"; }
    // hvpatch -c URI --state-dir <dir_/state_dir> --audit-log ... ARGS...
    static CommandResult hvpatch(const std::string& state_dir, std::vector<std::string> args) {
        std::vector<std::string> argv{hvpatch_binary(), "-c", kUri, "--state-dir", *dir_ + "/" + state_dir,
                                      "--audit-log", audit_log()};
        argv.insert(argv.end(), args.begin(), args.end());
        CommandOptions options;
        options.timeout = 300s;
        options.env = {"LIBVIRT_DEFAULT_URI="};
        return run_command(argv, options);
    }
    static json hvpatch_json(const std::string& state_dir, std::vector<std::string> args) {
        args.push_back("--json");
        CommandResult r = hvpatch(state_dir, args);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return r.exit_code == 0 ? json::parse(r.out) : json::object();
    }
    static std::vector<std::string> state_files(const std::string& state_dir) {
        std::vector<std::string> files;
        std::error_code ec;
        for (const auto& e : fs::directory_iterator(*dir_ + "/" + state_dir, ec))
            if (e.path().extension() == ".json") files.push_back(e.path().filename());
        return files;
    }

    static TestDomain* domain_;
    static std::string* dir_;
};
TestDomain* LibvirtDomainStateTest::domain_ = nullptr;
std::string* LibvirtDomainStateTest::dir_ = nullptr;

TEST_F(LibvirtDomainStateTest, TheDomainXmlShowsWhatIsAppliedAndAFreshHvpatchRevertsFromIt) {
    const std::string name = domain_->name();
    const std::string original = domain_->run_ok(std::string(kCmdlineOracle));
    json applied = hvpatch_json("first", {"apply", name, example_patch_ko(Example::Cmdline, domain_->release())});
    ASSERT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_EQ(domain_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    const std::string address = applied["functions"][0]["address"];
    EXPECT_TRUE(state_files("first").empty()) << "a state file beside the domain's record";

    // What an operator sees, in the running domain and in its definition.
    for (bool inactive : {false, true}) {
        SCOPED_TRACE(inactive ? "virsh dumpxml --inactive" : "virsh dumpxml");
        std::string xml = dumpxml(name, inactive);
        EXPECT_NE(xml.find(std::string("<hvpatch:state xmlns:hvpatch=\"") + kVmRecordNamespace + "\" format=\"1\" boot-id=\""),
                  std::string::npos)
            << xml;
        EXPECT_NE(xml.find("<hvpatch:patch name=\"livepatch_cmdline\" sha256=\"" + applied["sha256"].get<std::string>() +
                           "\" phase=\"applied\""),
                  std::string::npos)
            << xml;
        EXPECT_NE(xml.find("<hvpatch:function name=\"cmdline_proc_show\" object=\"vmlinux\" address=\"" + address + "\""),
                  std::string::npos)
            << xml;
        EXPECT_NE(xml.find("<hvpatch:record encoding=\"json\">{"), std::string::npos) << xml;
    }

    // A fresh hvpatch: an empty state directory, by UUID.
    json status = hvpatch_json("fresh", {"status", domain_->uuid()});
    EXPECT_EQ(status["stale"], false);
    EXPECT_EQ(status["state_location"], "<metadata> of domain " + name + " (" + kUri + ")");
    ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
    EXPECT_EQ(status["patches"][0]["phase"], "applied");
    EXPECT_EQ(status["patches"][0]["functions"][0]["entry_now"], "direct");
    EXPECT_NE(dumpxml(name).find("boot-id=\"" + status["boot_id"].get<std::string>() + "\""), std::string::npos);

    json reverted = hvpatch_json("fresh", {"revert", name, "livepatch_cmdline"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(domain_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(dumpxml(name).find(kVmRecordNamespace), std::string::npos) << "the element outlived the last patch";
    EXPECT_EQ(dumpxml(name, true).find(kVmRecordNamespace), std::string::npos);
    EXPECT_TRUE(state_files("fresh").empty());

    auto records = read_audit_log(audit_log());
    ASSERT_GE(records.size(), 2u);
    for (const auto& record : {records[records.size() - 2], records.back()}) {
        EXPECT_EQ(record["vm"]["connection"], kUri) << record.dump(2);
        EXPECT_EQ(record["vm"]["name"], name);
        EXPECT_EQ(record["vm"]["uuid"], domain_->uuid());
        EXPECT_EQ(record["state_location"], status["state_location"]);
    }
    EXPECT_TRUE(verify_audit_log(audit_log()).ok);
}

TEST_F(LibvirtDomainStateTest, AfterAGuestResetTheRecordIsStaleAndTheNextApplyReplacesIt) {
    const std::string name = domain_->name();
    const std::string ko = example_patch_ko(Example::Cmdline, domain_->release());
    json applied = hvpatch_json("first", {"apply", name, ko});
    ASSERT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    const std::string first_boot = hvpatch_json("first", {"status", name})["boot_id"];

    // A hard reset: the domain (and its metadata) stays, the guest boots anew.
    auto ready_lines = [&] {
        std::string log = domain_->console_log();
        std::size_t n = 0;
        for (std::size_t at = 0; (at = log.find("HVPATCH-GUEST-READY", at)) != std::string::npos; ++at) ++n;
        return n;
    };
    const std::size_t ready_before = ready_lines();
    ASSERT_EQ(virsh({"reset", name}).exit_code, 0);
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (ready_lines() == ready_before && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(500ms);
    ASSERT_GT(ready_lines(), ready_before) << "the guest did not boot again";
    EXPECT_NE(dumpxml(name).find("boot-id=\"" + first_boot + "\""), std::string::npos) << "the record outlives the reset";

    json status = hvpatch_json("fresh", {"status", name});
    EXPECT_EQ(status["stale"], true) << status.dump(2);
    EXPECT_EQ(status["stale_boot_id"], first_boot);
    EXPECT_NE(status["boot_id"], first_boot);
    EXPECT_TRUE(status["patches"].empty());
    CommandResult text = hvpatch("fresh", {"status", name});
    EXPECT_NE(text.out.find("STALE: the recorded state is from boot " + first_boot), std::string::npos) << text.out;
    CommandResult revert = hvpatch("fresh", {"revert", name, "livepatch_cmdline"});
    EXPECT_EQ(revert.exit_code, 4) << revert.describe();
    EXPECT_NE(revert.err.find("earlier boot"), std::string::npos) << revert.err;

    json again = hvpatch_json("fresh", {"apply", name, ko});
    ASSERT_EQ(again.value("outcome", ""), "applied") << again.dump(2);
    std::string xml = dumpxml(name);
    EXPECT_NE(xml.find("boot-id=\"" + status["boot_id"].get<std::string>() + "\""), std::string::npos) << xml;
    EXPECT_EQ(xml.find(first_boot), std::string::npos) << xml;
    EXPECT_EQ(hvpatch_json("fresh", {"revert", name, "livepatch_cmdline"}).value("outcome", ""), "reverted");
    EXPECT_EQ(dumpxml(name).find(kVmRecordNamespace), std::string::npos);
}

TEST_F(LibvirtDomainStateTest, ASecondOperationOnTheDomainIsRefusedNamingTheHolderWhateverItsStateDir) {
    const std::string name = domain_->name();
    // The sleeper patch: the guest's sleeping workloads hold the transition
    // until hvpatch wakes them (--signal-after), long enough to try a second run.
    std::vector<std::string> argv{hvpatch_binary(), "-c", kUri, "--state-dir", *dir_ + "/first", "--audit-log",
                                  audit_log(), "apply", name, example_patch_ko(Example::Sleeper, domain_->release()),
                                  "--signal-after", "8", "--timeout", "60"};
    CommandOptions options;
    options.timeout = 120s;
    options.env = {"LIBVIRT_DEFAULT_URI="};
    RunningCommand first(argv, options);
    ASSERT_TRUE(first.wait_for_output("patching: pass 2,", 60s, /*in_stderr=*/true)) << first.err();

    CommandResult second = hvpatch("other", {"apply", domain_->uuid(),
                                             example_patch_ko(Example::Cmdline, domain_->release()), "--json"});
    EXPECT_EQ(second.exit_code, 3) << second.describe();
    EXPECT_NE(second.err.find("busy: hvpatch pid " + std::to_string(first.pid()) + " "), std::string::npos)
        << second.err;
    EXPECT_NE(second.err.find("running 'apply'"), std::string::npos) << second.err;
    EXPECT_NE(domain_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput) << "the refused apply wrote";

    CommandResult finished = first.wait();
    EXPECT_EQ(finished.exit_code, 0) << finished.describe();
    json status = hvpatch_json("other", {"status", name});
    ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
    EXPECT_EQ(status["patches"][0]["name"], "livepatch_sleeper");
    EXPECT_EQ(status["patches"][0]["phase"], "applied");
    json reverted = hvpatch_json("other", {"revert", name, "livepatch_sleeper", "--signal-after", "1"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(dumpxml(name).find(kVmRecordNamespace), std::string::npos);
}

TEST_F(LibvirtDomainStateTest, ASuspendedDomainIsPatchedAndStaysPausedAsTheOperatorLeftIt) {
    const std::string name = domain_->name();
    const std::string original = domain_->run_ok(std::string(kCmdlineOracle));
    ASSERT_EQ(virsh({"suspend", name}).exit_code, 0);
    ASSERT_EQ(domstate(name), "paused (user)");
    json applied = hvpatch_json("other", {"apply", name, example_patch_ko(Example::Cmdline, domain_->release())});
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_EQ(domstate(name), "paused (user)");
    ASSERT_EQ(virsh({"resume", name}).exit_code, 0);
    EXPECT_EQ(domain_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);

    ASSERT_EQ(virsh({"suspend", name}).exit_code, 0);
    json reverted = hvpatch_json("other", {"revert", name, "livepatch_cmdline"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(domstate(name), "paused (user)");
    ASSERT_EQ(virsh({"resume", name}).exit_code, 0);
    EXPECT_EQ(domain_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(domstate(name), "running (unpaused)");
}

}  // namespace
}  // namespace hvpatch::test
