// Each verb of the hvpatch command registers itself on the CLI11 app. Verbs
// throw hvpatch::Error on failure; main() turns errors into exit codes.
#pragma once

#include <CLI/CLI.hpp>

#include "hvpatch/machine.h"

namespace hvpatch::cli {

void add_inspect_command(CLI::App& app);
void add_read_command(CLI::App& app);
void add_demo_command(CLI::App& app);
void add_sym_command(CLI::App& app);
void add_ps_command(CLI::App& app);
void add_stack_command(CLI::App& app);

// The body of `hvpatch inspect`, also used by `hvpatch demo`.
void inspect_machine(Machine& machine, bool json);

// Prints an error the way every verb does: a line on stderr and, under
// --json, an {"error": {...}} document on stdout.
void report_error(const std::string& kind, const std::string& message, bool json);

}  // namespace hvpatch::cli
