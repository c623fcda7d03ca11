// An optional copy of each audit record to syslog(3), for hosts that ship
// syslog to a central collector. The audit log file stays the
// authoritative, verifiable copy (audit_log.h): the syslog line is sent
// after the record is in the file, and a syslog failure changes nothing.
//
// Enabled by the global option --audit-syslog or HVPATCH_AUDIT_SYSLOG=1.
// Each record is one message, ident "hvpatch" with the pid, facility
// LOG_AUTHPRIV (readable by root only on a usual syslog set-up: records
// name VMs, users and patches), severity LOG_NOTICE.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace hvpatch {

// Syslog daemons cut long messages (rsyslog's default is 8 KiB).
inline constexpr std::size_t kMaxAuditSyslogBytes = 7000;

// The message for `stored` (the record as AuditLog::append stored it, with
// seq and hash): its canonical one-line JSON; if that exceeds
// kMaxAuditSyslogBytes, only the fields that say who did what to which VM
// with what outcome (error text shortened), plus "abridged": "full record:
// <log_path> seq N". Never contains a newline.
std::string audit_syslog_line(const nlohmann::json& stored, const std::string& log_path);

// Sends audit_syslog_line() with LOG_AUTHPRIV | LOG_NOTICE. Never throws.
void send_audit_to_syslog(const nlohmann::json& stored, const std::string& log_path);

// Whether $HVPATCH_AUDIT_SYSLOG asks for the copy ("1", "yes", "true").
bool audit_syslog_from_environment();

}  // namespace hvpatch
