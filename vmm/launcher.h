// Starting a QEMU guest: the VM behind `hvpatch demo` and the integration
// tests. The launched QEMU has a QMP socket (what hvpatch attaches to), its
// RAM in a shared file (what hvpatch maps), the first serial port in a log
// file (the guest console) and, optionally, the second serial port on a UNIX
// socket (the tests' command channel into the guest, see guest/bin/cmd-loop).
//
// Accelerator: KVM when it can run a stock kernel, else TCG. A /dev/kvm that
// is not backed by kvm_intel or kvm_amd (e.g. kvm_pvm, software nested
// virtualisation) hangs a stock Debian kernel in its decompressor, so "auto"
// picks TCG there. HVPATCH_ACCEL=kvm|tcg in the environment overrides "auto".
//
// The QEMU process is a child of the caller: it sits in its own process group
// and gets SIGKILL when the thread that launched it dies (PR_SET_PDEATHSIG),
// so a crashed test never leaves a guest behind. Launch from a thread that
// lives as long as the VM (the main thread, usually).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hvpatch {

struct LaunchOptions {
    // Direct kernel boot. `initrd` and `append` may be empty.
    std::string kernel, initrd, append;
    int vcpus = 2;
    int memory_mib = 512;
    // Empty: QEMU's default model ("qemu64" under TCG). "max" enables
    // everything TCG can do, 5-level paging (la57) included.
    std::string cpu_model;
    // RAM in a memory-backend-file with share=on, so that other processes
    // (hvpatch) can map it: in /dev/shm when it exists, else in the work dir.
    // false: ordinary anonymous RAM (-m).
    bool shared_ram = true;
    // auto | kvm | tcg. auto = kvm if usable_kvm() else tcg, unless
    // HVPATCH_ACCEL says otherwise.
    std::string accel = "auto";
    // Appended to QEMU's command line as they are (e.g. a -drive).
    std::vector<std::string> extra_args;
    // Where the sockets and logs go. Empty: a fresh mkdtemp dir under /tmp
    // (mode 0700). Removed on stop() if the launcher created it, unless
    // HVPATCH_KEEP_WORKDIR=1 is set (for post-mortems). QEMU holds a lock in
    // it while it runs; if the launching process crashed (QEMU then dies
    // with it), a later launch_vm() removes the dir and the RAM file.
    std::string workdir;
    // Second serial port (ttyS1) as a UNIX socket server, command.sock.
    bool command_port = true;
    // The VM's -uuid, its identity (hvpatch keys its state by it). Empty: a
    // fresh random one. The same uuid again is "the same VM rebooted".
    std::string uuid;
    // Looked up in PATH unless it contains a '/'.
    std::string qemu_binary = "qemu-system-x86_64";
    // How long QEMU may take until its QMP monitor greets us.
    std::chrono::milliseconds start_timeout{10000};
};

class LaunchedVm {
public:
    ~LaunchedVm();  // stop()
    LaunchedVm(const LaunchedVm&) = delete;
    LaunchedVm& operator=(const LaunchedVm&) = delete;

    const std::string& workdir() const { return workdir_; }
    const std::string& qmp_socket_path() const { return qmp_socket_; }
    // The guest console (ttyS0), written by QEMU as the guest prints.
    const std::string& console_log_path() const { return console_log_; }
    // Empty when the options had command_port = false.
    const std::string& command_socket_path() const { return command_socket_; }
    // The guest RAM file (file offset = guest-physical address below the PCI
    // hole). Empty when the options had shared_ram = false.
    const std::string& ram_file_path() const { return ram_file_; }
    // QEMU's own stdout and stderr.
    const std::string& qemu_log_path() const { return qemu_log_; }
    pid_t pid() const { return pid_; }
    // The accelerator in use: "kvm" or "tcg".
    const std::string& accel() const { return accel_; }
    // The QEMU command line as started (for logs and error messages).
    const std::vector<std::string>& command_line() const { return command_line_; }

