// Running a host program from a test (the built `hvpatch`, a helper script):
// stdout, stderr and the exit status captured separately, with a timeout
// after which the program (and its process group) is killed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace hvpatch::test {

// The hvpatch command built alongside the tests.
inline std::string hvpatch_binary() { return HVPATCH_BINARY; }
// The source tree (for scripts/).
inline std::string source_dir() { return HVPATCH_SOURCE_DIR; }

struct CommandResult {
    int exit_code = -1;    // exit status, -1 if it was killed by a signal
    int term_signal = 0;   // the signal that killed it, 0 if it exited
    bool timed_out = false;  // killed (SIGKILL) because the timeout passed
    std::string out, err;
    // "exited with status 2" / "killed by signal 9 (SIGKILL), timed out";
    // plus stdout and stderr: for assertion messages.
    std::string describe() const;
};

struct CommandOptions {
    std::chrono::milliseconds timeout{60000};
    // Written to the program's stdin, which is then closed (empty: the
    // program reads /dev/null).
    std::string input;
    // NAME=VALUE entries added to (or replacing in) the environment.
    std::vector<std::string> env;
    // If both set: send `signal` to the program this long after it started.
    int signal = 0;
    std::chrono::milliseconds signal_after{0};
};

// A program started in the background: output is collected by a thread
// while the caller acts (waits for a line, sends SIGINT, ...). The program
// runs in its own process group; the destructor kills and reaps it if
// wait() was not called.
class RunningCommand {
public:
    RunningCommand(const std::vector<std::string>& argv, const CommandOptions& options = {});
    ~RunningCommand();
    RunningCommand(const RunningCommand&) = delete;
    RunningCommand& operator=(const RunningCommand&) = delete;

    pid_t pid() const { return pid_; }
    // Sends a signal to the program (not its whole group).
    void send_signal(int signal);
    // Output so far.
    std::string out() const;
    std::string err() const;
    // Waits until stdout (or stderr, if `in_stderr`) contains `needle`.
    // False on timeout or when the program closed the stream first.
    bool wait_for_output(std::string_view needle, std::chrono::milliseconds timeout, bool in_stderr = false);
    // Waits for the program to end, at most until the timeout given at start
    // (measured from start), then kills it. Returns the result; call once.
    CommandResult wait();

private:
    void collect();

    pid_t pid_ = -1;
    int out_fd_ = -1, err_fd_ = -1, in_fd_ = -1;
    std::string input_;
    std::chrono::steady_clock::time_point started_;
    CommandOptions options_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::string out_, err_;
    bool out_closed_ = false, err_closed_ = false;
    std::thread collector_;
    bool waited_ = false;
};

// Runs the program to the end (or the timeout) and returns what it did.
CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);
CommandResult run_command(const std::vector<std::string>& argv, const CommandOptions& options);

}  // namespace hvpatch::test
