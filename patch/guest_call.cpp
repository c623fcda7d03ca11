#include "patch/guest_call.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <set>
#include <thread>

#include "hvpatch/error.h"
#include "introspect/code_inspect.h"
#include "vmm/interrupt.h"

namespace hvpatch {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr std::uint64_t kRflagsIf = 1ULL << 9;
constexpr std::uint32_t kPreemptNeedResched = 0x80000000U;  // inverted bit in __preempt_count
constexpr std::uint64_t kThreadSize = 16 * 1024;           // x86-64 THREAD_SIZE without KASAN
constexpr std::uint64_t kRel32Reach = 0x7fffffffULL;
constexpr std::size_t kMaxSkipReasons = 8;
constexpr std::size_t kMaxFunctionBytes = 4096;  // functions examined for trap padding
constexpr int kMaxTrapCandidates = 5000;

std::string seconds_text(std::chrono::milliseconds ms) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(ms.count()) / 1000.0);
    return buf;
}

// Removes the breakpoints it holds when it goes (on errors too).
class Breakpoints {
public:
    explicit Breakpoints(Machine& machine) : machine_(machine) {}
    ~Breakpoints() {
        IgnoreInterrupts cleanup;  // clean-up runs to the end (a signal may be why we are here)
        try {
            clear();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "hvpatch: %s: could not remove a breakpoint: %s\n", machine_.name().c_str(),
                         e.what());
        }
    }
    Breakpoints(const Breakpoints&) = delete;
    Breakpoints& operator=(const Breakpoints&) = delete;

    void set(std::uint64_t addr) {
        machine_.set_breakpoint(GuestVirtAddr{addr});
        set_.push_back(addr);
    }
    void clear() {
        while (!set_.empty()) {
            std::uint64_t addr = set_.back();
            set_.pop_back();
            machine_.clear_breakpoint(GuestVirtAddr{addr});
        }
    }
    bool empty() const { return set_.empty(); }

private:
    Machine& machine_;
    std::vector<std::uint64_t> set_;
};

// Leaves the machine paused if it was paused, running otherwise.
class RunStateKeeper {
public:
    explicit RunStateKeeper(Machine& machine) : machine_(machine), was_running_(machine.run_state() == RunState::Running) {}
    ~RunStateKeeper() {
        IgnoreInterrupts cleanup;  // clean-up runs to the end (a signal may be pending)
        try {
            if (was_running_) machine_.resume();
            else machine_.pause();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "hvpatch: %s: could not restore the run state: %s\n", machine_.name().c_str(),
                         e.what());
        }
    }
    RunStateKeeper(const RunStateKeeper&) = delete;
    RunStateKeeper& operator=(const RunStateKeeper&) = delete;

private:
    Machine& machine_;
    bool was_running_;
};

// `current` with the general-purpose registers, RIP and RFLAGS of `saved`:
// everything else (segments, bases, control registers) stays as it is now.
VcpuRegisters with_gprs_of(VcpuRegisters current, const VcpuRegisters& saved) {
    current.rax = saved.rax;
    current.rbx = saved.rbx;
    current.rcx = saved.rcx;
    current.rdx = saved.rdx;
    current.rsi = saved.rsi;
    current.rdi = saved.rdi;
    current.rbp = saved.rbp;
    current.rsp = saved.rsp;
    current.r8 = saved.r8;
    current.r9 = saved.r9;
    current.r10 = saved.r10;
    current.r11 = saved.r11;
    current.r12 = saved.r12;
    current.r13 = saved.r13;
    current.r14 = saved.r14;
    current.r15 = saved.r15;
    current.rip = saved.rip;
    current.rflags = saved.rflags;
    return current;
}

std::chrono::milliseconds remaining(Clock::time_point deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return std::max(left, 0ms);
}

}  // namespace

