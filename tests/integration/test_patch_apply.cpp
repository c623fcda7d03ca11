// hvpatch apply / revert of the three example patches on one real test
// guest with plain RAM (read out of the QEMU process), driven through the
// hvpatch command as an operator would, checked
// from inside the guest (its own /proc) and against guest memory:
//   1. the sample (cmdline_proc_show): the patched line while applied, the
//      original after revert, every byte hvpatch touched back as before and
//      its module memory freed (/proc/vmallocinfo);
//   2. the sleeper (do_nanosleep): the sleeping workloads block the
//      transition, are reported as blockers, are woken as klp_send_signals
//      does, and then sleep in the new copy; revert brings them back;
//   3. the prototype change (proc_pid_statm + task_statm): a checker in the
//      guest hammers /proc/PID/statm through apply and revert and never
//      sees a mixed pairing;
//   4. two patches on different functions at once, reverted in the order
//      they were applied and in the other order: each stays in effect until
//      its own revert, and every byte ends as before.
//   5. a VMM with a record store (as libvirt's domain metadata): the state
//      goes there and not into the state directory, a fresh hvpatch with
//      an empty state directory reads it back and reverts, and the record
//      is gone after the last revert.
// Every test ends with no Oops/BUG/WARN in the guest's console.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hvpatch/machine.h"
#include "patch/audit_log.h"
#include "patch/patcher.h"
#include "patch/vm_state_xml.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

class PatchApplyTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        // Plain RAM, as a VM is configured by default: hvpatch reads it out
        // of the QEMU process (the shared-file path is what most other
        // suites' guests use).
        TestGuestOptions o;
        o.shared_ram = false;
        guest_ = TestGuest::boot(o).release();
        char tmpl[] = "/tmp/hvpatch-apply-test.XXXXXX";
        dir_ = new std::string(mkdtemp(tmpl));
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
        std::error_code ec;
        if (dir_) fs::remove_all(*dir_, ec);
        delete dir_;
        dir_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr); }
    void TearDown() override { EXPECT_EQ(kernel_problems_shown(*guest_), "") << "kernel problems on its console"; }

    static std::string audit_log() { return *dir_ + "/audit.jsonl"; }

    // Runs build/hvpatch VERB TARGET ARGS... with this suite's state dir and audit log.
    static CommandResult hvpatch(const std::string& verb, std::vector<std::string> args,
                                 std::chrono::milliseconds timeout = 120s) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", *dir_ + "/state", "--audit-log", audit_log(),
                                         verb, guest_->target()};
        argv.insert(argv.end(), args.begin(), args.end());
        CommandOptions options;
        options.timeout = timeout;
        return run_command(argv, options);
    }
    static json hvpatch_json(const std::string& verb, std::vector<std::string> args) {
        args.push_back("--json");
        CommandResult r = hvpatch(verb, args);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        try {
            return json::parse(r.out);
        } catch (const std::exception& e) {
            ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.describe();
            return json::object();
        }
    }

    static std::uint64_t guest_symbol(const std::string& name) {
        std::string line = guest_->run_ok("grep ' " + name + "$' /proc/kallsyms");
        EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
        return std::stoull(line.substr(0, 16), nullptr, 16);
    }
    // Bytes of guest kernel memory, read by hvpatch read (as an operator would check).
    static std::string guest_bytes(std::uint64_t address, std::size_t size) {
        std::string out = *dir_ + "/bytes";
        std::ostringstream addr;
        addr << "0x" << std::hex << address;
        CommandResult r = run_command({hvpatch_binary(), "read", guest_->target(), "--virt", addr.str(),
                                       std::to_string(size), "--out", out}, 60s);
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        std::ifstream in(out, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
    static std::string vmalloc_areas() { return guest_module_area_allocations(*guest_); }

    static TestGuest* guest_;
    static std::string* dir_;
};
TestGuest* PatchApplyTest::guest_ = nullptr;
std::string* PatchApplyTest::dir_ = nullptr;

TEST_F(PatchApplyTest, SampleAppliesAndRevertsLeavingEveryByteAsBefore) {
    const std::string original = guest_->run_ok(std::string(kCmdlineOracle));
    ASSERT_NE(original, kCmdlinePatchedOutput);
    const std::uint64_t entry = guest_symbol("cmdline_proc_show");
    const std::string code_before = guest_bytes(entry, 64);
    const std::string areas_before = vmalloc_areas();
    ASSERT_EQ(code_before.size(), 64u);

    json applied = hvpatch_json("apply", {example_patch_ko(Example::Cmdline, guest_->release())});
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    ASSERT_EQ(applied["functions"].size(), 1u) << applied.dump(2);
    const json& f = applied["functions"][0];
    EXPECT_EQ(f["name"], "cmdline_proc_show");
    EXPECT_EQ(std::stoull(f["address"].get<std::string>(), nullptr, 16), entry);
    EXPECT_EQ(f["bytes_before"], "0f 1f 44 00 00");
    const std::uint64_t base = std::stoull(applied["memory"]["base"].get<std::string>(), nullptr, 16);

    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    // The entry is now a direct jmp to the new function, in the module area.
    std::string site = guest_bytes(std::stoull(f["site"].get<std::string>(), nullptr, 16), 5);
    EXPECT_EQ(static_cast<unsigned char>(site[0]), 0xe9);
    // One more area while applied: the patch's (3 pages, plus a guard page).
    std::ostringstream area;
    area << "0x" << std::hex << base << "-0x" << base + 16384 << "   16384 ";
    EXPECT_NE(vmalloc_areas().find(area.str()), std::string::npos) << area.str() << " not in\n" << vmalloc_areas();

    json status = hvpatch_json("status", {});
    ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
    EXPECT_EQ(status["patches"][0]["phase"], "applied");
    EXPECT_EQ(status["patches"][0]["functions"][0]["entry_now"], "direct");
    EXPECT_EQ(status["tasks"]["pending"], 0);

    json reverted = hvpatch_json("revert", {"livepatch_cmdline"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(guest_bytes(entry, 64), code_before);
    EXPECT_EQ(vmalloc_areas(), areas_before);
    json after = hvpatch_json("status", {});
    EXPECT_TRUE(after["patches"].empty()) << after.dump(2);
    EXPECT_EQ(after["klp_target_state"], -1);
    EXPECT_EQ(after["tasks"]["patched"], 0);
    EXPECT_EQ(after["tasks"]["unpatched"], 0);

    AuditVerifyResult verified = verify_audit_log(audit_log());
    EXPECT_TRUE(verified.ok);
    auto records = read_audit_log(audit_log());
    ASSERT_GE(records.size(), 2u);
    EXPECT_EQ(records[records.size() - 2]["operation"], "apply");
    EXPECT_EQ(records[records.size() - 2]["outcome"], "applied");
    // Everything the record must say: who, where, which VM and boot, which
    // patch, which bytes changed, how long the guest was paused, who blocked.
    const json& rec = records[records.size() - 2];
    EXPECT_EQ(rec["user"]["uid"], ::getuid());
    EXPECT_TRUE(rec["user"]["name"].is_string()) << rec.dump(2);
    EXPECT_FALSE(rec["host"].get<std::string>().empty());
    EXPECT_EQ(rec["vm"]["key"], status["vm"]["key"]);
    EXPECT_EQ(rec["vm"]["uuid"], status["vm"]["uuid"]);
    EXPECT_EQ(rec["kernel"]["release"], guest_->release());
    EXPECT_EQ(rec["kernel"]["boot_id"], status["boot_id"]);
    EXPECT_EQ(rec["patch"]["name"], "livepatch_cmdline");
    EXPECT_EQ(rec["patch"]["sha256"], applied["sha256"]);
    ASSERT_EQ(rec["functions"].size(), 1u) << rec.dump(2);
    EXPECT_EQ(rec["functions"][0]["address"], f["address"]);
    EXPECT_EQ(rec["functions"][0]["bytes_before"], "0f 1f 44 00 00");
    EXPECT_EQ(rec["functions"][0]["bytes_after"], f["bytes_after"]);
    EXPECT_GT(rec["pauses"]["freezes"].get<int>(), 0);
    EXPECT_TRUE(rec["blockers"].is_array());
    EXPECT_EQ(rec["state_location"], status["state_location"]);
    EXPECT_EQ(rec["memory_path"], "process-memory");
    EXPECT_EQ(status["state_location"], *dir_ + "/state/" + status["vm"]["key"].get<std::string>() + ".json");
    EXPECT_EQ(records.back()["operation"], "revert");
    EXPECT_EQ(records.back()["outcome"], "reverted");
}

TEST_F(PatchApplyTest, SleepersBlockTheTransitionUntilWokenThenSleepInTheNewCopy) {
    const std::vector<int> sleepers = sleep_workload_pids(*guest_);
    ASSERT_EQ(sleepers.size(), 3u);
    const std::uint64_t entry = guest_symbol("do_nanosleep");
    const std::string code_before = guest_bytes(entry, 64);

    json applied = hvpatch_json("apply", {example_patch_ko(Example::Sleeper, guest_->release()), "--signal-after",
                                          "2", "--timeout", "60"});
    ASSERT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_GT(applied["passes"].get<int>(), 1);
    // The sleeping workloads were the blockers, in do_nanosleep.
    int sleeping_blockers = 0;
    for (const auto& b : applied["blocked_at_first_pass"])
        for (int pid : sleepers)
            if (b["pid"] == pid) {
                ++sleeping_blockers;
                EXPECT_NE(b["reason"].get<std::string>().find("do_nanosleep"), std::string::npos) << b.dump();
            }
    EXPECT_EQ(sleeping_blockers, 3) << applied["blocked_at_first_pass"].dump(2);

    // Woken by hvpatch, they restarted their sleep in the new copy. hvpatch
    // unwinds through patch code with the patch's own ORC and names it; the
    // guest cannot (the patch is no module it knows), so its
    // /proc/PID/stack stops at the scheduler and loses the original frame.
    for (int pid : sleepers) {
        json stack = hvpatch_json("stack", {std::to_string(pid)});
        ASSERT_EQ(stack["stacks"].size(), 1u) << stack.dump(2);
        const json& st = stack["stacks"][0];
        EXPECT_TRUE(st["reliable"].get<bool>()) << st.dump(2);
        bool in_copy = false;
        for (const auto& frame : st["frames"])
            in_copy |= frame.value("symbol", "") == kSleeperPatchedFrame &&
                       frame.value("module", "") == "hvpatch:livepatch_sleeper";
        EXPECT_TRUE(in_copy) << "pid " << pid << " does not sleep in the new copy:\n" << st.dump(2);
        std::string guest_view = guest_task_stack(*guest_, pid);
        EXPECT_EQ(guest_view.find("hrtimer_nanosleep"), std::string::npos) << guest_view;
    }

    json reverted = hvpatch_json("revert", {"livepatch_sleeper", "--signal-after", "2", "--timeout", "60"});
    ASSERT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
    EXPECT_EQ(guest_bytes(entry, 64), code_before);
    for (int pid : sleepers) {
        std::string stack = guest_task_stack(*guest_, pid);
        EXPECT_EQ(sleeper_version(stack), SleeperVersion::Original) << stack;
        EXPECT_EQ(stack.find("0xffff"), std::string::npos) << "a frame outside the kernel's symbols:\n" << stack;
    }
}

TEST_F(PatchApplyTest, TimeoutRollsBackAndNamesTheBlockers) {
    const std::uint64_t entry = guest_symbol("do_nanosleep");
    const std::string code_before = guest_bytes(entry, 64);
    const std::string areas_before = vmalloc_areas();
    // Sleepers never woken (--signal-after beyond the timeout): no convergence.
    CommandResult r = hvpatch("apply", {example_patch_ko(Example::Sleeper, guest_->release()), "--timeout", "2",
                                        "--signal-after", "600"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();  // timeout
    EXPECT_NE(r.err.find("rolled back"), std::string::npos) << r.describe();
    for (int pid : sleep_workload_pids(*guest_))
        EXPECT_NE(r.err.find("pid " + std::to_string(pid) + " (sleep)"), std::string::npos) << r.describe();
    EXPECT_EQ(guest_bytes(entry, 64), code_before);
    EXPECT_EQ(vmalloc_areas(), areas_before);
    json status = hvpatch_json("status", {});
    EXPECT_TRUE(status["patches"].empty()) << status.dump(2);
    EXPECT_EQ(status["klp_target_state"], -1);
    EXPECT_EQ(status["tasks"]["pending"], 0);
    auto records = read_audit_log(audit_log());
    ASSERT_FALSE(records.empty());
    EXPECT_EQ(records.back()["outcome"], "rolled-back");
    EXPECT_FALSE(records.back()["blockers"].empty());
    // The rolled-back record names the function whose entry was changed and changed back.
    ASSERT_EQ(records.back()["functions"].size(), 1u) << records.back().dump(2);
    EXPECT_EQ(std::stoull(records.back()["functions"][0]["address"].get<std::string>(), nullptr, 16), entry);
    EXPECT_EQ(records.back()["functions"][0]["bytes_before"], "0f 1f 44 00 00");
}

TEST_F(PatchApplyTest, ForceSwitchesTheBlockersLoudly) {
    json applied = hvpatch_json("apply", {example_patch_ko(Example::Sleeper, guest_->release()), "--timeout", "2",
                                          "--signal-after", "600", "--force"});
    EXPECT_EQ(applied.value("outcome", ""), "forced") << applied.dump(2);
    std::vector<int> forced;
    for (const auto& b : applied["forced"]) forced.push_back(b["pid"].get<int>());
    for (int pid : sleep_workload_pids(*guest_))
        EXPECT_NE(std::find(forced.begin(), forced.end(), pid), forced.end()) << applied["forced"].dump(2);
    EXPECT_EQ(read_audit_log(audit_log()).back()["outcome"], "forced");
    json reverted = hvpatch_json("revert", {"livepatch_sleeper", "--signal-after", "2"});
    EXPECT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
}

TEST_F(PatchApplyTest, PrototypeChangeNeverMixesCallerAndCalleeUnderLoad) {
    const std::string reference = start_proto_check(*guest_);
    const std::string ko = example_patch_ko(Example::Prototype, guest_->release());
    for (int round = 0; round < 2; ++round) {
        json applied = hvpatch_json("apply", {ko, "--signal-after", "2"});
        ASSERT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
        EXPECT_TRUE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
        json reverted = hvpatch_json("revert", {"livepatch_prototype", "--signal-after", "2"});
        ASSERT_EQ(reverted.value("outcome", ""), "reverted") << reverted.dump(2);
        EXPECT_FALSE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
    }
    ProtoCheckCounts counts = stop_proto_check(*guest_);
    EXPECT_EQ(counts.wrong, 0) << counts.errors;
    EXPECT_GT(counts.patched, 0) << "the checker never saw the patched version";
    EXPECT_GT(counts.original, 0);
}

TEST_F(PatchApplyTest, TwoPatchesOnDifferentFunctionsLiveSideBySideAndRevertInEitherOrder) {
    const std::string cmdline_before = guest_->run_ok(std::string(kCmdlineOracle));
    const std::string statm_before = guest_->run_ok(std::string(kStatmOracle));
    ASSERT_FALSE(statm_is_patched(statm_before));
    const std::vector<std::uint64_t> entries = {guest_symbol("cmdline_proc_show"), guest_symbol("proc_pid_statm")};
    std::vector<std::string> code_before;
    for (auto entry : entries) code_before.push_back(guest_bytes(entry, 64));
    const std::string areas_before = vmalloc_areas();
    const std::string cmdline_ko = example_patch_ko(Example::Cmdline, guest_->release());
    const std::string prototype_ko = example_patch_ko(Example::Prototype, guest_->release());

    struct Order {
        const char* first;
        const char* second;
    };
    for (Order order : {Order{"livepatch_cmdline", "livepatch_prototype"},
                        Order{"livepatch_prototype", "livepatch_cmdline"}}) {
        SCOPED_TRACE(std::string("revert ") + order.first + " first");
        ASSERT_EQ(hvpatch_json("apply", {cmdline_ko}).value("outcome", ""), "applied");
        ASSERT_EQ(hvpatch_json("apply", {prototype_ko, "--signal-after", "2"}).value("outcome", ""), "applied");
        EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
        EXPECT_TRUE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
        json status = hvpatch_json("status", {});
        ASSERT_EQ(status["patches"].size(), 2u) << status.dump(2);
        for (const auto& patch : status["patches"]) EXPECT_EQ(patch["phase"], "applied") << patch.dump(2);

        ASSERT_EQ(hvpatch_json("revert", {order.first, "--signal-after", "2"}).value("outcome", ""), "reverted");
        // The other patch is untouched by the first revert.
        bool cmdline_left = std::string(order.second) == "livepatch_cmdline";
        EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)) == kCmdlinePatchedOutput, cmdline_left);
        EXPECT_EQ(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))), !cmdline_left);
        status = hvpatch_json("status", {});
        ASSERT_EQ(status["patches"].size(), 1u) << status.dump(2);
        EXPECT_EQ(status["patches"][0]["name"], order.second) << status.dump(2);

        ASSERT_EQ(hvpatch_json("revert", {order.second, "--signal-after", "2"}).value("outcome", ""), "reverted");
        EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), cmdline_before);
        EXPECT_FALSE(statm_is_patched(guest_->run_ok(std::string(kStatmOracle))));
        for (std::size_t i = 0; i < entries.size(); ++i) EXPECT_EQ(guest_bytes(entries[i], 64), code_before[i]);
        EXPECT_EQ(vmalloc_areas(), areas_before);
    }
}

