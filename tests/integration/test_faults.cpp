// Bad inputs and faults: every way the target can be missing, wrong, busy,
// gone or interrupted, checked through the real `hvpatch` binary (exit codes
// and messages) and, where the CLI cannot show it, through the library.
//
// No kernel is needed for any of this: the VMs are bare QEMUs (q35, 256 MiB,
// no disk), which start in a fraction of a second. Without -S they run (in
// SeaBIOS, which finds nothing to boot and waits), which is all a "running
// VM" has to do here. Their RAM is anonymous: hvpatch reads it out of the
// QEMU process, or, where a test asks for it, through the gdbstub at some
// tens of MiB/s: a 200 MiB read takes seconds, long enough to be
// interrupted or to lose its QEMU half-way.
//
// QEMU's QMP socket serves one client at a time, so the tests talk to it
// with short connections (connect, one command, close) and never while
// hvpatch runs.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "support/run_command.h"
#include "vmm/launcher.h"
#include "vmm/qemu/qmp_client.h"
#include "vmm/socket.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

// A private directory under /tmp, removed with everything in it.
class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/hvpatch-faults.XXXXXX";
        if (!mkdtemp(tmpl)) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

// --- A bare QEMU ------------------------------------------------------------

struct BareQemuOptions {
    bool start_paused = true;  // -S: never runs a guest instruction
    bool gdbstub = false;      // -gdb unix:DIR/g.sock,server=on,wait=off
};

class BareQemu {
public:
    explicit BareQemu(BareQemuOptions options = {}) {
        qmp_path_ = dir_.path() + "/q.sock";
        gdb_path_ = dir_.path() + "/g.sock";
        log_path_ = dir_.path() + "/qemu.log";
        ChildSpec spec;
        spec.argv = {"qemu-system-x86_64", "-nodefaults", "-nographic", "-display", "none",
                     "-machine", "q35", "-m", "256", "-accel", "tcg",
                     "-qmp", "unix:" + qmp_path_ + ",server=on,wait=off"};
        if (options.start_paused) spec.argv.push_back("-S");
        if (options.gdbstub) spec.argv.insert(spec.argv.end(), {"-gdb", "unix:" + gdb_path_ + ",server=on,wait=off"});
        int log_fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (log_fd < 0) throw std::runtime_error("cannot create " + log_path_);
        spec.stdout_fd = log_fd;
        spec.stderr_fd = log_fd;
        try {
            pid_ = spawn_child(spec);
        } catch (...) {
            ::close(log_fd);
            throw;
        }
        ::close(log_fd);
        // Up when the QMP socket greets us.
        auto start = Clock::now();
        while (true) {
            try {
                QmpClient::connect(qmp_path_, 2s);
                break;
            } catch (const Error& e) {
                if (!alive() || Clock::now() - start > 10s)
                    throw std::runtime_error("bare QEMU did not come up: " + std::string(e.what()) + "\n" + log());
                std::this_thread::sleep_for(10ms);
            }
        }
    }
    ~BareQemu() {
        if (pid_ > 0 && !reaped_) stop_child(pid_, 0ms);
    }
    BareQemu(const BareQemu&) = delete;
    BareQemu& operator=(const BareQemu&) = delete;

    std::string target() const { return "qmp:" + qmp_path_; }
    const std::string& qmp_path() const { return qmp_path_; }
    const std::string& gdb_path() const { return gdb_path_; }
    const std::string& dir() const { return dir_.path(); }
    pid_t pid() const { return pid_; }

    // One QMP command on a connection of its own.
    nlohmann::json execute(const std::string& command, const nlohmann::json& args = nlohmann::json::object()) {
        QmpClient qmp = QmpClient::connect(qmp_path_, 5s);
        return qmp.execute(command, args, 5s);
    }
    std::string hmp(const std::string& line) {
        QmpClient qmp = QmpClient::connect(qmp_path_, 5s);
        return qmp.hmp(line, 5s);
    }
    // query-status: "running", "paused", "prelaunch", "debug", ...
    std::string status() { return execute("query-status").value("status", "?"); }
    bool running() { return execute("query-status").value("running", false); }
    // The filename query-chardev reports for the chardev labelled `label`.
    std::optional<std::string> chardev(const std::string& label) {
        for (const auto& dev : execute("query-chardev"))
            if (dev.value("label", "") == label) return dev.value("filename", "");
        return std::nullopt;
    }
    std::string chardevs() { return execute("query-chardev").dump(); }