GuestCaller::GuestCaller(GuestKernel& kernel, GuestCallOptions options)
    : kernel_(kernel), machine_(kernel.machine()), options_(std::move(options)) {
    if (options_.safe_point_entries.empty())
        throw Error(ErrorKind::Usage, "guest calls need at least one safe point entry");
    for (const auto& name : options_.safe_point_entries)
        entries_.emplace_back(name, kernel_.symbols().require(name).address.value);
    // MODULES_VADDR = __START_KERNEL_map + KERNEL_IMAGE_SIZE: 1 GiB with
    // CONFIG_RANDOMIZE_BASE, whose module.c alone has module_load_offset;
    // without that evidence the lower (512 MiB) bound is used.
    modules_vaddr_ = kStartKernelMap + (kernel_.find_symbol("module_load_offset") ? (1ULL << 30) : (512ULL << 20));
    modules_end_ = kModulesEnd;
    find_allocator();  // execmem kernels: the module area from execmem_info
    find_trap();
}

void GuestCaller::find_trap() {
    // An int3 byte that nothing executes: in a function's tail after its
    // last unconditional ret/jmp, where only int3 and nop bytes follow up to
    // the next symbol (on 6.1: `ret; int3 x4` that the kernel's return-thunk
    // patching left of a 5-byte `jmp __x86_return_thunk`, or SLS int3s, then
    // alignment nops), and no branch in the function goes there. A stub
    // breakpoint on it is hit only by a return we arranged; should the
    // breakpoint ever miss, the int3 traps instead of running on.
    std::uint64_t stext = kernel_.symbol("_stext"), etext = kernel_.symbol("_etext");
    std::vector<std::uint64_t> candidates;
    for (const char* name : {"set_memory_ro", "set_memory_rw", "set_memory_x", "set_memory_nx", "module_memfree",
                             "module_alloc", "execmem_alloc", "execmem_free"})
        if (auto addr = kernel_.find_symbol(name)) candidates.push_back(*addr);
    for (const auto& sym : kernel_.symbols().symbols()) {
        if (candidates.size() >= static_cast<std::size_t>(kMaxTrapCandidates)) break;
        if (sym.type == 'T' || sym.type == 't') candidates.push_back(sym.address.value);
    }
    int tried = 0;
    std::string first_reason;
    for (std::uint64_t fn : candidates) {
        auto resolved = kernel_.symbols().resolve(GuestVirtAddr{fn});
        if (!resolved || resolved->offset != 0 || resolved->size < 2 || resolved->size > kMaxFunctionBytes) continue;
        std::uint64_t end = fn + resolved->size;
        if (fn < stext || end > etext) continue;  // not in .text (init text is freed after boot)
        ++tried;
        std::vector<std::byte> code;
        try {
            code = kernel_.memory().read_bytes(GuestVirtAddr{fn}, resolved->size);
        } catch (const Error&) {
            continue;
        }
        auto insns = decode(code, fn, code.size());
        // The tail: trailing int3/nop instructions, after a ret or jmp.
        std::size_t tail = insns.size();
        while (tail > 0 && (insns[tail - 1].mnemonic == "int3" || insns[tail - 1].mnemonic == "nop")) --tail;
        std::string reason;
        std::optional<std::uint64_t> trap;
        if (insns.empty() || insns.back().end() != end) reason = "does not decode up to the next symbol";
        else if (tail == 0 || tail == insns.size()) reason = "no int3/nop tail";
        else if (insns[tail - 1].flow != ControlFlow::Return && insns[tail - 1].flow != ControlFlow::Jump)
            reason = "'" + insns[tail - 1].text() + "' before the tail may fall through";
        else {
            for (std::size_t i = tail; i < insns.size(); ++i)
                if (insns[i].mnemonic == "int3") trap = insns[i].address;  // the last int3
            if (!trap) reason = "only nops in the tail";
            std::uint64_t tail_start = insns[tail].address;
            for (const auto& insn : insns)
                if (insn.branch_target && *insn.branch_target >= tail_start && *insn.branch_target < end)
                    reason = "'" + insn.text() + "' at " + hex(insn.address) + " branches into the tail";
        }
        if (!reason.empty()) {
            if (first_reason.empty()) first_reason = resolved->symbol.name + ": " + reason;
            continue;
        }
        if (kernel_.memory().read_u8(GuestVirtAddr{*trap}) != 0xcc) continue;
        trap_ = *trap;
        return;
    }
    throw Error(ErrorKind::Guest, "no verified int3 padding found in guest kernel text for guest calls (" +
                                      std::to_string(tried) + " functions examined" +
                                      (first_reason.empty() ? std::string() : "; first refusal: " + first_reason) +
                                      ")");
}

