#include "patch/audit_log.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <type_traits>

#include "hvpatch/error.h"
#include "patch/host_identity.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using json = nlohmann::json;
using test::TempDir;
using test::read_text;
using test::write_text;

std::vector<std::string> read_lines(const std::string& path) {
    std::vector<std::string> lines;
    std::istringstream in(read_text(path));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}
void write_lines(const std::string& path, const std::vector<std::string>& lines) {
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    write_text(path, text);
}
mode_t file_mode(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

json operation(int n) {
    return json{{"operation", "apply"},
                {"vm", {{"name", "vm" + std::to_string(n % 3)}, {"id", "uuid-" + std::to_string(n % 3)}}},
                {"patch", {{"name", "fix_" + std::to_string(n)}, {"sha256", std::string(64, 'c')}}},
                {"functions", json::array({"cmdline_proc_show", "meminfo_proc_show"})},
                {"outcome", "applied"}};
}

// A log of `n` records.
std::string make_log(const TempDir& dir, int n) {
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    for (int i = 1; i <= n; ++i) log.append(operation(i));
    return path;
}

std::string joined(const std::vector<std::string>& problems) {
    std::string s;
    for (const auto& p : problems) s += "  " + p + "\n";
    return s;
}

// Exactly one problem, which contains every one of `parts`.
void expect_one_problem(const AuditVerifyResult& r, std::initializer_list<std::string> parts) {
    EXPECT_FALSE(r.ok);
    ASSERT_EQ(r.problems.size(), 1u) << joined(r.problems);
    for (const auto& part : parts) EXPECT_NE(r.problems[0].find(part), std::string::npos) << "want '" << part << "' in: " << r.problems[0];
}

TEST(AuditLog, CanonicalFormIsCompactWithKeysInByteOrderAndAsciiOnly) {
    // nlohmann::json keeps objects in a std::map ordered by std::less<> on
    // std::string, which compares chars as unsigned bytes.
    static_assert(std::is_same_v<json::object_t, std::map<std::string, json, std::less<>>>);
    json j;
    j["b"] = 1;
    j["\xc3\xa9"] = "caf\xc3\xa9";  // é: byte 0xc3 sorts after every ASCII key
    j["a"] = {{"z", true}, {"Z", nullptr}};
    j["B"] = json::array({2, 1});
    j["ctl"] = "tab\tnl\nesc\x1b del\x7f";
    EXPECT_EQ(canonical_audit_json(j),
              R"({"B":[2,1],"a":{"Z":null,"z":true},"b":1,"ctl":"tab\tnl\nesc\u001b del\u007f","\u00e9":"caf\u00e9"})");
    // Insertion order does not matter.
    json k = json::parse(R"({"ctl":"tab\tnl\nesc\u001b del\u007f","B":[2,1],"b":1,"\u00e9":"caf\u00e9","a":{"z":true,"Z":null}})");
    EXPECT_EQ(canonical_audit_json(k), canonical_audit_json(j));
    // Invalid UTF-8 is replaced, not refused.
    EXPECT_EQ(canonical_audit_json(json{{"s", std::string("x\xffy")}}), R"({"s":"x\ufffdy"})");
}

TEST(AuditLog, AppendAddsCommonFieldsAndChainsRecords) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    std::vector<json> written;
    for (int i = 1; i <= 3; ++i) written.push_back(log.append(operation(i)));

    std::regex iso(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");
    std::string prev(kAuditGenesisHash);
    for (int i = 0; i < 3; ++i) {
        const json& r = written[i];
        EXPECT_EQ(r["seq"], i + 1);
        EXPECT_EQ(r["prev"], prev);
        EXPECT_EQ(r["hash"], audit_record_hash(r));
        EXPECT_TRUE(std::regex_match(r["time"].get<std::string>(), iso)) << r["time"];
        EXPECT_EQ(r["user"]["uid"], ::getuid());
        EXPECT_EQ(r["host"], host_name());
        EXPECT_EQ(r["pid"], ::getpid());
        EXPECT_EQ(r["hvpatch_version"], std::string(kHvpatchVersion));
        // The caller's fields, verbatim.
        json given = operation(i + 1);
        for (auto& [key, value] : given.items()) EXPECT_EQ(r[key], value) << key;
        prev = r["hash"];
    }
    EXPECT_LE(written[0]["time"].get<std::string>(), written[2]["time"].get<std::string>());

    // Each line is the canonical form of the record returned.
    auto lines = read_lines(path);
    ASSERT_EQ(lines.size(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[i], canonical_audit_json(written[i]));

    AuditVerifyResult r = verify_audit_log(path);
    EXPECT_TRUE(r.ok) << joined(r.problems);
    EXPECT_EQ(r.records, 3u);
    EXPECT_EQ(r.last_seq, 3u);
    EXPECT_EQ(r.last_hash, written[2]["hash"]);
}

TEST(AuditLog, NewFileIsMode0600AndAnOpenOneIsTightened) {
    TempDir dir;
    std::string path = make_log(dir, 1);
    EXPECT_EQ(file_mode(path), 0600u);
    ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
    AuditLog(path).append(operation(2));
    EXPECT_EQ(file_mode(path), 0600u);
    EXPECT_TRUE(verify_audit_log(path).ok);
}

TEST(AuditLog, ReservedFieldsAndNonObjectsAreRefused) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    for (std::string_view field : kAuditReservedFields) {
        json record = operation(1);
        record[std::string(field)] = 1;
        try {
            log.append(record);
            ADD_FAILURE() << "accepted reserved field " << field;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Internal);
            EXPECT_NE(std::string(e.what()).find("'" + std::string(field) + "'"), std::string::npos) << e.what();
        }
    }
    EXPECT_THROW(log.append(json::array({1, 2})), Error);
    EXPECT_THROW(log.append("apply"), Error);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{}) << "a refused record must not create the log";
}

