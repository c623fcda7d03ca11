#include "cli/child_processes.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "hvpatch/error.h"
#include "vmm/interrupt.h"

namespace hvpatch::cli {
namespace {

using Clock = std::chrono::steady_clock;

// What is kept of a child's output: its report (stdout) in full up to a
// bound, the tail of stderr; a progress line longer than the bound is
// dropped.
constexpr std::size_t kMaxStdout = 64 << 20;
constexpr std::size_t kMaxStderrTail = 64 << 10;
constexpr std::size_t kMaxProgressLine = 1 << 20;

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

struct Pipe {
    int read = -1, write = -1;
    Pipe() {
        int fds[2];
        if (::pipe2(fds, O_CLOEXEC) != 0)
            throw Error(ErrorKind::Internal, std::string("pipe2 for a child process: ") + std::strerror(errno));
        read = fds[0];
        write = fds[1];
    }
};

struct Running {
    std::size_t index = 0;
    pid_t pid = -1;
    int out = -1, err = -1, progress = -1;
    std::string progress_buffer;
    bool discarding = false;  // inside an over-long progress line
    ChildExit exit;
};

// In the child, between fork and exec: async-signal-safe calls only.
[[noreturn]] void exec_child(char* const argv[], int out, int err, int progress) {
    ::setpgid(0, 0);  // a terminal's ^C reaches the parent only; it decides
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Move the pipes out of the way of 0..3 first, then into place (dup2
    // clears close-on-exec on the copy).
    int high_out = ::fcntl(out, F_DUPFD_CLOEXEC, 10);
    int high_err = ::fcntl(err, F_DUPFD_CLOEXEC, 10);
    int high_progress = ::fcntl(progress, F_DUPFD_CLOEXEC, 10);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (high_out < 0 || high_err < 0 || high_progress < 0 || null < 0) ::_exit(127);
    if (::dup2(null, 0) < 0 || ::dup2(high_out, 1) < 0 || ::dup2(high_err, 2) < 0 ||
        ::dup2(high_progress, kChildProgressFd) < 0)
        ::_exit(127);
    ::execv(argv[0], argv);
    const char* what = "hvpatch: cannot execute child process: ";
    (void)!::write(2, what, std::strlen(what));
    const char* why = std::strerror(errno);
    (void)!::write(2, why, std::strlen(why));
    (void)!::write(2, "\n", 1);
    ::_exit(127);
}

Running start(std::size_t index, const std::vector<std::string>& argv) {
    if (argv.empty()) throw Error(ErrorKind::Internal, "empty command for a child process");
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    Pipe out, err, progress;
    pid_t pid = ::fork();
    if (pid < 0) {
        int e = errno;
        for (int fd : {out.read, out.write, err.read, err.write, progress.read, progress.write}) ::close(fd);
        throw Error(ErrorKind::Internal, "fork for " + argv[0] + ": " + std::strerror(e));
    }
    if (pid == 0) exec_child(args.data(), out.write, err.write, progress.write);
    ::close(out.write);
    ::close(err.write);
    ::close(progress.write);
    for (int fd : {out.read, err.read, progress.read}) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    Running r;
    r.index = index;
    r.pid = pid;
    r.out = out.read;
    r.err = err.read;
    r.progress = progress.read;
    r.exit.started = true;
    return r;
}

void deliver_progress(Running& r, const char* data, std::size_t size, const ChildCallbacks& callbacks) {
    for (std::size_t i = 0; i < size; ++i) {
        char c = data[i];
        if (c == '\n') {
            if (!r.discarding && callbacks.progress_line) callbacks.progress_line(r.index, r.progress_buffer);
            r.progress_buffer.clear();
            r.discarding = false;
        } else if (!r.discarding) {
            r.progress_buffer += c;
            if (r.progress_buffer.size() > kMaxProgressLine) {
                r.progress_buffer.clear();
                r.discarding = true;
            }
        }
    }
}

// Reads what is there on `fd` (non-blocking); closes it at end of file.
void read_from(Running& r, int& fd, const ChildCallbacks& callbacks) {
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) close_fd(fd);
            return;
        }
        if (n == 0) {
            close_fd(fd);
            return;
        }
        std::size_t size = static_cast<std::size_t>(n);
        if (fd == r.out) {
            if (r.exit.out.size() + size <= kMaxStdout) r.exit.out.append(buf, size);
        } else if (fd == r.err) {
            r.exit.err.append(buf, size);
            if (r.exit.err.size() > kMaxStderrTail) r.exit.err.erase(0, r.exit.err.size() - kMaxStderrTail);
        } else {
            deliver_progress(r, buf, size, callbacks);
        }
    }
}

}  // namespace

