#include "support/monitor_oracle.h"

#include <regex>
#include <sstream>
#include <stdexcept>

#include "hvpatch/address.h"
#include "hvpatch/error.h"
#include "vmm/qemu/qmp_client.h"

namespace hvpatch::test {

std::string MonitorOracle::hmp(const std::string& command_line) const {
    return QmpClient::connect(socket_).hmp(command_line);
}

std::string MonitorOracle::status() const {
    return QmpClient::connect(socket_).execute("query-status").value("status", "");
}

void MonitorOracle::stop() const { QmpClient::connect(socket_).execute("stop"); }
void MonitorOracle::cont() const { QmpClient::connect(socket_).execute("cont"); }

std::vector<MonitorRegisters> parse_info_registers(const std::string& text) {
    std::vector<MonitorRegisters> cpus;
    static const std::regex pair(R"(([A-Z][A-Z0-9]*) ?=([0-9a-f]+))");
    static const std::regex segment(R"(^(ES|CS|SS|DS|FS|GS) =([0-9a-f]{4}) ([0-9a-f]{16}))");
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("CPU#", 0) == 0) {
            cpus.emplace_back();
            continue;
        }
        if (cpus.empty()) continue;
        std::smatch m;
        if (std::regex_search(line, m, segment)) {
            cpus.back()[m[1]] = std::stoull(m[2], nullptr, 16);
            cpus.back()[m[1].str() + "_BASE"] = std::stoull(m[3], nullptr, 16);
            continue;
        }
        for (auto it = std::sregex_iterator(line.begin(), line.end(), pair); it != std::sregex_iterator(); ++it) {
            const std::string name = (*it)[1];
            // Keep the first of a name per CPU (FCW etc. never collide with ours).
            if (!cpus.back().count(name)) cpus.back()[name] = std::stoull((*it)[2], nullptr, 16);
        }
    }
    return cpus;
}

std::vector<std::uint8_t> parse_memory_dump(const std::string& text) {
    std::vector<std::uint8_t> bytes;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        auto colon = line.find(": ");
        if (colon == std::string::npos) continue;
        std::istringstream words(line.substr(colon + 2));
        std::string w;
        while (words >> w)
            if (w.rfind("0x", 0) == 0) bytes.push_back(static_cast<std::uint8_t>(std::stoul(w, nullptr, 16)));
    }
    return bytes;
}

std::vector<MonitorRegisters> MonitorOracle::registers() const { return parse_info_registers(hmp("info registers -a")); }

std::vector<std::uint8_t> MonitorOracle::physical_bytes(std::uint64_t addr, std::size_t n) const {
    auto bytes = parse_memory_dump(hmp("xp /" + std::to_string(n) + "xb " + hex_short(addr)));
    if (bytes.size() != n) throw std::runtime_error("xp returned " + std::to_string(bytes.size()) + " bytes");
    return bytes;
}

std::vector<std::uint8_t> MonitorOracle::virtual_bytes(int cpu, std::uint64_t addr, std::size_t n) const {
    QmpClient qmp = QmpClient::connect(socket_);
    qmp.hmp("cpu " + std::to_string(cpu));
    auto bytes = parse_memory_dump(qmp.hmp("x /" + std::to_string(n) + "xb " + hex_short(addr)));
    if (bytes.size() != n) throw std::runtime_error("x returned " + std::to_string(bytes.size()) + " bytes");
    return bytes;
}

std::uint64_t MonitorOracle::gva2gpa(int cpu, std::uint64_t addr) const {
    QmpClient qmp = QmpClient::connect(socket_);
    qmp.hmp("cpu " + std::to_string(cpu));
    std::string out = qmp.hmp("gva2gpa " + hex_short(addr));
    auto pos = out.find("gpa: ");
    if (pos == std::string::npos) throw std::runtime_error("gva2gpa: " + out);
    return std::stoull(out.substr(pos + 5), nullptr, 16);
}

}  // namespace hvpatch::test
