// cli/progress_events.h and cli/fleet_report.h: the progress stream of
// `hvpatch apply|revert --progress-fd`, how `hvpatch fleet` classifies a
// finished child, its exit code, live table and report.
#include "cli/fleet_report.h"

#include <gtest/gtest.h>

#include <csignal>
#include <functional>

#include "cli/progress_events.h"

namespace hvpatch::cli {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

ProgressEvent event(std::string_view line) {
    auto e = parse_progress_event(line);
    EXPECT_TRUE(e.has_value()) << line;
    return e.value_or(ProgressEvent{});
}

TransitionProgress sample_progress() {
    TransitionProgress p;
    p.direction = "patching";
    p.pass = 3;
    p.tasks = 62;
    p.remaining = 2;
    p.elapsed = 1016ms;
    TransitionBlocker b;
    b.pid = 99;
    b.comm = "sleep";
    b.reason = "in do_nanosleep (do_nanosleep+0x7b/0x140)";
    b.frames = {"do_nanosleep+0x7b/0x140"};
    p.blockers = {b, b};
    p.blockers[1].pid = 100;
    return p;
}

TEST(ProgressEvents, PassRoundTrips) {
    ProgressEvent e = event(pass_event_line(sample_progress()));
    EXPECT_EQ(e.type, ProgressEvent::Type::Pass);
    EXPECT_EQ(e.direction, "patching");
    EXPECT_EQ(e.pass, 3);
    EXPECT_EQ(e.tasks, 62u);
    EXPECT_EQ(e.remaining, 2u);
    EXPECT_EQ(e.elapsed_ms, 1016);
    ASSERT_EQ(e.blockers.size(), 2u);
    EXPECT_EQ(e.blockers[0].pid, 99);
    EXPECT_EQ(e.blockers[0].comm, "sleep");
    EXPECT_EQ(e.blockers[1].pid, 100);
    EXPECT_EQ(e.blockers[0].reason, "in do_nanosleep (do_nanosleep+0x7b/0x140)");
}

TEST(ProgressEvents, StageAndLogRoundTrip) {
    ProgressEvent s = event(stage_event_line(OperationStage::Loading));
    EXPECT_EQ(s.type, ProgressEvent::Type::Stage);
    EXPECT_EQ(s.stage, OperationStage::Loading);
    ProgressEvent l = event(log_event_line("allocating 12288 bytes\nof guest module memory"));
    EXPECT_EQ(l.type, ProgressEvent::Type::Log);
    EXPECT_EQ(l.text, "allocating 12288 bytes\nof guest module memory");
    // One event is one line, whatever its text holds.
    EXPECT_EQ(log_event_line("a\nb").find('\n'), std::string::npos);
}

TEST(ProgressEvents, InvalidGuestTextIsReplacedNotThrown) {
    TransitionProgress p = sample_progress();
    p.blockers[0].comm = std::string("sl\xff\xfe", 4);
    ProgressEvent e = event(pass_event_line(p));
    ASSERT_FALSE(e.blockers.empty());
    EXPECT_EQ(e.blockers[0].comm.substr(0, 2), "sl");
}

TEST(ProgressEvents, MalformedLinesAreNotEvents) {
    for (const char* line : {
             "", "not json", "[1,2]", "{\"event\":1}", "{\"event\":\"nonsense\"}", "{\"event\":\"stage\"}",
             "{\"event\":\"stage\",\"stage\":\"\"}", "{\"event\":\"stage\",\"stage\":\"dancing\"}", "{\"event\":\"log\",\"text\":7}",
             R"({"event":"pass","direction":"patching","pass":1,"tasks":2,"remaining":3,"elapsed_ms":0})",
             R"({"event":"pass","direction":"patching","pass":-1,"tasks":2,"remaining":1,"elapsed_ms":0})",
             R"({"event":"pass","direction":"patching","pass":1,"tasks":2,"remaining":1,"elapsed_ms":0.5})",
             R"({"event":"pass","direction":"patching","pass":1,"tasks":2,"remaining":1,"elapsed_ms":0,"blockers":{}})",
             R"({"event":"pass","direction":"patching","pass":1,"tasks":2,"remaining":1,"elapsed_ms":0,"blockers":[{"pid":"x","comm":"a","reason":"b"}]})",
             R"({"event":"pass","pass":1,"tasks":2,"remaining":1,"elapsed_ms":0})",
         })
        EXPECT_FALSE(parse_progress_event(line).has_value()) << line;
}

TEST(ProgressEvents, LongTextIsBounded) {
    ProgressEvent e = event(log_event_line(std::string(100000, 'x')));
    EXPECT_LE(e.text.size(), 4096u);
}

// --- Classification ---------------------------------------------------------

FleetTarget running(std::string name = "qmp:/run/a.qmp") {
    FleetTarget t;
    t.target = std::move(name);
    t.phase = FleetTarget::Phase::Running;
    return t;
}

void feed(FleetTarget& t, std::initializer_list<std::string> lines) {
    for (const auto& line : lines) apply_event(t, event(line));
}

ChildExit exited(int code, const json& doc, std::string err = "") {
    ChildExit c;
    c.started = true;
    c.exit_code = code;
    c.out = doc.is_null() ? "" : doc.dump(2);
    c.err = std::move(err);
    return c;
}

json error_doc(const std::string& kind, const std::string& message) {
    return {{"error", {{"kind", kind}, {"message", message}}}};
}

json apply_doc(const std::string& outcome = "applied") {
    return {{"operation", "apply"},
            {"patch", "livepatch_cmdline"},
            {"outcome", outcome},
            {"passes", 2},
            {"forced", outcome == "forced" ? json::array({{{"pid", 7}, {"comm", "x"}, {"reason", "r"}}}) : json::array()},
            {"blocked_at_first_pass", json::array({{{"pid", 99}, {"comm", "sleep"}, {"reason", "in do_nanosleep"}, {"frames", json::array()}}})}};
}

TEST(FleetClassify, SuccessDocumentIsApplied) {
    FleetTarget t = running();
    feed(t, {stage_event_line(OperationStage::Checking), stage_event_line(OperationStage::Loading), stage_event_line(OperationStage::Transition),
             pass_event_line(sample_progress())});
    finish_target(t, FleetVerb::Apply, exited(0, apply_doc()));
    EXPECT_EQ(t.outcome, TargetOutcome::Applied);
    EXPECT_EQ(t.phase, FleetTarget::Phase::Done);
    EXPECT_EQ(t.passes, 2);
    EXPECT_TRUE(t.reason.empty());
    EXPECT_FALSE(t.forced);
    ASSERT_EQ(t.final_blockers.size(), 1u);  // the report's first-pass blockers, not the last pass's two
    EXPECT_EQ(t.final_blockers[0].pid, 99);
    EXPECT_EQ(t.report.value("outcome", ""), "applied");
}

TEST(FleetClassify, ForcedIsAppliedAndSaysSo) {
    FleetTarget t = running();
    finish_target(t, FleetVerb::Apply, exited(0, apply_doc("forced")));
    EXPECT_EQ(t.outcome, TargetOutcome::Applied);
    EXPECT_TRUE(t.forced);
    EXPECT_NE(t.reason.find("forced: 1 task"), std::string::npos) << t.reason;
}

TEST(FleetClassify, RevertDocumentIsReverted) {
    FleetTarget t = running();
    json doc = apply_doc("reverted");
    doc["operation"] = "revert";
    finish_target(t, FleetVerb::Revert, exited(0, doc));
    EXPECT_EQ(t.outcome, TargetOutcome::Reverted);
    // An apply document's outcome is no success of a revert.
    FleetTarget u = running();
    finish_target(u, FleetVerb::Revert, exited(0, apply_doc("applied")));
    EXPECT_EQ(u.outcome, TargetOutcome::Failed);
}

TEST(FleetClassify, GuestRefusalBeforeAnyChangeIsSkipped) {
    FleetTarget t = running();
    feed(t, {stage_event_line(OperationStage::Checking)});
    const std::string why = "/p/x.ko: vermagic '6.1.0-56-amd64 SMP' is for kernel 6.1.0-56-amd64, the guest runs 6.1.0-56-cloud-amd64";
    finish_target(t, FleetVerb::Apply, exited(4, error_doc("guest", why), "hvpatch: error: " + why + "\n"));
    EXPECT_EQ(t.outcome, TargetOutcome::Skipped);
    EXPECT_EQ(t.reason, why);
    EXPECT_EQ(t.error_kind, "guest");
    EXPECT_FALSE(t.changed_guest);
}

TEST(FleetClassify, GuestErrorAfterTheGuestChangedIsFailed) {
    for (OperationStage stage : {OperationStage::Loading, OperationStage::Transition, OperationStage::Freeing}) {
        FleetTarget t = running();
        feed(t, {stage_event_line(OperationStage::Checking), stage_event_line(stage)});
        finish_target(t, FleetVerb::Apply, exited(4, error_doc("guest", "unresolved symbol foo")));
        EXPECT_EQ(t.outcome, TargetOutcome::Failed) << to_string(stage);
        EXPECT_TRUE(t.changed_guest) << to_string(stage);
    }
    FleetTarget p = running();  // a pass alone also means the guest was changed
    feed(p, {pass_event_line(sample_progress())});
    finish_target(p, FleetVerb::Apply, exited(4, error_doc("guest", "entry changed")));
    EXPECT_EQ(p.outcome, TargetOutcome::Failed);
}

TEST(FleetClassify, OtherErrorKindsAreFailedEvenBeforeAnyChange) {
    for (const char* kind : {"unreachable", "timeout", "internal", "interrupted", "usage", "protocol"}) {
        FleetTarget t = running();
        finish_target(t, FleetVerb::Apply, exited(3, error_doc(kind, "qmp:/x: no such socket")));
        EXPECT_EQ(t.outcome, TargetOutcome::Failed) << kind;
        EXPECT_EQ(t.reason, "qmp:/x: no such socket");
    }
}

TEST(FleetClassify, AlreadyAppliedAndNotApplied) {
    FleetTarget t = running();
    feed(t, {stage_event_line(OperationStage::Checking), stage_event_line(OperationStage::AlreadyApplied)});
    finish_target(t, FleetVerb::Apply, exited(2, error_doc("usage", "patch livepatch_cmdline is already on qmp:/x (applied)")));
    EXPECT_EQ(t.outcome, TargetOutcome::AlreadyApplied);
    EXPECT_EQ(state_label(t), "already-applied");

    FleetTarget r = running();
    feed(r, {stage_event_line(OperationStage::Checking), stage_event_line(OperationStage::NotApplied)});
    finish_target(r, FleetVerb::Revert, exited(2, error_doc("usage", "no patch livepatch_cmdline on qmp:/x (nothing applied)")));
    EXPECT_EQ(r.outcome, TargetOutcome::NotApplied);

    // A usage error without the verdict (a patch left half-applied) is a failure.
    FleetTarget u = running();
    finish_target(u, FleetVerb::Apply, exited(2, error_doc("usage", "patch x is already on qmp:/x (patching): finish it")));
    EXPECT_EQ(u.outcome, TargetOutcome::Failed);
}

TEST(FleetClassify, KilledChildIsFailedAndPointsAtStatusIfItHadChangedTheGuest) {
    FleetTarget t = running("qmp:/run/b.qmp");
    feed(t, {stage_event_line(OperationStage::Loading)});
    ChildExit c;
    c.started = true;
    c.signal = SIGKILL;
    finish_target(t, FleetVerb::Apply, c);
    EXPECT_EQ(t.outcome, TargetOutcome::Failed);
    EXPECT_NE(t.reason.find("killed by signal 9"), std::string::npos) << t.reason;
    EXPECT_NE(t.reason.find("hvpatch status qmp:/run/b.qmp"), std::string::npos) << t.reason;
    EXPECT_EQ(t.signal, SIGKILL);

    FleetTarget early = running();
    c.signal = SIGSEGV;
    finish_target(early, FleetVerb::Apply, c);
    EXPECT_EQ(early.outcome, TargetOutcome::Failed);
    EXPECT_EQ(early.reason.find("hvpatch status"), std::string::npos) << early.reason;
}

TEST(FleetClassify, NoReportIsFailedWithStderrsLastLine) {
    FleetTarget t = running();
    finish_target(t, FleetVerb::Revert, exited(1, nullptr, "something\nhvpatch: error: state dir not writable\n"));
    EXPECT_EQ(t.outcome, TargetOutcome::Failed);
    EXPECT_NE(t.reason.find("exited with status 1 without a report: hvpatch: error: state dir not writable"),
              std::string::npos) << t.reason;
    FleetTarget zero = running();
    finish_target(zero, FleetVerb::Apply, exited(0, nullptr));
    EXPECT_EQ(zero.outcome, TargetOutcome::Failed);
}

TEST(FleetClassify, NeverStartedIsNotStarted) {
    FleetTarget t;
    t.target = "qmp:/c";
    finish_target(t, FleetVerb::Apply, ChildExit{});
    EXPECT_EQ(t.outcome, TargetOutcome::NotStarted);
    EXPECT_FALSE(outcome_ok(t.outcome));
}

// --- Exit code ---------------------------------------------------------------

std::vector<FleetTarget> with_outcomes(std::initializer_list<TargetOutcome> outcomes) {
    std::vector<FleetTarget> out;
    for (TargetOutcome o : outcomes) {
        FleetTarget t;
        t.phase = FleetTarget::Phase::Done;
        t.outcome = o;
        out.push_back(t);
    }
    return out;
}

TEST(FleetExitCode, Rule) {
    using O = TargetOutcome;
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Applied, O::Applied, O::AlreadyApplied}), false), 0);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Reverted, O::NotApplied}), false), 0);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Applied, O::Skipped}), false), kExitFleetPartial);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Applied, O::Failed}), false), kExitFleetPartial);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Skipped, O::Failed}), false), kExitFleetNone);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Skipped}), false), kExitFleetNone);
    EXPECT_EQ(fleet_exit_code(with_outcomes({}), false), kExitFleetNone);
    EXPECT_EQ(fleet_exit_code(with_outcomes({O::Applied, O::NotStarted}), true), 130);
    // Distinct from every other exit code of hvpatch (0-5, 130).
    for (int code : {kExitFleetPartial, kExitFleetNone}) EXPECT_GT(code, 5);
    EXPECT_NE(kExitFleetPartial, kExitFleetNone);
}

