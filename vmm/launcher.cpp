#include "vmm/launcher.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <sys/file.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "hvpatch/error.h"
#include "vmm/interrupt.h"
#include "vmm/socket.h"

extern char** environ;

namespace hvpatch {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string errno_text(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
class FdGuard {
public:
    explicit FdGuard(int fd = -1) : fd_(fd) {}
    ~FdGuard() { reset(); }
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;
    int get() const { return fd_; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

std::string tail_of_file(const std::string& path, std::size_t max_bytes) {
    std::string text = read_file(path);
    if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
    return text;
}

// QEMU option values separate keys with commas; a literal comma is doubled.
std::string qemu_escape(const std::string& value) {
    std::string out;
    for (char c : value) {
        out += c;
        if (c == ',') out += ',';
    }
    return out;
}

// argv[0] made absolute: exec in the child must not search PATH (execvp may
// allocate, which a child forked from a threaded parent must not do).
std::string find_executable(const std::string& name) {
    if (name.find('/') != std::string::npos) return name;
    const char* path = std::getenv("PATH");
    std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        std::size_t end = dirs.find(':', start);
        if (end == std::string::npos) end = dirs.size();
        std::string dir = dirs.substr(start, end - start);
        if (dir.empty()) dir = ".";
        std::string candidate = dir + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        start = end + 1;
    }
    throw Error(ErrorKind::Usage, name + " not found in PATH");
}

void require_file(const std::string& path, const std::string& what) {
    std::error_code ec;
    if (path.empty()) throw Error(ErrorKind::Usage, what + ": no path given");
    if (!fs::is_regular_file(path, ec))
        throw Error(ErrorKind::Usage, what + " not found: " + path);
}

std::string resolve_accel(const std::string& requested) {
    const char* env = std::getenv("HVPATCH_ACCEL");
    bool from_env = requested == "auto" && env && *env;
    std::string accel = from_env ? env : requested;
    if (accel == "auto") accel = usable_kvm() ? "kvm" : "tcg";
    if (accel != "kvm" && accel != "tcg")
        throw Error(ErrorKind::Usage, std::string(from_env ? "HVPATCH_ACCEL must be kvm or tcg"
                                                           : "the accelerator must be auto, kvm or tcg") +
                                          ", not '" + accel + "'");
    return accel;
}

// A random (version 4) UUID for -uuid: the VM's identity, under which
// hvpatch keeps its state (libvirt gives every domain one the same way).
std::string random_uuid() {
    std::array<unsigned char, 16> bytes{};
    std::ifstream urandom("/dev/urandom", std::ios::binary);
    if (!urandom.read(reinterpret_cast<char*>(bytes.data()), bytes.size()))
        throw Error(ErrorKind::Internal, "cannot read /dev/urandom for a VM UUID");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    std::string text;
    static const char* digits = "0123456789abcdef";
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) text += '-';
        text += digits[bytes[i] >> 4];
        text += digits[bytes[i] & 15];
    }
    return text;
}

// 8-4-4-4-12 hex digits, the form QEMU's -uuid accepts.
bool is_uuid(const std::string& text) {
    if (text.size() != 36) return false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? text[i] != '-' : !std::isxdigit(static_cast<unsigned char>(text[i]))) return false;
    }
    return true;
}

// Creates an empty RAM file that only we can open; QEMU sizes it. /dev/shm
// keeps guest RAM out of the page cache of a disk-backed /tmp.
std::string create_ram_file(const std::string& workdir) {
    std::error_code ec;
    std::string pattern = fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0
                              ? "/dev/shm/hvpatch-vm-XXXXXX"
                              : workdir + "/guest.ram.XXXXXX";
    std::vector<char> path(pattern.begin(), pattern.end());
    path.push_back('\0');
    int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd < 0) throw Error(ErrorKind::Internal, "cannot create a RAM file " + pattern + ": " + errno_text(errno));
    ::close(fd);
    return path.data();
}