TEST(AuditLog, InvalidUtf8InCallerFieldsIsStoredReplacedAndVerifies) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    json record = operation(1);
    record["vm"]["name"] = std::string("guest\xc3(\xff");
    json stored = AuditLog(path).append(record);
    EXPECT_EQ(stored["vm"]["name"], "guest\xef\xbf\xbd(\xef\xbf\xbd");
    EXPECT_TRUE(verify_audit_log(path).ok) << joined(verify_audit_log(path).problems);
}

TEST(AuditLog, VerifyDetectsAnEditedField) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    json r = json::parse(lines[2]);
    r["outcome"] = "refused";
    lines[2] = canonical_audit_json(r);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path), {"line 3 (seq 3)", "edited"});
}

TEST(AuditLog, VerifyDetectsADeletedRecord) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines.erase(lines.begin() + 2);
    write_lines(path, lines);
    AuditVerifyResult r = verify_audit_log(path);
    expect_one_problem(r, {"line 3 (seq 4): the record with seq 3 is missing after line 2 (seq 2): deleted"});
    EXPECT_EQ(r.records, 5u);
}

TEST(AuditLog, VerifyDetectsSeveralDeletedRecords) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines.erase(lines.begin() + 1, lines.begin() + 4);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path),
                       {"line 2 (seq 5): 3 records (seq 2..4) are missing after line 1 (seq 1): deleted"});
}

TEST(AuditLog, VerifyDetectsRecordsDeletedFromTheStart) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines.erase(lines.begin(), lines.begin() + 2);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path), {"line 1 (seq 3)", "records 1..2 were deleted"});
}

TEST(AuditLog, VerifyDetectsAnInsertedRecordEvenWithAValidHash) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    // A forger who knows the format: correct prev, seq and hash.
    json forged = json::parse(lines[1]);
    forged["seq"] = 3;
    forged["prev"] = json::parse(lines[1])["hash"];
    forged["outcome"] = "reverted";
    forged["hash"] = audit_record_hash(forged);
    lines.insert(lines.begin() + 2, canonical_audit_json(forged));
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path),
                       {"line 4 (seq 3)", "hash of line 2 (seq 2)", "line 3 between them were inserted"});
}

