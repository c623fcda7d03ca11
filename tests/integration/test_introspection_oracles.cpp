// hvpatch's view of a frozen guest against the guest's own view, through the
// CLI (sym --all, ps --json, stack --json), on several guest configurations.
//
// The guest cannot look at itself while it is frozen, so the oracles are
// taken just before and just after the freeze; a task whose state or stack is
// the same in both is compared exactly (it cannot have changed in between).
// The guest's command loop (cmd-loop) is the oracle's own machinery: it is
// always waiting for the listing command while the guest lists, and idle in
// poll() at the freeze, so it is left out.
#include <gtest/gtest.h>

#include "support/introspection_checks.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

struct DefaultGuest {
    static TestGuestOptions options() { return {}; }
};
struct FiveLevelGuest {
    static TestGuestOptions options() {
        TestGuestOptions o;
        o.cpu_model = "max";
        return o;
    }
};
struct NoKaslrGuest {
    static TestGuestOptions options() {
        TestGuestOptions o;
        o.extra_append = "nokaslr";
        return o;
    }
};
struct CloudGuest {
    static TestGuestOptions options() {
        TestGuestOptions o;
        o.flavour = "cloud-amd64";
        return o;
    }
};

template <typename Config>
class OraclesTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { guest_ = TestGuest::boot(Config::options()).release(); }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }
    static TestGuest* guest_;
};
template <typename Config>
TestGuest* OraclesTest<Config>::guest_ = nullptr;

using Configs = ::testing::Types<DefaultGuest, FiveLevelGuest, NoKaslrGuest, CloudGuest>;
TYPED_TEST_SUITE(OraclesTest, Configs);

TYPED_TEST(OraclesTest, SymAllEqualsProcKallsyms) { expect_sym_all_equals_proc_kallsyms(*this->guest_); }

TYPED_TEST(OraclesTest, PsEqualsProcForTasksStableAcrossTheFreeze) { expect_ps_equals_proc(*this->guest_); }

TYPED_TEST(OraclesTest, StacksEqualProcStackWithoutSchedulerFrames) { expect_stacks_equal_proc_stack(*this->guest_); }

TYPED_TEST(OraclesTest, RunningTasksStartAtTheirVcpusRip) { expect_running_tasks_start_at_vcpu_rip(*this->guest_); }

}  // namespace
}  // namespace hvpatch::test