// The record store a VMM keeps with the VM's definition, in memory: what
// libvirt's domain <metadata> is to a domain, for a guest under plain QEMU.
class MemoryRecordStore : public VmRecordStore {
public:
    std::string location() const override { return "<metadata> of the test's record store"; }
    std::optional<std::string> read() override { return element; }
    void write(const std::string& element_xml) override {
        ++writes;
        element = element_xml;
    }
    void remove() override { element.reset(); }
    std::optional<std::string> element;
    int writes = 0;
};

// The test guest's QEMU with a record store, as a libvirt backend offers one.
class MachineWithRecordStore : public Machine {
public:
    MachineWithRecordStore(std::unique_ptr<Machine> inner, VmRecordStore& records)
        : inner_(std::move(inner)), records_(records) {}
    std::string name() const override { return inner_->name(); }
    std::string accelerator() override { return inner_->accelerator(); }
    MachineIdentity identity() override { return inner_->identity(); }
    VmRecordStore* record_store() override { return &records_; }
    RunState run_state() override { return inner_->run_state(); }
    void pause() override { inner_->pause(); }
    void resume() override { inner_->resume(); }
    void set_run_state_on_close(RunState state) override { inner_->set_run_state_on_close(state); }
    StopStats stop_stats() const override { return inner_->stop_stats(); }
    void reset_stop_stats() override { inner_->reset_stop_stats(); }
    std::vector<int> vcpus() override { return inner_->vcpus(); }
    VcpuRegisters read_registers(int vcpu) override { return inner_->read_registers(vcpu); }
    void write_registers(int vcpu, const VcpuRegisters& regs) override { inner_->write_registers(vcpu, regs); }
    MemoryAccessInfo memory_access() override { return inner_->memory_access(); }
    void read_physical(GuestPhysAddr addr, std::span<std::byte> out) override { inner_->read_physical(addr, out); }
    void write_physical(GuestPhysAddr addr, std::span<const std::byte> data) override { inner_->write_physical(addr, data); }
    void set_breakpoint(GuestVirtAddr addr) override { inner_->set_breakpoint(addr); }
    void clear_breakpoint(GuestVirtAddr addr) override { inner_->clear_breakpoint(addr); }
    std::optional<BreakpointHit> run_until_breakpoint(std::chrono::milliseconds timeout) override {
        return inner_->run_until_breakpoint(timeout);
    }

private:
    std::unique_ptr<Machine> inner_;
    VmRecordStore& records_;
};