    bool alive() {
        if (reaped_) return false;
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) reaped_ = true;
        return !reaped_;
    }
    // SIGKILL, as if QEMU crashed or was killed by an operator; reaped.
    void kill_now() {
        ::kill(pid_, SIGKILL);
        int status = 0;
        while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        reaped_ = true;
    }
    std::string log() const {
        std::ifstream in(log_path_);
        std::stringstream s;
        s << in.rdbuf();
        return "--- QEMU log ---\n" + s.str();
    }

private:
    TempDir dir_;
    std::string qmp_path_, gdb_path_, log_path_;
    pid_t pid_ = -1;
    bool reaped_ = false;
};

// --- A UNIX socket server that is not QEMU ---------------------------------

class FakeServer {
public:
    enum class Mode {
        Banner,       // sends `banner` and keeps the connection open
        Silent,       // accepts and says nothing
        CloseAtOnce,  // accepts and closes
    };
    FakeServer(const std::string& path, Mode mode, std::string banner = "")
        : mode_(mode), banner_(std::move(banner)) {
        listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
        if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
            ::listen(listen_fd_, 4) != 0)
            throw std::runtime_error("fake server on " + path + ": " + std::strerror(errno));
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeServer() {
        stop_ = true;
        thread_.join();
        for (int fd : clients_) ::close(fd);
        ::close(listen_fd_);
    }
    FakeServer(const FakeServer&) = delete;
    FakeServer& operator=(const FakeServer&) = delete;
    int accepted() const { return accepted_; }

private:
    void serve() {
        while (!stop_) {
            pollfd p{listen_fd_, POLLIN, 0};
            if (::poll(&p, 1, 20) <= 0) continue;
            int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) continue;
            ++accepted_;
            if (mode_ == Mode::CloseAtOnce) {
                ::close(fd);
                continue;
            }
            if (mode_ == Mode::Banner) (void)!::send(fd, banner_.data(), banner_.size(), MSG_NOSIGNAL);
            clients_.push_back(fd);
        }
    }

    Mode mode_;
    std::string banner_;
    int listen_fd_ = -1;
    std::vector<int> clients_;
    std::atomic<bool> stop_{false};
    std::atomic<int> accepted_{0};
    std::thread thread_;
};

CommandResult hvpatch(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s) {
    std::vector<std::string> argv{hvpatch_binary()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, timeout);
}

// `hvpatch read` of 200 MiB through the gdbstub (asked for: the process's
// memory would be read in a blink): ~5 s of work on a bare QEMU here
// (~40 MiB/s), so it is still reading when the test acts.
std::vector<std::string> slow_read_argv(const std::string& target) {
    return {hvpatch_binary(), "--memory-path", "gdbstub", "read", target, "--phys", "0", "200m", "--out", "/dev/null"};
}

// Sockets the process holds (QMP, then the gdbstub).
int socket_count(pid_t pid) {
    int n = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        std::error_code link_ec;
        auto target = fs::read_symlink(entry.path(), link_ec);
        if (!link_ec && target.string().rfind("socket:", 0) == 0) ++n;
    }
    return n;
}

// Returns once `cmd` is reading guest memory through the gdbstub: it holds
// its QMP and its gdb connection (it connects to the stub for the read, after
// pausing the VM), plus a moment. Waiting for this instead of a fixed delay
// keeps the tests meaningful on a loaded machine, where hvpatch may need more
// than a second to get there. False if it never gets there.
bool wait_until_reading(const RunningCommand& cmd) {
    auto start = Clock::now();
    while (socket_count(cmd.pid()) < 2) {
        if (Clock::now() - start > 15s) return false;
        std::this_thread::sleep_for(5ms);
    }
    std::this_thread::sleep_for(300ms);
    return true;
}

CommandOptions with_timeout(std::chrono::milliseconds timeout) {
    CommandOptions options;
    options.timeout = timeout;
    return options;
}

// === 1. The QMP socket is missing ===========================================

TEST(MissingSocket, ExitsUnreachableNamingThePath) {
    auto r = hvpatch({"inspect", "qmp:/nonexistent/x.sock"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, "/nonexistent/x.sock")) << r.describe();
    EXPECT_TRUE(contains(r.err, "No such file")) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();
}

