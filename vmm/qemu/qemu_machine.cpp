#include "vmm/qemu/qemu_machine.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "hvpatch/error.h"
#include "vmm/interrupt.h"
#include "vmm/qemu/qemu_process.h"
#include "vmm/qemu/ram_layout.h"

namespace hvpatch {
namespace {

constexpr std::chrono::milliseconds kGdbConnectTimeout{3000};
// hvpatch's private gdbstub sockets live in directories named like this.
constexpr const char* kPrivateDirPrefix = "/tmp/hvpatch-gdb.";
// QEMU sends its stop reply within milliseconds of the connect; when the VM
// was already stopped it sends none, so this only bounds the wait.
constexpr std::chrono::milliseconds kGdbGreetingWait{300};

// "p01.02" / "1.2" / "2" → thread number 2.
std::optional<int> thread_number(const std::string& id) {
    std::string tail = id;
    if (auto dot = tail.rfind('.'); dot != std::string::npos) tail = tail.substr(dot + 1);
    if (!tail.empty() && tail[0] == 'p') tail = tail.substr(1);
    if (tail.empty() || tail.size() > 8) return std::nullopt;
    char* end = nullptr;
    long v = std::strtol(tail.c_str(), &end, 16);
    if (*end != '\0' || v <= 0) return std::nullopt;
    return static_cast<int>(v);
}

// Parses "unix:/path,server=on" or "tcp:host:port,server=on" (what
// query-chardev reports for a socket chardev) into a connected Socket.
Socket connect_chardev_address(const std::string& filename, const std::string& target) {
    std::string addr = filename.substr(0, filename.find(','));
    if (addr.rfind("unix:", 0) == 0) return Socket::connect_unix(addr.substr(5), kGdbConnectTimeout);
    if (addr.rfind("tcp:", 0) == 0) {
        std::string hostport = addr.substr(4);
        auto colon = hostport.rfind(':');
        if (colon != std::string::npos) {
            std::string host = hostport.substr(0, colon);
            if (host.empty() || host == "0.0.0.0" || host == "::") host = "127.0.0.1";
            return Socket::connect_tcp(host, std::atoi(hostport.c_str() + colon + 1), kGdbConnectTimeout);
        }
    }
    throw Error(ErrorKind::Unreachable,
                target + ": QEMU already has a gdbstub at '" + filename + "' that hvpatch cannot connect to");
}

}  // namespace

QemuMachine::QemuMachine(std::unique_ptr<QemuMonitor> monitor, std::string name, QemuMachineOptions options)
    : monitor_(std::move(monitor)), name_(std::move(name)), options_(std::move(options)) {
    auto status = monitor_->execute("query-status");
    initial_status_ = status.value("status", "unknown");
    initially_running_ = status.value("running", false);
    running_ = initially_running_;
    for (const auto& cpu : monitor_->execute("query-cpus-fast")) {
        vcpu_indices_.push_back(cpu.value("cpu-index", -1));
        vcpu_threads_.push_back(static_cast<pid_t>(cpu.value("thread-id", 0)));
    }
    if (vcpu_indices_.empty()) throw Error(ErrorKind::Protocol, name_ + ": QEMU reports no vCPUs");
    discover_memory();
}

QemuMachine::~QemuMachine() {
    // Clean-up must finish even after SIGINT; each step is bounded by its
    // own timeout and failures are reported, not thrown.
    IgnoreInterrupts shield;
    try {
        for (auto addr : std::set<std::uint64_t>(breakpoints_)) clear_breakpoint(GuestVirtAddr{addr});
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hvpatch: %s: could not remove a breakpoint: %s\n", name_.c_str(), e.what());
    }
    try {
        release_gdb();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hvpatch: %s: detaching from the gdbstub: %s\n", name_.c_str(), e.what());
    }
    try {
        if (initially_running_ && !running_) monitor_->cont();
        if (!initially_running_ && running_) monitor_->stop();
        if (!initially_running_ && ran_while_found_paused_) monitor_->paused_again_after_running();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hvpatch: %s: could not restore the VM's run state (%s): %s\n", name_.c_str(),
                     initially_running_ ? "running" : "paused", e.what());
    }
    if (!private_dir_.empty()) {
        std::error_code ec;
        std::filesystem::remove_all(private_dir_, ec);
    }
}