    // False once QEMU has exited (it is reaped here, the status kept).
    bool running();
    // "running", "exited with status N", "killed by signal N" or "stopped".
    std::string status_text();
    // The whole console log so far ("" if QEMU has not created it yet).
    std::string console_log() const;
    // The last `max_bytes` of QEMU's stdout and stderr.
    std::string qemu_log_tail(std::size_t max_bytes = 2000) const;

    // SIGTERM to QEMU's process group, SIGKILL if it has not exited within
    // `grace`, reap it, then delete the RAM file and (if created here) the
    // work dir. Idempotent; never throws.
    void stop(std::chrono::milliseconds grace = std::chrono::seconds(3));

private:
    friend std::unique_ptr<LaunchedVm> launch_vm(const LaunchOptions& options);
    LaunchedVm() = default;
    void remove_files();

    std::string workdir_, qmp_socket_, console_log_, command_socket_, ram_file_, qemu_log_;
    std::string accel_;
    std::vector<std::string> command_line_;
    bool created_workdir_ = false;
    pid_t pid_ = -1;
    std::optional<int> wait_status_;
    bool stopped_ = false;
};

// Starts QEMU and returns once its QMP monitor answers (the guest is then
// booting). Throws Error(Usage) for bad options or missing files,
// Error(Internal) naming QEMU's exit status and the tail of its stderr if it
// exits while starting, Error(Unreachable) if its QMP socket never answers.
std::unique_ptr<LaunchedVm> launch_vm(const LaunchOptions& options);

// True if /dev/kvm can be opened AND a hardware KVM module (kvm_intel or
// kvm_amd) is loaded. If not, `why` (when given) says what is missing.
bool usable_kvm(std::string* why = nullptr);

// --- The test guest built by scripts/build-test-guest ----------------------

// The kernel command line of the test guest. KASLR stays on (hvpatch must
// find the kernel base itself); quiet, but warnings and errors still reach
// the console; panic=-1 reboots at once on a panic, which the launcher's
// -no-reboot turns into QEMU exiting; the TSC is marked unstable up front
// (TCG's TSC is, and the kernel would switch clocksource mid-run anyway).
inline constexpr std::string_view kGuestKernelCmdline =
    "console=ttyS0,115200 quiet loglevel=4 panic=-1 tsc=unstable";

// Launch options for a guest dir made by scripts/build-test-guest (vmlinuz,
// initramfs.cpio.gz, release): kernel, initrd and append filled in, the rest
// default. Throws Error(Usage) naming the missing file.
LaunchOptions guest_launch_options(const std::string& guest_dir);
// The kernel release of such a guest dir (the `release` file).
std::string guest_release(const std::string& guest_dir);

// --- Child processes --------------------------------------------------------

// How to start a child process: fork + exec with the hygiene every child of
// hvpatch needs (only the given fds inherited, own process group, SIGKILL
// when the launching thread dies).
struct ChildSpec {
    std::vector<std::string> argv;       // argv[0] is looked up in PATH
    std::vector<std::string> extra_env;  // NAME=VALUE, added to our environment
    int stdin_fd = -1;                   // -1: /dev/null
    int stdout_fd = -1;                  // -1: /dev/null
    int stderr_fd = -1;                  // -1: /dev/null
    std::vector<int> inherit_fds;        // more fds the child keeps (same numbers)
    bool own_process_group = true;
    bool die_with_parent = true;
};

// Starts the child; returns its pid. Throws Error(Usage) if argv[0] cannot be
// found or executed (the exec error is reported back from the child).
pid_t spawn_child(const ChildSpec& spec);

// SIGTERM (to the child's process group if it leads one), SIGKILL after
// `grace` (0: at once), then reaps it. Returns the wait status, or nullopt if
// the child was already reaped elsewhere.
std::optional<int> stop_child(pid_t pid, std::chrono::milliseconds grace);

// "exited with status N" / "killed by signal N (SIGNAME)" for a wait status.
std::string describe_wait_status(int status);

}  // namespace hvpatch
