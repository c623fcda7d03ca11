// `hvpatch audit show | verify`, run as the built command on synthetic logs
// in a temporary directory (no VM involved): output, options, exit codes.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "patch/audit_log.h"
#include "support/run_command.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using json = nlohmann::json;
using test::CommandResult;
using test::TempDir;
using test::read_text;
using test::write_text;

constexpr int kVerifyFailed = 5;  // documented in docs/operator-guide.md

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

json record(const std::string& operation, const std::string& vm_name, const std::string& key,
            const std::string& patch, const std::string& outcome) {
    return {{"operation", operation},
            {"vm", {{"key", key}, {"uuid", key.substr(5)}, {"name", vm_name}, {"target", "qmp:/run/" + key + ".sock"}}},
            {"kernel", {{"release", "6.1.0-56-amd64"}, {"boot_id", "ab12"}}},
            {"patch", {{"name", patch}, {"sha256", std::string(64, 'c')}}},
            {"outcome", outcome}};
}

// Three records on two VMs; the second failed.
std::string make_log(const TempDir& dir) {
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    log.append(record("check", "web-1", "uuid-1111", "livepatch_cmdline", "ok"));
    json failed = record("apply", "", "uuid-2222", "livepatch_sleeper", "rolled-back");
    failed["error"] = "not every task switched within 60000 ms";
    log.append(failed);
    log.append(record("apply", "web-1", "uuid-1111", "livepatch_cmdline", "applied"));
    return path;
}

CommandResult hvpatch(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), test::hvpatch_binary());
    test::CommandOptions options;
    options.timeout = std::chrono::seconds(30);
    // Never the operator's real log: unless the test names one, a path
    // that does not exist.
    options.env = env.empty() ? std::vector<std::string>{"HVPATCH_AUDIT_LOG=/nonexistent/hvpatch-test/audit.jsonl"} : env;
    return test::run_command(args, options);
}

TEST(AuditCommand, ShowPrintsOneLinePerRecordOldestFirst) {
    TempDir dir;
    std::string path = make_log(dir);
    CommandResult r = hvpatch({"audit", "show", "--audit-log", path});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    auto lines = lines_of(r.out);
    ASSERT_EQ(lines.size(), 3u) << r.out;
    auto records = read_audit_log(path);
    std::string user = records[0]["user"]["name"].is_string() ? records[0]["user"]["name"].get<std::string>()
                                                              : "uid " + records[0]["user"]["uid"].dump();
    EXPECT_EQ(lines[0], records[0]["time"].get<std::string>() + "  #1  " + user +
                            "  check  web-1/uuid-1111  livepatch_cmdline  ok");
    EXPECT_NE(lines[1].find("  #2  "), std::string::npos) << lines[1];
    EXPECT_NE(lines[1].find("  apply  uuid-2222  livepatch_sleeper  rolled-back  error: not every task switched"),
              std::string::npos)
        << lines[1];
    EXPECT_NE(lines[2].find("  #3  "), std::string::npos) << lines[2];
}

TEST(AuditCommand, ShowFiltersByDomainOrVmAndSince) {
    TempDir dir;
    std::string path = make_log(dir);
    CommandResult web = hvpatch({"audit", "show", "--audit-log", path, "--vm", "web-"});
    ASSERT_EQ(web.exit_code, 0) << web.describe();
    EXPECT_EQ(lines_of(web.out).size(), 2u) << web.out;
    // --domain is the same filter under the name libvirt users expect.
    CommandResult domain = hvpatch({"audit", "show", "--audit-log", path, "--domain", "web-"});
    ASSERT_EQ(domain.exit_code, 0) << domain.describe();
    EXPECT_EQ(domain.out, web.out);
    // By the key, the uuid or the target of a VM that has no name.
    for (const char* part : {"uuid-2222", "2222", "/run/uuid-2222.sock"}) {
        CommandResult one = hvpatch({"audit", "show", "--audit-log", path, "--vm", part});
        ASSERT_EQ(one.exit_code, 0) << one.describe();
        ASSERT_EQ(lines_of(one.out).size(), 1u) << part << ": " << one.out;
        EXPECT_NE(one.out.find("livepatch_sleeper"), std::string::npos) << one.out;
    }
    CommandResult future = hvpatch({"audit", "show", "--audit-log", path, "--since", "2999-01-01"});
    ASSERT_EQ(future.exit_code, 0) << future.describe();
    EXPECT_EQ(future.out, "");
    CommandResult recent = hvpatch({"audit", "show", "--audit-log", path, "--since", "1h"});
    ASSERT_EQ(recent.exit_code, 0) << recent.describe();
    EXPECT_EQ(lines_of(recent.out).size(), 3u) << recent.out;
    CommandResult bad = hvpatch({"audit", "show", "--audit-log", path, "--since", "yesterday"});
    EXPECT_EQ(bad.exit_code, 2) << bad.describe();
    EXPECT_NE(bad.err.find("--since yesterday"), std::string::npos) << bad.err;
}

TEST(AuditCommand, ShowJsonIsAnArrayOfTheStoredRecords) {
    TempDir dir;
    std::string path = make_log(dir);
    CommandResult r = hvpatch({"audit", "show", "--audit-log", path, "--json", "--vm", "web-1"});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    json doc = json::parse(r.out);
    ASSERT_TRUE(doc.is_array());
    ASSERT_EQ(doc.size(), 2u);
    auto stored = read_audit_log(path);
    EXPECT_EQ(doc[0], stored[0]);
    EXPECT_EQ(doc[1], stored[2]);
}