TEST(MissingSocket, JsonPrintsAnErrorDocument) {
    auto r = hvpatch({"inspect", "qmp:/nonexistent/x.sock", "--json"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    auto doc = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_TRUE(doc.is_object()) << r.describe();
    ASSERT_TRUE(doc.contains("error")) << r.describe();
    EXPECT_EQ(doc["error"].value("kind", ""), "unreachable") << r.describe();
    EXPECT_TRUE(contains(doc["error"].value("message", ""), "/nonexistent/x.sock")) << r.describe();
    // The human message still goes to stderr.
    EXPECT_TRUE(contains(r.err, "/nonexistent/x.sock")) << r.describe();
}

TEST(MissingSocket, StaleSocketFileOrPlainFileIsUnreachable) {
    TempDir dir;
    // A socket file nobody listens on any more (QEMU was killed).
    std::string stale = dir.path() + "/stale.sock";
    {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, stale.c_str(), sizeof addr.sun_path - 1);
        ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
        ::close(fd);
    }
    auto r = hvpatch({"inspect", "qmp:" + stale});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, stale)) << r.describe();
    EXPECT_TRUE(contains(r.err, "refused")) << r.describe();

    std::string plain = dir.path() + "/plain";
    std::ofstream(plain) << "not a socket\n";
    r = hvpatch({"read", "qmp:" + plain, "--phys", "0", "16"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, plain)) << r.describe();
}

// === 2. Something else listens on the socket ================================

TEST(NotQemu, SshServerIsNotAQmpServer) {
    TempDir dir;
    std::string path = dir.path() + "/ssh.sock";
    FakeServer server(path, FakeServer::Mode::Banner, "SSH-2.0-OpenSSH_9.2\r\n");
    auto start = Clock::now();
    auto r = hvpatch({"inspect", "qmp:" + path});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, "not a QMP server")) << r.describe();
    EXPECT_TRUE(contains(r.err, path)) << r.describe();
    EXPECT_TRUE(contains(r.err, "SSH-2.0-OpenSSH_9.2")) << r.describe();  // says what it found
    EXPECT_LT(seconds_since(start), 3.0) << "a peer that talks nonsense is recognised at once";
    EXPECT_GE(server.accepted(), 1);
}

TEST(NotQemu, JsonThatIsNotAGreetingIsNotAQmpServer) {
    TempDir dir;
    std::string path = dir.path() + "/json.sock";
    FakeServer server(path, FakeServer::Mode::Banner, "{\"jsonrpc\": \"2.0\", \"method\": \"hello\"}\r\n");
    auto r = hvpatch({"inspect", "qmp:" + path, "--json"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, "not a QMP server")) << r.describe();
    EXPECT_TRUE(contains(r.err, path)) << r.describe();
    auto doc = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_TRUE(doc.is_object() && doc.contains("error")) << r.describe();
    EXPECT_EQ(doc["error"].value("kind", ""), "protocol") << r.describe();
}

TEST(NotQemu, ServerThatHangsUpAtOnce) {
    TempDir dir;
    std::string path = dir.path() + "/close.sock";
    FakeServer server(path, FakeServer::Mode::CloseAtOnce);
    auto r = hvpatch({"inspect", "qmp:" + path});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, path)) << r.describe();
    EXPECT_TRUE(contains(r.err, "closed the connection")) << r.describe();
}

// Also what a QEMU whose single QMP connection is held by another client
// (libvirt, an operator's socat) looks like: accepted, never greeted.
TEST(NotQemu, SilentServerTimesOutWithinTheQmpTimeout) {
    TempDir dir;
    std::string path = dir.path() + "/silent.sock";
    FakeServer server(path, FakeServer::Mode::Silent);
    auto start = Clock::now();
    auto r = hvpatch({"inspect", "qmp:" + path});
    double took = seconds_since(start);
    std::printf("[ measured ] silent QMP peer: hvpatch gave up after %.2f s\n", took);
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, path)) << r.describe();
    EXPECT_TRUE(contains(r.err, "no QMP greeting")) << r.describe();
    const double qmp_timeout = std::chrono::duration<double>(QmpClient::kDefaultTimeout).count();
    EXPECT_GE(took, qmp_timeout - 0.5) << "gave up before the QMP timeout";
    EXPECT_LT(took, qmp_timeout + 3.0) << "did not give up at the QMP timeout";
    EXPECT_LT(took, 15.0) << "an operator waits too long for a socket that is not QEMU";
}

