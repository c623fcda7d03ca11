// The test guest itself: the kernel the build script chose, the system /init
// prepares, the workloads, the command channel, and the launcher's variants
// (private RAM, -cpu max with 5-level paging).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <thread>

#include "hvpatch/error.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

class GuestBootTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        guest_ = TestGuest::boot().release();
        std::printf("[ guest    ] %s booted in %lld ms (%s)\n", guest_->release().c_str(),
                    static_cast<long long>(guest_->boot_time().count()), guest_->vm().accel().c_str());
    }
    static void TearDownTestSuite() {
        delete guest_;
        guest_ = nullptr;
    }
    void SetUp() override { ASSERT_NE(guest_, nullptr) << "the test guest did not boot"; }

    static TestGuest* guest_;
};

TestGuest* GuestBootTest::guest_ = nullptr;

TEST_F(GuestBootTest, RunsTheReleaseTheScriptReported) {
    EXPECT_EQ(guest_->run_ok("uname -r"), guest_->release() + "\n");
    EXPECT_EQ(guest_->run_ok("hostname"), "hvpatch-guest\n");
}

TEST_F(GuestBootTest, KaslrStaysOn) {
    std::string cmdline = guest_->run_ok("cat /proc/cmdline");
    EXPECT_EQ(cmdline.find("nokaslr"), std::string::npos) << cmdline;
    EXPECT_NE(cmdline.find("console=ttyS0"), std::string::npos) << cmdline;
}

TEST_F(GuestBootTest, HasTwoCpusAndRealKernelAddresses) {
    EXPECT_EQ(guest_->run_ok("nproc"), "2\n");
    EXPECT_EQ(guest_->run_ok("cat /proc/sys/kernel/kptr_restrict"), "0\n");
    // With kptr_restrict=0, root sees real addresses, not zeros.
    std::string line = guest_->run_ok("grep -m1 ' T _stext$' /proc/kallsyms");
    EXPECT_TRUE(line.starts_with("ffffffff")) << line;
}

TEST_F(GuestBootTest, WorkloadsAreRunning) {
    // By process name (comm), which is what the host-side task list shows.
    std::string names = "\n" + guest_->run_ok("ps -o comm");
    auto count = [&](const std::string& name) {
        std::size_t n = 0;
        const std::string line = "\n" + name + "\n";
        for (std::size_t at = names.find(line); at != std::string::npos; at = names.find(line, at + 1)) ++n;
        return n;
    };
    EXPECT_EQ(count("sleep"), 3u) << names;
    EXPECT_GE(count("syscall-loop"), 1u) << names;
    EXPECT_EQ(count("cpu-loop"), 1u) << names;
    EXPECT_EQ(count("cmd-loop"), 1u) << names;
    std::string args = guest_->run_ok("ps -o args");
    EXPECT_NE(args.find("sleep 1000000"), std::string::npos) << args;
}

TEST_F(GuestBootTest, VirtioModulesAreLoaded) {
    std::string modules = guest_->run_ok("cat /proc/modules");
    for (const char* name :
         {"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk"}) {
        bool found = modules.starts_with(std::string(name) + " ") ||
                     modules.find(std::string("\n") + name + " ") != std::string::npos;
        EXPECT_TRUE(found) << name << " missing from\n" << modules;
    }
    // Live, at real module-area addresses.
    EXPECT_NE(modules.find("Live 0xffffffffc"), std::string::npos) << modules;
}

TEST_F(GuestBootTest, FailingCommandReturnsItsStatus) {
    auto result = guest_->run("exit 3");
    EXPECT_EQ(result.status, 3);
    EXPECT_EQ(result.output, "");
    result = guest_->run("ls /no/such/file");
    EXPECT_NE(result.status, 0);
    EXPECT_NE(result.output.find("/no/such/file"), std::string::npos) << result.output;
    EXPECT_THROW(guest_->run_ok("false"), std::runtime_error);
    // The loop survives all of that.
    EXPECT_EQ(guest_->run_ok("echo still here"), "still here\n");
}

TEST_F(GuestBootTest, OutputPassesVerbatim) {
    // CR, tabs, blank lines, no final newline, stderr interleaved.
    EXPECT_EQ(guest_->run_ok("printf 'one\\r\\ntwo\\t2\\n\\n\\nthree'"), "one\r\ntwo\t2\n\n\nthree");
    EXPECT_EQ(guest_->run_ok("echo out; echo err >&2; echo out2"), "out\nerr\nout2\n");
    EXPECT_EQ(guest_->run_ok("printf '@@not a marker@@\\n'"), "@@not a marker@@\n");
    // Every byte value but NUL survives the raw serial line.
    std::string all = guest_->run_ok("awk 'BEGIN { for (i = 1; i < 256; i++) printf \"%c\", i }'");
    ASSERT_EQ(all.size(), 255u);
    for (int i = 1; i < 256; ++i) EXPECT_EQ(static_cast<unsigned char>(all[i - 1]), i) << "byte " << i;
}