void QemuMachine::discover_memory() {
    auto summary = monitor_->execute("query-memory-size-summary");
    memory_.ram_size = summary.value("base-memory", 0ULL);
    memory_.ranges = parse_ram_layout(monitor_->hmp("info mtree"), memory_.ram_size);
    memory_.path = MemoryAccessInfo::Path::GdbStub;
    page_aligned_ram_ = std::all_of(memory_.ranges.begin(), memory_.ranges.end(), [](const auto& r) {
        return r.start.value % StoppedPageCache::kPageSize == 0 && r.size % StoppedPageCache::kPageSize == 0;
    });

    using Path = MemoryAccessInfo::Path;
    if (auto chosen = options_.memory_path) {
        try {
            if (*chosen == Path::MappedFile) open_ram_file();
            if (*chosen == Path::ProcessMemory) open_process_memory();
        } catch (const Error& e) {
            throw Error(e.kind(), std::string("reading guest memory by ") + memory_path_name(*chosen) +
                                      " as asked: " + e.what());
        }
        memory_.path = *chosen;
        return;
    }
    // The fastest path that works. A VM without a shared RAM file is the
    // common case and needs no notice; a fall back to the stub does.
    std::string file_problem;
    try {
        open_ram_file();
        memory_.path = Path::MappedFile;
        return;
    } catch (const Error& e) {
        if (!memory_.ram_file.empty()) file_problem = e.what();
    }
    try {
        open_process_memory();
        memory_.path = Path::ProcessMemory;
        if (!file_problem.empty()) memory_.notice = file_problem + "; reading QEMU's process memory instead";
        return;
    } catch (const Error& e) {
        memory_.notice = std::string(e.what()) +
                         "; reading guest memory through QEMU's gdbstub instead (slower, and each read of "
                         "a running guest pauses it briefly)";
    }
}

void QemuMachine::open_ram_file() {
    // A memory-backend-file with share=on is the guest's RAM itself; any
    // other backend (anonymous, private file) is not.
    std::string backend;
    try {
        backend = monitor_->execute("qom-get", {{"path", "/machine"}, {"property", "memory-backend"}}).get<std::string>();
    } catch (const Error&) {
        backend.clear();  // older machine types: RAM is not a user-visible backend
    }
    if (backend.empty()) throw Error(ErrorKind::Unreachable, name_ + ": guest RAM is not a memory backend object");
    std::string path = backend.front() == '/' ? backend : "/objects/" + backend;
    std::string mem_path;
    bool shared = false;
    try {
        mem_path = monitor_->execute("qom-get", {{"path", path}, {"property", "mem-path"}}).get<std::string>();
        shared = monitor_->execute("qom-get", {{"path", path}, {"property", "share"}}).get<bool>();
    } catch (const Error&) {
        throw Error(ErrorKind::Unreachable, name_ + ": guest RAM (" + backend + ") is not a file");
    }
    if (!shared) {
        memory_.ram_file = mem_path + " (private mapping: not used)";
        throw Error(ErrorKind::Unreachable, name_ + ": the guest RAM file " + mem_path +
                                                " is mapped privately by QEMU (share=off): it does not hold the "
                                                "guest's memory");
    }
    try {
        ram_ = std::make_unique<RamFile>(mem_path, memory_.ram_size);
        memory_.ram_file = mem_path;
    } catch (const Error& e) {
        memory_.ram_file = mem_path + " (" + e.what() + ")";
        throw Error(e.kind(), name_ + ": " + e.what());
    }
}

void QemuMachine::open_process_memory() {
    if (!monitor_->qemu_on_this_host())
        throw Error(ErrorKind::Unreachable, name_ + ": QEMU runs on another host: its memory cannot be read here");
    QemuProcessClues clues;
    clues.socket_peer = monitor_->qemu_process_hint();
    clues.vcpu_threads = vcpu_threads_;
    clues.uuid = monitor_->execute("query-uuid").value("UUID", "");
    pid_t pid = find_qemu_process(clues, name_);
    auto hosts = ram_host_addresses(*monitor_, memory_.ranges, name_);
    auto process = std::make_unique<ProcessMemory>(pid, name_);
    for (std::uint64_t host : hosts)
        if (std::string why = process->probe(host); !why.empty())
            throw Error(ErrorKind::Unreachable, name_ + ": reading QEMU process " + std::to_string(pid) + ": " + why);
    process_ = std::move(process);
    ram_host_addresses_ = std::move(hosts);
    memory_.qemu_pid = pid;
}