TEST(AuditCommand, ShowOfAMissingLogIsEmptyAndSaysWhereItLooked) {
    TempDir dir;
    CommandResult r = hvpatch({"audit", "show"}, {"HVPATCH_AUDIT_LOG=" + dir.file("none.jsonl")});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("no audit log at " + dir.file("none.jsonl")), std::string::npos) << r.err;
    CommandResult j = hvpatch({"audit", "show", "--json"}, {"HVPATCH_AUDIT_LOG=" + dir.file("none.jsonl")});
    ASSERT_EQ(j.exit_code, 0) << j.describe();
    EXPECT_EQ(json::parse(j.out), json::array());
    EXPECT_TRUE(dir.entries().empty());  // a reader creates nothing
}

TEST(AuditCommand, LogPathComesFromTheOptionBeforeOrAfterTheVerbElseTheEnvironment) {
    TempDir dir;
    std::string path = make_log(dir);
    for (const auto& args : std::vector<std::vector<std::string>>{{"--audit-log", path, "audit", "verify"},
                                                                   {"audit", "--audit-log", path, "verify"},
                                                                   {"audit", "verify", "--audit-log", path}}) {
        CommandResult r = hvpatch(args);
        EXPECT_EQ(r.exit_code, 0) << args[0] << " " << args[1] << ": " << r.describe();
    }
    CommandResult env = hvpatch({"audit", "verify"}, {"HVPATCH_AUDIT_LOG=" + path});
    EXPECT_EQ(env.exit_code, 0) << env.describe();
    // The option wins over the environment.
    CommandResult both = hvpatch({"audit", "verify", "--audit-log", dir.file("other.jsonl")},
                                 {"HVPATCH_AUDIT_LOG=" + path});
    EXPECT_EQ(both.exit_code, 2) << both.describe();
}

TEST(AuditCommand, VerifyOfAnIntactLogPrintsTheLastHash) {
    TempDir dir;
    std::string path = make_log(dir);
    AuditVerifyResult expected = verify_audit_log(path);
    ASSERT_TRUE(expected.ok);
    CommandResult r = hvpatch({"audit", "verify", "--audit-log", path});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_EQ(r.out, "OK: 3 records, last hash " + expected.last_hash + " (seq 3)\n");
    CommandResult j = hvpatch({"audit", "verify", "--audit-log", path, "--json"});
    ASSERT_EQ(j.exit_code, 0) << j.describe();
    json doc = json::parse(j.out);
    EXPECT_EQ(doc["ok"], true);
    EXPECT_EQ(doc["records"], 3);
    EXPECT_EQ(doc["last_seq"], 3);
    EXPECT_EQ(doc["last_hash"], expected.last_hash);
    EXPECT_EQ(doc["problems"], json::array());
    EXPECT_EQ(doc["path"], path);
}

TEST(AuditCommand, VerifyOfAnEmptyLogIsOk) {
    TempDir dir;
    write_text(dir.file("audit.jsonl"), "");
    CommandResult r = hvpatch({"audit", "verify", "--audit-log", dir.file("audit.jsonl")});
    ASSERT_EQ(r.exit_code, 0) << r.describe();
    EXPECT_NE(r.out.find("OK: 0 records"), std::string::npos) << r.out;
}

TEST(AuditCommand, VerifyOfATamperedLogListsEachProblemAndExits5) {
    TempDir dir;
    std::string path = make_log(dir);
    auto lines = lines_of(read_text(path));
    ASSERT_EQ(lines.size(), 3u);
    // Edit the outcome of the failed apply, and tear the end.
    std::string edited = lines[1];
    auto at = edited.find("rolled-back");
    ASSERT_NE(at, std::string::npos);
    edited.replace(at, 11, "applied");
    write_text(path, lines[0] + "\n" + edited + "\n" + lines[2] + "\n{\"seq\":4");
    AuditVerifyResult expected = verify_audit_log(path);
    ASSERT_FALSE(expected.ok);
    ASSERT_GE(expected.problems.size(), 2u);

    CommandResult r = hvpatch({"audit", "verify", "--audit-log", path});
    EXPECT_EQ(r.exit_code, kVerifyFailed) << r.describe();
    auto out = lines_of(r.out);
    ASSERT_EQ(out.size(), expected.problems.size() + 1) << r.out;
    for (std::size_t i = 0; i < expected.problems.size(); ++i) EXPECT_EQ(out[i], expected.problems[i]);
    EXPECT_NE(out.back().find("FAILED: " + std::to_string(expected.problems.size()) + " problems"), std::string::npos)
        << out.back();
    EXPECT_NE(r.out.find("line 2"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("torn"), std::string::npos) << r.out;

    CommandResult j = hvpatch({"audit", "verify", "--audit-log", path, "--json"});
    EXPECT_EQ(j.exit_code, kVerifyFailed) << j.describe();
    json doc = json::parse(j.out);
    EXPECT_EQ(doc["ok"], false);
    EXPECT_EQ(doc["problems"], expected.problems);
}

TEST(AuditCommand, VerifyOfAMissingLogIsAUsageError) {
    TempDir dir;
    CommandResult r = hvpatch({"audit", "verify", "--audit-log", dir.file("absent.jsonl")});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
    EXPECT_NE(r.err.find("no audit log at " + dir.file("absent.jsonl")), std::string::npos) << r.err;
    CommandResult j = hvpatch({"audit", "verify", "--audit-log", dir.file("absent.jsonl"), "--json"});
    EXPECT_EQ(j.exit_code, 2) << j.describe();
    EXPECT_EQ(json::parse(j.out)["error"]["kind"], "usage");
}

TEST(AuditCommand, AuditNeedsAVerb) {
    CommandResult r = hvpatch({"audit"});
    EXPECT_EQ(r.exit_code, 2) << r.describe();
}

}  // namespace
}  // namespace hvpatch