void GuestCaller::write_guest_u64(std::uint64_t addr, std::uint64_t value) {
    std::array<std::byte, 8> bytes;
    std::memcpy(bytes.data(), &value, 8);  // x86-64: little-endian like the host
    GuestPhysAddr phys = kernel_.memory().translate(GuestVirtAddr{addr});
    machine_.write_physical(phys, bytes);
}

std::string GuestCaller::check_safe_point(int vcpu, const VcpuRegisters& regs, SafePoint& out) {
    auto entry = std::find_if(entries_.begin(), entries_.end(), [&](const auto& e) { return e.second == regs.rip; });
    if (entry == entries_.end()) return "vCPU " + std::to_string(vcpu) + " stopped at " + hex(regs.rip) + ", no entry";
    std::string where = entry->first + " on vCPU " + std::to_string(vcpu) + ": ";
    if (regs.cpl() != 0) return where + "CPL " + std::to_string(regs.cpl());
    if (!(regs.rflags & kRflagsIf)) return where + "interrupts off (RFLAGS " + hex_short(regs.rflags) + ")";
    int cpu = -1;
    for (int c = 0; c < std::max(kernel_.info().nr_cpu_ids, 1); ++c)
        if (kernel_.per_cpu_offset(c) == regs.gs_base) {
            cpu = c;
            break;
        }
    if (cpu < 0) return where + "GS base " + hex(regs.gs_base) + " is no CPU's per-CPU base";
    KernelMemory& memory = kernel_.memory();
    std::uint32_t preempt = memory.read_u32(GuestVirtAddr{kernel_.per_cpu("__preempt_count", cpu)});
    if ((preempt & ~kPreemptNeedResched) != 0)
        return where + "preempt count " + hex_short(preempt) + " on CPU " + std::to_string(cpu);
    std::uint64_t task = memory.read_u64(GuestVirtAddr{kernel_.per_cpu("current_task", cpu)});
    if (task == 0) return where + "no current task on CPU " + std::to_string(cpu);
    std::uint64_t stack = memory.read_u64(GuestVirtAddr{task + kernel_.layouts().task.stack.offset});
    std::uint64_t top = stack + kThreadSize;
    if (kernel_.find_per_cpu_variable("cpu_current_top_of_stack")) {
        std::uint64_t cpu_top = memory.read_u64(GuestVirtAddr{kernel_.per_cpu("cpu_current_top_of_stack", cpu)});
        const std::uint64_t padding = kernel_.info().stack_top_padding;
        if (cpu_top != top - padding)
            return where + "cpu_current_top_of_stack " + hex(cpu_top) + " is not task->stack " + hex(stack) +
                   " + 16 KiB" + (padding ? " - " + std::to_string(padding) : "");
    }
    if (regs.rsp <= stack || regs.rsp >= top)
        return where + "RSP " + hex(regs.rsp) + " outside the task stack " + hex(stack) + ".." + hex(top);
    if (regs.rsp - stack < options_.min_stack_room + 64)
        return where + "only " + std::to_string(regs.rsp - stack) + " bytes of stack left";
    // The kernel keeps only 8-byte stack alignment (-mpreferred-stack-boundary=3).
    if (regs.rsp % 8 != 0) return where + "RSP " + hex(regs.rsp) + " not 8-byte aligned";
    out.vcpu = vcpu;
    out.cpu = cpu;
    out.task = task;
    out.entry = entry->first;
    out.regs = regs;
    return {};
}

