// hvpatch's audit log: one JSON record per operation, append-only, in a
// JSON Lines file (one record per line), hash-chained so that editing,
// deleting, inserting or reordering records afterwards shows.
//
// Each record carries the caller's fields (operation, vm, kernel, patch,
// functions, outcome, ...) verbatim plus fields hvpatch fills in:
//   seq              1 for the first record, previous seq + 1 after
//   time             UTC ISO-8601 with milliseconds, "2026-11-27T05:40:12.345Z"
//   user             {"uid": real uid, "name": login name or null,
//                     "sudo_user": $SUDO_USER, only when root under sudo}
//   host             the host name
//   pid              hvpatch's pid
//   hvpatch_version  kHvpatchVersion
//   prev             the previous record's "hash"; 64 zeros for the first
//   hash             SHA-256 (hex) of the record's canonical form without "hash"
//
// Canonical form: compact JSON (no spaces), object keys sorted by their
// UTF-8 bytes at every level, every non-ASCII character and DEL written
// as a \uXXXX escape (lower-case hex), control characters as \b \f \n \r
// \t or \u00XX. This is what nlohmann::json::dump(-1, ' ', true) writes:
// nlohmann::json stores objects in a std::map<std::string, ..., std::less<>>,
// so keys come out in std::string order, which compares chars as
// unsigned bytes (tested in test_audit_log.cpp). It is also what Python's
// json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
// writes for records of strings, integers, booleans, null, arrays and
// objects, so the chain can be checked without hvpatch. Each line of the
// file IS the canonical form of its record (with "hash").
//
// Concurrency: appenders (parallel hvpatch processes) serialise on
// flock(LOCK_EX) of the log file; under it they read only the last line
// (from the end of the file), write the new line with one write() on an
// O_APPEND descriptor, fsync, and unlock. Readers take LOCK_SH.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#ifndef HVPATCH_VERSION
#error "HVPATCH_VERSION is defined by patch/CMakeLists.txt from project(VERSION)"
#endif

namespace hvpatch {

inline constexpr std::string_view kHvpatchVersion = HVPATCH_VERSION;
// "prev" of the first record.
inline constexpr std::string_view kAuditGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";
// Fields hvpatch sets; a caller's record may not contain them.
inline constexpr std::string_view kAuditReservedFields[] = {"seq", "time",           "user", "host",
                                                            "pid", "hvpatch_version", "prev", "hash"};
// A record's canonical line may not exceed this (a bound for reading the
// last line back from the end of the file).
inline constexpr std::size_t kMaxAuditRecordBytes = 1 << 20;

inline constexpr std::string_view kDefaultAuditLogPath = "/var/log/hvpatch/audit.jsonl";

// $HVPATCH_AUDIT_LOG if set and non-empty, else kDefaultAuditLogPath
// (creating /var/log/hvpatch with mode 0700 if missing; Error(Internal) if
// that fails).
std::string default_audit_log_path();
// The same path without creating anything: for readers (`hvpatch audit`),
// which must not leave a directory behind or fail for want of rights to
// create it.
std::string configured_audit_log_path();

// The canonical form of `record` (see above), as written to the file.
// Strings that are not valid UTF-8 get U+FFFD for their bad bytes.
std::string canonical_audit_json(const nlohmann::json& record);
// SHA-256 hex of the canonical form of `record` without its "hash" field.
std::string audit_record_hash(const nlohmann::json& record);

class AuditLog {
public:
    explicit AuditLog(std::string path) : path_(std::move(path)) {}
    const std::string& path() const { return path_; }

    // Appends `record` (a JSON object) with the common fields and the
    // chain, fsyncs, and returns the full record as stored. The file is
    // created with mode 0600; an existing file readable or writable by
    // group/others is made 0600 (with a warning on stderr: others may have
    // been able to read or change it).
    // Throws:
    //  Error(Internal) "audit record ... sets the reserved field 'seq'"
    //    (a caller bug), also for a record that is not an object or whose
    //    canonical form exceeds kMaxAuditRecordBytes;
    //  Error(Internal) when the log ends in a torn line (no newline: a
    //    crash or power loss in the middle of a write) or its last line is
    //    not an audit record: hvpatch does not extend a damaged chain; the
    //    message says to run `hvpatch audit verify` and how to set the
    //    damaged tail aside;
    //  Error(Timeout) if another process holds the log's lock for 10 s;
    //  Error(Internal) naming the file for I/O errors. A failed write is
    //    undone (the file is truncated back) so it leaves no torn line.
    nlohmann::json append(nlohmann::json record);

private:
    std::string path_;
};

struct AuditVerifyResult {
    bool ok = true;           // no problems
    std::size_t records = 0;  // lines that are audit records (well-formed JSON with seq/prev/hash)
    // One sentence per problem, starting with "line N" or "line N (seq S)".
    std::vector<std::string> problems;
    std::uint64_t last_seq = 0;  // of the last record (0 if none)
    std::string last_hash;       // of the last record ("" if none): note it elsewhere to anchor the chain
};

// Walks the whole log and reports, by line number and seq: records whose
// hash does not match their content (edited); records whose prev does not
// match the record before them, with the likely cause (a seq gap: records
// deleted; prev naming an earlier record: records inserted in between;
// prev naming a later record / two adjacent records: reordered or
// swapped); lines that are not JSON or not audit records; empty lines; a
// torn last line. Throws Error(Usage) if the file does not exist,
// Error(Internal) if it cannot be read.
AuditVerifyResult verify_audit_log(const std::string& path);

struct AuditFilter {
    // Substring of record["vm"]'s "name", "id", "key", "uuid" or "target"
    // (the patcher writes key/uuid/name/target), or of record["vm"] when it
    // is a string. Empty: all records.
    std::string vm;
    // Records whose "time" is >= this string (ISO-8601 UTC, any prefix:
    // "2026-11-27" or "2026-11-27T05:40"). Empty: all records.
    std::string since;
};
// The records of the log, oldest first, that match `filter`. Lines that
// are not JSON objects are skipped (verify_audit_log reports them). A
// missing file is an empty log.
std::vector<nlohmann::json> read_audit_log(const std::string& path, const AuditFilter& filter = {});

}  // namespace hvpatch
