// `hvpatch fleet`: what is known of each target while the children run
// (fed by their progress events), how a finished child is classified, the
// live table, the final report and the exit code. No processes here
// (cli/child_processes.h runs them), so all of it is tested on its own.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/progress_events.h"

namespace hvpatch::cli {

// Exit codes of `hvpatch fleet` besides 0 (every target ok), 2 (usage),
// 130 (interrupted) and those of an error before any target ran: verdicts
// on the fleet, not errors of hvpatch. Next to kExitAuditVerifyFailed (5).
inline constexpr int kExitFleetPartial = 6;  // some targets ok, some failed, skipped or not started
inline constexpr int kExitFleetNone = 7;     // no target ok (or no target at all)

enum class FleetVerb { Apply, Revert };
const char* to_string(FleetVerb verb);

enum class TargetOutcome {
    Applied,         // apply: applied (or forced: see reason)
    Reverted,        // revert: reverted (or forced)
    AlreadyApplied,  // apply: the patch is already applied there (nothing done; ok)
    NotApplied,      // revert: no such patch there in this boot (nothing done; ok)
    Skipped,         // refused before changing anything: the patch does not fit this guest
    Failed,          // anything else, including a child that crashed
    NotStarted,      // never started: the fleet run was interrupted first
};
const char* to_string(TargetOutcome outcome);
// Counts as done for the exit code: the target ends as the verb wanted.
bool outcome_ok(TargetOutcome outcome);

// How a child process ended, as the runner saw it.
struct ChildExit {
    bool started = false;
    int exit_code = -1;  // -1 when killed by a signal
    int signal = 0;
    std::string out;  // stdout: the child's --json document
    std::string err;  // stderr (its tail)
};

struct FleetTarget {
    std::string target;
    enum class Phase { Queued, Running, Done } phase = Phase::Queued;
    std::chrono::milliseconds elapsed{0};  // since its child started (kept current by the caller)

    // From the progress events.
    std::optional<OperationStage> stage;  // last stage (none yet: "opening" once started)
    std::string direction;  // of the last pass: patching / unpatching
    int pass = 0;
    std::size_t tasks = 0, remaining = 0;
    std::vector<ProgressEvent::Blocker> blockers;  // of the last pass
    bool changed_guest = false;  // a stage that changes the guest (or a pass) was seen
    std::optional<OperationStage> verdict;  // AlreadyApplied / NotApplied when the child said so
    std::string last_log;

    // Once done.
    TargetOutcome outcome = TargetOutcome::NotStarted;
    std::string reason;      // why, for anything but a plain success
    std::string error_kind;  // of the child's error document ("" on success)
    int exit_code = -1, signal = 0;
    int passes = 0;
    bool forced = false;
    nlohmann::json report;  // the child's --json document (null if none)
    std::vector<ProgressEvent::Blocker> final_blockers;  // blocked at the first pass, else at the last
};

void apply_event(FleetTarget& target, const ProgressEvent& event);

// Classifies a finished (or never started) child. A child whose guest was
// not changed (no changing stage, no pass) and that ended with an error of
// kind "guest" (a refusal: wrong kernel release, function missing, guest
// livepatch busy, ...) is Skipped; already-applied/not-applied verdicts
// are their outcomes; success documents give Applied/Reverted; everything
// else, including a signal, no report or another error kind, is Failed.
void finish_target(FleetTarget& target, FleetVerb verb, const ChildExit& child);

// 0, kExitFleetPartial or kExitFleetNone; 130 when interrupted.
int fleet_exit_code(const std::vector<FleetTarget>& targets, bool interrupted);

// "queued", "opening", "checking", "loading", "patching pass 3",
// then the outcome ("applied", "skipped", ...).
std::string state_label(const FleetTarget& target);
// "pid 99 sleep: in do_nanosleep (...)" or "".
std::string first_blocker(const FleetTarget& target);

// The live table: a header, one row per target, a summary line (and
// `notice` below it if set). Lines are cut to `width` columns (0: no limit)
// so that a terminal never wraps them. With more targets than fit in
// `max_lines` (0: no limit; a table taller than the terminal cannot be
// redrawn in place), running targets are shown first, then those that did
// not succeed, then the rest in order, and one line says how many are not
// shown.
std::vector<std::string> render_table(const std::vector<FleetTarget>& targets, std::size_t width,
                                      const std::string& notice = "", std::size_t max_lines = 0);
// One line for a log that is not a terminal: "TARGET: patching pass 3, 3 of 62 tasks left (pid ...)".
std::string progress_line(const FleetTarget& target);

struct FleetRun {
    FleetVerb verb = FleetVerb::Apply;
    std::string patch;        // module name (apply: from the .ko; revert: as given)
    std::string module_path;  // apply only
    std::string sha256;       // apply only
    int parallel = 1;
    std::chrono::milliseconds wall{0};
    bool interrupted = false;
    std::vector<FleetTarget> targets;
};

// "2 applied, 1 skipped" in outcome order, for what occurs.
std::string outcome_counts(const std::vector<FleetTarget>& targets);
// The final report for people.
std::string render_report(const FleetRun& run);
// The final report as one JSON document (`fleet ... --json`).
nlohmann::json report_json(const FleetRun& run);
// The fleet run's own audit record (the children audit their operations).
nlohmann::json audit_record(const FleetRun& run);

}  // namespace hvpatch::cli