TEST(AuditLog, VerifyDetectsADuplicatedRecord) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines.insert(lines.begin() + 3, lines[1]);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path), {"line 4 (seq 2)", "copy of line 2 (seq 2)", "inserted"});
}

TEST(AuditLog, VerifyDetectsAnInsertedEditedCopy) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    json copy = json::parse(lines[1]);
    copy["outcome"] = "reverted";  // hash, prev and seq left as they were
    lines.insert(lines.begin() + 2, canonical_audit_json(copy));
    write_lines(path, lines);
    AuditVerifyResult r = verify_audit_log(path);
    ASSERT_EQ(r.problems.size(), 2u) << joined(r.problems);
    EXPECT_NE(r.problems[0].find("line 3 (seq 2): its hash does not match its content"), std::string::npos)
        << joined(r.problems);
    EXPECT_NE(r.problems[1].find("line 3 (seq 2): carries the hash of line 2 (seq 2): an edited copy"),
              std::string::npos)
        << joined(r.problems);
}

TEST(AuditLog, VerifyDetectsTwoSwappedRecords) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    std::swap(lines[2], lines[3]);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path), {"line 3 (seq 4) and line 4 (seq 3) are swapped", "reordered"});
    // The last two swapped as well.
    TempDir dir2;
    path = make_log(dir2, 6);
    lines = read_lines(path);
    std::swap(lines[4], lines[5]);
    write_lines(path, lines);
    expect_one_problem(verify_audit_log(path), {"line 5 (seq 6) and line 6 (seq 5) are swapped"});
}

TEST(AuditLog, VerifyDetectsARecordMovedFurther) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    // seq 2 moved to the end: 1 3 4 5 6 2
    std::string moved = lines[1];
    lines.erase(lines.begin() + 1);
    lines.push_back(moved);
    write_lines(path, lines);
    AuditVerifyResult r = verify_audit_log(path);
    EXPECT_FALSE(r.ok);
    ASSERT_GE(r.problems.size(), 1u);
    EXPECT_NE(r.problems[0].find("line 2 (seq 3)"), std::string::npos) << joined(r.problems);
    EXPECT_NE(r.problems[0].find("line 6 (seq 2)"), std::string::npos) << joined(r.problems);
    EXPECT_NE(r.problems[0].find("reordered"), std::string::npos) << joined(r.problems);
}

TEST(AuditLog, VerifyReportsATornTailAndAppendRefusesUntilItIsCut) {
    TempDir dir;
    std::string path = make_log(dir, 3);
    std::string whole = read_text(path);
    auto size_before = whole.size();
    // A crash in the middle of writing record 4.
    std::string fourth = canonical_audit_json(json{{"seq", 4}, {"partial", true}});
    write_text(path, whole + fourth.substr(0, 20));
    expect_one_problem(verify_audit_log(path), {"line 4", "torn last line", "20 bytes"});
    try {
        AuditLog(path).append(operation(4));
        FAIL() << "appended after a torn line";
    } catch (const Error& e) {
        std::string what = e.what();
        EXPECT_EQ(e.kind(), ErrorKind::Internal);
        EXPECT_NE(what.find("torn"), std::string::npos) << what;
        EXPECT_NE(what.find("hvpatch audit verify " + path), std::string::npos) << what;
        EXPECT_NE(what.find("truncate -s " + std::to_string(size_before) + " " + path), std::string::npos) << what;
    }
    EXPECT_EQ(read_text(path).size(), size_before + 20) << "a refused append must not write";
    // What the message says to do works.
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(size_before)), 0);
    EXPECT_EQ(AuditLog(path).append(operation(4))["seq"], 4);
    EXPECT_TRUE(verify_audit_log(path).ok);
}

TEST(AuditLog, TornFirstLineIsReportedAndRefused) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    write_text(path, "{\"seq\":1,\"ti");
    expect_one_problem(verify_audit_log(path), {"line 1", "torn"});
    try {
        AuditLog(path).append(operation(1));
        FAIL() << "appended after a torn line";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("truncate -s 0 "), std::string::npos) << e.what();
    }
}

