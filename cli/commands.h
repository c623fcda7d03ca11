// Each verb of the hvpatch command registers itself on the CLI11 app. Verbs
// throw hvpatch::Error on failure; main() turns errors into exit codes.
#pragma once

#include <CLI/CLI.hpp>

#include "hvpatch/machine.h"

namespace hvpatch::cli {

// Options of the hvpatch command itself (before or after the verb).
struct GlobalOptions {
    std::string connection; // -c/--connect libvirt URI, else $LIBVIRT_DEFAULT_URI, else qemu:///system
    std::string audit_log;  // --audit-log, else $HVPATCH_AUDIT_LOG, else the default
    std::string state_dir;  // --state-dir, else $HVPATCH_STATE_DIR, else /var/lib/hvpatch
    bool audit_syslog = false;  // --audit-syslog (or $HVPATCH_AUDIT_SYSLOG=1): audit records to syslog too
    std::string memory_path;  // --memory-path, else $HVPATCH_MEMORY_PATH, else auto (the fastest that works)
    int exit_code = 0;      // a verb's verdict that is not an error (check: would refuse)
};

void add_inspect_command(CLI::App& app, const GlobalOptions& global);
void add_read_command(CLI::App& app, const GlobalOptions& global);
void add_demo_command(CLI::App& app, const GlobalOptions& global);
void add_sym_command(CLI::App& app, const GlobalOptions& global);
void add_ps_command(CLI::App& app, const GlobalOptions& global);
void add_stack_command(CLI::App& app, const GlobalOptions& global);
void add_patch_commands(CLI::App& app, GlobalOptions& global);  // check, apply, revert, status
void add_audit_command(CLI::App& app, GlobalOptions& global);   // audit show, audit verify
void add_fleet_command(CLI::App& app, GlobalOptions& global);   // fleet apply, fleet revert

// What a verb's TARGET argument is, for --help.
inline constexpr const char* kTargetHelp =
    "libvirt domain name or UUID (on -c URI), or qmp:PATH (a QEMU's QMP socket)";

// Exit code of `hvpatch audit verify` when the log fails verification: a
// verdict, not an error of hvpatch (1) or of the command line (2).
inline constexpr int kExitAuditVerifyFailed = 5;
// `hvpatch fleet` has two more verdicts, 6 and 7: cli/fleet_report.h.

// Opens a verb's TARGET with the global options (-c, --memory-path) and
// tells the operator on stderr when guest memory is reached by a slower
// path than the VM would allow (the reason, once).
std::unique_ptr<Machine> open_target(const std::string& target, const GlobalOptions& global);

// The body of `hvpatch inspect`, also used by `hvpatch demo`.
void inspect_machine(Machine& machine, bool json);

// Prints an error the way every verb does: a line on stderr and, under
// --json, an {"error": {...}} document on stdout.
void report_error(const std::string& kind, const std::string& message, bool json);

}  // namespace hvpatch::cli