// Waits until QEMU's QMP monitor sends its greeting: QEMU has then finished
// creating the machine and runs its main loop. Throws if QEMU exits first.
void wait_for_qmp(LaunchedVm& vm, std::chrono::milliseconds timeout) {
    Deadline deadline(timeout);
    std::string last_error = "the socket was not created";
    while (!deadline.expired()) {
        throw_if_interrupted("starting QEMU");
        if (!vm.running()) {
            throw Error(ErrorKind::Internal, "QEMU (" + vm.command_line().front() + ") " +
                                                 vm.status_text() + " while starting; its output:\n" +
                                                 vm.qemu_log_tail());
        }
        struct stat st {};
        if (::stat(vm.qmp_socket_path().c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
            try {
                Socket qmp = Socket::connect_unix(vm.qmp_socket_path(), 1000ms);
                std::string greeting;
                char buf[512];
                while (greeting.find('\n') == std::string::npos) {
                    std::size_t n = qmp.recv_some(buf, sizeof buf, deadline);
                    greeting.append(buf, n);
                }
                if (greeting.find("\"QMP\"") != std::string::npos) return;
                last_error = "unexpected greeting: " + greeting;
            } catch (const Error& e) {
                if (e.kind() == ErrorKind::Interrupted) throw;
                last_error = e.what();
            }
        }
        std::this_thread::sleep_for(20ms);
    }
    throw Error(ErrorKind::Unreachable,
                "QEMU (pid " + std::to_string(vm.pid()) + ") did not answer on its QMP socket " +
                    vm.qmp_socket_path() + " within " + std::to_string(timeout.count()) +
                    " ms (" + last_error + "); its output:\n" + vm.qemu_log_tail());
}

// A work dir's lock file: QEMU inherits an fd holding a flock on it, so the
// lock is free exactly when no QEMU uses the dir any more. The RAM file's
// path is noted beside it (it may live in /dev/shm, outside the dir).
constexpr const char* kLockFile = "qemu.lock";
constexpr const char* kRamNote = "ram-file";
constexpr const char* kWorkdirPrefix = "hvpatch-vm-";
constexpr const char* kKeptMarker = "KEPT";

// Removes what a dead VM left in `dir`: its RAM file and, if `remove_dir`,
// the dir. Does nothing while a QEMU holds the lock, or for a dir that is
// not one of ours.
void remove_if_stale(const fs::path& dir, bool remove_dir) {
    FdGuard lock(::open((dir / kLockFile).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
    if (lock.get() < 0 || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) return;
    std::error_code ec;
    std::string ram = read_file((dir / kRamNote).string());
    if (!ram.empty() && (ram.starts_with(std::string("/dev/shm/") + kWorkdirPrefix) ||
                         fs::path(ram).parent_path() == dir))
        fs::remove(ram, ec);
    fs::remove(dir / kRamNote, ec);
    if (remove_dir) fs::remove_all(dir, ec);
}

// The work dirs under /tmp of VMs whose launcher crashed: QEMU died with it
// (PR_SET_PDEATHSIG) but stop() never ran. Only dirs older than a minute,
// so that one being set up by a concurrent launch_vm() is left alone.
void collect_stale_workdirs() {
    std::error_code ec;
    auto now = fs::file_time_type::clock::now();
    for (const auto& entry : fs::directory_iterator("/tmp", ec)) {
        std::string name = entry.path().filename().string();
        if (!name.starts_with(kWorkdirPrefix) || !entry.is_directory(ec) || entry.is_symlink(ec)) continue;
        struct stat st {};
        if (::lstat(entry.path().c_str(), &st) != 0 || st.st_uid != ::getuid()) continue;
        if (now - entry.last_write_time(ec) < std::chrono::minutes(1)) continue;
        if (!fs::exists(entry.path() / kLockFile, ec) || fs::exists(entry.path() / kKeptMarker, ec)) continue;
        remove_if_stale(entry.path(), true);
    }
}

}  // namespace

// --- KVM ----------------------------------------------------------------------

bool usable_kvm(std::string* why) {
    auto fail = [&](std::string reason) {
        if (why) *why = std::move(reason);
        return false;
    };
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) return fail("cannot open /dev/kvm: " + errno_text(errno));
    ::close(fd);
    std::error_code ec;
    if (fs::exists("/sys/module/kvm_intel", ec) || fs::exists("/sys/module/kvm_amd", ec)) return true;
    std::string loaded;
    for (const auto& entry : fs::directory_iterator("/sys/module", ec)) {
        std::string name = entry.path().filename().string();
        if (name.starts_with("kvm")) loaded += (loaded.empty() ? "" : ", ") + name;
    }
    return fail("/dev/kvm is not backed by kvm_intel or kvm_amd (loaded: " +
                (loaded.empty() ? std::string("no kvm modules") : loaded) +
                "); a stock kernel does not boot under it");
}

// --- Child processes ------------------------------------------------------------

pid_t spawn_child(const ChildSpec& spec) {
    if (spec.argv.empty()) throw Error(ErrorKind::Usage, "spawn_child: empty argv");
    // Everything the child needs is prepared here: after fork it may only
    // make async-signal-safe calls.
    std::string program = find_executable(spec.argv.front());
    std::vector<char*> argv;
    for (const auto& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);

    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        std::string_view entry(*e);
        std::string_view name = entry.substr(0, entry.find('='));
        bool replaced = std::any_of(spec.extra_env.begin(), spec.extra_env.end(), [&](const std::string& x) {
            return std::string_view(x).substr(0, x.find('=')) == name;
        });
        if (!replaced) env_strings.emplace_back(entry);
    }
    env_strings.insert(env_strings.end(), spec.extra_env.begin(), spec.extra_env.end());
    std::vector<char*> envp;
    for (auto& entry : env_strings) envp.push_back(entry.data());
    envp.push_back(nullptr);

    FdGuard dev_null(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (dev_null.get() < 0) throw Error(ErrorKind::Internal, "cannot open /dev/null: " + errno_text(errno));
    int fds[3] = {spec.stdin_fd >= 0 ? spec.stdin_fd : dev_null.get(),
                  spec.stdout_fd >= 0 ? spec.stdout_fd : dev_null.get(),
                  spec.stderr_fd >= 0 ? spec.stderr_fd : dev_null.get()};

    // The child reports a failed exec through this pipe; a successful exec
    // closes it (O_CLOEXEC) and the parent reads EOF.
    int report[2];
    if (::pipe2(report, O_CLOEXEC) != 0) throw Error(ErrorKind::Internal, "pipe2: " + errno_text(errno));
    FdGuard report_read(report[0]), report_write(report[1]);
    pid_t parent = ::getpid();

    pid_t pid = ::fork();
    if (pid < 0) throw Error(ErrorKind::Internal, "fork: " + errno_text(errno));
    if (pid == 0) {
        auto die = [&](int err) {
            ssize_t ignored = ::write(report[1], &err, sizeof err);
            (void)ignored;
            ::_exit(127);
        };
        if (spec.own_process_group && ::setpgid(0, 0) != 0) die(errno);
        if (spec.die_with_parent) {
            if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) die(errno);
            if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
        }
        // Move the three fds out of the way first, so that dup2 in order
        // cannot clobber one that is still to be duplicated.
        int moved[3];
        for (int i = 0; i < 3; ++i) {
            moved[i] = ::fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (moved[i] < 0) die(errno);
        }
        for (int i = 0; i < 3; ++i)
            if (::dup2(moved[i], i) < 0) die(errno);
        // Everything else stays behind (sockets to other VMs, pipes of other
        // children): exec closes all fds but 0-2 and the inherited ones.
        if (::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
            for (int fd = 3; fd < 4096; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
        for (int fd : spec.inherit_fds)
            if (::fcntl(fd, F_SETFD, 0) != 0) die(errno);
        // The parent's signal mask and ignored signals would be inherited.
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        ::signal(SIGINT, SIG_DFL);
        ::signal(SIGTERM, SIG_DFL);
        ::execve(program.c_str(), argv.data(), envp.data());
        die(errno);
    }
    report_write.reset();
    int err = 0;
    ssize_t n;
    do {
        n = ::read(report_read.get(), &err, sizeof err);
    } while (n < 0 && errno == EINTR);
    if (n == static_cast<ssize_t>(sizeof err)) {
        ::waitpid(pid, nullptr, 0);
        throw Error(ErrorKind::Usage, "cannot execute " + program + ": " + errno_text(err));
    }
    return pid;
}

std::optional<int> stop_child(pid_t pid, std::chrono::milliseconds grace) {
    auto signal_child = [pid](int sig) {
        if (::kill(-pid, sig) != 0) ::kill(pid, sig);
    };
    // The wait status once reaped; nullopt while it runs. `gone` is set when
    // the pid is not (or no longer) our child.
    bool gone = false;
    auto reap = [pid, &gone](int flags) -> std::optional<int> {
        int status = 0;
        pid_t r;
        do {
            r = ::waitpid(pid, &status, flags);
        } while (r < 0 && errno == EINTR);
        if (r == pid) return status;
        gone = r < 0;
        return std::nullopt;
    };
    if (grace.count() > 0) {
        signal_child(SIGTERM);
        Deadline deadline(grace);
        while (!deadline.expired()) {
            if (auto status = reap(WNOHANG)) return status;
            if (gone) return std::nullopt;
            std::this_thread::sleep_for(5ms);
        }
    }
    signal_child(SIGKILL);
    return reap(0);
}

std::string describe_wait_status(int status) {
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        const char* name = sigabbrev_np(WTERMSIG(status));
        return "killed by signal " + std::to_string(WTERMSIG(status)) +
               (name ? std::string(" (SIG") + name + ")" : std::string());
    }
    return "wait status " + std::to_string(status);
}

// --- LaunchedVm ------------------------------------------------------------------

LaunchedVm::~LaunchedVm() { stop(); }

bool LaunchedVm::running() {
    if (pid_ <= 0 || wait_status_) return false;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
        wait_status_ = status;
        return false;
    }
    return r == 0;
}

