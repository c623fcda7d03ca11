// `hvpatch demo`: boot the bundled test guest and show hvpatch at work.
// (Being written.)
#include "cli/commands.h"

namespace hvpatch::cli {

void add_demo_command(CLI::App&) {}

}  // namespace hvpatch::cli