TEST(NotQemu, SilentServerCanBeInterrupted) {
    TempDir dir;
    std::string path = dir.path() + "/silent.sock";
    FakeServer server(path, FakeServer::Mode::Silent);
    RunningCommand cmd({hvpatch_binary(), "inspect", "qmp:" + path}, with_timeout(30s));
    std::this_thread::sleep_for(500ms);
    cmd.send_signal(SIGINT);
    auto start = Clock::now();
    auto r = cmd.wait();
    EXPECT_EQ(r.exit_code, 130) << r.describe();
    EXPECT_LT(seconds_since(start), 2.0) << r.describe();
    EXPECT_TRUE(contains(r.err, path)) << r.describe();
    EXPECT_TRUE(contains(r.err, "interrupted")) << r.describe();
}

// === 3. Bad command lines ===================================================

TEST(BadCommandLine, UnknownTargetScheme) {
    // Without qmp: a target is a libvirt domain; libvirt's test driver
    // (no daemon needed) has none of this name.
    auto r = hvpatch({"-c", "test:///default", "inspect", "ssh:root@host"});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_TRUE(contains(r.err, "no domain 'ssh:root@host' on test:///default")) << r.describe();
    // A path cannot be a domain name: a usage error saying how to write it.
    r = hvpatch({"read", "/run/qemu.sock", "--phys", "0", "16"});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(contains(r.err, "a QMP socket is written qmp:/run/qemu.sock")) << r.describe();
    r = hvpatch({"inspect", "qmp:"});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(contains(r.err, "qmp:PATH")) << r.describe();
    r = hvpatch({"inspect", "qmp:", "--json"});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    auto doc = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_TRUE(doc.is_object() && doc.contains("error")) << r.describe();
    EXPECT_EQ(doc["error"].value("kind", ""), "usage") << r.describe();
}

TEST(BadCommandLine, BadNumbersAreRejectedBeforeConnecting) {
    // The target does not exist: a usage error must win over "unreachable".
    const std::string t = "qmp:/nonexistent/x.sock";
    struct Case {
        std::vector<std::string> args;
        std::string says;
    };
    const std::vector<Case> cases = {
        {{"read", t, "--phys", "0xzz", "16"}, "0xzz"},
        {{"read", t, "--phys", "4096abc", "16"}, "4096abc"},
        {{"read", t, "--phys", "ff", "16"}, "'ff'"},                          // hex needs 0x
        {{"read", t, "--phys", "0x", "16"}, "'0x'"},
        {{"read", t, "--phys", "0x1ffffffffffffffff", "16"}, "0x1ffffffffffffffff"},  // 65 bits
        {{"read", t, "--phys", "99999999999999999999", "16"}, "99999999999999999999"},
        {{"read", t, "--phys", "0", "-5"}, ""},
        {{"read", t, "--phys", "0", "0"}, "length"},
        {{"read", t, "--phys", "0", "2g"}, "length"},                         // above the 1 GiB cap
        {{"read", t, "--phys", "0", "17179869184g"}, "out of range"},         // overflows 64 bits
        {{"read", t, "--virt", "--cr3", "0xq", "0x1000", "16"}, "0xq"},
        {{"read", t, "--virt", "--vcpu", "one", "0x1000", "16"}, "one"},
        {{"read", t, "--virt", "--vcpu", "-2", "0x1000", "16"}, "-2"},
        {{"read", t, "--phys", "--virt", "0", "16"}, "--phys"},
        {{"read", t, "0", "16"}, "--phys"},
        {{"read", t, "--phys", "--cr3", "0x1000", "0", "16"}, "--cr3"},
        {{"read", t, "--virt", "--cr3", "0x1000", "--vcpu", "0", "0", "16"}, "--cr3"},
        {{"inspect"}, "target"},
        {{"inspect", t, "--frobnicate"}, "--frobnicate"},
    };
    for (const auto& c : cases) {
        auto r = hvpatch(c.args);
        std::string line;
        for (const auto& a : c.args) line += a + " ";
        EXPECT_EQ(r.exit_code, 2) << line << "\n" << r.describe();
        EXPECT_TRUE(contains(r.err, c.says)) << line << "\n" << r.describe();
        EXPECT_FALSE(contains(r.err, "No such file")) << line << "\n" << r.describe();
    }
}

TEST(BadCommandLine, VcpuThatDoesNotExist) {
    BareQemu vm;
    auto r = hvpatch({"read", vm.target(), "--virt", "--vcpu", "5", "0x1000", "16"});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_TRUE(contains(r.err, "vCPU 5")) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.target())) << r.describe();
    EXPECT_EQ(vm.status(), "prelaunch");
}