TEST(AuditLog, VerifyNamesAnInsertedNonJsonLine) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines.insert(lines.begin() + 3, "hello, auditor");
    write_lines(path, lines);
    AuditVerifyResult r = verify_audit_log(path);
    expect_one_problem(r, {"line 4", "not JSON"});
    EXPECT_EQ(r.records, 6u);
}

TEST(AuditLog, VerifyNamesARecordDamagedIntoGarbage) {
    TempDir dir;
    std::string path = make_log(dir, 6);
    auto lines = read_lines(path);
    lines[2] = "{\"seq\":3,";
    lines[4] = "[1,2,3]";
    lines.insert(lines.begin() + 5, "");
    write_lines(path, lines);
    AuditVerifyResult r = verify_audit_log(path);
    EXPECT_FALSE(r.ok);
    std::string all = joined(r.problems);
    EXPECT_NE(all.find("line 3: not JSON"), std::string::npos) << all;
    EXPECT_NE(all.find("line 4 (seq 4): the record with seq 3 is missing after line 2 (seq 2): deleted, or damaged"), std::string::npos) << all;
    EXPECT_NE(all.find("unreadable line"), std::string::npos) << all;
    EXPECT_NE(all.find("line 5: not an audit record"), std::string::npos) << all;
    EXPECT_NE(all.find("line 6: empty line"), std::string::npos) << all;
    EXPECT_NE(all.find("line 7 (seq 6): the record with seq 5 is missing after line 4 (seq 4)"), std::string::npos) << all;
    EXPECT_EQ(r.problems.size(), 5u) << all;
}

TEST(AuditLog, AppendRefusesWhenTheLastLineIsNotARecord) {
    TempDir dir;
    std::string path = make_log(dir, 2);
    write_text(path, read_text(path) + "garbage\n");
    try {
        AuditLog(path).append(operation(3));
        FAIL() << "appended after a garbage line";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not an audit record"), std::string::npos) << e.what();
    }
}

TEST(AuditLog, AppendReadsALongLastLineFromTheEnd) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    json big = operation(1);
    big["functions"] = json::array();
    for (int i = 0; i < 2000; ++i) big["functions"].push_back("function_number_" + std::to_string(i));
    log.append(big);  // > 40 KB: spans several of the 4 KiB chunks read back
    log.append(operation(2));
    log.append(big);
    EXPECT_EQ(log.append(operation(3))["seq"], 4);
    EXPECT_TRUE(verify_audit_log(path).ok);
}

TEST(AuditLog, ConcurrentAppendersFromSeveralProcessesKeepOneChain) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    constexpr int kProcesses = 4, kEach = 50;
    std::vector<pid_t> children;
    for (int p = 0; p < kProcesses; ++p) {
        pid_t child = ::fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            int code = 0;
            try {
                AuditLog log(path);
                for (int i = 0; i < kEach; ++i) {
                    json r = operation(i);
                    r["worker"] = p;
                    r["n"] = i;
                    log.append(r);
                }
            } catch (...) {
                code = 1;
            }
            ::_exit(code);
        }
        children.push_back(child);
    }
    for (pid_t child : children) {
        int status = 0;
        ASSERT_EQ(::waitpid(child, &status, 0), child);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "worker failed";
    }
    AuditVerifyResult r = verify_audit_log(path);
    EXPECT_TRUE(r.ok) << joined(r.problems);
    EXPECT_EQ(r.records, std::size_t(kProcesses * kEach));
    auto lines = read_lines(path);
    ASSERT_EQ(lines.size(), std::size_t(kProcesses * kEach));
    std::map<int, std::vector<int>> per_worker;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        json rec = json::parse(lines[i]);  // throws on an interleaved line
        EXPECT_EQ(rec["seq"], i + 1);
        per_worker[rec["worker"].get<int>()].push_back(rec["n"].get<int>());
    }
    ASSERT_EQ(per_worker.size(), std::size_t(kProcesses));
    for (auto& [worker, ns] : per_worker) {
        ASSERT_EQ(ns.size(), std::size_t(kEach)) << "worker " << worker;
        for (int i = 0; i < kEach; ++i) EXPECT_EQ(ns[i], i) << "worker " << worker << " out of order";
    }
}

