#include "vmm/qemu/process_memory.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "hvpatch/address.h"
#include "hvpatch/error.h"
#include "vmm/interrupt.h"

namespace hvpatch {
namespace {

// One process_vm_readv moves at most this much, so that a long read still
// notices SIGINT between pieces.
constexpr std::size_t kPieceBytes = 64u << 20;
constexpr std::size_t kMaxCommandLine = 1u << 20;
// Reads this large are shared among up to kMaxReadThreads threads.
constexpr std::size_t kParallelBytes = 1u << 20;
constexpr std::size_t kMaxReadThreads = 4;

int open_pidfd(pid_t pid) {
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

std::string why_refused(int err) {
    if (err == EPERM || err == EACCES)
        return std::string("the kernel refused (") + std::strerror(err) +
               "): reading another process's memory needs CAP_SYS_PTRACE over it (root normally has it; a "
               "dropped capability, a stricter kernel.yama.ptrace_scope or an LSM can take it away)";
    return std::strerror(err);
}

}  // namespace

ProcessMemory::ProcessMemory(pid_t pid, std::string who) : pid_(pid), who_(std::move(who)) {
    pidfd_ = open_pidfd(pid);
    if (pidfd_ < 0)
        throw Error(ErrorKind::Unreachable,
                    who_ + ": cannot pin QEMU process " + std::to_string(pid) + ": " + std::strerror(errno));
}

ProcessMemory::~ProcessMemory() {
    if (pidfd_ >= 0) ::close(pidfd_);
}

bool ProcessMemory::exited() const {
    // A pidfd becomes readable when the process exits.
    pollfd p{pidfd_, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

void ProcessMemory::read_serially(std::uint64_t address, std::span<std::byte> out, bool check_interrupts) const {
    std::size_t done = 0;
    while (done < out.size()) {
        if (done > 0 && check_interrupts) throw_if_interrupted("reading guest memory from QEMU process " + std::to_string(pid_));
        std::size_t want = std::min(out.size() - done, kPieceBytes);
        iovec local{out.data() + done, want};
        iovec remote{reinterpret_cast<void*>(address + done), want};
        ssize_t n = ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        int err = errno;
        if (exited() || (n < 0 && err == ESRCH))
            throw exited_during_read();
        if (n < 0 && (err == EPERM || err == EACCES))
            throw Error(ErrorKind::Unreachable, who_ + ": reading QEMU process " + std::to_string(pid_) +
                                                    ": " + why_refused(err));
        throw Error(ErrorKind::Guest, who_ + ": host address " + hex(address + done) + " of QEMU process " +
                                          std::to_string(pid_) + " is not readable (" +
                                          (n < 0 ? std::strerror(err) : "nothing read") +
                                          "): guest RAM unplugged or remapped underneath?");
    }
}


void ProcessMemory::read(std::uint64_t address, std::span<std::byte> out) const {
    // process_vm_readv pins and maps the pages one by one: one thread moves
    // ~3 GB/s here where memcpy moves ~10. A large read is shared among a
    // few threads; the caller's thread reads the first part (and alone
    // watches for SIGINT: the helpers' parts are bounded).
    std::size_t parts = 1;
    if (out.size() >= kParallelBytes)
        parts = std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, kMaxReadThreads);
    if (parts == 1) {
        read_serially(address, out, true);
    } else {
        const std::size_t step = (out.size() / parts + 4095) & ~std::size_t{4095};
        std::vector<std::exception_ptr> errors(parts);
        std::vector<std::thread> helpers;
        for (std::size_t i = 1; i < parts && i * step < out.size(); ++i)
            helpers.emplace_back([&, i] {
                try {
                    read_serially(address + i * step, out.subspan(i * step, std::min(step, out.size() - i * step)),
                                  false);
                } catch (...) {
                    errors[i] = std::current_exception();
                }
            });
        try {
            read_serially(address, out.first(std::min(step, out.size())), true);
        } catch (...) {
            errors[0] = std::current_exception();
        }
        for (auto& helper : helpers) helper.join();
        for (auto& error : errors)
            if (error) std::rethrow_exception(error);
    }
    // The bytes count only if they came from QEMU: had it exited, its pid
    // could have been reused by the time of the read.
    if (exited())
        throw exited_during_read();
}

Error ProcessMemory::exited_during_read() const {
    return Error(ErrorKind::Unreachable,
                 who_ + ": QEMU (pid " + std::to_string(pid_) + ") exited while hvpatch read guest memory");
}

std::string ProcessMemory::probe(std::uint64_t address) const {
    std::byte b{};
    iovec local{&b, 1};
    iovec remote{reinterpret_cast<void*>(address), 1};
    if (::process_vm_readv(pid_, &local, 1, &remote, 1, 0) == 1 && !exited()) return "";
    int err = errno;
    if (exited()) return "QEMU (pid " + std::to_string(pid_) + ") has exited";
    return why_refused(err);
}

bool process_has_thread(pid_t pid, pid_t tid) {
    if (pid <= 0 || tid <= 0) return false;
    std::string path = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid);
    return ::access(path.c_str(), F_OK) == 0;
}

std::optional<pid_t> process_of_thread(pid_t tid) {
    if (tid <= 0) return std::nullopt;
    std::ifstream in("/proc/" + std::to_string(tid) + "/status");
    std::string line;
    for (int i = 0; i < 64 && std::getline(in, line); ++i) {
        if (line.rfind("Tgid:", 0) != 0) continue;
        long v = std::strtol(line.c_str() + 5, nullptr, 10);
        if (v > 0) return static_cast<pid_t>(v);
        return std::nullopt;
    }
    return std::nullopt;
}

std::vector<std::string> process_command_line(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    std::string text(kMaxCommandLine, '\0');
    in.read(text.data(), static_cast<std::streamsize>(text.size()));
    text.resize(static_cast<std::size_t>(in.gcount()));
    std::vector<std::string> args;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\0', start);
        if (end == std::string::npos) end = text.size();
        args.push_back(text.substr(start, end - start));
        start = end + 1;
    }
    return args;
}

}  // namespace hvpatch