GuestCaller::SafePoint GuestCaller::find_safe_point() {
    const auto deadline = Clock::now() + options_.safe_point_timeout;
    Breakpoints breakpoints(machine_);
    for (;;) {
        machine_.pause();
        // A breakpoint at a vCPU's current RIP would fire again at once: leave
        // such entries out of this round.
        std::set<std::uint64_t> at_rip;
        for (int vcpu : machine_.vcpus()) at_rip.insert(machine_.read_registers(vcpu).rip);
        for (const auto& [name, addr] : entries_)
            if (!at_rip.count(addr)) breakpoints.set(addr);
        auto left = remaining(deadline);
        if (left == 0ms) break;
        std::optional<BreakpointHit> hit;
        if (breakpoints.empty()) {  // every entry is some vCPU's RIP: let them move on
            machine_.resume();
            std::this_thread::sleep_for(1ms);
            machine_.pause();
        } else {
            hit = machine_.run_until_breakpoint(left);
        }
        // Every breakpoint goes before anything else is looked at.
        breakpoints.clear();
        kernel_.memory().clear_cache();  // the guest ran: page tables may have changed
        if (!hit) continue;
        VcpuRegisters regs = machine_.read_registers(hit->vcpu);
        SafePoint point;
        std::string reason = check_safe_point(hit->vcpu, regs, point);
        if (reason.empty()) return point;
        ++last_.skipped_hits;
        if (last_.skip_reasons.size() < kMaxSkipReasons) last_.skip_reasons.push_back(reason);
    }
    std::string entries;
    for (const auto& [name, addr] : entries_) entries += (entries.empty() ? "" : ", ") + name;
    std::string message = "no safe point within " + seconds_text(options_.safe_point_timeout) + " (entries " +
                          entries + "; " + std::to_string(last_.skipped_hits) + " hits failed a check";
    if (!last_.skip_reasons.empty()) message += ", first: " + last_.skip_reasons.front();
    message += "); nothing was changed in the guest";
    throw Error(ErrorKind::Guest, message);
}

std::uint64_t GuestCaller::call(std::string_view function, std::initializer_list<std::uint64_t> args) {
    std::uint64_t address = kernel_.symbols().require(function).address.value;
    return call(address, std::span(args.begin(), args.size()), function);
}

std::uint64_t GuestCaller::call(std::uint64_t address, std::span<const std::uint64_t> args, std::string_view name) {
    GuestCallRequest request{address, std::string(name), std::vector<std::uint64_t>(args.begin(), args.end()), {}};
    return call_sequence({request}).front();
}

