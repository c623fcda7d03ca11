// libvirt domains as hvpatch targets, through libvirt's API only: by name
// and by UUID, with -c and with $LIBVIRT_DEFAULT_URI; with shared RAM (read
// from the file) and without (read out of the QEMU process); checked against the
// guest's own /proc. libvirt's view stays true: a running domain is running
// again afterwards, a `virsh suspend`ed one stays paused, and the lifecycle
// events hvpatch causes pair up. Errors for an unknown, shut-off or
// unreachable domain; hvpatch's record in the domain's <metadata>; and
// check/apply/status/revert of the sample patch on both memory paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "patch/audit_log.h"
#include "support/example_patches.h"
#include "support/introspection_checks.h"
#include "support/proc_oracles.h"
#include "support/run_command.h"
#include "support/test_domain.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kUri = "qemu:///system";

CommandResult hvpatch(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
    std::vector<std::string> argv{hvpatch_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandOptions options;
    options.timeout = 300s;
    // Without an explicit one, the URI comes from here: never from the caller's environment.
    options.env = env.empty() ? std::vector<std::string>{"LIBVIRT_DEFAULT_URI="} : env;
    return run_command(argv, options);
}

CommandResult virsh(const std::vector<std::string>& args) { return run_virsh(kUri, args); }
std::string domstate(const std::string& domain) { return virsh_domstate(kUri, domain); }

// The lifecycle events of one domain while `action` runs, as virsh prints
// them ("Suspended Paused", "Resumed Unpaused", ...), in order.
std::vector<std::string> lifecycle_events_during(const std::string& domain, const std::function<void()>& action) {
    CommandOptions options;
    options.timeout = 120s;
    RunningCommand events({"virsh", "-c", kUri, "event", "--domain", domain, "--event", "lifecycle", "--loop"},
                          options);
    // virsh prints nothing until an event: give it time to register.
    std::this_thread::sleep_for(1500ms);
    action();
    std::this_thread::sleep_for(1500ms);
    events.send_signal(SIGINT);
    CommandResult r = events.wait();
    std::vector<std::string> seen;
    std::istringstream in(r.out);
    std::string line;
    const std::string marker = "': ";
    while (std::getline(in, line)) {
        if (line.find("event 'lifecycle'") == std::string::npos) continue;
        auto at = line.rfind(marker);
        if (at != std::string::npos) seen.push_back(line.substr(at + marker.size()));
    }
    return seen;
}

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
    return out;
}

struct FastPath {
    static TestDomainOptions options() {
        TestDomainOptions o;
        o.name = test_domain_name("libvirt", "fast");
        return o;
    }
    static constexpr const char* kMemoryPath = "mapped-file";
};
struct SlowPath {
    static TestDomainOptions options() {
        TestDomainOptions o;
        o.name = test_domain_name("libvirt", "slow");
        o.shared_ram = false;
        return o;
    }
    static constexpr const char* kMemoryPath = "process-memory";
};

template <typename Config>
class LibvirtTargetTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { domain_ = TestDomain::boot(Config::options()).release(); }
    static void TearDownTestSuite() {
        delete domain_;
        domain_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(domain_, nullptr) << "the test domain did not boot"; }
    static TestDomain* domain_;
};
template <typename Config>
TestDomain* LibvirtTargetTest<Config>::domain_ = nullptr;

using Configs = ::testing::Types<FastPath, SlowPath>;
TYPED_TEST_SUITE(LibvirtTargetTest, Configs);

