// The kernel matrix: every guest kernel hvpatch supports, booted from
// Debian's own packages (scripts/build-test-guest --suite), each checked with
// the same oracles as the default test guest. One ctest entry per kernel
// (matrix.<kernel>, label "matrix"), one guest per entry shared by its tests.
//
// The kernels differ in the formats hvpatch decodes (docs/operator-guide.md,
// "Supported guest kernels"): 5.10 (kallsyms 4.6-6.3 order, ORC v1, no
// pcpu_hot), 6.1 (the default guest; rt-amd64 here: PREEMPT_RT), 6.12 (6.4+
// kallsyms order, ORC v3, pcpu_hot, IBT), 7.2 (place-relative kallsyms, ORC
// with 7.x register numbers, per-CPU data no longer zero-based, FRED stack
// padding, 5-level paging with -cpu max).
#include <gtest/gtest.h>

#include <memory>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "support/example_patches.h"
#include "support/introspection_checks.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

struct MatrixKernel {
    std::string name;  // gtest-safe; the ctest entry is matrix.<name>
    TestGuestOptions options;
    // What `hvpatch inspect --json` must report for it.
    std::string kallsyms_format_has;
    int paging_levels = 4;
    // TIF_PATCH_PENDING / TIF_NOTIFY_SIGNAL as that kernel's headers define
    // them (the test's oracle for what hvpatch derives from the code).
    unsigned tif_patch_pending = 13, tif_notify_signal = 17;
    // hvpatch applies patches on it; else apply must refuse cleanly.
    bool applies = false;
};

// gtest prints the parameter of a failed test with this.
void PrintTo(const MatrixKernel& k, std::ostream* out) { *out << k.name; }

MatrixKernel kernel(std::string name, std::string suite, std::string flavour, std::string kallsyms,
                    std::string cpu_model = "", int paging_levels = 4) {
    MatrixKernel k;
    k.name = std::move(name);
    k.options.suite = std::move(suite);
    k.options.flavour = std::move(flavour);
    k.options.cpu_model = std::move(cpu_model);
    k.kallsyms_format_has = std::move(kallsyms);
    k.paging_levels = paging_levels;
    return k;
}

MatrixKernel with_tif(MatrixKernel k, unsigned pending, unsigned notify) {
    k.tif_patch_pending = pending;
    k.tif_notify_signal = notify;
    return k;
}
MatrixKernel applying(MatrixKernel k) {
    k.applies = true;
    return k;
}

const std::vector<MatrixKernel>& matrix() {
    static const std::vector<MatrixKernel> kernels = {
        applying(with_tif(kernel("Linux510", "bullseye", "", "4.6-6.3 order"), 13, 19)),
        // From the bookworm suite through the private apt configuration, so
        // that its headers come the same way (the machine installs only the
        // default flavour's).
        applying(kernel("Linux61Rt", "bookworm", "rt-amd64", "4.6-6.3 order")),
        applying(kernel("Linux612", "bookworm-backports", "", "6.4+ order, base-relative")),
        applying(with_tif(kernel("Linux72", "forky", "", "place-relative"), 9, 2)),
        applying(with_tif(kernel("Linux72La57", "forky", "", "place-relative", "max", 5), 9, 2)),
    };
    return kernels;
}

CommandResult hvpatch(const std::vector<std::string>& args) {
    std::vector<std::string> argv{hvpatch_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, 300s);
}

class KernelMatrix : public ::testing::TestWithParam<MatrixKernel> {
protected:
    // One guest per kernel: booted by the first test of that kernel, kept
    // for the next ones (each ctest entry runs one kernel's tests).
    void SetUp() override {
        if (booted_for_ != GetParam().name) {
            guest_.reset();
            booted_for_ = GetParam().name;
            boot_error_.clear();
            try {
                guest_ = TestGuest::boot(GetParam().options);
            } catch (const std::exception& e) {
                boot_error_ = e.what();
            }
        }
        ASSERT_NE(guest_, nullptr) << GetParam().name << " did not boot: " << boot_error_;
    }
    static void TearDownTestSuite() { guest_.reset(); }

    TestGuest& guest() { return *guest_; }

    static std::unique_ptr<TestGuest> guest_;
    static std::string booted_for_, boot_error_;
};
std::unique_ptr<TestGuest> KernelMatrix::guest_;
std::string KernelMatrix::booted_for_, KernelMatrix::boot_error_;

