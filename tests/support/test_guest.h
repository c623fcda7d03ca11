// The real test guest for integration tests: a Debian kernel and the busybox
// initramfs of guest/ (made by scripts/build-test-guest), booted under QEMU
// by the launcher, with a command channel into the guest on its second
// serial port (guest/bin/cmd-loop; run/run_ok/put_file of GuestShell).
// tests/support/test_domain.h boots the same guest as a libvirt domain.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/guest_shell.h"
#include "vmm/launcher.h"

namespace hvpatch::test {

struct TestGuestOptions {
    std::string flavour = "";  // "" = the default kernel (amd64); cloud-amd64, rt-amd64
    std::string version = "";  // "" = what linux-image-<flavour> depends on; else e.g. 6.1.0-50
    std::string suite = "";    // "" = the machine's apt sources; else a Debian suite (bullseye, forky, ...)
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
std::string test_guest_dir(const std::string& flavour = "", const std::string& version = "",
                           const std::string& suite = "");

class TestGuest : public GuestShell {
public:
    // Builds (or finds) the guest, launches it and returns when the guest
    // printed HVPATCH-GUEST-READY and its command channel answers. Throws
    // std::runtime_error (hvpatch::Error) with the console tail otherwise.
    static std::unique_ptr<TestGuest> boot(const TestGuestOptions& options = {});
    ~TestGuest() override;
    TestGuest(const TestGuest&) = delete;
    TestGuest& operator=(const TestGuest&) = delete;

    // hvpatch's target string for this guest: "qmp:<socket path>".
    std::string target() const;
    const LaunchedVm& vm() const { return *vm_; }
    LaunchedVm& vm() { return *vm_; }
    // The guest dir it was booted from.
    const std::string& guest_dir() const { return guest_dir_; }
    // Wall time from launching QEMU to a working command channel.
    std::chrono::milliseconds boot_time() const { return boot_time_; }

    // The guest console (kernel messages and /init's output) so far.
    std::string console_log() const override;

private:
    TestGuest() = default;
    // Why the guest stopped answering: QEMU's state and the console tail.
    std::string post_mortem() override;

    std::unique_ptr<LaunchedVm> vm_;
    std::string guest_dir_;
    std::chrono::milliseconds boot_time_{0};
};

}  // namespace hvpatch::test
