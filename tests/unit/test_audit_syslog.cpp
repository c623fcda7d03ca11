// The syslog copy of audit records (patch/audit_syslog.h): its one-line
// format, and what syslog(3) really sends, caught on a /dev/log of the
// test's own (in a private mount namespace, so the host's is untouched).
#include "patch/audit_syslog.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "patch/audit_log.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using json = nlohmann::json;
using test::TempDir;

json stored_record(const TempDir& dir, json extra = json::object()) {
    json record = {{"operation", "apply"},
                   {"vm", {{"name", "web-01"}, {"uuid", "1b4e28ba-2fa1-41d2-883f-0016d3cca427"},
                           {"connection", "qemu:///system"}}},
                   {"kernel", {{"release", "6.1.0-28-amd64"}, {"boot_id", "0123"}}},
                   {"patch", {{"name", "livepatch_cmdline"}, {"sha256", std::string(64, 'a')}}},
                   {"outcome", "applied"},
                   {"error", "line one\nline two"}};
    record.update(extra);
    return AuditLog(dir.file("audit.jsonl")).append(record);
}

TEST(AuditSyslog, ALineIsTheStoredRecordsCanonicalForm) {
    TempDir dir;
    json stored = stored_record(dir);
    std::string line = audit_syslog_line(stored, dir.file("audit.jsonl"));
    EXPECT_EQ(line, canonical_audit_json(stored));
    EXPECT_EQ(line.find('\n'), std::string::npos);
    // The copy can be matched with the file's record and checked against its hash.
    json back = json::parse(line);
    EXPECT_EQ(back["hash"], stored["hash"]);
    EXPECT_EQ(audit_record_hash(back), stored["hash"]);
}

TEST(AuditSyslog, ALongRecordIsAbridgedToWhoWhatWhereAndOutcome) {
    TempDir dir;
    json blockers = json::array();
    for (int i = 0; i < 200; ++i)
        blockers.push_back({{"pid", i}, {"comm", "worker"}, {"frames", json::array({std::string(80, 'f')})}});
    json stored = stored_record(dir, {{"blockers", blockers}, {"error", std::string(5000, 'e')}});
    std::string line = audit_syslog_line(stored, dir.file("audit.jsonl"));
    EXPECT_LE(line.size(), kMaxAuditSyslogBytes);
    json back = json::parse(line);
    EXPECT_FALSE(back.contains("blockers"));
    for (const char* field : {"seq", "time", "hash", "user", "host", "operation", "vm", "kernel", "patch", "outcome"})
        EXPECT_EQ(back[field], stored[field]) << field;
    EXPECT_EQ(back["error"].get<std::string>().size(), 1003u);
    EXPECT_EQ(back["abridged"], "full record: " + dir.file("audit.jsonl") + " seq 1");
}

TEST(AuditSyslog, TheEnvironmentSwitchesItOn) {
    ::unsetenv("HVPATCH_AUDIT_SYSLOG");
    EXPECT_FALSE(audit_syslog_from_environment());
    ::setenv("HVPATCH_AUDIT_SYSLOG", "1", 1);
    EXPECT_TRUE(audit_syslog_from_environment());
    ::setenv("HVPATCH_AUDIT_SYSLOG", "0", 1);
    EXPECT_FALSE(audit_syslog_from_environment());
    ::unsetenv("HVPATCH_AUDIT_SYSLOG");
}

// In a child: a private /dev with our own /dev/log datagram socket, then
// send_audit_to_syslog; the child writes what arrived to `out`. Exit 3
// with a reason when the namespace cannot be made (not root).
[[noreturn]] void capture_in_child(int out, const json& stored, const std::string& log_path) {
    auto give_up = [out](const std::string& why) {
        std::string text = why + ": " + std::strerror(errno);
        (void)!::write(out, text.data(), text.size());
        ::_exit(3);
    };
    if (::unshare(CLONE_NEWNS) != 0) give_up("unshare(CLONE_NEWNS)");
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) give_up("mount --make-rprivate /");
    if (::mount("none", "/dev", "tmpfs", 0, "mode=0755") != 0) give_up("mount tmpfs on /dev");
    int sock = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, "/dev/log");
    if (sock < 0 || ::bind(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) give_up("bind /dev/log");
    timeval timeout{5, 0};
    ::setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    send_audit_to_syslog(stored, log_path);
    char buffer[16384];
    ssize_t n = ::recv(sock, buffer, sizeof buffer, 0);
    if (n < 0) ::_exit(4);
    (void)!::write(out, buffer, static_cast<std::size_t>(n));
    ::_exit(0);
}

TEST(AuditSyslog, SyslogReceivesOneAuthprivNoticeLineWithIdentHvpatch) {
    TempDir dir;
    json stored = stored_record(dir);
    int pipe_fds[2];
    ASSERT_EQ(::pipe(pipe_fds), 0);
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        ::close(pipe_fds[0]);
        capture_in_child(pipe_fds[1], stored, dir.file("audit.jsonl"));
    }
    ::close(pipe_fds[1]);
    std::string received;
    char buffer[4096];
    for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) received.append(buffer, static_cast<std::size_t>(n));
    ::close(pipe_fds[0]);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 3) GTEST_SKIP() << "no private mount namespace here: " << received;
    ASSERT_EQ(WEXITSTATUS(status), 0) << "nothing arrived on /dev/log";
    // "<PRI>TIMESTAMP hvpatch[PID]: MESSAGE", PRI = facility | severity.
    EXPECT_EQ(received.rfind("<" + std::to_string(LOG_AUTHPRIV | LOG_NOTICE) + ">", 0), 0u) << received;
    std::string ident = "hvpatch[" + std::to_string(child) + "]: ";
    auto at = received.find(ident);
    ASSERT_NE(at, std::string::npos) << received;
    EXPECT_EQ(received.substr(at + ident.size()), audit_syslog_line(stored, dir.file("audit.jsonl")));
}

}  // namespace
}  // namespace hvpatch
