#include "cli/fleet_report.h"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>

namespace hvpatch::cli {
namespace {

using nlohmann::json;

constexpr TargetOutcome kOutcomeOrder[] = {TargetOutcome::Applied,   TargetOutcome::Reverted,
                                           TargetOutcome::AlreadyApplied, TargetOutcome::NotApplied,
                                           TargetOutcome::Skipped,   TargetOutcome::Failed,
                                           TargetOutcome::NotStarted};

std::string seconds(std::chrono::milliseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f s", static_cast<double>(d.count()) / 1000.0);
    return buf;
}

// Cuts `text` to `width` bytes ("..." at the end); 0 = no limit. The
// table is ASCII except what the guest named (a comm), which may be cut
// inside a UTF-8 sequence: the terminal shows one replacement character.
std::string cut(std::string text, std::size_t width) {
    if (width == 0 || text.size() <= width) return text;
    if (width <= 3) return text.substr(0, width);
    return text.substr(0, width - 3) + "...";
}

std::string pad(std::string text, std::size_t width) {
    if (text.size() < width) text.append(width - text.size(), ' ');
    return text;
}

// Control characters from a child or a guest (a comm, a message) must not
// reach the terminal as such: one row stays one line.
std::string printable(std::string text) {
    for (char& c : text)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return text;
}

std::string last_line(const std::string& text) {
    std::size_t end = text.find_last_not_of("\n");
    if (end == std::string::npos) return "";
    std::size_t begin = text.rfind('\n', end);
    return text.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

std::vector<ProgressEvent::Blocker> blockers_from_report(const json& list) {
    std::vector<ProgressEvent::Blocker> out;
    if (!list.is_array()) return out;
    for (const auto& b : list) {
        if (!b.is_object()) continue;
        ProgressEvent::Blocker blocker;
        blocker.pid = b.value("pid", 0);
        blocker.comm = b.value("comm", "");
        blocker.reason = b.value("reason", "");
        out.push_back(std::move(blocker));
    }
    return out;
}

json blockers_json(const std::vector<ProgressEvent::Blocker>& blockers) {
    json out = json::array();
    for (const auto& b : blockers) out.push_back({{"pid", b.pid}, {"comm", b.comm}, {"reason", b.reason}});
    return out;
}

std::string describe_exit(const ChildExit& child) {
    if (child.signal != 0) {
        const char* name = strsignal(child.signal);
        return "killed by signal " + std::to_string(child.signal) + (name ? std::string(" (") + name + ")" : "");
    }
    return "exited with status " + std::to_string(child.exit_code);
}

}  // namespace

const char* to_string(FleetVerb verb) { return verb == FleetVerb::Apply ? "apply" : "revert"; }

const char* to_string(TargetOutcome outcome) {
    switch (outcome) {
        case TargetOutcome::Applied: return "applied";
        case TargetOutcome::Reverted: return "reverted";
        case TargetOutcome::AlreadyApplied: return "already-applied";
        case TargetOutcome::NotApplied: return "not-applied";
        case TargetOutcome::Skipped: return "skipped";
        case TargetOutcome::Failed: return "failed";
        case TargetOutcome::NotStarted: return "not-started";
    }
    return "failed";
}

bool outcome_ok(TargetOutcome outcome) {
    return outcome == TargetOutcome::Applied || outcome == TargetOutcome::Reverted ||
           outcome == TargetOutcome::AlreadyApplied || outcome == TargetOutcome::NotApplied;
}

void apply_event(FleetTarget& t, const ProgressEvent& e) {
    switch (e.type) {
        case ProgressEvent::Type::Stage:
            if (is_verdict(e.stage)) {
                t.verdict = e.stage;
                return;
            }
            t.stage = e.stage;
            if (changes_guest(e.stage)) t.changed_guest = true;
            return;
        case ProgressEvent::Type::Pass:
            t.stage = OperationStage::Transition;
            t.changed_guest = true;
            t.direction = e.direction;
            t.pass = e.pass;
            t.tasks = e.tasks;
            t.remaining = e.remaining;
            t.blockers = e.blockers;
            return;
        case ProgressEvent::Type::Log:
            t.last_log = e.text;
            return;
    }
}

void finish_target(FleetTarget& t, FleetVerb verb, const ChildExit& child) {
    t.phase = FleetTarget::Phase::Done;
    t.exit_code = child.exit_code;
    t.signal = child.signal;
    t.final_blockers = t.blockers;
    if (!child.started) {
        t.outcome = TargetOutcome::NotStarted;
        t.reason = "not started: the fleet run was interrupted";
        return;
    }
    json doc = json::parse(child.out, nullptr, false);
    if (doc.is_object()) t.report = doc;
    const std::string stderr_line = printable(last_line(child.err));
    if (child.signal != 0) {
        t.outcome = TargetOutcome::Failed;
        t.reason = "hvpatch " + std::string(to_string(verb)) + " " + describe_exit(child) +
                   (t.changed_guest ? "; it had begun changing the guest: see hvpatch status " + t.target : "");
        return;
    }
    const json* error = doc.is_object() && doc.contains("error") && doc["error"].is_object() ? &doc["error"] : nullptr;
    if (child.exit_code == 0 && doc.is_object() && !error) {
        const std::string outcome = doc.value("outcome", "");
        const bool done = verb == FleetVerb::Apply ? outcome == "applied" : outcome == "reverted";
        if (done || outcome == "forced") {
            t.outcome = verb == FleetVerb::Apply ? TargetOutcome::Applied : TargetOutcome::Reverted;
            t.passes = doc.value("passes", 0);
            auto first = blockers_from_report(doc.value("blocked_at_first_pass", json::array()));
            if (!first.empty() || t.passes > 0) t.final_blockers = first;
            if (outcome == "forced") {
                t.forced = true;
                t.reason = "forced: " + std::to_string(doc.value("forced", json::array()).size()) +
                           " task(s) switched with the patch on their stack";
            }
            return;
        }
        t.outcome = TargetOutcome::Failed;
        t.reason = "unexpected outcome '" + printable(outcome) + "' in hvpatch " + to_string(verb) + "'s report";
        return;
    }
    if (error) {
        t.error_kind = (*error).value("kind", "");
        t.reason = printable((*error).value("message", ""));
    } else {
        t.reason = "hvpatch " + std::string(to_string(verb)) + " " + describe_exit(child) + " without a report" +
                   (stderr_line.empty() ? "" : ": " + stderr_line);
    }
    if (child.exit_code == 0) {
        t.outcome = TargetOutcome::Failed;
        return;
    }
    if (verb == FleetVerb::Apply && t.verdict == OperationStage::AlreadyApplied) {
        t.outcome = TargetOutcome::AlreadyApplied;
    } else if (verb == FleetVerb::Revert && t.verdict == OperationStage::NotApplied) {
        t.outcome = TargetOutcome::NotApplied;
    } else if (error && !t.changed_guest && t.error_kind == "guest") {
        t.outcome = TargetOutcome::Skipped;
    } else {
        t.outcome = TargetOutcome::Failed;
    }
}

int fleet_exit_code(const std::vector<FleetTarget>& targets, bool interrupted) {
    if (interrupted) return 130;
    std::size_t ok = 0;
    for (const auto& t : targets)
        if (outcome_ok(t.outcome)) ++ok;
    if (ok == 0) return kExitFleetNone;
    return ok == targets.size() ? 0 : kExitFleetPartial;
}

std::string state_label(const FleetTarget& t) {
    switch (t.phase) {
        case FleetTarget::Phase::Queued: return "queued";
        case FleetTarget::Phase::Done: return to_string(t.outcome);
        case FleetTarget::Phase::Running: break;
    }
    if (t.stage == OperationStage::Transition && t.pass > 0) return t.direction + " pass " + std::to_string(t.pass);
    return t.stage ? std::string(to_string(*t.stage)) : "opening";
}

std::string first_blocker(const FleetTarget& t) {
    const auto& list = t.phase == FleetTarget::Phase::Done ? t.final_blockers : t.blockers;
    if (list.empty()) return "";
    const auto& b = list.front();
    return printable("pid " + std::to_string(b.pid) + " " + b.comm + ": " + b.reason) + (list.size() > 1 ? ", ..." : "");
}

std::vector<std::string> render_table(const std::vector<FleetTarget>& targets, std::size_t width,
                                      const std::string& notice, std::size_t max_lines) {
    std::size_t target_width = 6;
    for (const auto& t : targets) target_width = std::max(target_width, printable(t.target).size());
    target_width = std::min<std::size_t>(target_width, 40);
    constexpr std::size_t kState = 18, kTasks = 10, kElapsed = 9;
    std::vector<std::string> lines;
    lines.push_back(cut(pad("TARGET", target_width) + "  " + pad("STATE", kState) + "  " + pad("TASKS LEFT", kTasks) +
                            "  " + pad("ELAPSED", kElapsed) + "  FIRST BLOCKER",
                        width));
    std::size_t queued = 0, running = 0;
    for (const auto& t : targets) {
        if (t.phase == FleetTarget::Phase::Queued) ++queued;
        if (t.phase == FleetTarget::Phase::Running) ++running;
    }
    // Which rows: all, or as many as fit, by importance, in target order.
    const std::size_t fixed = 2 + (notice.empty() ? 0 : 1);  // header, summary, notice
    std::vector<bool> shown(targets.size(), true);
    std::size_t hidden = 0;
    if (max_lines > 0 && targets.size() + fixed > max_lines) {
        const std::size_t room = max_lines > fixed + 1 ? max_lines - fixed - 1 : 0;  // one line says what is hidden
        auto rank = [](const FleetTarget& t) {
            if (t.phase == FleetTarget::Phase::Running) return 0;
            if (t.phase == FleetTarget::Phase::Done && !outcome_ok(t.outcome)) return 1;
            return 2;
        };
        std::size_t used = 0;
        for (int r = 0; r <= 2; ++r)
            for (std::size_t i = 0; i < targets.size(); ++i)
                if (rank(targets[i]) == r) {
                    shown[i] = used < room;
                    if (shown[i]) ++used;
                }
        hidden = targets.size() - used;
    }
    for (std::size_t i = 0; i < targets.size(); ++i) {
        if (!shown[i]) continue;
        const FleetTarget& t = targets[i];
        const bool in_transition = t.phase == FleetTarget::Phase::Running && t.stage == OperationStage::Transition && t.pass > 0;
        std::string tasks = in_transition ? std::to_string(t.remaining) + "/" + std::to_string(t.tasks) : "-";
        std::string elapsed = t.phase == FleetTarget::Phase::Queued ? "-" : seconds(t.elapsed);
        // A finished target shows why (a failure, a forced switch), not who
        // blocked at some point: the report lists that.
        std::string blocker = t.phase == FleetTarget::Phase::Done ? t.reason : first_blocker(t);
        lines.push_back(cut(pad(cut(printable(t.target), target_width), target_width) + "  " +
                                pad(state_label(t), kState) + "  " + pad(tasks, kTasks) + "  " + pad(elapsed, kElapsed) +
                                "  " + blocker,
                            width));
    }
    if (hidden > 0) lines.push_back(cut("(" + std::to_string(hidden) + " more not shown)", width));
    std::string summary = std::to_string(targets.size()) + " target" + (targets.size() == 1 ? "" : "s") + ": " +
                          std::to_string(running) + " running, " + std::to_string(queued) + " queued";
    std::string done = outcome_counts(targets);
    if (!done.empty()) summary += ", " + done;
    lines.push_back(cut(summary, width));
    if (!notice.empty()) lines.push_back(cut(notice, width));
    return lines;
}

std::string progress_line(const FleetTarget& t) {
    std::string line = printable(t.target) + ": " + state_label(t);
    if (t.phase == FleetTarget::Phase::Running && t.stage == OperationStage::Transition && t.pass > 0) {
        line += ", " + std::to_string(t.remaining) + " of " + std::to_string(t.tasks) + " tasks left";
        if (std::string b = first_blocker(t); !b.empty()) line += " (" + b + ")";
    }
    if (t.phase == FleetTarget::Phase::Done) {
        line += " in " + seconds(t.elapsed);
        if (!t.reason.empty()) line += ": " + t.reason;
    }
    return line;
}

std::string outcome_counts(const std::vector<FleetTarget>& targets) {
    std::map<TargetOutcome, std::size_t> counts;
    for (const auto& t : targets)
        if (t.phase == FleetTarget::Phase::Done) ++counts[t.outcome];
    std::string out;
    for (TargetOutcome o : kOutcomeOrder)
        if (auto it = counts.find(o); it != counts.end())
            out += (out.empty() ? "" : ", ") + std::to_string(it->second) + " " + to_string(o);
    return out;
}

std::string render_report(const FleetRun& run) {
    std::string counts = outcome_counts(run.targets);
    std::string out = "fleet " + std::string(to_string(run.verb)) + " " + printable(run.patch) + ": " +
                      (counts.empty() ? "no targets" : counts) + " (" + std::to_string(run.targets.size()) +
                      " target" + (run.targets.size() == 1 ? "" : "s") + ", --parallel " +
                      std::to_string(run.parallel) + ", " + seconds(run.wall) +
                      (run.interrupted ? ", interrupted" : "") + ")\n";
    std::size_t target_width = 0;
    for (const auto& t : run.targets) target_width = std::max(target_width, printable(t.target).size());
    for (const auto& t : run.targets) {
        std::string line = "  " + pad(printable(t.target), target_width) + "  " + pad(to_string(t.outcome), 15);
        if (t.outcome != TargetOutcome::NotStarted) line += "  " + pad(seconds(t.elapsed), 9);
        if (t.passes > 0) line += "  " + std::to_string(t.passes) + (t.passes == 1 ? " pass" : " passes");
        if (!t.reason.empty()) line += "  " + t.reason;
        out += line + "\n";
        const char* what = t.outcome == TargetOutcome::Applied || t.outcome == TargetOutcome::Reverted
                               ? "blocked at the first pass"
                               : "blocking at the last pass";
        for (const auto& b : t.final_blockers)
            out += "      " + std::string(what) + ": " +
                   printable("pid " + std::to_string(b.pid) + " (" + b.comm + "): " + b.reason) + "\n";
    }
    return out;
}

json report_json(const FleetRun& run) {
    json targets = json::array();
    json counts = json::object();
    for (TargetOutcome o : kOutcomeOrder) counts[to_string(o)] = 0;
    for (const auto& t : run.targets) {
        counts[to_string(t.outcome)] = counts[to_string(t.outcome)].get<int>() + 1;
        targets.push_back({{"target", t.target},
                           {"outcome", to_string(t.outcome)},
                           {"time_ms", t.elapsed.count()},
                           {"reason", t.reason},
                           {"error_kind", t.error_kind},
                           {"exit_code", t.exit_code},
                           {"signal", t.signal},
                           {"changed_guest", t.changed_guest},
                           {"passes", t.passes},
                           {"forced", t.forced},
                           {"blockers", blockers_json(t.final_blockers)},
                           {"report", t.report}});
    }
    json doc = {{"fleet", to_string(run.verb)},
                {"patch", run.patch},
                {"parallel", run.parallel},
                {"wall_ms", run.wall.count()},
                {"interrupted", run.interrupted},
                {"exit_code", fleet_exit_code(run.targets, run.interrupted)},
                {"counts", counts},
                {"targets", targets}};
    if (run.verb == FleetVerb::Apply) {
        doc["module"] = run.module_path;
        doc["sha256"] = run.sha256;
    }
    return doc;
}

json audit_record(const FleetRun& run) {
    json targets = json::array();
    for (const auto& t : run.targets) {
        json entry = {{"target", t.target}, {"outcome", to_string(t.outcome)}, {"time_ms", t.elapsed.count()}};
        if (!t.reason.empty()) entry["reason"] = t.reason;
        targets.push_back(entry);
    }
    const int code = fleet_exit_code(run.targets, run.interrupted);
    json patch = {{"name", run.patch}};
    if (run.verb == FleetVerb::Apply) {
        patch["sha256"] = run.sha256;
        patch["path"] = run.module_path;
    }
    return {{"operation", std::string("fleet ") + to_string(run.verb)},
            {"patch", patch},
            {"parallel", run.parallel},
            {"wall_ms", run.wall.count()},
            {"targets", targets},
            {"outcome", run.interrupted ? "interrupted" : code == 0 ? "all-ok" : code == kExitFleetPartial ? "partial" : "none"}};
}

}  // namespace hvpatch::cli
