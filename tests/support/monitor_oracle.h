// QEMU's own monitor as an oracle for what hvpatch reports: `info
// registers -a`, `xp` and `x`, through a short-lived QMP connection (QMP
// serves one client at a time, so it must be closed before hvpatch runs).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace hvpatch::test {

// One CPU's registers as `info registers` prints them, by QEMU's names:
// "RAX".."R15", "RIP", "RFL", "CPL", "CR0".."CR4", "EFER", and segment
// selectors/bases as "CS", "CS_BASE", ... "GS_BASE".
using MonitorRegisters = std::map<std::string, std::uint64_t>;

class MonitorOracle {
public:
    explicit MonitorOracle(std::string qmp_socket) : socket_(std::move(qmp_socket)) {}

    std::string hmp(const std::string& command_line) const;
    std::string status() const;  // query-status "status"
    void stop() const;
    void cont() const;

    // Parses `info registers -a` into one map per CPU, in CPU order.
    std::vector<MonitorRegisters> registers() const;
    // `xp /Nxb ADDR` as bytes.
    std::vector<std::uint8_t> physical_bytes(std::uint64_t addr, std::size_t n) const;
    // `cpu C` then `x /Nxb ADDR` (virtual, through CPU C's page tables).
    std::vector<std::uint8_t> virtual_bytes(int cpu, std::uint64_t addr, std::size_t n) const;
    // `gva2gpa ADDR` on CPU C.
    std::uint64_t gva2gpa(int cpu, std::uint64_t addr) const;

private:
    std::string socket_;
};

// The operator pauses the VM (QMP stop) for the scope; `cont` at the end even
// when an assertion fails, so one failing test does not hang the next ones.
class OperatorPause {
public:
    explicit OperatorPause(const MonitorOracle& monitor) : monitor_(monitor) { monitor_.stop(); }
    ~OperatorPause() {
        try {
            monitor_.cont();
        } catch (...) {
        }
    }
    OperatorPause(const OperatorPause&) = delete;
    OperatorPause& operator=(const OperatorPause&) = delete;

private:
    const MonitorOracle& monitor_;
};

// Pure parsers, exposed for their own checks.
std::vector<MonitorRegisters> parse_info_registers(const std::string& text);
std::vector<std::uint8_t> parse_memory_dump(const std::string& text);

}  // namespace hvpatch::test