TEST_P(KernelMatrix, InspectNamesTheKernelAndItsFormats) {
    const std::string release = guest().run_ok("uname -r");
    CommandResult r = hvpatch({"inspect", guest().target(), "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json doc = nlohmann::json::parse(r.out);
    const nlohmann::json& k = doc["kernel"];
    EXPECT_EQ(k["release"].get<std::string>() + "\n", release);
    EXPECT_NE(k["formats"]["kallsyms"].get<std::string>().find(GetParam().kallsyms_format_has), std::string::npos)
        << k["formats"].dump();
    EXPECT_EQ(k["paging_levels"].get<int>(), GetParam().paging_levels);
    EXPECT_EQ(k["formats"]["tif_patch_pending"], GetParam().tif_patch_pending) << k["formats"].dump();
    EXPECT_EQ(k["formats"]["tif_notify_signal"], GetParam().tif_notify_signal) << k["formats"].dump();
    // module_alloc is gone from 6.10 (6.12 and 7.2 here): execmem_alloc.
    const bool execmem = GetParam().options.suite == "bookworm-backports" || GetParam().options.suite == "forky";
    EXPECT_EQ(k["formats"]["module_memory"].get<std::string>().rfind(
                  execmem ? "execmem_alloc(EXECMEM_MODULE_DATA=" : "module_alloc", 0),
              0u)
        << k["formats"].dump();
    // The guest's branch-site choices were derived and cross-checked.
    EXPECT_EQ(k["formats"]["branch_sites"].get<std::string>().rfind("unknown", 0), std::string::npos)
        << k["formats"].dump();
}

// The 16 bytes at a function's entry, as hvpatch reads them.
std::string entry_bytes(TestGuest& guest, const std::string& function) {
    CommandResult sym = hvpatch({"sym", guest.target(), function});
    if (sym.exit_code != 0) return "sym failed: " + sym.err;
    const std::string address = "0x" + sym.out.substr(0, sym.out.find(' '));  // "ffffffff81234560 t name"
    CommandResult read = hvpatch({"read", guest.target(), "--virt", address, "16", "--json"});
    return read.exit_code == 0 ? read.out : "read failed: " + read.err;
}

// apply, the oracle's patched output, revert, the original output and
// entry bytes again; or, where hvpatch does not patch, a clean refusal.
// TAINT_LIVEPATCH ('K', bit 15 in every kernel of the matrix) in the
// guest's own /proc/sys/kernel/tainted.
bool tainted_livepatch(TestGuest& guest) {
    return (std::stoull(guest.run_ok("cat /proc/sys/kernel/tainted")) >> 15) & 1;
}

void apply_and_revert(TestGuest& guest, bool applies, Example example, std::string_view oracle,
                      std::string_view patched_output, bool first_patch = false) {
    const ExamplePatch& e = example_patch(example);
    const std::string function(e.replaced.front());
    const std::string ko = example_patch_ko(example, guest.release());
    const std::string original = guest.run_ok(std::string(oracle));
    const std::string code_before = entry_bytes(guest, function);
    ASSERT_EQ(code_before.find("failed"), std::string::npos) << code_before;
    if (first_patch && applies) {
        EXPECT_FALSE(tainted_livepatch(guest)) << "tainted K before any patch";
    }
    CommandResult apply = hvpatch({"apply", guest.target(), ko});
    if (!applies) {
        // Not supported yet on this kernel: a clear refusal, nothing changed.
        EXPECT_NE(apply.exit_code, 0) << apply.out;
        EXPECT_NE(apply.err.find("hvpatch: error:"), std::string::npos) << apply.err;
        EXPECT_EQ(guest.run_ok(std::string(oracle)), original);
        EXPECT_EQ(entry_bytes(guest, function), code_before);
        CommandResult status = hvpatch({"status", guest.target(), "--json"});
        EXPECT_EQ(status.out.find(e.module), std::string::npos) << status.out;
        return;
    }
    ASSERT_EQ(apply.exit_code, 0) << apply.out << apply.err;
    EXPECT_EQ(guest.run_ok(std::string(oracle)), patched_output);
    EXPECT_NE(entry_bytes(guest, function), code_before) << "the entry is redirected";
    EXPECT_TRUE(tainted_livepatch(guest)) << "the guest does not show it runs live-patched code";
    CommandResult revert = hvpatch({"revert", guest.target(), std::string(e.module)});
    ASSERT_EQ(revert.exit_code, 0) << revert.out << revert.err;
    EXPECT_EQ(guest.run_ok(std::string(oracle)), original);
    EXPECT_EQ(entry_bytes(guest, function), code_before) << "the entry's bytes are restored";
}

TEST_P(KernelMatrix, ApplyAndRevertTheCmdlineExample) {
    apply_and_revert(guest(), GetParam().applies, Example::Cmdline, kCmdlineOracle, kCmdlinePatchedOutput, true);
}

// Alternatives (6.3+: ft_flags), paravirt calls (.parainstructions up to
// 6.7, ALT_FLAG_DIRECT_CALL after) and WARNs (7.x: 16-byte bug_entry and
// __WARN_trap) in the patch code, each in that kernel's own form.
TEST_P(KernelMatrix, ApplyAndRevertTheAlternativesExample) {
    apply_and_revert(guest(), GetParam().applies, Example::Alternatives, kVersionOracle, kVersionPatchedOutput);
}

// The sleepers of guest/init block the transition in do_nanosleep until
// hvpatch wakes them as the guest's own klp_send_signals would (its
// TIF_NOTIFY_SIGNAL, derived from the guest's code), and they restart their
// sleep in the new copy.
TEST_P(KernelMatrix, SleepersAreWokenAndSleepInTheNewCopy) {
    const std::vector<int> sleepers = sleep_workload_pids(guest());
    ASSERT_EQ(sleepers.size(), 3u);
    const std::string ko = example_patch_ko(Example::Sleeper, guest().release());
    CommandResult apply = hvpatch({"apply", guest().target(), ko, "--signal-after", "2", "--timeout", "60", "--json"});
    if (!GetParam().applies) {
        EXPECT_NE(apply.exit_code, 0) << apply.out;
        EXPECT_NE(apply.err.find("hvpatch: error:"), std::string::npos) << apply.err;
        for (int pid : sleepers)
            EXPECT_EQ(sleeper_version(guest_task_stack(guest(), pid)), SleeperVersion::Original) << pid;
        return;
    }
    ASSERT_EQ(apply.exit_code, 0) << apply.out << apply.err;
    nlohmann::json applied = nlohmann::json::parse(apply.out);
    EXPECT_EQ(applied.value("outcome", ""), "applied") << applied.dump(2);
    EXPECT_GT(applied["passes"].get<int>(), 1) << "the sleepers held the transition";
    for (int pid : sleepers) {
        CommandResult stack = hvpatch({"stack", guest().target(), std::to_string(pid), "--json"});
        ASSERT_EQ(stack.exit_code, 0) << stack.err;
        nlohmann::json st = nlohmann::json::parse(stack.out)["stacks"][0];
        EXPECT_TRUE(st["reliable"].get<bool>()) << st.dump(2);
        bool in_copy = false;
        for (const auto& frame : st["frames"]) in_copy |= frame.value("symbol", "") == kSleeperPatchedFrame;
        EXPECT_TRUE(in_copy) << "pid " << pid << " does not sleep in the new copy:\n" << st.dump(2);
    }
    CommandResult revert =
        hvpatch({"revert", guest().target(), "livepatch_sleeper", "--signal-after", "2", "--timeout", "60", "--json"});
    ASSERT_EQ(revert.exit_code, 0) << revert.out << revert.err;
    EXPECT_EQ(nlohmann::json::parse(revert.out).value("outcome", ""), "reverted") << revert.out;
    for (int pid : sleepers)
        EXPECT_EQ(sleeper_version(guest_task_stack(guest(), pid)), SleeperVersion::Original) << pid;
}

// The prototype example changes a function's signature and its caller
// together: the guest's proto-check workload calls through both while the
// patch goes in and out and must never see one without the other.
TEST_P(KernelMatrix, PrototypeChangeNeverMixesCallerAndCallee) {
    const std::string ko = example_patch_ko(Example::Prototype, guest().release());
    const std::string statm_before = guest().run_ok(std::string(kStatmOracle));
    ASSERT_FALSE(statm_is_patched(statm_before)) << statm_before;
    const std::string reference = start_proto_check(guest());
    CommandResult apply = hvpatch({"apply", guest().target(), ko, "--signal-after", "2", "--timeout", "60", "--json"});
    ASSERT_EQ(apply.exit_code, 0) << apply.out << apply.err;
    EXPECT_EQ(nlohmann::json::parse(apply.out).value("outcome", ""), "applied") << apply.out;
    EXPECT_TRUE(statm_is_patched(guest().run_ok(std::string(kStatmOracle))));
    CommandResult revert = hvpatch(
        {"revert", guest().target(), "livepatch_prototype", "--signal-after", "2", "--timeout", "60", "--json"});
    ASSERT_EQ(revert.exit_code, 0) << revert.out << revert.err;
    EXPECT_FALSE(statm_is_patched(guest().run_ok(std::string(kStatmOracle))));
    ProtoCheckCounts counts = stop_proto_check(guest());
    EXPECT_EQ(counts.wrong, 0) << counts.errors;
    EXPECT_GT(counts.patched, 0) << "the checker never saw the patched version";
    EXPECT_GT(counts.original, 0);
}

TEST_P(KernelMatrix, SymAllEqualsProcKallsyms) { expect_sym_all_equals_proc_kallsyms(guest()); }

TEST_P(KernelMatrix, PsEqualsProc) { expect_ps_equals_proc(guest()); }

TEST_P(KernelMatrix, StacksEqualProcStackWithoutSchedulerFrames) { expect_stacks_equal_proc_stack(guest()); }

TEST_P(KernelMatrix, RunningTasksStartAtTheirVcpusRip) { expect_running_tasks_start_at_vcpu_rip(guest()); }

TEST_P(KernelMatrix, GuestKernelStayedHealthy) { EXPECT_EQ(kernel_problems_shown(guest()), ""); }

INSTANTIATE_TEST_SUITE_P(Kernels, KernelMatrix, ::testing::ValuesIn(matrix()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace hvpatch::test
