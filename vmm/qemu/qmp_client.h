// QMP client: QEMU's JSON control protocol over a UNIX socket.
//
// Wire format (docs/interop/qmp-spec in QEMU): the server greets with
// {"QMP": {...}}, the client must send {"execute":"qmp_capabilities"} before
// anything else. Replies are {"return": ...} or {"error": {"class", "desc"}};
// asynchronous {"event": ...} objects may arrive at any time, interleaved
// with replies, and are queued here. Each message is one JSON object; QEMU
// ends each with CRLF but the parser does not rely on line breaks.
#pragma once

#include <chrono>
#include <deque>
#include <string>

#include <nlohmann/json.hpp>

#include "vmm/socket.h"

namespace hvpatch {

class QmpClient {
public:
    static constexpr std::chrono::milliseconds kDefaultTimeout{10000};

    // Connects, reads the greeting and negotiates capabilities. Throws
    // Error(Unreachable) when nothing listens at `path`, Error(Protocol) when
    // the peer is not a QMP server (names the path and what it sent).
    static QmpClient connect(const std::string& path,
                             std::chrono::milliseconds timeout = kDefaultTimeout);

    // Wraps an already-connected socket and performs the same handshake
    // (used by unit tests with a socketpair).
    explicit QmpClient(Socket socket, std::chrono::milliseconds timeout = kDefaultTimeout);

    // Runs a command and returns its "return" value. A QMP error reply throws
    // Error(Guest) with the command name, error class and description.
    nlohmann::json execute(const std::string& command,
                           const nlohmann::json& arguments = nlohmann::json::object(),
                           std::chrono::milliseconds timeout = kDefaultTimeout);

    // Runs an HMP command line through human-monitor-command; returns its
    // text output.
    std::string hmp(const std::string& command_line,
                    std::chrono::milliseconds timeout = kDefaultTimeout);

    // The greeting's "QMP" object (version, capabilities).
    const nlohmann::json& greeting() const { return greeting_; }

    // Events received so far (oldest first); clears the queue.
    std::deque<nlohmann::json> take_events();

    const std::string& peer() const { return socket_.peer(); }
    // The QEMU process at the other end of the socket, when it is local and visible.
    std::optional<pid_t> peer_process() const { return socket_.peer_process(); }

private:
    // Reads the next complete JSON object from the socket.
    nlohmann::json read_message(const Deadline& deadline);

    Socket socket_;
    std::string buffer_;  // bytes received but not yet parsed
    nlohmann::json greeting_;
    std::deque<nlohmann::json> events_;
    unsigned long next_id_ = 1;
};

}  // namespace hvpatch