// === 4. QEMU exits in the middle of a command ===============================

TEST(QemuExits, LibraryReportsItAndClosesPromptly) {
    BareQemu vm({.start_paused = false});
    auto machine = open_machine(vm.target());
    machine->pause();
    vm.kill_now();

    auto start = Clock::now();
    try {
        machine->read_registers(0);
        ADD_FAILURE() << "read_registers succeeded on a dead QEMU";
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable) << to_string(e.kind()) << ": " << msg;
        EXPECT_TRUE(contains(msg, vm.target())) << msg;
        EXPECT_TRUE(contains(msg, "closed the connection") || contains(msg, "lost connection")) << msg;
        EXPECT_TRUE(contains(msg, "did QEMU exit?")) << msg;
    }
    double failed_after = seconds_since(start);
    EXPECT_LT(failed_after, 3.0);

    start = Clock::now();
    machine.reset();  // tries to resume the VM it paused; must not hang
    double destroyed_after = seconds_since(start);
    std::printf("[ measured ] QEMU killed: read_registers failed after %.3f s, ~Machine took %.3f s\n",
                failed_after, destroyed_after);
    EXPECT_LT(destroyed_after, 5.0);
}

TEST(QemuExits, LibraryReportsItWithTheGdbstubAttached) {
    BareQemu vm({.start_paused = false});
    auto machine = open_machine(vm.target());
    machine->pause();
    machine->read_registers(0);  // attaches the gdbstub
    vm.kill_now();

    auto start = Clock::now();
    try {
        machine->read_registers(0);
        ADD_FAILURE() << "read_registers succeeded on a dead QEMU";
    } catch (const Error& e) {
        std::string msg = e.what();
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable) << to_string(e.kind()) << ": " << msg;
        EXPECT_TRUE(contains(msg, vm.target())) << msg;
        EXPECT_TRUE(contains(msg, "gdbstub")) << msg;
    }
    EXPECT_LT(seconds_since(start), 3.0);
    std::vector<std::byte> buf(64);
    EXPECT_THROW(machine->read_physical(GuestPhysAddr{0}, buf), Error);

    start = Clock::now();
    machine.reset();
    EXPECT_LT(seconds_since(start), 5.0);
}

TEST(QemuExits, CliExitsPromptlyNamingTheTarget) {
    BareQemu vm({.start_paused = false});
    RunningCommand cmd(slow_read_argv(vm.target()), with_timeout(60s));
    ASSERT_TRUE(wait_until_reading(cmd)) << "hvpatch did not start reading: " << cmd.err();
    vm.kill_now();
    auto start = Clock::now();
    auto r = cmd.wait();
    double took = seconds_since(start);
    std::printf("[ measured ] QEMU killed during a read: hvpatch exited %.3f s later\n", took);
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_LT(took, 3.0) << r.describe();
    EXPECT_TRUE(contains(r.err, "hvpatch: error: " + vm.target())) << r.describe();
    EXPECT_TRUE(contains(r.err, "reading")) << r.describe();  // says what it was doing
}

// Reading the QEMU process's memory: QEMU killed while reads are in flight
// (a reader loops over all of RAM while QEMU is killed) is an error saying
// QEMU exited, never a crash or bytes of another process.
TEST(QemuExits, ProcessMemoryReadsFailCleanlyWhenQemuIsKilledMidRead) {
    BareQemu vm({.start_paused = false});
    auto machine = open_machine(vm.target());
    ASSERT_EQ(machine->memory_access().path, MemoryAccessInfo::Path::ProcessMemory);
    ASSERT_EQ(machine->memory_access().qemu_pid, vm.pid());

    std::atomic<int> reads{0};
    std::optional<Error> failure;
    std::thread reader([&] {
        std::vector<std::byte> buf(64u << 20);
        try {
            for (int i = 0; i < 100000; ++i) {
                machine->read_physical(GuestPhysAddr{(static_cast<std::uint64_t>(i) % 4) * buf.size()}, buf);
                ++reads;
            }
        } catch (const Error& e) {
            failure = e;
        }
    });
    while (reads < 3) std::this_thread::sleep_for(1ms);
    vm.kill_now();
    reader.join();
    std::printf("[ measured ] %d reads of 64 MiB out of the QEMU process before it was killed\n", reads.load());
    ASSERT_TRUE(failure.has_value()) << "reads went on after QEMU was killed";
    EXPECT_EQ(failure->kind(), ErrorKind::Unreachable) << failure->what();
    EXPECT_TRUE(contains(failure->what(), "exited")) << failure->what();
    EXPECT_TRUE(contains(failure->what(), vm.target())) << failure->what();
    auto start = Clock::now();
    machine.reset();
    EXPECT_LT(seconds_since(start), 5.0);
}