// --- Table and report ----------------------------------------------------------

std::vector<FleetTarget> mixed_targets() {
    std::vector<FleetTarget> ts;
    FleetTarget queued;
    queued.target = "qmp:/run/c.qmp";
    FleetTarget moving = running("qmp:/run/a.qmp");
    feed(moving, {stage_event_line(OperationStage::Loading), pass_event_line(sample_progress())});
    moving.elapsed = 1234ms;
    FleetTarget skipped = running("qmp:/run/b.qmp");
    feed(skipped, {stage_event_line(OperationStage::Checking)});
    skipped.elapsed = 800ms;
    finish_target(skipped, FleetVerb::Apply, exited(4, error_doc("guest", "vermagic mismatch")));
    ts.push_back(moving);
    ts.push_back(skipped);
    ts.push_back(queued);
    return ts;
}

TEST(FleetTable, RowsShowStateTasksElapsedAndBlocker) {
    auto lines = render_table(mixed_targets(), 0);
    ASSERT_EQ(lines.size(), 5u);  // header, 3 rows, summary
    EXPECT_EQ(lines[0].rfind("TARGET", 0), 0u);
    EXPECT_NE(lines[0].find("FIRST BLOCKER"), std::string::npos);
    EXPECT_NE(lines[1].find("patching pass 3"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("2/62"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("1.23 s"), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("pid 99 sleep: in do_nanosleep (do_nanosleep+0x7b/0x140), ..."), std::string::npos)
        << lines[1];
    EXPECT_NE(lines[2].find("skipped"), std::string::npos) << lines[2];
    EXPECT_NE(lines[2].find("vermagic mismatch"), std::string::npos) << lines[2];
    EXPECT_NE(lines[3].find("queued"), std::string::npos) << lines[3];
    EXPECT_EQ(lines[4], "3 targets: 1 running, 1 queued, 1 skipped");
    // A finished success shows no blocker (the report has them).
    auto done = mixed_targets();
    finish_target(done[0], FleetVerb::Apply, exited(0, apply_doc()));
    auto done_lines = render_table(done, 0);
    EXPECT_EQ(done_lines[1].find("pid 99"), std::string::npos) << done_lines[1];
    EXPECT_NE(done_lines[1].find("applied"), std::string::npos) << done_lines[1];
    auto with_notice = render_table(mixed_targets(), 0, "interrupted");
    EXPECT_EQ(with_notice.back(), "interrupted");
}

TEST(FleetTable, LinesFitTheWidthAndHoldNoControlCharacters) {
    auto ts = mixed_targets();
    ts[0].blockers[0].comm = "evil\033[2J\r\n";
    for (const auto& line : render_table(ts, 50)) {
        EXPECT_LE(line.size(), 50u) << line;
        for (char c : line) EXPECT_GE(static_cast<unsigned char>(c), 0x20) << line;
    }
}

TEST(FleetTable, TallerThanTheTerminalShowsRunningAndUnsuccessfulFirst) {
    std::vector<FleetTarget> ts;
    for (int i = 0; i < 10; ++i) {
        FleetTarget t;
        t.target = "vm" + std::to_string(i);
        ts.push_back(t);
    }
    ts[7] = running("vm7");
    ts[8].phase = FleetTarget::Phase::Done;
    ts[8].outcome = TargetOutcome::Failed;
    ts[1].phase = FleetTarget::Phase::Done;
    ts[1].outcome = TargetOutcome::Applied;
    auto lines = render_table(ts, 0, "", 6);
    ASSERT_EQ(lines.size(), 6u);
    EXPECT_EQ(lines[1].substr(0, 3), "vm0");  // rank: running vm7, failed vm8, then vm0 in order
    EXPECT_EQ(lines[2].substr(0, 3), "vm7");
    EXPECT_EQ(lines[3].substr(0, 3), "vm8");
    EXPECT_EQ(lines[4], "(7 more not shown)");
    EXPECT_EQ(lines[5].rfind("10 targets: 1 running, 7 queued", 0), 0u) << lines[5];
    EXPECT_EQ(render_table(ts, 0, "", 12).size(), 12u);  // it fits: every row
}

TEST(FleetTable, ProgressLineForLogs) {
    auto ts = mixed_targets();
    EXPECT_EQ(progress_line(ts[0]),
              "qmp:/run/a.qmp: patching pass 3, 2 of 62 tasks left (pid 99 sleep: in do_nanosleep "
              "(do_nanosleep+0x7b/0x140), ...)");
    EXPECT_EQ(progress_line(ts[1]), "qmp:/run/b.qmp: skipped in 0.80 s: vermagic mismatch");
    EXPECT_EQ(progress_line(ts[2]), "qmp:/run/c.qmp: queued");
}

FleetRun finished_run() {
    FleetRun run;
    run.verb = FleetVerb::Apply;
    run.patch = "livepatch_cmdline";
    run.module_path = "/p/livepatch-cmdline.ko";
    run.sha256 = "3c53";
    run.parallel = 2;
    run.wall = 4200ms;
    FleetTarget a = running("qmp:/run/a.qmp");
    a.elapsed = 3210ms;
    finish_target(a, FleetVerb::Apply, exited(0, apply_doc()));
    FleetTarget b = running("qmp:/run/b.qmp");
    b.elapsed = 950ms;
    finish_target(b, FleetVerb::Apply, exited(4, error_doc("guest", "vermagic mismatch")));
    run.targets = {a, b};
    return run;
}

TEST(FleetReport, TextNamesEachTargetsOutcomeTimeAndReason) {
    std::string text = render_report(finished_run());
    EXPECT_EQ(text.substr(0, text.find('\n')),
              "fleet apply livepatch_cmdline: 1 applied, 1 skipped (2 targets, --parallel 2, 4.20 s)");
    EXPECT_NE(text.find("qmp:/run/a.qmp  applied          3.21 s     2 passes"), std::string::npos) << text;
    EXPECT_NE(text.find("blocked at the first pass: pid 99 (sleep): in do_nanosleep"), std::string::npos) << text;
    EXPECT_NE(text.find("qmp:/run/b.qmp  skipped          0.95 s     vermagic mismatch"), std::string::npos) << text;
}

TEST(FleetReport, JsonDocument) {
    json doc = report_json(finished_run());
    EXPECT_EQ(doc["fleet"], "apply");
    EXPECT_EQ(doc["patch"], "livepatch_cmdline");
    EXPECT_EQ(doc["module"], "/p/livepatch-cmdline.ko");
    EXPECT_EQ(doc["parallel"], 2);
    EXPECT_EQ(doc["wall_ms"], 4200);
    EXPECT_EQ(doc["exit_code"], kExitFleetPartial);
    EXPECT_EQ(doc["counts"]["applied"], 1);
    EXPECT_EQ(doc["counts"]["skipped"], 1);
    EXPECT_EQ(doc["counts"]["failed"], 0);
    ASSERT_EQ(doc["targets"].size(), 2u);
    EXPECT_EQ(doc["targets"][0]["outcome"], "applied");
    EXPECT_EQ(doc["targets"][0]["time_ms"], 3210);
    EXPECT_EQ(doc["targets"][0]["report"]["outcome"], "applied");
    EXPECT_EQ(doc["targets"][0]["blockers"][0]["pid"], 99);
    EXPECT_EQ(doc["targets"][1]["outcome"], "skipped");
    EXPECT_EQ(doc["targets"][1]["reason"], "vermagic mismatch");
    EXPECT_EQ(doc["targets"][1]["error_kind"], "guest");
    EXPECT_EQ(doc["targets"][1]["exit_code"], 4);
    EXPECT_FALSE(doc["targets"][1]["changed_guest"].get<bool>());
}

TEST(FleetReport, AuditRecordSummarisesWithoutFloats) {
    json r = audit_record(finished_run());
    EXPECT_EQ(r["operation"], "fleet apply");
    EXPECT_EQ(r["outcome"], "partial");
    EXPECT_EQ(r["patch"]["sha256"], "3c53");
    ASSERT_EQ(r["targets"].size(), 2u);
    EXPECT_EQ(r["targets"][1]["outcome"], "skipped");
    EXPECT_EQ(r["targets"][1]["reason"], "vermagic mismatch");
    EXPECT_FALSE(r["targets"][0].contains("reason"));
    // The audit log holds no floating-point numbers (its canonical form).
    std::function<bool(const json&)> has_float = [&](const json& j) {
        if (j.is_number_float()) return true;
        for (const auto& item : j) if ((j.is_object() || j.is_array()) && has_float(item)) return true;
        return false;
    };
    EXPECT_FALSE(has_float(r)) << r.dump();
}

}  // namespace
}  // namespace hvpatch::cli