std::string QemuMachine::accelerator() {
    auto kvm = monitor_->execute("query-kvm");
    return kvm.value("enabled", false) ? "kvm" : "tcg";
}

MachineIdentity QemuMachine::identity() {
    MachineIdentity id;
    id.target = name_;
    id.uuid = monitor_->execute("query-uuid").value("UUID", "");
    id.name = monitor_->execute("query-name").value("name", "");
    return id;
}

RunState QemuMachine::run_state() { return running_ ? RunState::Running : RunState::Paused; }

void QemuMachine::set_running(bool running) {
    auto now = std::chrono::steady_clock::now();
    if (running_ && !running) {
        stopped_by_us_ = true;
        stopped_at_ = now;
        ++stops_.stops;
    }
    // Whatever was read while stopped may change once the VM runs.
    if (running) stopped_pages_.clear();
    if (!running_ && running && stopped_by_us_) {
        auto d = now - stopped_at_;
        stops_.total += d;
        stops_.longest = std::max<std::chrono::nanoseconds>(stops_.longest, d);
        stopped_by_us_ = false;
    }
    running_ = running;
}

StopStats QemuMachine::stop_stats() const {
    StopStats s = stops_;
    if (!running_ && stopped_by_us_) {
        auto d = std::chrono::steady_clock::now() - stopped_at_;
        s.total += d;
        s.longest = std::max<std::chrono::nanoseconds>(s.longest, d);
    }
    return s;
}

void QemuMachine::reset_stop_stats() {
    stops_ = {};
    // A stop in progress counts from now on.
    if (!running_ && stopped_by_us_) {
        stopped_at_ = std::chrono::steady_clock::now();
        stops_.stops = 1;
    }
}

void QemuMachine::pause() {
    if (!running_) return;
    if (gdb_) gdb_->interrupt();
    else monitor_->stop();
    set_running(false);
}

void QemuMachine::resume() {
    if (running_) return;
    if (gdb_) gdb_->resume();
    else monitor_->cont();
    set_running(true);
    if (!initially_running_) ran_while_found_paused_ = true;
}

std::vector<int> QemuMachine::vcpus() { return vcpu_indices_; }

void QemuMachine::require_paused(const std::string& what) const {
    if (running_) throw Error(ErrorKind::Internal, name_ + ": " + what + " needs the VM paused");
}

GdbClient& QemuMachine::gdb() {
    if (!gdb_) attach_gdb();
    return *gdb_;
}

void QemuMachine::attach_gdb() {
    // Never take a stub away from another debugger: `gdbserver none` would
    // disconnect it. An idle stub the operator configured is reused as is.
    std::string existing;
    for (const auto& dev : monitor_->execute("query-chardev"))
        if (dev.value("label", "") == "gdb") existing = dev.value("filename", "");
    Socket socket;
    const std::string disconnected = "disconnected:";
    if (!existing.empty() && existing.rfind(disconnected, 0) != 0)
        throw Error(ErrorKind::Busy, name_ + ": QEMU's gdbstub (" + existing +
                                         ") is held by another client; hvpatch needs it — detach that debugger first");
    if (!existing.empty()) {
        std::string address = existing.substr(disconnected.size());
        socket = connect_chardev_address(address, name_);
        // A stub on hvpatch's own private socket was left by an hvpatch that
        // was killed (SIGKILL) before it could remove it: adopt it, so that
        // it is removed at the end like one started now.
        const std::string own_prefix = "unix:" + std::string(kPrivateDirPrefix);
        if (address.rfind(own_prefix, 0) == 0) {
            own_gdbserver_ = true;
            std::string path = address.substr(5, address.find(',') - 5);
            private_dir_ = path.substr(0, path.rfind('/'));
        }
    } else {
        std::string tmpl_text = std::string(kPrivateDirPrefix) + "XXXXXX";
        std::vector<char> tmpl(tmpl_text.begin(), tmpl_text.end());
        tmpl.push_back('\0');
        if (!mkdtemp(tmpl.data())) throw Error(ErrorKind::Internal, "cannot create a private directory for the gdbstub");
        private_dir_ = tmpl.data();
        // QEMU creates the socket in it: a QEMU running as another user
        // needs the directory to be its own; nobody else gets in.
        if (auto owner = options_.gdb_socket_owner; owner && owner->first != 0) {
            if (::chown(private_dir_.c_str(), owner->first, owner->second) != 0)
                throw Error(ErrorKind::Internal, name_ + ": cannot give " + private_dir_ + " to uid " +
                                                     std::to_string(owner->first) + " for QEMU's gdbstub socket");
        }
        std::string path = private_dir_ + "/gdb.sock";
        std::string reply = monitor_->hmp("gdbserver unix:" + path + ",server=on,wait=off");
        if (reply.find("Waiting for gdb") == std::string::npos && reply.find("gdbserver on") == std::string::npos &&
            !std::filesystem::exists(path))
            throw Error(ErrorKind::Unreachable, name_ + ": QEMU did not start its gdbstub: " + reply);
        own_gdbserver_ = true;
        socket = Socket::connect_unix(path, kGdbConnectTimeout);
    }
    auto client = std::make_unique<GdbClient>(std::move(socket), name_);
    try {
        client->handshake(kGdbGreetingWait);
    } catch (const Error& e) {
        throw Error(e.kind(), name_ + ": gdbstub handshake failed (is another client connected?): " + e.what());
    }
    gdb_ = std::move(client);
    set_running(false);  // connecting stops the VM
    registers_ = GdbRegisterMap::parse(gdb_->read_feature_xml("target.xml"),
                                       [this](const std::string& annex) { return gdb_->read_feature_xml(annex); });
    if (gdb_->threads().size() != vcpu_indices_.size())
        throw Error(ErrorKind::Protocol, name_ + ": gdbstub lists " + std::to_string(gdb_->threads().size()) +
                                             " threads but QMP lists " + std::to_string(vcpu_indices_.size()) +
                                             " vCPUs");
}

