#include "support/run_command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "vmm/launcher.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

void make_pipe(int fds[2]) {
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
}

}  // namespace

std::string CommandResult::describe() const {
    std::string text = term_signal ? "killed by signal " + std::to_string(term_signal) + " (SIG" +
                                         (sigabbrev_np(term_signal) ? sigabbrev_np(term_signal) : "?") + ")"
                                   : "exited with status " + std::to_string(exit_code);
    if (timed_out) text += ", timed out";
    return text + "\n--- stdout ---\n" + out + "\n--- stderr ---\n" + err;
}

RunningCommand::RunningCommand(const std::vector<std::string>& argv, const CommandOptions& options)
    : input_(options.input), started_(Clock::now()), options_(options) {
    int out[2], err[2], in[2] = {-1, -1};
    make_pipe(out);
    make_pipe(err);
    if (!input_.empty()) make_pipe(in);
    ChildSpec spec;
    spec.argv = argv;
    spec.extra_env = options.env;
    spec.stdin_fd = in[0];
    spec.stdout_fd = out[1];
    spec.stderr_fd = err[1];
    try {
        pid_ = spawn_child(spec);
    } catch (...) {
        for (int fd : {out[0], out[1], err[0], err[1], in[0], in[1]})
            if (fd >= 0) ::close(fd);
        throw;
    }
    for (int fd : {out[1], err[1], in[0]})
        if (fd >= 0) ::close(fd);
    out_fd_ = out[0];
    err_fd_ = err[0];
    in_fd_ = in[1];
    if (in_fd_ >= 0) ::fcntl(in_fd_, F_SETFL, O_NONBLOCK);
    collector_ = std::thread([this] { collect(); });
}

RunningCommand::~RunningCommand() {
    if (!waited_) {
        if (pid_ > 0) stop_child(pid_, 0ms);
        waited_ = true;
    }
    {
        std::lock_guard lock(mutex_);
        out_closed_ = err_closed_ = true;  // tells the collector to stop
    }
    if (collector_.joinable()) collector_.join();
    for (int fd : {out_fd_, err_fd_, in_fd_})
        if (fd >= 0) ::close(fd);
}

// Runs on its own thread: feeds stdin, drains stdout and stderr (so the
// program never blocks on a full pipe), sends the delayed signal.
void RunningCommand::collect() {
    // A program that exits without reading its input must give EPIPE here,
    // not a SIGPIPE that kills the test (it is thread-directed: blocking it
    // in this thread is enough).
    sigset_t pipe_signal;
    sigemptyset(&pipe_signal);
    sigaddset(&pipe_signal, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
    std::size_t written = 0;
    bool signal_pending = options_.signal != 0 && options_.signal_after.count() > 0;
    bool in_open = in_fd_ >= 0;
    while (true) {
        {
            std::lock_guard lock(mutex_);
            if (out_closed_ && err_closed_) break;
        }
        if (signal_pending && Clock::now() - started_ >= options_.signal_after) {
            ::kill(pid_, options_.signal);
            signal_pending = false;
        }
        pollfd fds[3];
        int n = 0;
        bool want_out, want_err;
        {
            std::lock_guard lock(mutex_);
            want_out = !out_closed_;
            want_err = !err_closed_;
        }
        int out_index = -1, err_index = -1, in_index = -1;
        if (want_out) {
            out_index = n;
            fds[n++] = {out_fd_, POLLIN, 0};
        }
        if (want_err) {
            err_index = n;
            fds[n++] = {err_fd_, POLLIN, 0};
        }
        if (in_open) {
            in_index = n;
            fds[n++] = {in_fd_, POLLOUT, 0};
        }
        int ready = ::poll(fds, n, 20);
        if (ready < 0 && errno != EINTR) break;
        if (ready <= 0) continue;
        auto drain = [&](int index, int fd, std::string& into, bool& closed) {
            if (index < 0 || !(fds[index].revents & (POLLIN | POLLHUP | POLLERR))) return;
            char buf[8192];
            ssize_t got = ::read(fd, buf, sizeof buf);
            std::lock_guard lock(mutex_);
            if (got > 0)
                into.append(buf, static_cast<std::size_t>(got));
            else if (got == 0 || (errno != EINTR && errno != EAGAIN))
                closed = true;
            changed_.notify_all();
        };
        drain(out_index, out_fd_, out_, out_closed_);
        drain(err_index, err_fd_, err_, err_closed_);
        if (in_index >= 0 && (fds[in_index].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t put = ::write(in_fd_, input_.data() + written, input_.size() - written);
            if (put > 0) written += static_cast<std::size_t>(put);
            if ((put < 0 && errno != EAGAIN && errno != EINTR) || written == input_.size()) {
                ::close(in_fd_);
                in_fd_ = -1;
                in_open = false;
            }
        }
    }
}

void RunningCommand::send_signal(int signal) {
    if (pid_ > 0 && !waited_) ::kill(pid_, signal);
}

std::string RunningCommand::out() const {
    std::lock_guard lock(mutex_);
    return out_;
}

std::string RunningCommand::err() const {
    std::lock_guard lock(mutex_);
    return err_;
}

bool RunningCommand::wait_for_output(std::string_view needle, std::chrono::milliseconds timeout, bool in_stderr) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
        const std::string& text = in_stderr ? err_ : out_;
        bool closed = in_stderr ? err_closed_ : out_closed_;
        return text.find(needle) != std::string::npos || closed;
    }) && (in_stderr ? err_ : out_).find(needle) != std::string::npos;
}

CommandResult RunningCommand::wait() {
    if (waited_) throw std::logic_error("RunningCommand::wait called twice");
    waited_ = true;
    CommandResult result;
    auto deadline = started_ + options_.timeout;
    int status = 0;
    bool reaped = false;
    while (Clock::now() < deadline) {
        pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_) {
            reaped = true;
            break;
        }
        if (r < 0 && errno != EINTR)
            throw std::runtime_error("waitpid(" + std::to_string(pid_) + "): " + std::strerror(errno));
        std::this_thread::sleep_for(5ms);
    }
    if (!reaped) {
        result.timed_out = true;
        if (auto s = stop_child(pid_, 0ms)) status = *s;
    }
    // The streams close when the last holder exits; a background grandchild
    // may keep them open, so wait a little, then give up on it (and kill the
    // rest of the process group).
    {
        std::unique_lock lock(mutex_);
        if (!changed_.wait_for(lock, 2s, [&] { return out_closed_ && err_closed_; })) {
            lock.unlock();
            ::kill(-pid_, SIGKILL);
            lock.lock();
            changed_.wait_for(lock, 500ms, [&] { return out_closed_ && err_closed_; });
            out_closed_ = err_closed_ = true;
        }
    }
    collector_.join();
    {
        std::lock_guard lock(mutex_);
        result.out = out_;
        result.err = err_;
    }
    if (WIFEXITED(status)) {
        result.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        result.term_signal = WTERMSIG(status);
    }
    return result;
}

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
    CommandOptions options;
    options.timeout = timeout;
    return run_command(argv, options);
}

CommandResult run_command(const std::vector<std::string>& argv, const CommandOptions& options) {
    RunningCommand command(argv, options);
    return command.wait();
}

}  // namespace hvpatch::test
