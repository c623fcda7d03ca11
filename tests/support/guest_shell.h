// The part of a booted test guest that tests talk to, whoever booted it
// (TestGuest: QEMU launched by the test; TestDomain: a libvirt domain): the
// wait for the guest's HVPATCH-GUEST-READY line and the command channel
// into the guest (guest/bin/cmd-loop on its second serial port).
//
// The command channel is a test-only oracle (hvpatch itself never uses it):
// it runs one command at a time, costs ~25 ms per command and moves about
// 250 KB/s under TCG (all of /proc/kallsyms, 4 MB, takes ~16 s), so keep
// outputs small.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "vmm/guest_command_channel.h"
#include "vmm/socket.h"

namespace hvpatch::test {

class GuestShell {
public:
    virtual ~GuestShell() = default;

    // The kernel release (uname -r) the guest was booted with.
    const std::string& release() const { return release_; }
    // The guest console (kernel messages and /init's output) so far.
    virtual std::string console_log() const = 0;

    struct Result {
        int status;          // the command's exit status
        std::string output;  // stdout and stderr, interleaved, verbatim
    };
    // Runs `command` (one line, no '\n') with `sh -c` in the guest, as root,
    // under `timeout -s KILL <timeout + 1 s>`. Throws hvpatch::Error(Timeout)
    // if it does not finish in time (the guest kills it a second later; the
    // next command waits for that), Error(Unreachable) if the VM is gone.
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

protected:
    GuestShell() = default;
    // Why the guest stopped answering (VM state, console tail), for errors.
    virtual std::string post_mortem() = 0;
    // Waits until the console shows "HVPATCH-GUEST-READY <release_>";
    // `alive` throws if the VM died. Error(Guest) for a panic or another
    // release, Error(Timeout) at the deadline.
    void wait_until_ready(const Deadline& deadline, const std::function<void()>& alive);
    // Connects to the command loop at `socket_path` (probing until it answers).
    void connect_command_channel(const std::string& socket_path, const Deadline& deadline,
                                 const std::function<void()>& alive);
    void close_command_channel() { channel_.close(); }

    std::string release_;

private:
    std::mutex mutex_;
    GuestCommandChannel channel_;
};

// The console's last `max_bytes` bytes, for messages.
std::string console_tail(const std::string& text, std::size_t max_bytes = 3000);

}  // namespace hvpatch::test
