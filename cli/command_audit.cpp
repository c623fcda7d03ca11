// `hvpatch audit show | verify`: read the audit log (patch/audit_log.h)
// that check/apply/revert append to. Neither touches a VM.
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <memory>

#include "cli/audit_view.h"
#include "cli/commands.h"
#include "hvpatch/error.h"
#include "patch/audit_log.h"

namespace hvpatch::cli {
namespace {

struct AuditCommandOptions {
    std::string vm, since;
    bool json = false;
};

// --audit-log, else $HVPATCH_AUDIT_LOG, else the default; nothing is
// created (a reader must not make /var/log/hvpatch).
std::string audit_log_path(const GlobalOptions& global) {
    return global.audit_log.empty() ? configured_audit_log_path() : global.audit_log;
}

void run_show(const AuditCommandOptions& opt, const GlobalOptions& global) {
    AuditFilter filter;
    filter.vm = opt.vm;
    if (!opt.since.empty()) filter.since = audit_since_bound(opt.since, std::chrono::system_clock::now());
    const std::string path = audit_log_path(global);
    struct stat st {};
    // A missing log is an empty one (nothing audited yet), but say where
    // hvpatch looked: a mistyped --audit-log should not pass unnoticed.
    if (::stat(path.c_str(), &st) != 0 && errno == ENOENT && !opt.json)
        std::fprintf(stderr, "hvpatch: no audit log at %s (nothing audited yet?)\n", path.c_str());
    auto records = read_audit_log(path, filter);
    if (opt.json) {
        nlohmann::json all = nlohmann::json::array();
        for (auto& r : records) all.push_back(std::move(r));
        std::printf("%s\n", all.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        return;
    }
    for (const auto& r : records) std::printf("%s\n", audit_record_line(r).c_str());
}

void run_verify(const AuditCommandOptions& opt, GlobalOptions& global) {
    const std::string path = audit_log_path(global);
    AuditVerifyResult result = verify_audit_log(path);
    if (opt.json) {
        nlohmann::json doc = {{"path", path},
                              {"ok", result.ok},
                              {"records", result.records},
                              {"last_seq", result.last_seq},
                              {"last_hash", result.last_hash},
                              {"problems", result.problems}};
        std::printf("%s\n", doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else if (result.ok) {
        if (result.records == 0)
            std::printf("OK: 0 records (%s is empty)\n", printable(path).c_str());
        else
            std::printf("OK: %zu records, last hash %s (seq %llu)\n", result.records, result.last_hash.c_str(),
                        static_cast<unsigned long long>(result.last_seq));
    } else {
        for (const auto& problem : result.problems) std::printf("%s\n", printable(problem).c_str());
        std::printf("FAILED: %zu problem%s in %s (%zu records)\n", result.problems.size(),
                    result.problems.size() == 1 ? "" : "s", printable(path).c_str(), result.records);
    }
    if (!result.ok) global.exit_code = kExitAuditVerifyFailed;
}

}  // namespace

void add_audit_command(CLI::App& app, GlobalOptions& global) {
    auto* audit = app.add_subcommand("audit", "Read the audit log: list operations or verify its hash chain");
    audit->require_subcommand(1);
    auto opt = std::make_shared<AuditCommandOptions>();

    auto* show = audit->add_subcommand("show", "One line per audited operation, oldest first");
    show->add_option("--domain,--vm", opt->vm,
                     "only records whose domain/VM name, key, uuid or target contains this");
    show->add_option("--since", opt->since, "only records from this UTC time on (2026-11-27T05:40) or this span back (2h, 7d)");
    show->add_flag("--json", opt->json, "the records as a JSON array");
    show->callback([opt, &global] { run_show(*opt, global); });

    auto* verify = audit->add_subcommand("verify", "Check the hash chain; print the last hash to keep elsewhere");
    verify->add_flag("--json", opt->json, "JSON output");
    verify->callback([opt, &global] { run_verify(*opt, global); });
}

}  // namespace hvpatch::cli
