// The machine-readable progress stream of `hvpatch apply|revert
// --progress-fd FD` (hidden; what `hvpatch fleet` reads from each child):
// one JSON object per line, written to an inherited file descriptor, one
// per event of the operation:
//   {"event":"stage","stage":"checking"}           PatchOptions::stage
//   {"event":"pass","direction":"patching","pass":3,"tasks":62,"remaining":3,
//    "elapsed_ms":1016,"blockers":[{"pid":99,"comm":"sleep","reason":"..."}]}
//   {"event":"log","text":"allocating 12288 bytes of guest module memory"}
// The operation's result is not an event: it is the child's --json document
// on stdout.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "patch/patcher.h"

namespace hvpatch::cli {

struct ProgressEvent {
    enum class Type { Stage, Pass, Log } type = Type::Log;
    OperationStage stage = OperationStage::Checking;  // Stage
    // Pass: as TransitionProgress, blockers without their stacks.
    std::string direction;
    int pass = 0;
    std::size_t tasks = 0, remaining = 0;
    long elapsed_ms = 0;
    struct Blocker {
        int pid = 0;
        std::string comm, reason;
    };
    std::vector<Blocker> blockers;
    std::string text;  // Log
};

// One line (without its '\n') per event.
std::string stage_event_line(OperationStage stage);
std::string pass_event_line(const TransitionProgress& progress);
std::string log_event_line(std::string_view text);

// The event of one line, or nullopt for a line that is not one (not JSON,
// an unknown event, fields of the wrong type): the stream comes from
// another process, so nothing in it is trusted.
std::optional<ProgressEvent> parse_progress_event(std::string_view line);

// Makes `options` also write its stage, pass and log events to `fd`, after
// whatever its callbacks already do. Write errors are ignored (a reader
// that went away must not stop the operation), and so is SIGPIPE from then
// on in this process.
void add_progress_events(PatchOptions& options, int fd);

}  // namespace hvpatch::cli
