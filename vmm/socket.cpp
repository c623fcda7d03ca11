#include "vmm/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "hvpatch/error.h"
#include "vmm/interrupt.h"

namespace hvpatch {
namespace {

// Poll in slices this long so that an interrupt is noticed within it.
constexpr int kSliceMs = 50;

std::string errno_text(int err) { return std::strerror(err); }

void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Finishes a non-blocking connect() within the deadline.
void finish_connect(int fd, int rc, const std::string& peer, const Deadline& deadline) {
    if (rc == 0) return;
    if (errno != EINPROGRESS && errno != EAGAIN)
        throw Error(ErrorKind::Unreachable, "cannot connect to " + peer + ": " + errno_text(errno));
    while (true) {
        throw_if_interrupted("connecting to " + peer);
        pollfd p{fd, POLLOUT, 0};
        int n = poll(&p, 1, std::min(kSliceMs, std::max(deadline.remaining_ms(), 0)));
        if (n > 0) break;
        if (n < 0 && errno != EINTR)
            throw Error(ErrorKind::Unreachable, "cannot connect to " + peer + ": " + errno_text(errno));
        if (deadline.expired()) throw Error(ErrorKind::Timeout, "timed out connecting to " + peer);
    }
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) throw Error(ErrorKind::Unreachable, "cannot connect to " + peer + ": " + errno_text(err));
}

}  // namespace

int Deadline::remaining_ms() const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end_ - Clock::now()).count();
    return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

Socket::Socket(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {
    if (fd_ >= 0) set_nonblocking(fd_);
}

Socket::~Socket() { close(); }

Socket::Socket(Socket&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), peer_(std::move(other.peer_)) {}

Socket& Socket::operator=(Socket&& other) noexcept {
    if (this != &other) {
        close();
        fd_ = std::exchange(other.fd_, -1);
        peer_ = std::move(other.peer_);
    }
    return *this;
}

std::optional<pid_t> Socket::peer_process() const {
    if (fd_ < 0) return std::nullopt;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred || cred.pid <= 0)
        return std::nullopt;
    return cred.pid;
}

void Socket::close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
}

Socket Socket::connect_unix(const std::string& path, std::chrono::milliseconds timeout) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        throw Error(ErrorKind::Usage, "socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw Error(ErrorKind::Internal, "socket(): " + errno_text(errno));
    Socket sock(fd, path);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    finish_connect(fd, rc, path, Deadline(timeout));
    return sock;
}

Socket Socket::connect_tcp(const std::string& host, int port, std::chrono::milliseconds timeout) {
    std::string peer = host + ":" + std::to_string(port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        throw Error(ErrorKind::Unreachable, "cannot resolve " + peer + ": " + gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
    int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) throw Error(ErrorKind::Internal, "socket(): " + errno_text(errno));
    Socket sock(fd, peer);
    int rc = ::connect(fd, res->ai_addr, res->ai_addrlen);
    finish_connect(fd, rc, peer, Deadline(timeout));
    return sock;
}

bool Socket::wait_for(short events, const Deadline& deadline) {
    while (true) {
        throw_if_interrupted("waiting for " + peer_);
        pollfd p{fd_, events, 0};
        int n = poll(&p, 1, std::min(kSliceMs, deadline.remaining_ms()));
        if (n > 0) return true;
        if (n < 0 && errno != EINTR)
            throw Error(ErrorKind::Unreachable, "poll on " + peer_ + ": " + errno_text(errno));
        if (deadline.expired()) return false;
    }
}

void Socket::send_all(std::string_view data, const Deadline& deadline) {
    if (fd_ < 0) throw Error(ErrorKind::Unreachable, "connection to " + peer_ + " is closed");
    std::size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::send(fd_, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (!wait_for(POLLOUT, deadline))
                throw Error(ErrorKind::Timeout, "timed out sending to " + peer_);
            continue;
        }
        throw Error(ErrorKind::Unreachable, "lost connection to " + peer_ + ": " + errno_text(errno));
    }
}

std::size_t Socket::recv_some_until(char* buf, std::size_t max, const Deadline& deadline) {
    if (fd_ < 0) throw Error(ErrorKind::Unreachable, "connection to " + peer_ + " is closed");
    while (true) {
        ssize_t n = ::recv(fd_, buf, max, 0);
        if (n > 0) return static_cast<std::size_t>(n);
        if (n == 0) throw Error(ErrorKind::Unreachable, peer_ + " closed the connection");
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!wait_for(POLLIN, deadline)) return 0;
            continue;
        }
        throw Error(ErrorKind::Unreachable, "lost connection to " + peer_ + ": " + errno_text(errno));
    }
}

std::size_t Socket::recv_some(char* buf, std::size_t max, const Deadline& deadline) {
    std::size_t n = recv_some_until(buf, max, deadline);
    if (n == 0) throw Error(ErrorKind::Timeout, "timed out waiting for " + peer_);
    return n;
}

bool Socket::readable_now() {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    return poll(&p, 1, 0) > 0;
}

}  // namespace hvpatch
