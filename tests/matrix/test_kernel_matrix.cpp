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

const std::vector<MatrixKernel>& matrix() {
    static const std::vector<MatrixKernel> kernels = {
        kernel("Linux510", "bullseye", "", "4.6-6.3 order"),
        kernel("Linux61Rt", "", "rt-amd64", "4.6-6.3 order"),
        kernel("Linux612", "bookworm-backports", "", "6.4+ order, base-relative"),
        kernel("Linux72", "forky", "", "place-relative"),
        kernel("Linux72La57", "forky", "", "place-relative", "max", 5),
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
