// cli/audit_view.h: the lines of `hvpatch audit show` and its --since.
#include "cli/audit_view.h"

#include <gtest/gtest.h>

#include "hvpatch/error.h"

namespace hvpatch::cli {
namespace {

using json = nlohmann::json;
using std::chrono::system_clock;

// A record as the patcher writes it (patch/patcher.cpp) and AuditLog completes it.
json apply_record() {
    return json::parse(R"({
        "seq": 12, "time": "2026-11-27T05:40:12.345Z",
        "user": {"uid": 0, "name": "root", "sudo_user": "alice"},
        "host": "h1", "pid": 4242, "hvpatch_version": "0.1.0",
        "operation": "apply",
        "vm": {"key": "uuid-5a5a", "uuid": "5a5a", "name": "web-1", "target": "qmp:/run/web-1.sock"},
        "kernel": {"release": "6.1.0-56-amd64", "boot_id": "ab"},
        "patch": {"name": "livepatch_cmdline", "sha256": "cc", "path": "/p/livepatch-cmdline.ko"},
        "outcome": "applied",
        "prev": "00", "hash": "11"})");
}

TEST(AuditView, LineHasEveryFieldInOrder) {
    EXPECT_EQ(audit_record_line(apply_record()),
              "2026-11-27T05:40:12.345Z  #12  root/sudo:alice  apply  web-1/uuid-5a5a  livepatch_cmdline  applied");
}

TEST(AuditView, ErrorOrRefusalsEndTheLine) {
    json r = apply_record();
    r["outcome"] = "rolled-back";
    r["error"] = "not every task switched within 60000 ms: pid 7 (sleep) in cmdline_proc_show";
    EXPECT_EQ(audit_record_line(r),
              "2026-11-27T05:40:12.345Z  #12  root/sudo:alice  apply  web-1/uuid-5a5a  livepatch_cmdline  "
              "rolled-back  error: not every task switched within 60000 ms: pid 7 (sleep) in cmdline_proc_show");
    json check = apply_record();
    check["operation"] = "check";
    check["outcome"] = "would-refuse";
    check["refusals"] = {"vermagic differs", "function foo not found in vmlinux of the guest"};
    std::string line = audit_record_line(check);
    EXPECT_NE(line.find("  would-refuse  error: vermagic differs; function foo not found in vmlinux of the guest"),
              std::string::npos)
        << line;
}

TEST(AuditView, VmWithoutNameShowsItsKeyAndUserWithoutNameItsUid) {
    json r = apply_record();
    r["vm"]["name"] = "";
    r["user"] = {{"uid", 1000}, {"name", nullptr}};
    std::string line = audit_record_line(r);
    EXPECT_NE(line.find("  uid 1000  apply  uuid-5a5a  "), std::string::npos) << line;
    r["vm"] = {{"target", "qmp:/run/x.sock"}};
    line = audit_record_line(r);
    EXPECT_NE(line.find("  apply  qmp:/run/x.sock  "), std::string::npos) << line;
    r["vm"] = "legacy-vm";
    line = audit_record_line(r);
    EXPECT_NE(line.find("  apply  legacy-vm  "), std::string::npos) << line;
}

TEST(AuditView, MissingAndMistypedFieldsShowAsDashesWithoutThrowing) {
    EXPECT_EQ(audit_record_line(json::object()), "-  #-  -  -  -  -  -");
    json odd = {{"seq", "x"}, {"time", 5}, {"user", json::array()}, {"vm", 3}, {"patch", {{"name", 7}}},
                {"operation", nullptr}, {"outcome", json::object()}, {"refusals", {1, "r"}}};
    EXPECT_EQ(audit_record_line(odd), "5  #x  -  -  -  7  -  error: r");
    EXPECT_EQ(audit_record_line(json::array()), "-  #-  -  -  -  -  -");
}

TEST(AuditView, ControlCharactersCannotBreakTheLineOrDriveTheTerminal) {
    json r = apply_record();
    r["error"] = "first\nsecond\x1b[2J\tend\x7f";
    r["patch"]["name"] = "evil\rname";
    std::string line = audit_record_line(r);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(line.find('\x1b'), std::string::npos);
    EXPECT_EQ(line.find('\r'), std::string::npos);
    EXPECT_NE(line.find("evil\\x0dname"), std::string::npos) << line;
    EXPECT_NE(line.find("error: first\\nsecond\\x1b[2J\\tend\\x7f"), std::string::npos) << line;
    EXPECT_EQ(printable("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 stays
}

TEST(AuditView, SinceTakesUtcTimePrefixes) {
    auto now = system_clock::now();
    EXPECT_EQ(audit_since_bound("2026", now), "2026");
    EXPECT_EQ(audit_since_bound("2026-11-27", now), "2026-11-27");
    EXPECT_EQ(audit_since_bound("2026-11-27T05:40", now), "2026-11-27T05:40");
    EXPECT_EQ(audit_since_bound("2026-11-27 05:40:12", now), "2026-11-27T05:40:12");
    EXPECT_EQ(audit_since_bound("2026-11-27T05:40:12.345Z", now), "2026-11-27T05:40:12.345");
    // A trailing Z must not exclude the minute it names: "…05:40:12.345Z" >= "…05:40".
    EXPECT_GE(std::string("2026-11-27T05:40:12.345Z"), audit_since_bound("2026-11-27T05:40Z", now));
}

TEST(AuditView, SinceTakesSpansBackFromNow) {
    system_clock::time_point now{std::chrono::milliseconds(1795758012345LL)};  // 2026-11-27T05:40:12.345Z
    EXPECT_EQ(audit_since_bound("90s", now), "2026-11-27T05:38:42.345Z");
    EXPECT_EQ(audit_since_bound("15m", now), "2026-11-27T05:25:12.345Z");
    EXPECT_EQ(audit_since_bound("2h", now), "2026-11-27T03:40:12.345Z");
    EXPECT_EQ(audit_since_bound("7d", now), "2026-11-20T05:40:12.345Z");
}

TEST(AuditView, SinceRefusesWhatItCannotCompare) {
    auto now = system_clock::now();
    for (const char* bad : {"", "yesterday", "0h", "2h30m", "-2h", "2026-11-27T05:40+02:00", "27.11.2026", "2026-1-2",
                            "2026-11-27T5:40", "2026-11-27TT"}) {
        try {
            (void)audit_since_bound(bad, now);
            ADD_FAILURE() << "accepted --since '" << bad << "'";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Usage) << bad;
        }
    }
}

}  // namespace
}  // namespace hvpatch::cli