void QemuMachine::release_gdb() {
    if (gdb_) {
        if (gdb_->running()) gdb_->interrupt();
        if (physical_mode_ && *physical_mode_) gdb_->set_physical_mode(false);
        if (initially_running_) {
            gdb_->detach();  // D;1 resumes the VM
            set_running(true);
        } else {
            gdb_->close();  // closing without detach leaves the VM stopped
            set_running(false);
        }
        gdb_.reset();
    }
    if (own_gdbserver_) {
        monitor_->hmp("gdbserver none");
        own_gdbserver_ = false;
    }
}

int QemuMachine::vcpu_of_thread(const std::string& thread) const {
    auto n = thread_number(thread);
    // QEMU numbers gdb threads cpu_index + 1.
    if (!n || *n < 1 || static_cast<std::size_t>(*n) > vcpu_indices_.size())
        throw Error(ErrorKind::Protocol, name_ + ": gdbstub names unknown thread '" + thread + "'");
    return *n - 1;
}

void QemuMachine::select_vcpu(int vcpu) {
    if (vcpu < 0 || static_cast<std::size_t>(vcpu) >= vcpu_indices_.size())
        throw Error(ErrorKind::Usage, name_ + ": no vCPU " + std::to_string(vcpu) + " (the VM has " +
                                          std::to_string(vcpu_indices_.size()) + ")");
    const std::string& thread = gdb().threads().at(static_cast<std::size_t>(vcpu));
    if (thread != selected_thread_) {
        gdb_->select_thread(thread);
        selected_thread_ = thread;
    }
}

VcpuRegisters QemuMachine::read_registers(int vcpu) {
    require_paused("reading registers");
    select_vcpu(vcpu);
    return registers_->decode(gdb_->read_all_registers_hex());
}

void QemuMachine::write_registers(int vcpu, const VcpuRegisters& regs) {
    require_paused("writing registers");
    VcpuRegisters current = read_registers(vcpu);
    // Only the registers that change are written, one `P` each: a full `G`
    // would also write FPU/SSE state, which belongs to whatever task runs.
    for (const auto& [regnum, value] : registers_->encode_changes(current, regs))
        gdb_->write_register_hex(regnum, value);
}

std::vector<RamPiece> QemuMachine::ram_pieces(GuestPhysAddr addr, std::uint64_t len, const char* what) const {
    auto pieces = split_ram_access(memory_.ranges, addr, len);
    if (!pieces)
        throw Error(ErrorKind::Guest, name_ + ": " + what + " " + std::to_string(len) + " bytes at physical " +
                                          hex(addr.value) + ": not guest RAM (RAM is " +
                                          std::to_string(memory_.ram_size >> 20) + " MiB)");
    return *pieces;
}