// === 4b. The kernel forbids reading QEMU's memory ===========================

// hvpatch without CAP_SYS_PTRACE (dropped from its bounding set, so root's
// exec does not get it back) may not read a root QEMU's memory: it says so
// once and reads through the gdbstub instead, with the same results.
std::vector<std::string> without_ptrace(std::vector<std::string> hvpatch_args) {
    std::vector<std::string> argv{"setpriv", "--bounding-set=-sys_ptrace", hvpatch_binary()};
    argv.insert(argv.end(), hvpatch_args.begin(), hvpatch_args.end());
    return argv;
}

TEST(PtraceForbidden, FallsBackToTheStubWithANotice) {
    BareQemu vm({.start_paused = false});
    auto fast = hvpatch({"read", vm.target(), "--phys", "0xffff0", "16", "--json"});
    ASSERT_EQ(fast.exit_code, 0) << fast.describe();
    EXPECT_FALSE(contains(fast.err, "notice")) << fast.describe();

    vm.execute("stop");  // the BIOS area must not change between the reads
    auto slow = run_command(without_ptrace({"read", vm.target(), "--phys", "0xffff0", "16", "--json"}), 30s);
    auto fast_again = hvpatch({"read", vm.target(), "--phys", "0xffff0", "16", "--json"});
    vm.execute("cont");
    ASSERT_EQ(slow.exit_code, 0) << slow.describe();
    EXPECT_TRUE(contains(slow.err, "hvpatch: notice: " + vm.target())) << slow.describe();
    EXPECT_TRUE(contains(slow.err, "CAP_SYS_PTRACE")) << slow.describe();
    EXPECT_TRUE(contains(slow.err, "gdbstub instead")) << slow.describe();
    auto a = nlohmann::json::parse(slow.out, nullptr, false), b = nlohmann::json::parse(fast_again.out, nullptr, false);
    ASSERT_TRUE(a.is_object() && b.is_object()) << slow.describe() << fast_again.describe();
    EXPECT_EQ(a["hex"], b["hex"]) << "the stub and the process's memory disagree";

    // Running again afterwards, its stub gone.
    EXPECT_EQ(vm.status(), "running");
    EXPECT_FALSE(vm.chardev("gdb").has_value()) << vm.chardevs();

    // Asked for by name, the refused path is an error, not a fall back.
    auto asked = run_command(without_ptrace({"--memory-path", "process-memory", "read", vm.target(), "--phys",
                                             "0xffff0", "16"}), 30s);
    EXPECT_EQ(asked.exit_code, 3) << asked.describe();
    EXPECT_TRUE(contains(asked.err, "process-memory as asked")) << asked.describe();
    EXPECT_TRUE(contains(asked.err, "CAP_SYS_PTRACE")) << asked.describe();
    EXPECT_EQ(vm.status(), "running");
}

// === 5. The gdbstub is held by another client ================================

// Waits until query-chardev shows the gdb chardev connected (or not).
bool wait_gdb_connected(BareQemu& vm, bool connected) {
    auto start = Clock::now();
    while (Clock::now() - start < 5s) {
        auto f = vm.chardev("gdb");
        if (f && (f->rfind("disconnected:", 0) != 0) == connected) return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

TEST(GdbstubBusy, RefusesAndLeavesTheOtherClientConnected) {
    BareQemu vm({.start_paused = false, .gdbstub = true});
    Socket other = Socket::connect_unix(vm.gdb_path(), 2s);
    ASSERT_TRUE(wait_gdb_connected(vm, true)) << vm.chardevs();

    auto start = Clock::now();
    auto r = hvpatch({"inspect", vm.target()});
    EXPECT_EQ(r.exit_code, 3) << r.describe();
    EXPECT_LT(seconds_since(start), 5.0);
    EXPECT_TRUE(contains(r.err, "held by another client")) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.target())) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.gdb_path())) << r.describe();

    // Still connected, as QEMU and the client itself see it.
    auto f = vm.chardev("gdb");
    ASSERT_TRUE(f.has_value()) << vm.chardevs();
    EXPECT_EQ(*f, "unix:" + vm.gdb_path() + ",server=on") << vm.chardevs();
    pollfd p{other.fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
        char buf[256];
        EXPECT_NE(::recv(other.fd(), buf, sizeof buf, MSG_DONTWAIT), 0) << "QEMU hung up on the other client";
    }
}

