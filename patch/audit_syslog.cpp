#include "patch/audit_syslog.h"

#include <syslog.h>

#include <cstdlib>

#include "patch/audit_log.h"

namespace hvpatch {

namespace {
constexpr std::size_t kMaxAbridgedError = 1000;
}

std::string audit_syslog_line(const nlohmann::json& stored, const std::string& log_path) {
    std::string line = canonical_audit_json(stored);
    if (line.size() <= kMaxAuditSyslogBytes || !stored.is_object()) return line.substr(0, kMaxAuditSyslogBytes);
    nlohmann::json abridged = nlohmann::json::object();
    for (const char* field : {"seq", "time", "hash", "prev", "user", "host", "pid", "hvpatch_version", "operation",
                              "vm", "kernel", "patch", "outcome", "error"})
        if (stored.contains(field)) abridged[field] = stored[field];
    if (abridged.contains("error") && abridged["error"].is_string() &&
        abridged["error"].get_ref<const std::string&>().size() > kMaxAbridgedError)
        abridged["error"] = abridged["error"].get_ref<const std::string&>().substr(0, kMaxAbridgedError) + "...";
    abridged["abridged"] = "full record: " + log_path + " seq " + (stored.contains("seq") ? stored["seq"].dump() : "?");
    line = canonical_audit_json(abridged);
    // A record whose identifying fields alone are this long was not
    // written by hvpatch's patcher; cut it rather than send nothing.
    return line.substr(0, kMaxAuditSyslogBytes);
}

void send_audit_to_syslog(const nlohmann::json& stored, const std::string& log_path) {
    try {
        std::string line = audit_syslog_line(stored, log_path);
        ::openlog("hvpatch", LOG_PID, LOG_AUTHPRIV);
        ::syslog(LOG_AUTHPRIV | LOG_NOTICE, "%s", line.c_str());
        ::closelog();
    } catch (...) {
        // A copy: the record is in the audit log already.
    }
}

bool audit_syslog_from_environment() {
    const char* value = std::getenv("HVPATCH_AUDIT_SYSLOG");
    if (!value) return false;
    std::string v = value;
    return v == "1" || v == "yes" || v == "true";
}

}  // namespace hvpatch