TYPED_TEST(LibvirtTargetTest, InspectByNameAndByUuidWithConnectAndWithTheDefaultUri) {
    const TestDomain& d = *this->domain_;
    const std::string expected_target = "domain " + d.name() + " (" + kUri + ")";
    struct Way {
        std::vector<std::string> args, env;
    };
    const std::vector<Way> ways = {
        {{"-c", kUri, "inspect", d.name(), "--json"}, {}},
        {{"inspect", d.uuid(), "--json", "--connect", kUri}, {}},
        {{"inspect", d.name(), "--json"}, {std::string("LIBVIRT_DEFAULT_URI=") + kUri}},
        {{"inspect", d.uuid(), "--json"}, {std::string("LIBVIRT_DEFAULT_URI=") + kUri}},
    };
    std::string banner = this->domain_->run_ok("cat /proc/version");
    for (const auto& way : ways) {
        SCOPED_TRACE(joined(way.args));
        CommandResult r = hvpatch(way.args, way.env);
        ASSERT_EQ(r.exit_code, 0) << r.describe();
        json doc = json::parse(r.out);
        EXPECT_EQ(doc["target"], expected_target);
        EXPECT_EQ(doc["identity"]["name"], d.name());
        EXPECT_EQ(doc["identity"]["uuid"], d.uuid());
        EXPECT_EQ(doc["identity"]["connection"], kUri);
        EXPECT_EQ(doc["identity"]["key"], "uuid-" + d.uuid());
        EXPECT_EQ(doc["run_state"], "running");
        EXPECT_EQ(doc["memory"]["path"], TypeParam::kMemoryPath);
        EXPECT_EQ(doc["memory"]["ram_size"], 512ULL << 20);
        EXPECT_EQ(doc["vcpus"].size(), 2u);
        EXPECT_EQ(doc["kernel"]["release"], d.release());
        EXPECT_EQ(doc["kernel"]["banner"].get<std::string>() + "\n", banner);
    }
    // The human form names the memory path too.
    CommandResult human = hvpatch({"-c", kUri, "inspect", d.name()});
    ASSERT_EQ(human.exit_code, 0) << human.describe();
    EXPECT_NE(human.out.find(std::string(TypeParam::kMemoryPath) == "mapped-file" ? "mapped RAM file" : "the memory of QEMU process"),
              std::string::npos)
        << human.out;
    EXPECT_NE(human.out.find("Target:       " + expected_target), std::string::npos) << human.out;
    EXPECT_EQ(domstate(d.name()), "running (unpaused)");
    // libvirt notes monitor commands it did not send itself (docs/operator-guide.md).
    std::ifstream log("/var/log/libvirt/qemu/" + d.name() + ".log");
    std::string text((std::istreambuf_iterator<char>(log)), {});
    EXPECT_NE(text.find("is tainted: custom-monitor"), std::string::npos) << console_tail(text);
}

TYPED_TEST(LibvirtTargetTest, PsByNameEqualsProcForTasksStableAcrossTheFreeze) {
    expect_ps_equals_proc(*this->domain_, {this->domain_->name(), "-c", kUri});
}

TYPED_TEST(LibvirtTargetTest, StackByUuidEqualsProcStack) {
    auto before = guest_stacks(*this->domain_);
    CommandResult r = hvpatch({"stack", this->domain_->uuid(), "--all", "--json"},
                              {std::string("LIBVIRT_DEFAULT_URI=") + kUri});
    auto after = guest_stacks(*this->domain_);
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    json doc = json::parse(r.out);
    int compared = 0;
    std::vector<std::string> moved;
    for (const auto& s : doc["stacks"]) {
        int pid = s["pid"].get<int>();
        if (!s["reliable"].get<bool>() || pid == 0 || !s["vcpu"].is_null() || s["name"] == "cmd-loop") continue;
        auto b = before.find(pid), a = after.find(pid);
        if (b == before.end() || a == after.end() || b->second != a->second || b->second.empty()) continue;
        std::vector<std::string> ours;
        for (const auto& f : s["frames"])
            if (!f["scheduler"].get<bool>()) ours.push_back(f["text"].get<std::string>());
        if (ours != b->second) {
            moved.push_back("pid " + std::to_string(pid) + ": " + joined(ours) + " | /proc " + joined(b->second));
            continue;
        }
        ++compared;
    }
    EXPECT_GE(compared, 20);
    EXPECT_LE(moved.size(), 1u) << ::testing::PrintToString(moved);
}