// === 6. An operator's gdbstub, or none ======================================

TEST(GdbstubOwnership, IdleOperatorStubIsReusedAndLeftInPlace) {
    BareQemu vm({.start_paused = false, .gdbstub = true});
    const std::string idle = "disconnected:unix:" + vm.gdb_path() + ",server=on";
    ASSERT_EQ(vm.chardev("gdb").value_or("none"), idle);

    for (int round = 0; round < 2; ++round) {  // and reusable again afterwards
        auto r = hvpatch({"inspect", vm.target()});
        EXPECT_EQ(r.exit_code, 0) << r.describe();
        EXPECT_TRUE(contains(r.out, "RIP")) << r.describe();
        EXPECT_TRUE(wait_gdb_connected(vm, false)) << vm.chardevs();
        EXPECT_EQ(vm.chardev("gdb").value_or("none"), idle) << vm.chardevs();
        EXPECT_TRUE(vm.running()) << vm.status();
    }
    // The operator can still attach to it.
    Socket operator_client = Socket::connect_unix(vm.gdb_path(), 2s);
    EXPECT_TRUE(wait_gdb_connected(vm, true)) << vm.chardevs();
}

TEST(GdbstubOwnership, OwnStubIsRemoved) {
    BareQemu vm({.start_paused = false});
    ASSERT_FALSE(vm.chardev("gdb").has_value()) << vm.chardevs();

    auto r = hvpatch({"inspect", vm.target()});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_FALSE(vm.chardev("gdb").has_value()) << vm.chardevs();
    EXPECT_TRUE(vm.running()) << vm.status();

    // Nothing of it lingers: the operator can start a gdbstub of their own
    // (a leftover one would make this fail with "duplicate yank instance").
    std::string reply = vm.hmp("gdbserver unix:" + vm.gdb_path() + ",server=on,wait=off");
    EXPECT_FALSE(contains(reply, "duplicate")) << reply;
    EXPECT_TRUE(vm.chardev("gdb").has_value()) << reply << "\n" << vm.chardevs();
}

TEST(GdbstubOwnership, StubLeftByAKilledHvpatchIsAdoptedAndRemoved) {
    // What an hvpatch killed with SIGKILL leaves behind: its private stub
    // (idle once its connection died) and the directory of the socket.
    BareQemu vm({.start_paused = false});
    char tmpl[] = "/tmp/hvpatch-gdb.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    std::string dir = tmpl;
    std::string reply = vm.hmp("gdbserver unix:" + dir + "/gdb.sock,server=on,wait=off");
    ASSERT_TRUE(vm.chardev("gdb").has_value()) << reply;

    auto r = hvpatch({"inspect", vm.target()});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_FALSE(vm.chardev("gdb").has_value()) << "the leftover stub is removed: " << vm.chardevs();
    EXPECT_FALSE(std::filesystem::exists(dir)) << "and its directory";
    EXPECT_TRUE(vm.running()) << vm.status();
    std::filesystem::remove_all(dir);
}

// === 7. Addresses with no memory behind them ================================

