// Shared output helpers for the CLI: human tables on stdout, --json
// documents on stdout, errors on stderr.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "hvpatch/machine.h"

namespace hvpatch::cli {

// Every register of `regs` as a JSON object of hex strings ("0x...").
nlohmann::json registers_json(const VcpuRegisters& regs);
nlohmann::json memory_access_json(const MemoryAccessInfo& info);
std::string describe_memory_access(const MemoryAccessInfo& info);

// Classic 16-bytes-per-line hex dump with an ASCII column.
std::string hex_dump(std::uint64_t start_address, const std::byte* data, std::size_t size);

// Parses "0x1f", "1f" is rejected (ambiguous), decimal "4096", with an
// optional k/m/g suffix for lengths. Throws Error(Usage) naming `what`.
std::uint64_t parse_number(const std::string& text, const std::string& what);

std::string milliseconds(std::chrono::nanoseconds d);

}  // namespace hvpatch::cli
