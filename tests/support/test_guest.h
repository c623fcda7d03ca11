// The real test guest for integration tests: a Debian kernel and the busybox
// initramfs of guest/ (made by scripts/build-test-guest), booted under QEMU
// by the launcher, with a command channel into the guest on its second
// serial port (guest/bin/cmd-loop).
//
// The command channel is a test-only oracle (hvpatch itself never uses it):
// it runs one command at a time, costs ~25 ms per command and moves about
// 250 KB/s under TCG (all of /proc/kallsyms, 4 MB, takes ~16 s), so keep
// outputs small.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/launcher.h"
#include "vmm/guest_command_channel.h"
#include "vmm/socket.h"

namespace hvpatch::test {

struct TestGuestOptions {
    std::string flavour = "";  // "" = the default kernel (amd64); cloud-amd64, rt-amd64
    std::string version = "";  // "" = what linux-image-<flavour> depends on; else e.g. 6.1.0-50
    int vcpus = 2;
    int memory_mib = 512;
    std::string cpu_model;     // "" = QEMU's default; "max" for 5-level paging
    bool shared_ram = true;
    std::vector<std::string> extra_args;  // more QEMU arguments
    std::string uuid;  // QEMU -uuid; "" = a random one (a fixed one: the same VM across boots)
    std::string extra_append;  // appended to the kernel command line (kGuestKernelCmdline), e.g. "nokaslr"
    std::chrono::milliseconds boot_timeout{90000};  // launch to a working command channel
};

// The guest dir of scripts/build-test-guest (vmlinuz, config, release,
// lib/modules/<release>, initramfs.cpio.gz), built on first use. Throws
// std::runtime_error with the script's stderr if it fails.
std::string test_guest_dir(const std::string& flavour = "", const std::string& version = "");

class TestGuest {
public:
    // Builds (or finds) the guest, launches it and returns when the guest
    // printed HVPATCH-GUEST-READY and its command channel answers. Throws
    // std::runtime_error (hvpatch::Error) with the console tail otherwise.
    static std::unique_ptr<TestGuest> boot(const TestGuestOptions& options = {});
    ~TestGuest();
    TestGuest(const TestGuest&) = delete;
    TestGuest& operator=(const TestGuest&) = delete;

    // hvpatch's target string for this guest: "qmp:<socket path>".
    std::string target() const;
    const LaunchedVm& vm() const { return *vm_; }
    LaunchedVm& vm() { return *vm_; }
    // The kernel release (uname -r) and the guest dir it was booted from.
    const std::string& release() const { return release_; }
    const std::string& guest_dir() const { return guest_dir_; }
    // Wall time from launching QEMU to a working command channel.
    std::chrono::milliseconds boot_time() const { return boot_time_; }

    struct Result {
        int status;          // the command's exit status
        std::string output;  // stdout and stderr, interleaved, verbatim
    };
    // Runs `command` (one line, no '\n') with `sh -c` in the guest, as root,
    // under `timeout -s KILL <timeout + 1 s>`. Throws hvpatch::Error(Timeout)
    // if it does not finish in time (the guest kills it a second later; the
    // next command waits for that), Error(Unreachable) if QEMU is gone.
    // Thread-safe: commands run one at a time.
    Result run(const std::string& command, std::chrono::milliseconds timeout = std::chrono::seconds(30));
    // run(), and returns the output if the status is 0; else throws
    // std::runtime_error naming the command, its status and its output.
    std::string run_ok(const std::string& command, std::chrono::milliseconds timeout = std::chrono::seconds(30));

    // Writes `bytes` to the guest file `guest_path` (absolute; replaced
    // atomically, mode 0644): base64 over the command channel in chunks,
    // decoded by the guest's busybox base64 -d, then checked with the
    // guest's sha256sum. Input moves at ~14 KB/s under TCG (the channel's
    // shell reads a byte at a time), so keep files small (a livepatch .ko
    // without its debug info is ~10 KB). Throws Error(Usage) for a bad path,
    // Error(Protocol) if the guest's copy differs, else what run() throws.
    void put_file(const std::string& guest_path, std::string_view bytes);

    // The guest console (kernel messages and /init's output) so far.
    std::string console_log() const;

private:
    TestGuest() = default;
    void wait_until_ready(const Deadline& deadline);
    void probe_command_channel(const Deadline& deadline);
    // Why the guest stopped answering: QEMU's state and the console tail.
    std::string post_mortem();

    std::unique_ptr<LaunchedVm> vm_;
    std::string guest_dir_, release_;
    std::chrono::milliseconds boot_time_{0};
    std::mutex mutex_;
    GuestCommandChannel channel_;
};

}  // namespace hvpatch::test