TEST(AuditLog, ReadFiltersByVmAndTime) {
    TempDir dir;
    std::string path = dir.file("audit.jsonl");
    AuditLog log(path);
    log.append(json{{"operation", "apply"}, {"vm", {{"name", "web-1"}, {"id", "7d1c-aa"}}}});
    log.append(json{{"operation", "apply"}, {"vm", {{"name", "db-1"}, {"id", "99ff-bb"}}}});
    json third = log.append(json{{"operation", "revert"}, {"vm", "web-2"}});
    log.append(json{{"operation", "fleet"}});
    // As the patcher writes it.
    log.append(json{{"operation", "check"},
                    {"vm", {{"key", "uuid-5a5a"}, {"uuid", "5a5a"}, {"name", ""}, {"target", "qmp:/run/vm7.sock"}}}});
    write_text(path, read_text(path) + "garbage\n");

    EXPECT_EQ(read_audit_log(path).size(), 5u);
    for (const char* part : {"uuid-5a", "5a5a", "vm7.sock"}) {
        auto patcher = read_audit_log(path, {.vm = part, .since = ""});
        ASSERT_EQ(patcher.size(), 1u) << part;
        EXPECT_EQ(patcher[0]["operation"], "check");
    }
    auto web = read_audit_log(path, {.vm = "web", .since = ""});
    ASSERT_EQ(web.size(), 2u);
    EXPECT_EQ(web[0]["vm"]["name"], "web-1");
    EXPECT_EQ(web[1]["vm"], "web-2");
    auto by_id = read_audit_log(path, {.vm = "99ff", .since = ""});
    ASSERT_EQ(by_id.size(), 1u);
    EXPECT_EQ(by_id[0]["vm"]["name"], "db-1");
    EXPECT_TRUE(read_audit_log(path, {.vm = "nosuch", .since = ""}).empty());
    EXPECT_TRUE(read_audit_log(path, {.vm = "", .since = "9999"}).empty());
    EXPECT_EQ(read_audit_log(path, {.vm = "", .since = "2000-01-01"}).size(), 5u);
    auto since = read_audit_log(path, {.vm = "", .since = third["time"]});
    ASSERT_GE(since.size(), 3u);
    EXPECT_EQ(since[since.size() - 3]["seq"], 3);
    EXPECT_TRUE(read_audit_log(dir.file("absent.jsonl")).empty());
}

TEST(AuditLog, VerifyOfAMissingLogIsAUsageError) {
    TempDir dir;
    try {
        (void)verify_audit_log(dir.file("absent.jsonl"));
        FAIL();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Usage);
        EXPECT_NE(std::string(e.what()).find(dir.file("absent.jsonl")), std::string::npos);
    }
}

TEST(AuditLog, DefaultPathComesFromTheEnvironment) {
    ::setenv("HVPATCH_AUDIT_LOG", "/tmp/somewhere/audit.jsonl", 1);
    EXPECT_EQ(default_audit_log_path(), "/tmp/somewhere/audit.jsonl");
    EXPECT_EQ(configured_audit_log_path(), "/tmp/somewhere/audit.jsonl");
    ::unsetenv("HVPATCH_AUDIT_LOG");
    // Readers get the default without anything being created.
    EXPECT_EQ(configured_audit_log_path(), kDefaultAuditLogPath);
}

TEST(AuditLog, TimeFormatIsUtcWithMilliseconds) {
    using namespace std::chrono;
    system_clock::time_point t{milliseconds(1795758012345LL)};
    EXPECT_EQ(format_utc_time(t), "2026-11-27T05:40:12.345Z");
    EXPECT_EQ(format_utc_time(system_clock::time_point{}), "1970-01-01T00:00:00.000Z");
}

}  // namespace
}  // namespace hvpatch