std::string LaunchedVm::status_text() {
    if (running()) return "running";
    if (wait_status_) return describe_wait_status(*wait_status_);
    return "stopped";
}

std::string LaunchedVm::console_log() const { return read_file(console_log_); }

std::string LaunchedVm::qemu_log_tail(std::size_t max_bytes) const { return tail_of_file(qemu_log_, max_bytes); }

void LaunchedVm::stop(std::chrono::milliseconds grace) {
    if (stopped_) return;
    stopped_ = true;
    try {
        if (pid_ > 0 && !wait_status_) {
            if (auto status = stop_child(pid_, grace)) wait_status_ = status;
        }
        remove_files();
    } catch (...) {
        // stop() runs in destructors: never throw.
    }
}

void LaunchedVm::remove_files() {
    std::error_code ec;
    if (!ram_file_.empty()) {
        fs::remove(ram_file_, ec);
        fs::remove(workdir_ + "/" + kRamNote, ec);
    }
    if (!created_workdir_) return;
    const char* keep = std::getenv("HVPATCH_KEEP_WORKDIR");
    if (keep && std::string(keep) == "1")
        std::ofstream(workdir_ + "/" + kKeptMarker) << "kept for a post-mortem (HVPATCH_KEEP_WORKDIR=1)\n";
    else
        fs::remove_all(workdir_, ec);
}