TYPED_TEST(LibvirtTargetTest, ARunningDomainIsRunningAfterwardsAndTheEventsPairUp) {
    const std::string name = this->domain_->name();
    ASSERT_EQ(domstate(name), "running (unpaused)");
    CommandResult r;
    auto events = lifecycle_events_during(name, [&] { r = hvpatch({"-c", kUri, "ps", name}); });
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_EQ(domstate(name), "running (unpaused)");
    EXPECT_EQ(this->domain_->run_ok("echo alive"), "alive\n");
    // The gdbstub hvpatch started through libvirt is gone again.
    CommandResult chardevs = virsh({"qemu-monitor-command", "--hmp", name, "info chardev"});
    ASSERT_EQ(chardevs.exit_code, 0) << chardevs.describe();
    EXPECT_NE(chardevs.out.find("serial1"), std::string::npos) << chardevs.out;
    // (QEMU keeps an internal "#chrN: filename=gdb" for the stub's console
    // after `gdbserver none`; the socket chardev "gdb" is what must be gone.)
    EXPECT_NE(chardevs.out.rfind("gdb: ", 0), 0u) << chardevs.out;
    EXPECT_EQ(chardevs.out.find("\ngdb: "), std::string::npos) << chardevs.out;
    // What an operator watching `virsh event` sees (docs/operator-guide.md).
    std::cout << "lifecycle events during hvpatch ps: " << joined(events) << "\n";
    ASSERT_FALSE(events.empty()) << "hvpatch pauses the guest: libvirt must have seen it";
    // Every suspension is followed by a resumption, and the last event resumes.
    for (std::size_t i = 0; i < events.size(); ++i)
        EXPECT_EQ(events[i].rfind(i % 2 == 0 ? "Suspended" : "Resumed", 0), 0u) << joined(events);
    EXPECT_EQ(events.back().rfind("Resumed", 0), 0u) << joined(events);
}

TYPED_TEST(LibvirtTargetTest, ASuspendedDomainStaysPausedAsLibvirtRecordedIt) {
    const std::string name = this->domain_->name();
    ASSERT_EQ(virsh({"suspend", name}).exit_code, 0);
    ASSERT_EQ(domstate(name), "paused (user)");
    CommandResult ps = hvpatch({"-c", kUri, "ps", name, "--json"});
    CommandResult inspect = hvpatch({"-c", kUri, "inspect", name, "--json"});
    std::string after = domstate(name);
    ASSERT_EQ(virsh({"resume", name}).exit_code, 0);
    ASSERT_EQ(ps.exit_code, 0) << ps.describe();
    ASSERT_EQ(inspect.exit_code, 0) << inspect.describe();
    EXPECT_EQ(json::parse(inspect.out)["run_state"], "paused");
    EXPECT_EQ(after, "paused (user)");
    EXPECT_EQ(this->domain_->run_ok("echo alive"), "alive\n");
    EXPECT_EQ(domstate(name), "running (unpaused)");
}

