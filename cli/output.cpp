#include "cli/output.h"

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <sstream>

#include "hvpatch/error.h"

namespace hvpatch::cli {

nlohmann::json registers_json(const VcpuRegisters& r) {
    nlohmann::json j;
    auto put = [&](const char* name, std::uint64_t v) { j[name] = hex(v); };
    put("rax", r.rax); put("rbx", r.rbx); put("rcx", r.rcx); put("rdx", r.rdx);
    put("rsi", r.rsi); put("rdi", r.rdi); put("rbp", r.rbp); put("rsp", r.rsp);
    put("r8", r.r8); put("r9", r.r9); put("r10", r.r10); put("r11", r.r11);
    put("r12", r.r12); put("r13", r.r13); put("r14", r.r14); put("r15", r.r15);
    put("rip", r.rip); put("rflags", r.rflags);
    put("cs", r.cs); put("ss", r.ss); put("ds", r.ds); put("es", r.es); put("fs", r.fs); put("gs", r.gs);
    put("fs_base", r.fs_base); put("gs_base", r.gs_base); put("kernel_gs_base", r.kernel_gs_base);
    put("cr0", r.cr0); put("cr2", r.cr2); put("cr3", r.cr3); put("cr4", r.cr4); put("cr8", r.cr8);
    put("efer", r.efer);
    j["cpl"] = r.cpl();
    return j;
}

nlohmann::json memory_access_json(const MemoryAccessInfo& info) {
    nlohmann::json ranges = nlohmann::json::array();
    for (const auto& r : info.ranges)
        ranges.push_back({{"start", hex(r.start.value)}, {"size", r.size}, {"ram_offset", hex(r.ram_offset)}});
    nlohmann::json doc = {{"path", memory_path_name(info.path)},
                          {"reads_while_running", info.reads_while_running()},
                          {"ram_file", info.ram_file},
                          {"ram_size", info.ram_size},
                          {"ranges", ranges}};
    if (info.path == MemoryAccessInfo::Path::ProcessMemory) doc["qemu_pid"] = info.qemu_pid;
    if (!info.notice.empty()) doc["notice"] = info.notice;
    return doc;
}

std::string describe_memory_access(const MemoryAccessInfo& info) {
    switch (info.path) {
        case MemoryAccessInfo::Path::MappedFile:
            return "mapped RAM file " + info.ram_file;
        case MemoryAccessInfo::Path::ProcessMemory:
            return "the memory of QEMU process " + std::to_string(info.qemu_pid) + " (gpa2hva, process_vm_readv)";
        case MemoryAccessInfo::Path::GdbStub:
            break;
    }
    if (info.ram_file.empty()) return "gdbstub (pauses the guest for each read)";
    return "gdbstub (pauses the guest for each read; RAM file " + info.ram_file + ")";
}

std::string hex_dump(std::uint64_t start, const std::byte* data, std::size_t size) {
    std::string out;
    char line[128];
    for (std::size_t off = 0; off < size; off += 16) {
        int n = std::snprintf(line, sizeof line, "%016llx: ", static_cast<unsigned long long>(start + off));
        out.append(line, static_cast<std::size_t>(n));
        std::string ascii;
        for (std::size_t i = 0; i < 16; ++i) {
            if (off + i < size) {
                auto b = static_cast<unsigned>(data[off + i]);
                std::snprintf(line, sizeof line, "%02x ", b);
                out += line;
                ascii += std::isprint(static_cast<int>(b)) ? static_cast<char>(b) : '.';
            } else {
                out += "   ";
            }
            if (i == 7) out += ' ';
        }
        out += " |" + ascii + "|\n";
    }
    return out;
}

std::uint64_t parse_number(const std::string& text, const std::string& what) {
    std::string body = text;
    std::uint64_t scale = 1;
    if (!body.empty() && body.rfind("0x", 0) != 0) {
        switch (std::tolower(static_cast<unsigned char>(body.back()))) {
            case 'k': scale = 1ULL << 10; body.pop_back(); break;
            case 'm': scale = 1ULL << 20; body.pop_back(); break;
            case 'g': scale = 1ULL << 30; body.pop_back(); break;
            default: break;
        }
    }
    bool is_hex = body.rfind("0x", 0) == 0 || body.rfind("0X", 0) == 0;
    std::string digits = is_hex ? body.substr(2) : body;
    if (digits.empty() || digits.size() > (is_hex ? 16u : 20u))
        throw Error(ErrorKind::Usage, "bad " + what + " '" + text + "'");
    for (char c : digits)
        if (!(is_hex ? std::isxdigit(static_cast<unsigned char>(c)) : std::isdigit(static_cast<unsigned char>(c))))
            throw Error(ErrorKind::Usage, "bad " + what + " '" + text + "'" +
                                              (is_hex ? "" : " (write hexadecimal numbers with 0x)"));
    errno = 0;
    unsigned long long v = std::strtoull(digits.c_str(), nullptr, is_hex ? 16 : 10);
    if (errno == ERANGE || (scale > 1 && v > UINT64_MAX / scale))
        throw Error(ErrorKind::Usage, what + " '" + text + "' is out of range");
    return v * scale;
}

std::string milliseconds(std::chrono::nanoseconds d) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f ms", static_cast<double>(d.count()) / 1e6);
    return buf;
}

}  // namespace hvpatch::cli