// --- launch_vm -------------------------------------------------------------------

std::unique_ptr<LaunchedVm> launch_vm(const LaunchOptions& options) {
    require_file(options.kernel, "kernel image");
    if (!options.initrd.empty()) require_file(options.initrd, "initrd");
    if (options.vcpus < 1 || options.vcpus > 64)
        throw Error(ErrorKind::Usage, "vcpus must be 1..64, not " + std::to_string(options.vcpus));
    if (options.memory_mib < 64)
        throw Error(ErrorKind::Usage, "memory must be at least 64 MiB, not " + std::to_string(options.memory_mib));
    if (!options.uuid.empty() && !is_uuid(options.uuid))
        throw Error(ErrorKind::Usage, "uuid must look like 01234567-89ab-cdef-0123-456789abcdef, not '" +
                                          options.uuid + "'");

    std::unique_ptr<LaunchedVm> vm(new LaunchedVm());
    vm->accel_ = resolve_accel(options.accel);
    std::string qemu = find_executable(options.qemu_binary);

    collect_stale_workdirs();
    if (options.workdir.empty()) {
        char pattern[] = "/tmp/hvpatch-vm-XXXXXX";
        if (!::mkdtemp(pattern))
            throw Error(ErrorKind::Internal, "cannot create a work dir under /tmp: " + errno_text(errno));
        vm->workdir_ = pattern;
        vm->created_workdir_ = true;
    } else {
        std::error_code ec;
        vm->created_workdir_ = fs::create_directories(options.workdir, ec);
        if (ec) throw Error(ErrorKind::Usage, "cannot create work dir " + options.workdir + ": " + ec.message());
        vm->workdir_ = fs::absolute(options.workdir).string();
    }
    // From here on, an exception destroys `vm`, which stops QEMU and removes
    // what was created.
    const std::string& dir = vm->workdir_;
    // A reused work dir may hold the RAM file of a crashed run.
    if (!vm->created_workdir_) remove_if_stale(dir, false);
    FdGuard lock(::open((dir + "/" + kLockFile).c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (lock.get() < 0 || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0)
        throw Error(ErrorKind::Busy, "work dir " + dir + " is in use by another QEMU");
    vm->qmp_socket_ = dir + "/qmp.sock";
    vm->console_log_ = dir + "/console.log";
    vm->qemu_log_ = dir + "/qemu.log";
    if (options.command_port) vm->command_socket_ = dir + "/command.sock";
    // Leftovers of an earlier VM in a reused work dir would fool the waits.
    for (const auto* path : {&vm->qmp_socket_, &vm->command_socket_, &vm->console_log_}) {
        std::error_code ec;
        if (!path->empty()) fs::remove(*path, ec);
    }

    std::string mem = std::to_string(options.memory_mib) + "M";
    std::vector<std::string> args = {qemu, "-nodefaults", "-no-user-config", "-nographic", "-display", "none",
                                     "-no-reboot", "-uuid", options.uuid.empty() ? random_uuid() : options.uuid};
    if (options.shared_ram) {
        vm->ram_file_ = create_ram_file(dir);
        std::ofstream(dir + "/" + kRamNote) << vm->ram_file_;
        args.insert(args.end(), {"-machine", "q35,memory-backend=ram0", "-object",
                                 "memory-backend-file,id=ram0,size=" + mem + ",mem-path=" +
                                     qemu_escape(vm->ram_file_) + ",share=on",
                                 "-m", mem});
    } else {
        args.insert(args.end(), {"-machine", "q35", "-m", mem});
    }
    if (vm->accel_ == "kvm")
        args.insert(args.end(), {"-accel", "kvm"});
    else
        args.insert(args.end(), {"-accel", options.vcpus > 1 ? "tcg,thread=multi" : "tcg"});
    args.insert(args.end(), {"-smp", std::to_string(options.vcpus)});
    if (!options.cpu_model.empty()) args.insert(args.end(), {"-cpu", options.cpu_model});
    args.insert(args.end(), {"-chardev", "file,id=console,path=" + qemu_escape(vm->console_log_), "-serial",
                             "chardev:console"});
    if (options.command_port)
        args.insert(args.end(), {"-chardev",
                                 "socket,id=cmd,path=" + qemu_escape(vm->command_socket_) + ",server=on,wait=off",
                                 "-serial", "chardev:cmd"});
    args.insert(args.end(), {"-chardev", "socket,id=qmp,path=" + qemu_escape(vm->qmp_socket_) + ",server=on,wait=off",
                             "-mon", "chardev=qmp,mode=control"});
    args.insert(args.end(), {"-kernel", options.kernel});
    if (!options.initrd.empty()) args.insert(args.end(), {"-initrd", options.initrd});
    if (!options.append.empty()) args.insert(args.end(), {"-append", options.append});
    args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
    vm->command_line_ = args;

    FdGuard log(::open(vm->qemu_log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (log.get() < 0) throw Error(ErrorKind::Internal, "cannot create " + vm->qemu_log_ + ": " + errno_text(errno));
    ChildSpec spec;
    spec.argv = args;
    spec.stdout_fd = log.get();
    spec.stderr_fd = log.get();
    spec.inherit_fds = {lock.get()};
    try {
        vm->pid_ = spawn_child(spec);
    } catch (const Error& e) {
        throw Error(ErrorKind::Internal, std::string("cannot start QEMU: ") + e.what());
    }
    wait_for_qmp(*vm, options.start_timeout);
    return vm;
}

// --- The test guest -------------------------------------------------------------

std::string guest_release(const std::string& guest_dir) {
    std::string path = guest_dir + "/release";
    require_file(path, "guest release file");
    std::string release = read_file(path);
    while (!release.empty() && (release.back() == '\n' || release.back() == ' ')) release.pop_back();
    if (release.empty()) throw Error(ErrorKind::Usage, path + " is empty");
    return release;
}

LaunchOptions guest_launch_options(const std::string& guest_dir) {
    LaunchOptions options;
    options.kernel = guest_dir + "/vmlinuz";
    options.initrd = guest_dir + "/initramfs.cpio.gz";
    options.append = std::string(kGuestKernelCmdline);
    require_file(options.kernel, "guest kernel");
    require_file(options.initrd, "guest initramfs");
    return options;
}

}  // namespace hvpatch