// check, apply, status and revert by domain name and UUID, on both memory
// paths: the guest runs the patched code while applied, every byte of the
// function is as before afterwards, the audit record names the memory
// path, and libvirt's state is as found: running, or `virsh suspend`ed.
TYPED_TEST(LibvirtTargetTest, SamplePatchChecksAppliesAndRevertsAsFoundRunningOrSuspended) {
    TestDomain& d = *this->domain_;
    char tmpl[] = "/tmp/hvpt-libvirt-apply.XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    auto run = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = {"-c", kUri, "--state-dir", dir + "/state", "--audit-log", dir + "/audit.jsonl"};
        argv.insert(argv.end(), args.begin(), args.end());
        argv.push_back("--json");
        CommandResult r = hvpatch(argv);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        EXPECT_EQ(r.err.find("notice"), std::string::npos) << r.err;
        return r.exit_code == 0 ? json::parse(r.out) : json::object();
    };
    auto entry_bytes = [&](const std::string& address) {
        CommandResult r = hvpatch({"-c", kUri, "read", d.name(), "--virt", address, "64", "--json"});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        return r.exit_code == 0 ? json::parse(r.out)["hex"].get<std::string>() : std::string();
    };
    const std::string ko = example_patch_ko(Example::Cmdline, d.release());
    const std::string original = d.run_ok(std::string(kCmdlineOracle));
    ASSERT_NE(original, kCmdlinePatchedOutput);
    const std::string entry = "0x" + d.run_ok("grep ' cmdline_proc_show$' /proc/kallsyms").substr(0, 16);
    const std::string code_before = entry_bytes(entry);
    ASSERT_EQ(code_before.size(), 128u);

    json check = run({"check", d.name(), ko});
    EXPECT_EQ(check["ok"], true) << check.dump(2);

    // Found running: running afterwards, and the lifecycle events end resumed.
    json applied;
    auto events = lifecycle_events_during(d.name(), [&] { applied = run({"apply", d.name(), ko}); });
    std::cout << "lifecycle events during hvpatch apply: " << joined(events) << "\n";
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_EQ(d.run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    EXPECT_EQ(domstate(d.name()), "running (unpaused)");
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().rfind("Resumed", 0), 0u) << joined(events);
    // The jump hvpatch wrote through the stub is what the memory path reads back.
    EXPECT_EQ(entry_bytes(entry).substr(0, 2), "e9");

    json status = run({"status", d.uuid()});
    ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
    EXPECT_EQ(status["patches"][0]["phase"], "applied");

    json reverted = run({"revert", d.name(), "livepatch_cmdline"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(d.run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(entry_bytes(entry), code_before);
    EXPECT_EQ(domstate(d.name()), "running (unpaused)");

    // Found suspended by the operator: patched and unpatched while libvirt
    // keeps calling it paused by the user (the guest runs only for hvpatch's
    // guest calls and transition).
    ASSERT_EQ(virsh({"suspend", d.name()}).exit_code, 0);
    json applied_paused = run({"apply", d.uuid(), ko});
    std::string state_after_apply = domstate(d.name());
    json reverted_paused = run({"revert", d.uuid(), "livepatch_cmdline"});
    std::string state_after_revert = domstate(d.name());
    ASSERT_EQ(virsh({"resume", d.name()}).exit_code, 0);
    EXPECT_EQ(applied_paused.value("outcome", ""), "applied") << applied_paused.dump(2);
    EXPECT_EQ(reverted_paused.value("outcome", ""), "reverted") << reverted_paused.dump(2);
    EXPECT_EQ(state_after_apply, "paused (user)");
    EXPECT_EQ(state_after_revert, "paused (user)");
    EXPECT_EQ(d.run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(entry_bytes(entry), code_before);

    auto records = read_audit_log(dir + "/audit.jsonl");
    ASSERT_GE(records.size(), 4u);
    for (const auto& rec : records) EXPECT_EQ(rec.value("memory_path", ""), TypeParam::kMemoryPath) << rec.dump();
    auto problems = kernel_problem_lines(d.console_log());
    EXPECT_TRUE(problems.empty()) << joined(problems);
    std::error_code ec;
    fs::remove_all(dir, ec);
}

// One persistent domain (fast path) for what needs a definition on disk and
// for what changes the guest.
class LibvirtDomainTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        TestDomainOptions o;
        o.name = test_domain_name("libvirt", "persistent");
        o.persistent = true;
        domain_ = TestDomain::boot(o).release();
        char tmpl[] = "/tmp/hvpt-libvirt-test.XXXXXX";
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
    static TestDomain* domain_;
    static std::string* dir_;
};
TestDomain* LibvirtDomainTest::domain_ = nullptr;
std::string* LibvirtDomainTest::dir_ = nullptr;

TEST_F(LibvirtDomainTest, UnknownShutOffAndUnreachableTargetsAreClearErrors) {
    const std::string unknown = test_domain_name("libvirt", "nosuch");
    CommandResult r = hvpatch({"-c", kUri, "inspect", unknown});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_NE(r.err.find("no domain '" + unknown + "' on " + kUri), std::string::npos) << r.err;

    CommandResult bad_uri = hvpatch({"-c", "qemu:///nowhere", "ps", domain_->name()});
    EXPECT_EQ(bad_uri.exit_code, 3) << bad_uri.describe();
    EXPECT_NE(bad_uri.err.find("cannot connect to libvirt at qemu:///nowhere"), std::string::npos) << bad_uri.err;

    // A defined domain that is not running.
    const std::string off = test_domain_name("libvirt", "off");
    std::string xml = domain_->definition();
    xml.replace(xml.find(domain_->name()), domain_->name().size(), off);
    const std::string file = *dir_ + "/off.xml";
    std::ofstream(file) << xml;
    ASSERT_EQ(virsh({"define", file}).exit_code, 0);
    CommandResult shut = hvpatch({"-c", kUri, "stack", off, "--all"});
    CommandResult by_env = hvpatch({"apply", off, "/nonexistent.ko"}, {std::string("LIBVIRT_DEFAULT_URI=") + kUri});
    EXPECT_EQ(virsh({"undefine", off}).exit_code, 0);
    EXPECT_EQ(shut.exit_code, 3) << shut.describe();
    EXPECT_NE(shut.err.find("domain " + off + " (" + kUri + ") is shut off"), std::string::npos) << shut.err;
    EXPECT_EQ(by_env.exit_code, 3) << by_env.describe();
    EXPECT_NE(by_env.err.find("is shut off"), std::string::npos) << by_env.err;

    // list_running_domains sees the running one, not the one that was off.
    auto running = list_running_domains(kUri);
    EXPECT_NE(std::find(running.begin(), running.end(), domain_->name()), running.end());
    EXPECT_EQ(std::find(running.begin(), running.end(), off), running.end());
}

TEST_F(LibvirtDomainTest, RecordStoreRoundTripsThroughLiveAndPersistentMetadata) {
    auto machine = open_machine(domain_->name(), kUri);
    VmRecordStore* store = machine->record_store();
    ASSERT_NE(store, nullptr);
    EXPECT_EQ(store->location(), "<metadata> of domain " + domain_->name() + " (" + kUri + ")");
    EXPECT_EQ(machine->identity().connection, kUri);
    store->remove();  // nothing there: no error
    EXPECT_EQ(store->read(), std::nullopt);

    const std::string marker = "round-trip-" + std::to_string(::getpid());
    store->write("<state><patch name='" + marker + "'/></state>");
    std::optional<std::string> back = store->read();
    ASSERT_TRUE(back.has_value());
    EXPECT_NE(back->find("<patch name=\"" + marker + "\"/>"), std::string::npos) << *back;
    for (const char* view : {"", "--inactive"}) {
        SCOPED_TRACE(std::string("virsh dumpxml ") + view);
        std::vector<std::string> args{"dumpxml", domain_->name()};
        if (*view) args.push_back(view);
        std::string xml = virsh(args).out;
        EXPECT_NE(xml.find(std::string("<hvpatch:state xmlns:hvpatch=\"") + kVmRecordNamespace + "\">"),
                  std::string::npos)
            << xml;
        EXPECT_NE(xml.find("<hvpatch:patch name=\"" + marker + "\"/>"), std::string::npos) << xml;
    }
    // A new connection reads the same record.
    machine.reset();
    machine = open_machine(domain_->uuid(), kUri);
    EXPECT_EQ(machine->record_store()->read(), back);

    machine->record_store()->remove();
    EXPECT_EQ(machine->record_store()->read(), std::nullopt);
    EXPECT_EQ(virsh({"dumpxml", domain_->name()}).out.find(kVmRecordNamespace), std::string::npos);
    EXPECT_EQ(virsh({"dumpxml", "--inactive", domain_->name()}).out.find(kVmRecordNamespace), std::string::npos);
    machine.reset();
    // Metadata needs no pause: the domain ran throughout (the reason is
    // whatever an earlier test left: booted or unpaused).
    EXPECT_EQ(domstate(domain_->name()).rfind("running (", 0), 0u);
}

TEST_F(LibvirtDomainTest, SymReadAndCheckReachTheDomainToo) {
    const std::string name = domain_->name();
    std::string line = domain_->run_ok("grep ' linux_banner$' /proc/kallsyms");
    const std::string address = "0x" + line.substr(0, 16);
    CommandResult sym = hvpatch({"sym", name, "linux_banner", "--json", "-c", kUri});
    ASSERT_EQ(sym.exit_code, 0) << sym.describe();
    json symbols = json::parse(sym.out)["symbols"];
    ASSERT_EQ(symbols.size(), 1u) << sym.out;
    EXPECT_EQ(std::stoull(symbols[0]["address"].get<std::string>(), nullptr, 16),
              std::stoull(address, nullptr, 16));

    const std::string version = domain_->run_ok("cat /proc/version");
    CommandResult read = hvpatch({"read", domain_->uuid(), "--virt", address, std::to_string(version.size()),
                                  "--out", *dir_ + "/banner"},
                                 {std::string("LIBVIRT_DEFAULT_URI=") + kUri});
    ASSERT_EQ(read.exit_code, 0) << read.describe();
    std::ifstream in(*dir_ + "/banner", std::ios::binary);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), version);

    CommandResult check = hvpatch({"-c", kUri, "--state-dir", *dir_ + "/state", "--audit-log", *dir_ + "/audit.jsonl",
                                   "check", name, example_patch_ko(Example::Cmdline, domain_->release()), "--json"});
    ASSERT_EQ(check.exit_code, 0) << check.describe();
    EXPECT_EQ(json::parse(check.out)["ok"], true) << check.out;
    EXPECT_EQ(domstate(name), "running (unpaused)");
}

}  // namespace
}  // namespace hvpatch::test