ChildRunResult run_children(const std::vector<std::vector<std::string>>& commands, int parallel,
                            const ChildCallbacks& callbacks, std::chrono::milliseconds tick) {
    if (parallel < 1) throw Error(ErrorKind::Usage, "--parallel must be at least 1");
    ChildRunResult result;
    result.children.resize(commands.size());
    std::vector<Running> running;
    std::size_t next = 0;
    bool forwarded = false;
    auto next_tick = Clock::now() + tick;
    for (;;) {
        if (interrupt_requested()) result.interrupted = true;
        while (!result.interrupted && next < commands.size() && running.size() < static_cast<std::size_t>(parallel)) {
            running.push_back(start(next, commands[next]));
            if (callbacks.started) callbacks.started(next);
            ++next;
        }
        if (result.interrupted && !forwarded) {
            forwarded = true;
            const int sig = interrupt_signal() ? interrupt_signal() : SIGINT;
            for (const auto& r : running) ::kill(r.pid, sig);
            if (callbacks.interrupted) callbacks.interrupted(sig, running.size());
        }
        if (running.empty()) break;

        std::vector<pollfd> fds;
        std::vector<std::pair<std::size_t, int*>> owners;
        for (std::size_t i = 0; i < running.size(); ++i)
            for (int* fd : {&running[i].out, &running[i].err, &running[i].progress})
                if (*fd >= 0) {
                    fds.push_back({*fd, POLLIN, 0});
                    owners.emplace_back(i, fd);
                }
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now());
        // Short when every pipe is closed but a child has not exited yet.
        int timeout = static_cast<int>(std::clamp<long>(wait.count(), 0, fds.empty() ? 20 : tick.count()));
        int n = ::poll(fds.data(), fds.size(), timeout);
        if (n < 0 && errno != EINTR)
            throw Error(ErrorKind::Internal, std::string("poll on child processes: ") + std::strerror(errno));
        for (std::size_t k = 0; n > 0 && k < fds.size(); ++k)
            if (fds[k].revents != 0) read_from(running[owners[k].first], *owners[k].second, callbacks);

        for (std::size_t i = 0; i < running.size();) {
            Running& r = running[i];
            int status = 0;
            pid_t got = ::waitpid(r.pid, &status, WNOHANG);
            if (got == 0 || (got < 0 && errno == EINTR)) {
                ++i;
                continue;
            }
            // Exited: whatever it wrote is in the pipes; take the rest.
            for (int* fd : {&r.out, &r.err, &r.progress})
                if (*fd >= 0) {
                    read_from(r, *fd, callbacks);
                    close_fd(*fd);
                }
            if (!r.progress_buffer.empty() && !r.discarding && callbacks.progress_line)
                callbacks.progress_line(r.index, r.progress_buffer);
            if (got > 0 && WIFEXITED(status)) {
                r.exit.exit_code = WEXITSTATUS(status);
            } else if (got > 0 && WIFSIGNALED(status)) {
                r.exit.signal = WTERMSIG(status);
            }
            result.children[r.index] = r.exit;
            if (callbacks.finished) callbacks.finished(r.index, r.exit);
            running.erase(running.begin() + static_cast<std::ptrdiff_t>(i));
        }
        if (Clock::now() >= next_tick) {
            next_tick = Clock::now() + tick;
            if (callbacks.tick) callbacks.tick();
        }
    }
    return result;
}

}  // namespace hvpatch::cli
