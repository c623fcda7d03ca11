#include "vmm/qemu/qemu_process.h"

#include <algorithm>
#include <cstdlib>

#include "hvpatch/error.h"
#include "vmm/qemu/process_memory.h"

namespace hvpatch {
namespace {

std::string lower(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

}  // namespace

std::optional<std::uint64_t> parse_gpa2hva_reply(const std::string& reply) {
    if (reply.find("No memory is mapped") != std::string::npos || reply.find("is not RAM") != std::string::npos)
        return std::nullopt;
    const std::string marker = "Host virtual address for ";
    auto at = reply.find(marker);
    auto is = at == std::string::npos ? std::string::npos : reply.find(" is 0x", at);
    if (is == std::string::npos)
        throw Error(ErrorKind::Protocol,
                    "QEMU's gpa2hva answered '" + reply.substr(0, 200) + "' (a QEMU older than 2.10 has no gpa2hva)");
    const char* digits = reply.c_str() + is + 4;
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(digits, &end, 16);
    if (end == digits + 2 || errno != 0 || (*end != '\0' && *end != '\r' && *end != '\n'))
        throw Error(ErrorKind::Protocol, "QEMU's gpa2hva answered '" + reply.substr(0, 200) + "'");
    return value;
}

pid_t find_qemu_process(const QemuProcessClues& clues, const std::string& who) {
    if (clues.vcpu_threads.empty() ||
        std::any_of(clues.vcpu_threads.begin(), clues.vcpu_threads.end(), [](pid_t t) { return t <= 0; }))
        throw Error(ErrorKind::Unreachable, who + ": QEMU does not report its vCPU threads");
    std::optional<pid_t> pid = clues.socket_peer;
    if (!pid) pid = process_of_thread(clues.vcpu_threads.front());
    if (!pid)
        throw Error(ErrorKind::Unreachable, who + ": QEMU's vCPU thread " + std::to_string(clues.vcpu_threads.front()) +
                                                " is not visible here (QEMU on another host or in another pid "
                                                "namespace)");
    for (pid_t tid : clues.vcpu_threads)
        if (!process_has_thread(*pid, tid))
            throw Error(ErrorKind::Unreachable, who + ": QEMU's vCPU thread " + std::to_string(tid) +
                                                    " is not a thread of process " + std::to_string(*pid) +
                                                    " (QEMU on another host, in another pid namespace, or "
                                                    "behind a proxy socket)");
    if (is_real_uuid(clues.uuid)) {
        auto args = process_command_line(*pid);
        bool found = false;
        for (const auto& arg : args)
            if (lower(arg).find(lower(clues.uuid)) != std::string::npos) found = true;
        if (!found)
            throw Error(ErrorKind::Unreachable, who + ": process " + std::to_string(*pid) +
                                                    " does not carry the VM's uuid " + clues.uuid +
                                                    " on its command line");
    }
    return *pid;
}

std::vector<std::uint64_t> ram_host_addresses(QemuMonitor& monitor,
                                              const std::vector<MemoryAccessInfo::Range>& ranges,
                                              const std::string& who) {
    std::vector<std::uint64_t> addresses;
    for (const auto& r : ranges) {
        if (r.size == 0) throw Error(ErrorKind::Unreachable, who + ": an empty RAM range at " + hex(r.start.value));
        std::uint64_t last_gpa = r.start.value + r.size - 1;
        auto first = parse_gpa2hva_reply(monitor.hmp("gpa2hva " + hex(r.start.value)));
        auto last = parse_gpa2hva_reply(monitor.hmp("gpa2hva " + hex(last_gpa)));
        if (!first || !last)
            throw Error(ErrorKind::Unreachable, who + ": QEMU says guest-physical " +
                                                    hex(first ? last_gpa : r.start.value) +
                                                    " is not RAM, but its memory map has RAM there");
        // One RAM block is one contiguous mapping in QEMU: the last byte sits
        // exactly size-1 after the first.
        if (*last < *first || *last - *first != r.size - 1)
            throw Error(ErrorKind::Unreachable, who + ": guest-physical " + hex(r.start.value) + "-" + hex(last_gpa) +
                                                    " is not one contiguous block in QEMU (host " + hex(*first) +
                                                    ".." + hex(*last) + ")");
        addresses.push_back(*first);
    }
    return addresses;
}

}  // namespace hvpatch
