// How `hvpatch audit show` presents audit records (patch/audit_log.h) to
// people, and how it reads its --since argument. Kept apart from the verb
// so that unit tests can check it without a log file or a guest.
//
// The log is the host's own file, but anyone who can write it can put
// anything in it: a record may lack any field or hold another type there,
// and its strings may carry terminal control sequences. The formatting
// never throws for such a record and escapes control characters, so one
// record is always exactly one line.
#pragma once

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

namespace hvpatch::cli {

// One line (no newline) for `record`, fields separated by two spaces:
//   TIME  #SEQ  USER  OPERATION  VM  PATCH  OUTCOME[  error: TEXT]
// USER is the login name ("uid N" without one), with "/sudo:NAME" when the
// record carries a sudo_user. VM is the VM's name and its key as
// "name/key", whichever of them is set (or the target, or the string when
// "vm" is one). TEXT is the record's "error", else its "refusals" joined
// by "; ". A missing field shows as "-".
std::string audit_record_line(const nlohmann::json& record);

// `text` with control characters (below 0x20, and DEL) written as \n, \t
// or \xNN, so that it stays on one line and cannot drive a terminal.
std::string printable(const std::string& text);

// The lower bound on record times that --since TEXT means, in the audit
// log's time format (compared as strings with each record's "time"):
//  - a UTC time, any prefix of "2026-11-27T05:40:12.345" ("2026-11-27",
//    "2026-11-27T05:40"); a space may stand for the T, a trailing Z is
//    allowed;
//  - a span back from `now`: a positive whole number with s, m, h or d
//    ("90s", "15m", "2h", "7d").
// Throws Error(Usage) for anything else (time zone offsets included: the
// log is in UTC).
std::string audit_since_bound(const std::string& text, std::chrono::system_clock::time_point now);

}  // namespace hvpatch::cli