std::vector<std::uint64_t> GuestCaller::call_sequence(const std::vector<GuestCallRequest>& requests) {
    if (requests.empty()) return {};
    for (const auto& r : requests)
        if (r.args.size() > 6)
            throw Error(ErrorKind::Usage, "a guest call takes at most 6 integer arguments (" +
                                              std::to_string(r.args.size()) + " given)");
    const auto start = Clock::now();
    last_ = {};
    auto describe = [](const GuestCallRequest& r) {
        std::string text = "guest call " + (r.name.empty() ? hex(r.address) : r.name) + "(";
        for (std::size_t i = 0; i < r.args.size(); ++i) text += (i ? ", " : "") + hex_short(r.args[i]);
        return text + ")";
    };

    RunStateKeeper keep(machine_);
    machine_.pause();
    SafePoint point = find_safe_point();  // paused, no breakpoints left
    last_.safe_point_wait = Clock::now() - start;
    last_.safe_point = point.entry;
    last_.call_vcpu = point.vcpu;
    last_.call_cpu = point.cpu;
    last_.task = point.task;

    const VcpuRegisters saved = point.regs;
    // 16 lower keeps the alignment the syscall entry itself was called with
    // (the kernel is built for 8-byte stack alignment; 16-byte alignment, if
    // the entry had it, is kept too).
    const std::uint64_t call_rsp = saved.rsp - 16;
    // From here until the registers are restored, a SIGINT/SIGTERM must not
    // abandon the call(s): the borrowed task would return into the int3
    // padding with no breakpoint to catch it, and oops. Each call is bounded
    // by call_timeout; the interrupt is honoured at the next wait after it.
    IgnoreInterrupts finish_the_calls;
    Breakpoints trap(machine_);
    trap.set(trap_);
    // Where the borrowed task is now: the safe point, then the trap of the
    // last return (on whichever vCPU it arrived).
    int vcpu = point.vcpu;
    VcpuRegisters here = saved;
    std::vector<std::uint64_t> results;
    const auto call_start = Clock::now();
    for (const GuestCallRequest& request : requests) {
        const std::string call_text = describe(request);
        last_.function = request.name.empty() ? hex(request.address) : request.name;
        last_.address = request.address;
        // Further calls reuse the same borrowed task, at the trap, with the
        // same checked stack: the callee returned with everything balanced.
        VcpuRegisters regs = here;
        std::array<std::uint64_t*, 6> arg_regs{&regs.rdi, &regs.rsi, &regs.rdx, &regs.rcx, &regs.r8, &regs.r9};
        for (std::size_t i = 0; i < request.args.size(); ++i) *arg_regs[i] = request.args[i];
        regs.rax = 0;
        regs.rsp = call_rsp;
        regs.rip = request.address;
        // Below the task's RSP: nothing lives there until the callee runs.
        write_guest_u64(call_rsp, trap_);
        try {
            machine_.write_registers(vcpu, regs);
        } catch (...) {
            // Put back what may have been written; the guest has not run yet.
            machine_.write_registers(vcpu, with_gprs_of(machine_.read_registers(vcpu), saved));
            throw;
        }

        const auto deadline = Clock::now() + options_.call_timeout;
        std::optional<BreakpointHit> back;
        VcpuRegisters at_trap;
        while (!back) {
            auto left = remaining(deadline);
            if (left == 0ms) break;
            // Every vCPU runs: the callee may send IPIs and wait for them.
            auto hit = machine_.run_until_breakpoint(left);
            if (!hit) continue;  // a stop that is not ours (or the timeout): go on until the deadline
            at_trap = machine_.read_registers(hit->vcpu);
            if (at_trap.rip != trap_ || at_trap.rsp != call_rsp + 8)
                throw Error(ErrorKind::Guest,
                            call_text + ": the trap at " + hex(trap_) + " was hit by an unexpected context on vCPU " +
                                std::to_string(hit->vcpu) + " (RIP " + hex(at_trap.rip) + ", RSP " + hex(at_trap.rsp) +
                                ", expected RSP " + hex(call_rsp + 8) + "). THE GUEST IS IN AN UNKNOWN STATE: the call " +
                                "started on vCPU " + std::to_string(vcpu) + " (task " + hex(point.task) +
                                ") has not returned and its registers were not restored");
            back = hit;
        }
        if (!back) {
            trap.clear();
            throw Error(ErrorKind::Timeout,
                        call_text + " did not return within " + seconds_text(options_.call_timeout) +
                            ". THE GUEST IS IN AN UNKNOWN STATE: task " + hex(point.task) + " (called from " +
                            point.entry + " on vCPU " + std::to_string(point.vcpu) +
                            ") is still inside the callee; its registers were not restored and when it returns it " +
                            "runs into int3 padding at " + hex(trap_) + " and oopses. This should not happen; " +
                            "inspect the guest (hvpatch stack --all) before doing anything else");
        }
        // The return may arrive on another vCPU (the task migrated).
        vcpu = back->vcpu;
        here = at_trap;
        results.push_back(at_trap.rax);
        last_.result = at_trap.rax;
        if (request.stop_unless && !request.stop_unless(at_trap.rax)) break;
    }
    last_.call_time = Clock::now() - call_start;
    trap.clear();
    last_.return_vcpu = vcpu;
    machine_.write_registers(vcpu, with_gprs_of(here, saved));
    kernel_.memory().clear_cache();
    last_.total = Clock::now() - start;
    return results;
}

void GuestCaller::find_allocator() {
    if (allocator_) return;
    allocator_ = find_module_allocator(kernel_);
    if (allocator_->problem.empty() && allocator_->area) {
        modules_vaddr_ = allocator_->area->first;
        modules_end_ = allocator_->area->second;
    }
}

std::string GuestCaller::module_allocator() {
    find_allocator();
    if (!allocator_->problem.empty()) throw Error(ErrorKind::Guest, allocator_->problem);
    return allocator_->description;
}

