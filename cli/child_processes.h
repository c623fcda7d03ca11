// Runs a set of commands as child processes, at most N at once, each with
// its stdout and stderr captured and a progress pipe on a fixed descriptor
// (`hvpatch fleet` runs one `hvpatch apply|revert` per target this way).
// A child cannot disturb another: each is its own process in its own
// process group, with its own pipes, and is only ever signalled by this
// runner.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "cli/fleet_report.h"

namespace hvpatch::cli {

// The descriptor on which a child finds the write end of its progress pipe.
inline constexpr int kChildProgressFd = 3;

struct ChildCallbacks {
    std::function<void(std::size_t index)> started;
    std::function<void(std::size_t index, std::string_view line)> progress_line;  // without '\n'
    std::function<void(std::size_t index, const ChildExit& exit)> finished;
    std::function<void()> tick;  // every `tick` while children run
    // Once, when SIGINT/SIGTERM arrived and was passed on to `running` children.
    std::function<void(int signal, std::size_t running)> interrupted;
};

struct ChildRunResult {
    std::vector<ChildExit> children;  // per command; started = false for those never started
    bool interrupted = false;
};

// Runs `commands` (argv each; argv[0] is the program's path) in order, at
// most `parallel` at once. stdin is /dev/null. When SIGINT or SIGTERM
// arrives (hvpatch's interrupt flag, vmm/interrupt.h), the same signal is
// sent to every running child once, no further child is started, and the
// running ones are waited for: each ends as it would alone. Throws
// Error(Internal) if a child cannot be created.
ChildRunResult run_children(const std::vector<std::vector<std::string>>& commands, int parallel,
                            const ChildCallbacks& callbacks,
                            std::chrono::milliseconds tick = std::chrono::milliseconds(200));

}  // namespace hvpatch::cli
