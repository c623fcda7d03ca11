// hvpatch: live-patch the kernel of a running VM from the host.
#include <cstdio>
#include <cstring>

#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "hvpatch/error.h"
#include "patch/audit_log.h"
#include "vmm/interrupt.h"

namespace hvpatch::cli {

void report_error(const std::string& kind, const std::string& message, bool json) {
    std::fprintf(stderr, "hvpatch: error: %s\n", message.c_str());
    if (json) {
        nlohmann::json doc = {{"error", {{"kind", kind}, {"message", message}}}};
        std::printf("%s\n", doc.dump(2).c_str());
    }
}

}  // namespace hvpatch::cli

int main(int argc, char** argv) {
    using namespace hvpatch;
    install_interrupt_handlers();

    CLI::App app{"hvpatch — live-patch a running VM's Linux kernel from the host"};
    app.require_subcommand(1);
    app.set_version_flag("--version", "hvpatch " + std::string(kHvpatchVersion));
    // Global options may follow the verb too. Set before the verbs are
    // added: a subcommand copies its parent's fallthrough when created.
    app.fallthrough();
    cli::GlobalOptions global;
    cli::add_inspect_command(app, global);
    cli::add_read_command(app, global);
    cli::add_sym_command(app, global);
    cli::add_ps_command(app, global);
    cli::add_stack_command(app, global);
    cli::add_demo_command(app, global);
    cli::add_patch_commands(app, global);
    cli::add_fleet_command(app, global);
    cli::add_audit_command(app, global);
    app.add_option("-c,--connect", global.connection,
                   "libvirt URI of a domain TARGET; default $LIBVIRT_DEFAULT_URI or qemu:///system (as virsh)");
    app.add_option("--audit-log", global.audit_log,
                   "audit log (JSON Lines); default $HVPATCH_AUDIT_LOG or /var/log/hvpatch/audit.jsonl");
    app.add_option("--state-dir", global.state_dir,
                   "where hvpatch keeps what it applied; default $HVPATCH_STATE_DIR or /var/lib/hvpatch");
    app.add_option("--memory-path", global.memory_path,
                   "how to read guest RAM: auto (default: the fastest that works), mapped-file, process-memory "
                   "or gdbstub; also $HVPATCH_MEMORY_PATH")
        ->check(CLI::IsMember({"auto", "mapped-file", "process-memory", "gdbstub"}));
    app.add_flag("--audit-syslog", global.audit_syslog,
                 "also send each audit record to syslog (authpriv.notice); also $HVPATCH_AUDIT_SYSLOG=1");

    bool json = false;
    for (int i = 1; i < argc; ++i)
        if (std::strcmp(argv[i], "--json") == 0) json = true;

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        cli::report_error("usage", e.what(), json);
        std::fprintf(stderr, "Run 'hvpatch --help' for usage.\n");
        return exit_code_for(ErrorKind::Usage);
    } catch (const Error& e) {
        cli::report_error(to_string(e.kind()), e.what(), json);
        return exit_code_for(e.kind());
    } catch (const std::exception& e) {
        cli::report_error("internal", e.what(), json);
        return exit_code_for(ErrorKind::Internal);
    }
    return global.exit_code;
}