TEST(BadAddress, PhysicalPastTheEndOfRam) {
    BareQemu vm;
    // The last 64 KiB of the 256 MiB are readable...
    auto r = hvpatch({"read", vm.target(), "--phys", "0xfff0000", "0x10000", "--out", "/dev/null"});
    EXPECT_EQ(r.exit_code, 0) << r.describe();
    // ...one byte more is not.
    r = hvpatch({"read", vm.target(), "--phys", "0xfff0000", "0x20000"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_TRUE(contains(r.err, "0x000000000fff0000")) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.target())) << r.describe();
    EXPECT_TRUE(contains(r.err, "not guest RAM")) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();

    r = hvpatch({"read", vm.target(), "--phys", "0x100000000", "16", "--json"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_TRUE(contains(r.err, "0x0000000100000000")) << r.describe();
    auto doc = nlohmann::json::parse(r.out, nullptr, false);
    ASSERT_TRUE(doc.is_object() && doc.contains("error")) << r.describe();
    EXPECT_EQ(doc["error"].value("kind", ""), "guest") << r.describe();

    // Wrapping around the top of the address space.
    r = hvpatch({"read", vm.target(), "--phys", "0xfffffffffffffff0", "0x20"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_TRUE(contains(r.err, "0xfffffffffffffff0")) << r.describe();
    EXPECT_EQ(vm.status(), "prelaunch");
}

TEST(BadAddress, UnmappedVirtualAddress) {
    BareQemu vm;  // -S: RAM is all zeros, so any page is an empty page table
    auto r = hvpatch({"read", vm.target(), "--virt", "--cr3", "0x1000", "0xffffffff81000000", "16"});
    EXPECT_EQ(r.exit_code, 4) << r.describe();
    EXPECT_TRUE(contains(r.err, "0xffffffff81000000")) << r.describe();
    EXPECT_TRUE(contains(r.err, "PML4")) << r.describe();  // the level where the walk stopped
    EXPECT_TRUE(contains(r.err, "not present")) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.target())) << r.describe();
    EXPECT_TRUE(r.out.empty()) << r.describe();
}

// === 8. SIGINT / SIGTERM while hvpatch has the VM paused =====================

struct InterruptCase {
    int signal;
    bool operator_paused;  // QMP stop before hvpatch starts
    bool twice = false;    // an impatient operator: the signal again 20 ms later
};

class Interrupted : public ::testing::TestWithParam<InterruptCase> {};

TEST_P(Interrupted, ExitsPromptlyAndRestoresTheRunState) {
    const auto& c = GetParam();
    BareQemu vm({.start_paused = false});
    if (c.operator_paused) vm.execute("stop");
    const std::string before = vm.status();
    ASSERT_EQ(before, c.operator_paused ? "paused" : "running");

    RunningCommand cmd(slow_read_argv(vm.target()), with_timeout(60s));
    ASSERT_TRUE(wait_until_reading(cmd)) << "hvpatch did not start reading: " << cmd.err();
    cmd.send_signal(c.signal);
    auto start = Clock::now();
    if (c.twice) {
        std::this_thread::sleep_for(20ms);
        cmd.send_signal(c.signal);
    }
    auto r = cmd.wait();
    double took = seconds_since(start);
    std::printf("[ measured ] %s: hvpatch exited %.3f s after the signal\n", sigabbrev_np(c.signal), took);

    EXPECT_EQ(r.exit_code, 130) << r.describe();
    EXPECT_LT(took, 3.0) << r.describe();
    EXPECT_TRUE(contains(r.err, "interrupted")) << r.describe();
    EXPECT_TRUE(contains(r.err, vm.target())) << r.describe();
    ASSERT_TRUE(vm.alive()) << vm.log();
    EXPECT_EQ(vm.status(), before);
    EXPECT_EQ(vm.running(), !c.operator_paused);
    EXPECT_FALSE(vm.chardev("gdb").has_value()) << "hvpatch left its gdbstub behind: " << vm.chardevs();
}

INSTANTIATE_TEST_SUITE_P(Signals, Interrupted,
                         ::testing::Values(InterruptCase{SIGINT, false}, InterruptCase{SIGTERM, false},
                                           InterruptCase{SIGINT, true}, InterruptCase{SIGTERM, true},
                                           InterruptCase{SIGINT, false, true}),
                         [](const ::testing::TestParamInfo<InterruptCase>& info) {
                             return std::string(sigabbrev_np(info.param.signal)) +
                                    (info.param.operator_paused ? "_OperatorPaused" : "_Running") +
                                    (info.param.twice ? "_Twice" : "");
                         });

TEST(InterruptedWithOperatorStub, StubIsLeftInPlace) {
    BareQemu vm({.start_paused = false, .gdbstub = true});
    const std::string idle = "disconnected:unix:" + vm.gdb_path() + ",server=on";
    RunningCommand cmd(slow_read_argv(vm.target()), with_timeout(60s));
    ASSERT_TRUE(wait_until_reading(cmd)) << "hvpatch did not start reading: " << cmd.err();
    cmd.send_signal(SIGINT);
    auto r = cmd.wait();
    EXPECT_EQ(r.exit_code, 130) << r.describe();
    EXPECT_TRUE(wait_gdb_connected(vm, false)) << vm.chardevs();
    EXPECT_EQ(vm.chardev("gdb").value_or("none"), idle) << vm.chardevs();
    EXPECT_TRUE(vm.running()) << vm.status();
}

}  // namespace
}  // namespace hvpatch::test