std::uint64_t GuestCaller::allocate_module_memory(std::uint64_t size) {
    const std::string what = module_allocator() + " of " + std::to_string(size) + " bytes";
    std::uint64_t p = allocator_->type ? call(allocator_->alloc, {*allocator_->type, size}) : call(allocator_->alloc, {size});
    if (p == 0) throw Error(ErrorKind::Guest, what + " failed in the guest (NULL)");
    std::string problem;
    if (p < modules_vaddr_ || p >= modules_end_ || size > modules_end_ - p)
        problem = "outside the module area " + hex(modules_vaddr_) + ".." + hex(modules_end_);
    if (problem.empty() && p % 4096 != 0) problem = "not page-aligned";
    std::uint64_t text = kernel_.info().text.value;
    std::uint64_t end = kernel_.find_symbol("_end").value_or(text + kernel_.image().size);
    if (problem.empty() && std::max(p + size, end) - std::min(p, text) > kRel32Reach)
        problem = "not within ±2 GiB of the kernel image " + hex(text) + ".." + hex(end);
    if (!problem.empty()) {
        free_module_memory(p);
        throw Error(ErrorKind::Guest, what + " returned " + hex(p) + ", " + problem + " (freed again)");
    }
    return p;
}

void GuestCaller::set_memory(std::string_view function, std::uint64_t addr, int pages) {
    if (pages <= 0) throw Error(ErrorKind::Usage, std::string(function) + ": page count must be positive");
    std::uint64_t rc = call(function, {addr, static_cast<std::uint64_t>(pages)});
    auto status = static_cast<std::int32_t>(static_cast<std::uint32_t>(rc));
    if (status != 0)
        throw Error(ErrorKind::Guest, std::string(function) + "(" + hex(addr) + ", " + std::to_string(pages) +
                                          ") returned " + std::to_string(status) + " in the guest");
}

void GuestCaller::set_memory_ro(std::uint64_t addr, int pages) { set_memory("set_memory_ro", addr, pages); }
void GuestCaller::set_memory_rw(std::uint64_t addr, int pages) { set_memory("set_memory_rw", addr, pages); }
void GuestCaller::set_memory_x(std::uint64_t addr, int pages) { set_memory("set_memory_x", addr, pages); }
void GuestCaller::set_memory_nx(std::uint64_t addr, int pages) { set_memory("set_memory_nx", addr, pages); }

void GuestCaller::free_module_memory(std::uint64_t addr) {
    module_allocator();
    call(allocator_->free, {addr});
}

namespace {

bool returned_zero(std::uint64_t rc) { return static_cast<std::uint32_t>(rc) == 0; }

void check_sequence(const std::vector<GuestCallRequest>& requests, const std::vector<std::uint64_t>& results) {
    for (std::size_t i = 0; i < results.size(); ++i) {
        if (!requests[i].stop_unless || requests[i].stop_unless(results[i])) continue;
        const auto& r = requests[i];
        throw Error(ErrorKind::Guest, r.name + "(" + hex(r.args.at(0)) + ", " + std::to_string(r.args.at(1)) +
                                          ") returned " + std::to_string(static_cast<std::int32_t>(results[i])) +
                                          " in the guest");
    }
}

}  // namespace

void GuestCaller::protect_module(std::uint64_t base, int text_pages, int rodata_pages) {
    auto request = [&](const char* name, std::uint64_t addr, int pages) {
        return GuestCallRequest{kernel_.symbols().require(name).address.value, name,
                                {addr, static_cast<std::uint64_t>(pages)}, returned_zero};
    };
    std::vector<GuestCallRequest> requests = {request("set_memory_ro", base, text_pages),
                                              request("set_memory_x", base, text_pages)};
    if (rodata_pages > 0) requests.push_back(request("set_memory_ro", base + 4096ULL * text_pages, rodata_pages));
    check_sequence(requests, call_sequence(requests));
}

void GuestCaller::unprotect_and_free_module(std::uint64_t base, int text_pages, int rodata_pages,
                                            bool protected_before) {
    auto request = [&](const char* name, std::uint64_t addr, int pages) {
        return GuestCallRequest{kernel_.symbols().require(name).address.value, name,
                                {addr, static_cast<std::uint64_t>(pages)}, returned_zero};
    };
    std::vector<GuestCallRequest> requests;
    if (protected_before) {
        requests.push_back(request("set_memory_nx", base, text_pages));
        requests.push_back(request("set_memory_rw", base, text_pages + rodata_pages));
    }
    module_allocator();
    requests.push_back({kernel_.symbols().require(allocator_->free).address.value, allocator_->free, {base}, {}});
    check_sequence(requests, call_sequence(requests));
}

}  // namespace hvpatch