TEST_F(GuestBootTest, LargerOutputArrivesWhole) {
    std::string out = guest_->run_ok("seq 1 10000", 60s);
    std::string expected;
    for (int i = 1; i <= 10000; ++i) expected += std::to_string(i) + "\n";
    EXPECT_EQ(out, expected);
}

TEST_F(GuestBootTest, CommandTimeoutIsReportedAndTheChannelRecovers) {
    auto start = std::chrono::steady_clock::now();
    try {
        guest_->run("echo started; sleep 1000", 500ms);
        ADD_FAILURE() << "expected a timeout";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Timeout) << e.what();
    }
    // The guest kills the hung command; the next one gets its own answer.
    EXPECT_EQ(guest_->run_ok("echo after", 10s), "after\n");
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
    EXPECT_EQ(guest_->run_ok("ps -o args | grep -c '[s]leep 1000$' || true"), "0\n");
}

TEST_F(GuestBootTest, QuotesSurviveTheWrapping) {
    EXPECT_EQ(guest_->run_ok("echo 'single' \"double\" it\\'s; echo $((6 * 7))"), "single double it's\n42\n");
}

TEST_F(GuestBootTest, LauncherExposesItsFiles) {
    const LaunchedVm& vm = guest_->vm();
    EXPECT_EQ(guest_->target(), "qmp:" + vm.qmp_socket_path());
    struct stat st {};
    ASSERT_EQ(::stat(vm.qmp_socket_path().c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    ASSERT_FALSE(vm.ram_file_path().empty());
    ASSERT_EQ(::stat(vm.ram_file_path().c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 512ll << 20);
    EXPECT_NE(guest_->console_log().find("HVPATCH-GUEST-READY " + guest_->release()), std::string::npos);
    std::string why;
    if (!usable_kvm(&why)) {
        EXPECT_EQ(vm.accel(), "tcg");
        EXPECT_FALSE(why.empty());
    }
}

// --- Guests of their own -----------------------------------------------------

TEST(GuestVariantsTest, BootsWithPrivateRam) {
    TestGuestOptions options;
    options.shared_ram = false;
    auto guest = TestGuest::boot(options);
    EXPECT_TRUE(guest->vm().ram_file_path().empty());
    EXPECT_EQ(guest->run_ok("uname -r"), guest->release() + "\n");
    std::string workdir = guest->vm().workdir();
    guest.reset();
    EXPECT_FALSE(std::filesystem::exists(workdir)) << workdir << " left behind";
}

TEST(GuestVariantsTest, CpuMaxTurnsOnFiveLevelPaging) {
    TestGuestOptions options;
    options.cpu_model = "max";
    auto guest = TestGuest::boot(options);
    std::printf("[ guest    ] -cpu max booted in %lld ms\n", static_cast<long long>(guest->boot_time().count()));
    // The kernel clears the la57 flag when it does not run with 5-level
    // page tables, so the flag in /proc/cpuinfo means they are on.
    EXPECT_EQ(guest->run_ok("grep -c -w la57 /proc/cpuinfo"), "2\n");
}

TEST(GuestVariantsTest, StopRemovesEverything) {
    auto guest = TestGuest::boot();
    pid_t pid = guest->vm().pid();
    std::string workdir = guest->vm().workdir();
    std::string ram = guest->vm().ram_file_path();
    guest->vm().stop();
    EXPECT_FALSE(guest->vm().running());
    EXPECT_NE(::kill(pid, 0), 0) << "QEMU " << pid << " still exists";
    EXPECT_FALSE(std::filesystem::exists(workdir));
    EXPECT_FALSE(std::filesystem::exists(ram));
}

TEST(LauncherTest, ReportsWhyQemuFailedToStart) {
    LaunchOptions options = guest_launch_options(test_guest_dir());
    options.extra_args = {"-no-such-option"};
    try {
        launch_vm(options);
        ADD_FAILURE() << "expected launch_vm to fail";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Internal);
        EXPECT_NE(std::string(e.what()).find("-no-such-option"), std::string::npos) << e.what();
    }
}

TEST(LauncherTest, RejectsAMissingKernel) {
    LaunchOptions options;
    options.kernel = "/nonexistent/vmlinuz";
    try {
        launch_vm(options);
        ADD_FAILURE() << "expected launch_vm to fail";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Usage);
        EXPECT_NE(std::string(e.what()).find("/nonexistent/vmlinuz"), std::string::npos) << e.what();
    }
}

// A test that crashes never runs stop(): its QEMU must die with it, and the
// next launch must clean up the work dir and the 512 MiB RAM file.
TEST(LauncherTest, CrashedLauncherLeavesNothingBehind) {
    LaunchOptions options = guest_launch_options(test_guest_dir());
    int report[2];
    ASSERT_EQ(::pipe(report), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(report[0]);
        try {
            auto vm = launch_vm(options);
            std::string text = std::to_string(vm->pid()) + "\n" + vm->workdir() + "\n" + vm->ram_file_path() + "\n";
            if (::write(report[1], text.data(), text.size()) < 0) ::_exit(2);
            ::raise(SIGKILL);  // no destructors, no stop()
        } catch (...) {
        }
        ::_exit(3);
    }
    ::close(report[1]);
    std::string text;
    char buf[512];
    for (ssize_t n; (n = ::read(report[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    ::close(report[0]);
    int status = 0;
    ::waitpid(child, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << describe_wait_status(status) << " " << text;
    std::istringstream lines(text);
    pid_t qemu = 0;
    std::string workdir, ram;
    lines >> qemu >> workdir >> ram;
    ASSERT_GT(qemu, 0) << text;
    ASSERT_TRUE(std::filesystem::exists(ram)) << text;

    // QEMU got SIGKILL when its parent died.
    bool gone = false;
    for (int i = 0; i < 200 && !gone; ++i) {
        gone = ::kill(qemu, 0) != 0;
        if (!gone) std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(gone) << "QEMU " << qemu << " outlived its launcher";

    // Age the dir past the collector's grace, then launch again.
    auto old = std::filesystem::file_time_type::clock::now() - std::chrono::minutes(5);
    std::filesystem::last_write_time(workdir, old);
    options.command_port = false;
    auto vm = launch_vm(options);
    EXPECT_FALSE(std::filesystem::exists(workdir)) << workdir << " not collected";
    EXPECT_FALSE(std::filesystem::exists(ram)) << ram << " not collected";
    // The live VM's files are not collected, however old.
    std::filesystem::last_write_time(vm->workdir(), old);
    auto second = launch_vm(options);
    EXPECT_TRUE(std::filesystem::exists(vm->ram_file_path()));
    EXPECT_TRUE(vm->running());
}

TEST(LauncherTest, KvmProbeGivesAReason) {
    std::string why;
    bool usable = usable_kvm(&why);
    if (!usable) {
        EXPECT_FALSE(why.empty());
    }
    std::printf("[ kvm      ] usable=%d %s\n", usable, why.c_str());
}

TEST(RunCommandTest, CapturesStreamsAndStatus) {
    auto result = run_command({"sh", "-c", "echo out; echo err >&2; exit 7"}, 10s);
    EXPECT_EQ(result.exit_code, 7);
    EXPECT_EQ(result.term_signal, 0);
    EXPECT_EQ(result.out, "out\n");
    EXPECT_EQ(result.err, "err\n");
}

TEST(RunCommandTest, KillsOnTimeout) {
    auto start = std::chrono::steady_clock::now();
    auto result = run_command({"sleep", "30"}, 300ms);
    EXPECT_TRUE(result.timed_out);
    EXPECT_EQ(result.term_signal, SIGKILL);
    EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

TEST(RunCommandTest, SignalWhileRunning) {
    CommandOptions options;
    options.timeout = 10s;
    RunningCommand command({"sh", "-c", "trap 'echo got INT; exit 5' INT; echo ready; while :; do sleep 0.05; done"},
                           options);
    ASSERT_TRUE(command.wait_for_output("ready", 5s)) << command.out();
    command.send_signal(SIGINT);
    auto result = command.wait();
    EXPECT_EQ(result.exit_code, 5) << result.describe();
    EXPECT_EQ(result.out, "ready\ngot INT\n");
}

TEST(RunCommandTest, DelayedSignalAndInput) {
    CommandOptions options;
    options.timeout = 10s;
    options.signal = SIGTERM;
    options.signal_after = 200ms;
    options.input = "hello\n";
    auto result = run_command({"sh", "-c", "cat; exec sleep 20"}, options);
    EXPECT_EQ(result.out, "hello\n");
    EXPECT_EQ(result.term_signal, SIGTERM) << result.describe();
    EXPECT_FALSE(result.timed_out);
}

TEST(RunCommandTest, ProgramThatIgnoresItsInput) {
    CommandOptions options;
    options.timeout = 10s;
    options.input = std::string(1 << 20, 'x');  // more than a pipe holds
    auto result = run_command({"true"}, options);
    EXPECT_EQ(result.exit_code, 0) << result.describe();
}

}  // namespace
}  // namespace hvpatch::test