TEST_F(PatchApplyTest, WithARecordStoreTheStateLivesThereAndAFreshHvpatchRevertsFromIt) {
    const std::string original = guest_->run_ok(std::string(kCmdlineOracle));
    const std::uint64_t entry = guest_symbol("cmdline_proc_show");
    const std::string code_before = guest_bytes(entry, 64);
    MemoryRecordStore records;
    const std::string first_dir = *dir_ + "/record-store-first", fresh_dir = *dir_ + "/record-store-fresh";
    auto options_for = [&](const std::string& state_dir) {
        PatchOptions options;
        options.state_dir = state_dir;
        options.audit_log = audit_log();
        options.signal_after = 2s;
        return options;
    };
    {
        MachineWithRecordStore machine(open_machine(guest_->target()), records);
        OperationReport applied = Patcher(machine, options_for(first_dir)).apply(
            example_patch_ko(Example::Cmdline, guest_->release()));
        EXPECT_EQ(applied.outcome, OperationOutcome::Applied);
    }
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), kCmdlinePatchedOutput);
    ASSERT_TRUE(records.element);
    // Written ahead of each phase: loading, protected, functions, patching, applied at least.
    EXPECT_GE(records.writes, 4);
    VmState recorded = vm_state_from_xml(*records.element, records.location());
    ASSERT_EQ(recorded.patches.size(), 1u);
    EXPECT_EQ(recorded.patches[0].name, "livepatch_cmdline");
    EXPECT_EQ(recorded.patches[0].phase, PatchPhase::Applied);
    EXPECT_NE(records.element->find("<function name=\"cmdline_proc_show\""), std::string::npos) << *records.element;
    for (const auto& file : fs::directory_iterator(first_dir))
        EXPECT_NE(file.path().extension(), ".json") << "a state file beside the record store: " << file.path();

    {
        // A fresh hvpatch: its state directory is empty, the record store is all it has.
        MachineWithRecordStore machine(open_machine(guest_->target()), records);
        Patcher patcher(machine, options_for(fresh_dir));
        StatusReport status = patcher.status();
        EXPECT_FALSE(status.stale);
        EXPECT_EQ(status.state_location, records.location());
        ASSERT_EQ(status.patches.size(), 1u);
        EXPECT_EQ(status.patches[0].patch.phase, PatchPhase::Applied);
        ASSERT_EQ(status.patches[0].functions.size(), 1u);
        EXPECT_EQ(status.patches[0].functions[0].entry_now, "direct");
        EXPECT_EQ(patcher.revert("livepatch_cmdline").outcome, OperationOutcome::Reverted);
    }
    EXPECT_FALSE(records.element) << "the record is removed with the last patch";
    EXPECT_EQ(guest_->run_ok(std::string(kCmdlineOracle)), original);
    EXPECT_EQ(guest_bytes(entry, 64), code_before);
    auto audit = read_audit_log(audit_log());
    ASSERT_FALSE(audit.empty());
    EXPECT_EQ(audit.back()["operation"], "revert");
    EXPECT_EQ(audit.back()["state_location"], records.location());
}

}  // namespace
}  // namespace hvpatch::test
