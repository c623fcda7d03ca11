// The test guest's command channel: the `cmd-loop` of guest/bin on the
// guest's second serial port, which QEMU exposes as a UNIX socket. It is a
// window into the bundled test guest for `hvpatch demo` and the tests (to
// show `cat /proc/cmdline` from inside, to read oracles); hvpatch itself
// never needs anything in a guest.
//
// Protocol (guest/bin/cmd-loop): "<id> <command>\n" in; the answer is
// "@@BEGIN <id>@@\n<output>@@END <id> <status>@@\n", output verbatim.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "vmm/socket.h"

namespace hvpatch {

struct GuestCommandResult {
    int status = 0;      // the command's exit status
    std::string output;  // stdout and stderr, interleaved, verbatim
};

class GuestCommandChannel {
public:
    GuestCommandChannel() = default;
    // Connects and sends probes until the loop answers one (serial input
    // sent before the guest opened the port is lost). `alive` is asked
    // between probes and throws if the VM died. Error(Timeout) if no answer.
    static GuestCommandChannel connect(const std::string& socket_path, const Deadline& deadline,
                                       const std::function<void()>& alive = {});

    // Runs `command` (one line) with `sh -c` in the guest under
    // `timeout -s KILL <timeout + 1 s>`. Error(Timeout) if it does not finish
    // in time (the guest kills it a second later; the next command waits for
    // that), Error(Unreachable) if the socket is gone.
    GuestCommandResult run(const std::string& command, std::chrono::milliseconds timeout);

    void close() { socket_.close(); }

private:
    Socket socket_;
    std::string pending_;  // bytes read, not yet consumed
    unsigned long next_id_ = 1;
};

// Quotes `text` as one word for the guest's sh.
std::string guest_shell_quote(const std::string& text);

}  // namespace hvpatch