void QemuMachine::use_physical_addresses(bool physical) {
    if (physical_mode_ != physical) {
        gdb().set_physical_mode(physical);
        physical_mode_ = physical;
    }
}

void QemuMachine::read_physical(GuestPhysAddr addr, std::span<std::byte> out) {
    auto pieces = ram_pieces(addr, out.size(), "reading");
    switch (memory_.path) {
        case MemoryAccessInfo::Path::MappedFile:
            for (const auto& p : pieces)
                ram_->read(memory_.ranges[p.range].ram_offset + p.offset_in_range,
                           out.subspan(p.buffer_offset, p.length));
            return;
        case MemoryAccessInfo::Path::ProcessMemory:
        case MemoryAccessInfo::Path::GdbStub:
            break;
    }
    // Small reads of a VM hvpatch holds stopped come from whole pages kept
    // until it runs again: one system call or stub round trip per page, not
    // per word. Reads of a page or more go straight through.
    if (!running_ && page_aligned_ram_ && out.size() < StoppedPageCache::kPageSize) {
        stopped_pages_.read(addr.value, out, [this](std::uint64_t page, std::span<std::byte> buf) {
            if (memory_.path == MemoryAccessInfo::Path::ProcessMemory)
                read_process_memory(ram_pieces(GuestPhysAddr{page}, buf.size(), "reading"), buf);
            else
                read_through_gdbstub(GuestPhysAddr{page}, buf);
        });
        return;
    }
    if (memory_.path == MemoryAccessInfo::Path::ProcessMemory) read_process_memory(pieces, out);
    else read_through_gdbstub(addr, out);
}

void QemuMachine::read_process_memory(const std::vector<RamPiece>& pieces, std::span<std::byte> out) {
    for (const auto& p : pieces)
        process_->read(ram_host_addresses_[p.range] + p.offset_in_range, out.subspan(p.buffer_offset, p.length));
}

void QemuMachine::read_through_gdbstub(GuestPhysAddr addr, std::span<std::byte> out) {
    // The stub answers only while the VM is stopped: a read of a running
    // VM stops it for as long as the read takes, as a shared file or the
    // process's memory would let it run.
    bool was_running = running_;
    pause();
    use_physical_addresses(true);
    gdb_->read_memory(addr.value, out);
    if (was_running) resume();
}

void QemuMachine::write_physical(GuestPhysAddr addr, std::span<const std::byte> data) {
    ram_pieces(addr, data.size(), "writing");
    stopped_pages_.drop(addr.value, data.size());
    require_paused("writing guest memory");
    // Through the stub even when RAM is mapped: QEMU then drops any TCG
    // translation of the bytes, which a write to the file would not do.
    use_physical_addresses(true);
    gdb_->write_memory(addr.value, data);
}

void QemuMachine::set_breakpoint(GuestVirtAddr addr) {
    require_paused("setting a breakpoint");
    use_physical_addresses(false);
    gdb_->insert_breakpoint(addr.value);
    breakpoints_.insert(addr.value);
}

void QemuMachine::clear_breakpoint(GuestVirtAddr addr) {
    if (!breakpoints_.count(addr.value)) return;
    bool was_running = running_;
    pause();
    use_physical_addresses(false);
    gdb_->remove_breakpoint(addr.value);
    breakpoints_.erase(addr.value);
    if (was_running) resume();
}

std::optional<BreakpointHit> QemuMachine::run_until_breakpoint(std::chrono::milliseconds timeout) {
    gdb();
    resume();
    std::optional<std::string> stop = gdb_->wait_stop(timeout);
    if (!stop) stop = gdb_->interrupt();
    set_running(false);
    selected_thread_.clear();  // the stub moves its current thread to the one that stopped
    if (!stop) return std::nullopt;
    auto reply = parse_stop_reply(*stop);
    if (!reply || reply->signal != 5 || reply->thread.empty()) return std::nullopt;
    int vcpu = vcpu_of_thread(reply->thread);
    VcpuRegisters regs = read_registers(vcpu);
    if (!breakpoints_.count(regs.rip)) return std::nullopt;
    return BreakpointHit{vcpu, GuestVirtAddr{regs.rip}};
}

}  // namespace hvpatch
