// A stream socket with deadlines on every operation: no call into a VMM may
// hang. Waits poll in short slices so SIGINT/SIGTERM are noticed promptly.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace hvpatch {

using Clock = std::chrono::steady_clock;

class Deadline {
public:
    explicit Deadline(std::chrono::milliseconds timeout) : end_(Clock::now() + timeout) {}
    bool expired() const { return Clock::now() >= end_; }
    // Milliseconds left, at least 0.
    int remaining_ms() const;

private:
    Clock::time_point end_;
};

class Socket {
public:
    Socket() = default;
    // Takes ownership of a connected stream socket. `peer` names it in errors.
    Socket(int fd, std::string peer);
    ~Socket();
    Socket(Socket&& other) noexcept;
    Socket& operator=(Socket&& other) noexcept;
    Socket(const Socket&) = delete;
    Socket& operator=(const Socket&) = delete;

    // Connects to a UNIX stream socket. Throws Error(Unreachable) naming the
    // path when it does not exist or nobody listens.
    static Socket connect_unix(const std::string& path, std::chrono::milliseconds timeout);
    // Connects to host:port over TCP.
    static Socket connect_tcp(const std::string& host, int port, std::chrono::milliseconds timeout);

    bool is_open() const { return fd_ >= 0; }
    // The process at the other end of a UNIX socket (SO_PEERCRED), as this
    // process's pid namespace sees it; nullopt for TCP, or when the peer
    // lives in a pid namespace we cannot see into.
    std::optional<pid_t> peer_process() const;
    int fd() const { return fd_; }
    const std::string& peer() const { return peer_; }

    void send_all(std::string_view data, const Deadline& deadline);
    // Reads at least one byte (up to `max`). Throws Error(Unreachable) when
    // the peer closed the connection, Error(Timeout) at the deadline.
    std::size_t recv_some(char* buf, std::size_t max, const Deadline& deadline);
    // Like recv_some, but returns 0 instead of throwing at the deadline.
    std::size_t recv_some_until(char* buf, std::size_t max, const Deadline& deadline);
    // True if bytes are ready to read right now (never blocks).
    bool readable_now();
    void close();

private:
    // Waits for `events`; false at the deadline. Throws on interrupt.
    bool wait_for(short events, const Deadline& deadline);

    int fd_ = -1;
    std::string peer_;
};

}  // namespace hvpatch
