#include "introspect/task_stacks.h"

#include "hvpatch/error.h"
#include "introspect/stacks.h"

namespace hvpatch {
namespace {

int kernel_minor(const std::string& release, int* major) {
    int maj = 0, min = 0;
    if (std::sscanf(release.c_str(), "%d.%d", &maj, &min) != 2)
        throw Error(ErrorKind::Guest, "cannot read the kernel version from release '" + release + "'");
    *major = maj;
    return min;
}

}  // namespace

std::optional<OrcHeader> guest_orc_header(GuestKernel& kernel) {
    auto start = kernel.find_symbol("__start_orc_header");
    if (!start) return std::nullopt;
    const std::uint64_t stop = kernel.symbol("__stop_orc_header");
    if (stop - *start != std::tuple_size_v<OrcHeader>)
        throw Error(ErrorKind::Guest, ".orc_header at " + hex(*start) + " is " + std::to_string(stop - *start) +
                                          " bytes (__stop_orc_header " + hex(stop) + "), not a 20-byte hash");
    OrcHeader header{};
    kernel.memory().read(GuestVirtAddr{*start}, std::as_writable_bytes(std::span(header)));
    return header;
}

OrcFormat guest_orc_format(GuestKernel& kernel) {
    int major = 0;
    int minor = kernel_minor(kernel.info().release, &major);
    return orc_format_for_kernel(major, minor, guest_orc_header(kernel));
}

std::string ResolvedFrame::describe() const {
    if (symbol.empty()) return hex(frame.ip.value);
    std::string s = symbol + "+" + hex_short(offset) + "/" + hex_short(size);
    if (!module.empty()) s += " [" + module + "]";
    return s;
}

std::optional<ResolvedFrame> TaskStack::wait_site() const {
    for (const auto& f : frames)
        if (!f.scheduler) return f;
    return std::nullopt;
}

StackWalker::~StackWalker() = default;

StackWalker::StackWalker(GuestKernel& kernel, std::vector<ForeignCode> foreign)
    : kernel_(kernel), foreign_(std::move(foreign)) {
    const GuestLayouts& l = kernel.layouts();
    layouts_.pt_regs_size = l.regs.size;
    layouts_.regs_ip = l.regs.ip.offset;
    layouts_.regs_sp = l.regs.sp.offset;
    layouts_.regs_bp = l.regs.bp.offset;
    layouts_.regs_cs = l.regs.cs.offset;
    layouts_.regs_flags = l.regs.flags.offset;
    layouts_.regs_orig_ax = l.regs.orig_ax.offset;
    layouts_.regs_r10 = l.regs.r10.offset;
    layouts_.regs_r13 = l.regs.r13.offset;
    layouts_.regs_di = l.regs.di.offset;
    layouts_.regs_dx = l.regs.dx.offset;
    layouts_.frame_size = l.frame.size;
    layouts_.frame_bp = l.frame.bp.offset;
    layouts_.frame_ret_addr = l.frame.ret_addr.offset;

    auto sym = [&](const char* name) { return kernel.symbol(name); };
    if (!kernel.find_symbol("__start_orc_unwind_ip"))
        throw Error(ErrorKind::Guest, "the guest kernel has no ORC unwind tables (not built with CONFIG_UNWINDER_ORC)");
    VmlinuxOrcTables t;
    t.ip_table = GuestVirtAddr{sym("__start_orc_unwind_ip")};
    t.orc_table = GuestVirtAddr{sym("__start_orc_unwind")};
    t.num_entries = (sym("__stop_orc_unwind_ip") - t.ip_table.value) / 4;
    t.lookup_table = GuestVirtAddr{sym("orc_lookup")};
    t.lookup_entries = (sym("orc_lookup_end") - t.lookup_table.value) / 4;
    t.text_start = GuestVirtAddr{sym("_stext")};
    t.text_end = GuestVirtAddr{sym("_etext")};
    if (auto s = kernel.find_symbol("_sinittext")) t.inittext_start = GuestVirtAddr{*s};
    if (auto e = kernel.find_symbol("_einittext")) t.inittext_end = GuestVirtAddr{*e};
    t.format = guest_orc_format(kernel);
    orc_ = std::make_unique<CompositeOrcSource>();
    orc_->add(make_vmlinux_orc(kernel.memory(), t));
    // Module code unwinds with each module's own ORC tables.
    modules_ = std::make_unique<ModuleSymbolResolver>(ModuleSymbolResolver::for_kernel(kernel));
    add_module_orc_sources(*orc_, kernel.memory(), modules_->modules(), t.format);
    for (const ForeignCode& code : foreign_) {
        if (code.orc_entries == 0) continue;
        ModuleOrcTables tables;
        tables.ranges.push_back({code.text_begin, code.text_end});
        tables.ip_table = GuestVirtAddr{code.orc_ip_table};
        tables.orc_table = GuestVirtAddr{code.orc_table};
        tables.num_entries = code.orc_entries;
        tables.format = t.format;
        orc_->add(make_module_orc(kernel.memory(), tables));
    }

    // A new task's inactive_task_frame returns to ret_from_fork_asm (6.6+,
    // where ret_from_fork became C) or ret_from_fork (before).
    ret_from_fork_ = kernel.find_symbol("ret_from_fork_asm").value_or(kernel.find_symbol("ret_from_fork").value_or(0));
    // Code that rewrites return addresses on the stack (function-graph
    // tracer, kretprobes: kretprobe_trampoline up to 5.10,
    // __kretprobe_trampoline to 5.18, arch_rethook_trampoline since): a
    // frame there is unreliable unless recovered.
    for (const char* name :
         {"return_to_handler", "arch_rethook_trampoline", "__kretprobe_trampoline", "kretprobe_trampoline"}) {
        auto all = kernel.symbols().find_all(name);
        if (all.empty()) continue;
        auto res = kernel.symbols().resolve(all.front().address);
        std::uint64_t size = res && res->size ? res->size : 1;
        return_trampolines_.push_back({all.front().address.value, all.front().address.value + size, name});
    }
    // __kernel_text_address(): core and init text, and module text.
    text_ranges_.emplace_back(t.text_start.value, t.text_end.value);
    if (t.inittext_start.value) text_ranges_.emplace_back(t.inittext_start.value, t.inittext_end.value);
    for (const auto& m : modules_->modules()) {
        text_ranges_.emplace_back(m.core.base, m.core.base + m.core.text_size);
        if (m.init.size) text_ranges_.emplace_back(m.init.base, m.init.base + m.init.text_size);
    }
    for (const ForeignCode& code : foreign_) text_ranges_.emplace_back(code.text_begin, code.text_end);
    sched_begin_ = kernel.find_symbol("__sched_text_start").value_or(0);
    sched_end_ = kernel.find_symbol("__sched_text_end").value_or(0);
    lock_begin_ = kernel.find_symbol("__lock_text_start").value_or(0);
    lock_end_ = kernel.find_symbol("__lock_text_end").value_or(0);

    // Each CPU's cpu_entry_area: 6.2+ (and 6.1.y) place them at random
    // slots (_cea_offset), so it is found from the per-CPU pointer to its
    // exception stacks (cea_exception_stacks = &cea->estacks), not from the
    // CPU number.
    const std::uint64_t estacks_in_cea = kernel.btf().offset_of("cpu_entry_area", "estacks");
    const std::uint64_t entry_stack_in_cea = kernel.btf().offset_of("cpu_entry_area", "entry_stack_page");
    KernelMemory& memory = kernel.memory();
    for (int cpu = 0; cpu < kernel.info().nr_cpu_ids; ++cpu) {
        CpuStacks s;
        s.hardirq_stack_ptr = memory.read_u64(GuestVirtAddr{kernel.per_cpu("hardirq_stack_ptr", cpu)});
        s.cea_exception_stacks = memory.read_u64(GuestVirtAddr{kernel.per_cpu("cea_exception_stacks", cpu)});
        if (s.cea_exception_stacks > estacks_in_cea)
            s.entry_stack = s.cea_exception_stacks - estacks_in_cea + entry_stack_in_cea;
        cpus_.push_back(s);
    }

    context_.memory = &kernel.memory();
    context_.orc = orc_.get();
    context_.layouts = layouts_;
    context_.task_stack_padding = kernel.info().stack_top_padding;
    // The same lookup as x86_64_6_1::stack_lookup(), over areas_.
    context_.stack_of = [this](std::uint64_t addr) -> std::optional<StackArea> {
        for (const StackArea& a : areas_)
            if (a.contains(addr)) return a;
        return std::nullopt;
    };
    context_.ret_from_fork = ret_from_fork_;
    context_.return_trampolines = return_trampolines_;
    context_.is_kernel_text = [this](std::uint64_t ip) {
        for (auto [begin, end] : text_ranges_)
            if (ip >= begin && ip < end) return true;
        return false;
    };

    Machine& machine = kernel.machine();
    for (int vcpu : machine.vcpus()) {
        VcpuRegisters regs = machine.read_registers(vcpu);
        vcpu_regs_.push_back(regs);
        // In the kernel GS holds the per-CPU base; in user mode it sits in
        // KERNEL_GS_BASE until the next swapgs. A vCPU frozen in the entry
        // code between the switch to CPL 0 and swapgs (or the reverse on
        // exit) has it in KERNEL_GS_BASE while in kernel mode, so look at
        // the expected register first and at the other one second.
        std::uint64_t first = regs.cpl() == 0 ? regs.gs_base : regs.kernel_gs_base;
        std::uint64_t second = regs.cpl() == 0 ? regs.kernel_gs_base : regs.gs_base;
        std::optional<int> found;
        for (std::uint64_t base : {first, second}) {
            for (int cpu = 0; cpu < kernel.info().nr_cpu_ids && !found; ++cpu)
                if (base != 0 && kernel.per_cpu_offset(cpu) == base) found = cpu;
            if (found) break;
        }
        if (found) vcpu_to_cpu_.emplace_back(vcpu, *found);
    }
}

std::optional<int> StackWalker::cpu_of_vcpu(int vcpu) const {
    for (auto [v, c] : vcpu_to_cpu_)
        if (v == vcpu) return c;
    return std::nullopt;
}

std::vector<StackArea> StackWalker::areas_for(const GuestTask& task, int cpu) const {
    x86_64_6_1::StackInputs in;
    in.task_stack = task.stack_base;
    if (cpu >= 0 && static_cast<std::size_t>(cpu) < cpus_.size()) {
        in.hardirq_stack_ptr = cpus_[static_cast<std::size_t>(cpu)].hardirq_stack_ptr;
        in.cea_exception_stacks = cpus_[static_cast<std::size_t>(cpu)].cea_exception_stacks;
        in.entry_stack = cpus_[static_cast<std::size_t>(cpu)].entry_stack;
    }
    return x86_64_6_1::stack_areas(in);
}

ResolvedFrame StackWalker::resolve(const StackFrame& frame) {
    ResolvedFrame r;
    r.frame = frame;
    // A return address may sit just past a call that ends its function:
    // look it up one byte back, as %pB (sprint_backtrace) does, and print the
    // offset of the address itself. Exact addresses (a vCPU's RIP, a
    // pt_regs ip) are looked up as they are.
    std::uint64_t ip = frame.ip.value;
    bool return_address = frame.kind == FrameKind::Call || frame.kind == FrameKind::TaskSwitch;
    std::uint64_t lookup = return_address ? ip - 1 : ip;
    std::optional<KallsymsTable::Resolved> found = resolve_kernel_address(kernel_.symbols(), *modules_, lookup);
    if (auto& res = found) {
        r.symbol = std::move(res->symbol.name);
        r.offset = ip - res->symbol.address.value;
        r.size = res->size;
        r.module = std::move(res->symbol.module);
    } else {
        for (const ForeignCode& code : foreign_)
            for (const auto& f : code.functions)
                if (lookup >= f.begin && lookup < f.end) {
                    r.symbol = f.name;
                    r.offset = ip - f.begin;
                    r.size = f.end - f.begin;
                    r.module = code.name;
                }
    }
    r.scheduler = (ip >= sched_begin_ && ip < sched_end_) || (ip >= lock_begin_ && ip < lock_end_);
    return r;
}

TaskStack StackWalker::unwind(const GuestTask& task) {
    TaskStack out;
    UnwindStart start;
    int cpu = task.cpu;
    if (task.running_on) {
        cpu = *task.running_on;
        for (auto [vcpu, c] : vcpu_to_cpu_) {
            if (c != cpu) continue;
            const VcpuRegisters& regs = vcpu_regs_[static_cast<std::size_t>(vcpu)];
            out.vcpu = vcpu;
            start.from_vcpu = true;
            start.ip = regs.rip;
            start.sp = regs.rsp;
            start.bp = regs.rbp;
            start.cs = regs.cs;
            start.di = regs.rdi;
            start.dx = regs.rdx;
            start.r10 = regs.r10;
            start.r13 = regs.r13;
            start.ax = regs.rax;
        }
        if (!out.vcpu) {
            out.unwind.reason = "task is current on CPU " + std::to_string(cpu) + " but no vCPU runs as that CPU";
            return out;
        }
    } else {
        start.sp = task.saved_sp;
        start.task_on_cpu = task.on_cpu;
    }
    areas_ = areas_for(task, cpu);
    out.unwind = unwind_stack(context_, start);
    out.frames.reserve(out.unwind.frames.size());
    for (const auto& f : out.unwind.frames) out.frames.push_back(resolve(f));
    return out;
}

}  // namespace hvpatch
