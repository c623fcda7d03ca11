#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"

namespace hvpatch::cli {

std::unique_ptr<Machine> open_target(const std::string& target, const GlobalOptions& global) {
    std::string choice = global.memory_path;
    if (choice.empty())
        if (const char* env = std::getenv("HVPATCH_MEMORY_PATH")) choice = env;
    auto machine = open_machine(target, global.connection, memory_path_from_name(choice));
    const MemoryAccessInfo memory = machine->memory_access();
    if (!memory.notice.empty()) std::fprintf(stderr, "hvpatch: notice: %s\n", memory.notice.c_str());
    return machine;
}

}  // namespace hvpatch::cli
