// ORC unwinder on synthetic kernels: ORC tables built the way objtool and
// unwind_init() build them, and stacks laid out the way the entry code,
// __switch_to_asm and call_on_irqstack() lay them out, in a fake guest
// memory. Every scenario is run with each of the three entry formats.
#include <gtest/gtest.h>

#include "region_memory.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/orc_unwind.h"
#include "introspect/stacks.h"

namespace hvpatch {
namespace {

namespace k61 = x86_64_6_1;
using Type = OrcEntry::Type;

using FakeMemory = test::RegionMemory;

OrcEntry call(std::int16_t sp_offset, std::uint8_t sp_reg = orc_reg::kSp, std::uint8_t bp_reg = orc_reg::kUndefined,
              std::int16_t bp_offset = 0) {
    OrcEntry e;
    e.type = Type::Call;
    e.sp_reg = sp_reg;
    e.sp_offset = sp_offset;
    e.bp_reg = bp_reg;
    e.bp_offset = bp_offset;
    return e;
}
OrcEntry regs(Type type, std::int16_t sp_offset = 0) {
    OrcEntry e = call(sp_offset);
    e.type = type;
    e.signal = true;
    return e;
}
OrcEntry of_type(Type type) {
    OrcEntry e;
    e.type = type;
    return e;
}

// The synthetic kernel's text: "functions" at fixed offsets from _stext.
constexpr std::uint64_t kText = 0xffffffff81000000ull;
constexpr std::uint64_t kTextSize = 0x2000;
constexpr std::uint64_t kInitText = 0xffffffff83000000ull;
constexpr std::uint64_t kTables = 0xffffffff82000000ull;
constexpr std::uint64_t kLeaf = kText + 0x100;
constexpr std::uint64_t kSchedule = kText + 0x300;
constexpr std::uint64_t kKthread = kText + 0x400;
constexpr std::uint64_t kRetFromFork = kText + 0x500;
constexpr std::uint64_t kEntrySyscall = kText + 0x600;
constexpr std::uint64_t kDoSyscall = kText + 0x700;
constexpr std::uint64_t kAsmInterrupt = kText + 0x800;
constexpr std::uint64_t kIrqCaller = kText + 0x900;
constexpr std::uint64_t kIrqHandler = kText + 0xa00;
constexpr std::uint64_t kInterrupted = kText + 0xb00;  // UNDEFINED until +0x40, then CALL SP+8
constexpr std::uint64_t kEntryPartial = kText + 0xc00;
constexpr std::uint64_t kDiFunc = kText + 0xd00;
constexpr std::uint64_t kFpFunc = kText + 0xe00;
constexpr std::uint64_t kBackwards = kText + 0xf00;
constexpr std::uint64_t kStuck = kText + 0xf80;
constexpr std::uint64_t kLoop = kText + 0x1000;
constexpr std::uint64_t kReturnToHandler = kText + 0x1100;
constexpr std::uint64_t kBadType = kText + 0x1200;
constexpr std::uint64_t kStartKernel = kInitText + 0x40;

// Stacks (CPU 0).
constexpr std::uint64_t kTaskStack = 0xffffc90000010000ull;
constexpr std::uint64_t kTaskTop = kTaskStack + k61::kThreadSize;
constexpr std::uint64_t kHardirqStackPtr = 0xffffc90000203ff8ull;
constexpr std::uint64_t kIrqTop = kHardirqStackPtr + 8;
constexpr std::uint64_t kCeaExceptionStacks = 0xfffffe0000010000ull;
constexpr std::uint64_t kPtRegs = 168;
constexpr std::uint64_t kFrame = 56;  // inactive_task_frame

// Objtool's table (sorted ips + entries) and unwind_init()'s orc_lookup.
struct Kernel {
    FakeMemory mem;
    std::vector<std::pair<std::uint64_t, OrcEntry>> entries;
    VmlinuxOrcTables tables;
    OrcFormat format;

    explicit Kernel(OrcFormat f) : format(f) {
        add(kText, of_type(Type::Undefined));
        add(kLeaf, call(8));
        add(kText + 0x200, of_type(Type::Undefined));
        add(kSchedule, call(16, orc_reg::kSp, orc_reg::kPrevSp, -16));
        add(kKthread, call(8));
        add(kRetFromFork, of_type(Type::EndOfStack));
        add(kEntrySyscall, regs(Type::Regs));
        add(kDoSyscall, call(8));
        add(kAsmInterrupt, regs(Type::Regs));
        add(kIrqCaller, call(16, orc_reg::kSpIndirect));
        add(kIrqHandler, call(8));
        add(kInterrupted, of_type(Type::Undefined));
        add(kInterrupted + 0x40, call(8));
        add(kEntryPartial, regs(Type::RegsPartial));
        add(kDiFunc, call(0, orc_reg::kDi));
        add(kFpFunc, call(16, orc_reg::kBp, orc_reg::kPrevSp, -16));
        add(kBackwards, call(-16));
        add(kStuck, call(0));
        add(kLoop, call(8));
        add(kReturnToHandler, of_type(Type::EndOfStack));  // UNWIND_HINT_EMPTY in 6.1
        OrcEntry bad = call(8);
        bad.type = Type::Invalid;
        add(kBadType, bad);
        add(kBadType + 0x80, of_type(Type::Undefined));
        add(kInitText, call(8));  // init text: start_kernel & co.
        add(kInitText + 0x100, of_type(Type::Undefined));
    }
    void add(std::uint64_t ip, OrcEntry e) { entries.emplace_back(ip, e); }

    // Reference __orc_find(): a linear scan, independent of the library's.
    std::size_t reference_index(std::uint64_t ip) const {
        std::size_t found = 0;
        for (std::size_t i = 0; i < entries.size(); ++i)
            if (entries[i].first <= ip) found = i;
        return found;
    }

    void build() {
        std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.first < b.first; });
        const std::uint64_t n = entries.size();
        const std::uint64_t ip_table = kTables, orc_table = kTables + 0x1000, lookup = kTables + 0x2000;
        const std::uint64_t blocks = (kTextSize + 255) / 256 + 1;
        mem.map(kTables, 0x3000);
        for (std::uint64_t i = 0; i < n; ++i) {
            std::uint64_t at = ip_table + 4 * i;
            mem.write32(at, static_cast<std::uint32_t>(entries[i].first - at));
            auto raw = encode_orc_entry(entries[i].second, format);
            mem.write(orc_table + 6 * i, raw.data(), 6);
        }
        for (std::uint64_t b = 0; b + 1 < blocks; ++b)
            mem.write32(lookup + 4 * b, static_cast<std::uint32_t>(reference_index(kText + 256 * b)));
        mem.write32(lookup + 4 * (blocks - 1), static_cast<std::uint32_t>(reference_index(kText + kTextSize)));
        tables.ip_table = GuestVirtAddr{ip_table};
        tables.orc_table = GuestVirtAddr{orc_table};
        tables.num_entries = n;
        tables.lookup_table = GuestVirtAddr{lookup};
        tables.lookup_entries = blocks;
        tables.text_start = GuestVirtAddr{kText};
        tables.text_end = GuestVirtAddr{kText + kTextSize};
        tables.inittext_start = GuestVirtAddr{kInitText};
        tables.inittext_end = GuestVirtAddr{kInitText + 0x1000};
        tables.format = format;
    }
};

class OrcUnwind : public ::testing::TestWithParam<OrcFormat> {
protected:
    OrcUnwind() : k(GetParam()) {
        k.build();
        orc = make_vmlinux_orc(k.mem, k.tables);
        k.mem.map(kTaskStack, k61::kThreadSize);
        k.mem.map(kIrqTop - k61::kIrqStackSize, k61::kIrqStackSize);
        k.mem.map(entry_stack(), k61::kEntryStackSize);
        k61::StackInputs in;
        in.task_stack = kTaskStack;
        in.hardirq_stack_ptr = kHardirqStackPtr;
        in.cea_exception_stacks = kCeaExceptionStacks;
        in.entry_stack = entry_stack();
        ctx.memory = &k.mem;
        ctx.orc = orc.get();
        ctx.layouts = UnwindLayouts::x86_64();
        ctx.stack_of = k61::stack_lookup(k61::stack_areas(in));
        ctx.ret_from_fork = kRetFromFork;
    }
    // CPU 0's entry stack in 6.1's unrandomized layout: CPU_ENTRY_AREA_BASE
    // + PAGE_SIZE (the read-only IDT) + PAGE_SIZE (the GDT).
    static std::uint64_t entry_stack() { return 0xfffffe0000002000ull; }

    // A sleeping task: writes the inactive_task_frame below `sp0` (the sp
    // of the first frame) and returns task->thread.sp.
    std::uint64_t switch_frame(std::uint64_t sp0, std::uint64_t ret_addr, std::uint64_t bp = 0) {
        std::uint64_t thread_sp = sp0 - kFrame;
        k.mem.write64(thread_sp + 40, bp);
        k.mem.write64(thread_sp + 48, ret_addr);
        return thread_sp;
    }
    void pt_regs(std::uint64_t at, std::uint64_t ip, std::uint64_t sp, std::uint64_t cs, std::uint64_t bp = 0) {
        k.mem.write64(at + 32, bp);
        k.mem.write64(at + 128, ip);
        k.mem.write64(at + 136, cs);
        k.mem.write64(at + 144, 0x246);
        k.mem.write64(at + 152, sp);
        k.mem.write64(at + 160, cs == 0x33 ? 0x2b : 0x18);
    }
    // The bottom of a kthread: fork frame pt_regs at the top, ret_from_fork
    // having called the thread function. Returns the thread function's sp.
    std::uint64_t kthread_base() {
        pt_regs(kTaskTop - kPtRegs, 0, 0, 0);
        k.mem.write64(kTaskTop - kPtRegs - 8, kRetFromFork + 0x20);
        return kTaskTop - kPtRegs - 8;
    }
    UnwindResult sleeping(std::uint64_t thread_sp) {
        UnwindStart s;
        s.sp = thread_sp;
        return unwind_stack(ctx, s);
    }
    UnwindResult vcpu(std::uint64_t ip, std::uint64_t sp, std::uint64_t cs = 0x10) {
        UnwindStart s;
        s.from_vcpu = true;
        s.ip = ip;
        s.sp = sp;
        s.cs = cs;
        s.di = di;
        return unwind_stack(ctx, s);
    }
    static std::vector<std::uint64_t> ips(const UnwindResult& r) {
        std::vector<std::uint64_t> out;
        for (const StackFrame& f : r.frames) out.push_back(f.ip.value);
        return out;
    }

    Kernel k;
    std::unique_ptr<OrcSource> orc;
    UnwindContext ctx;
    std::uint64_t di = 0;
};

// -- sleeping tasks ---------------------------------------------------------

TEST_P(OrcUnwind, SleepingKthreadEndsAtRetFromForkHint) {
    std::uint64_t sp1 = kthread_base();               // kthread: CALL SP+8
    std::uint64_t sp0 = sp1 - 16;                     // schedule: CALL SP+16, bp at sp0
    k.mem.write64(sp0, 0x1234);
    k.mem.write64(sp0 + 8, kKthread + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(r.end, UnwindEnd::EndOfStackHint);
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kSchedule + 0x10, kKthread + 0x10, kRetFromFork + 0x20}));
    EXPECT_EQ(r.frames[0].kind, FrameKind::TaskSwitch);
    EXPECT_EQ(r.frames[1].kind, FrameKind::Call);
    EXPECT_EQ(r.frames[0].sp, sp0);
    EXPECT_EQ(r.frames[2].sp, kTaskTop - kPtRegs);
    for (const StackFrame& f : r.frames) EXPECT_EQ(f.stack, StackType::Task);
}

TEST_P(OrcUnwind, NewTaskStartsAtRetFromForkWithExactLookup) {
    // ret_addr == ret_from_fork: looked up at ret_from_fork itself (END),
    // not at ret_from_fork - 1 (kthread's CALL entry, which would go on).
    std::uint64_t sp0 = kTaskTop - kPtRegs;
    pt_regs(sp0, 0, 0, 0);
    UnwindResult r = sleeping(switch_frame(sp0, kRetFromFork));
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), std::vector<std::uint64_t>{kRetFromFork});

    ctx.ret_from_fork = 0;  // without it the ip - 1 rule applies and the walk goes wrong
    EXPECT_FALSE(sleeping(switch_frame(sp0, kRetFromFork)).reliable);
}

TEST_P(OrcUnwind, SleepingUserTaskEndsAtUserPtRegs) {
    std::uint64_t regs = kTaskTop - kPtRegs;
    pt_regs(regs, 0x401000, 0x7ffc0000, 0x33);
    k.mem.write64(regs - 8, kEntrySyscall + 0x10);  // do_syscall_64's return address
    std::uint64_t sp0 = regs - 8 - 16;              // schedule called from do_syscall
    k.mem.write64(sp0 + 8, kDoSyscall + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(r.end, UnwindEnd::UserRegs);
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kSchedule + 0x10, kDoSyscall + 0x10, kEntrySyscall + 0x10}));
    EXPECT_NE(r.reason.find(hex(regs)), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, UserPtRegsBelowTheTopOfTheStackAreUnreliable) {
    std::uint64_t regs = kTaskTop - kPtRegs - 64;
    pt_regs(regs, 0x401000, 0x7ffc0000, 0x33);
    k.mem.write64(regs - 8, kEntrySyscall + 0x10);
    std::uint64_t sp0 = regs - 8 - 16;
    k.mem.write64(sp0 + 8, kDoSyscall + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("not at the top"), std::string::npos) << r.reason;
}

// Preempted by an interrupt: schedule ← asm_interrupt (REGS) ← the
// interrupted function ← kthread ← ret_from_fork.
TEST_P(OrcUnwind, InterruptedInKernelCrossesPtRegs) {
    std::uint64_t kthread_sp = kthread_base();
    std::uint64_t fn_sp = kthread_sp - 8;  // the interrupted function, CALL SP+8
    k.mem.write64(fn_sp, kKthread + 0x10);
    std::uint64_t regs = fn_sp - kPtRegs;
    // Interrupted exactly at the first byte of a CALL entry whose previous
    // byte is UNDEFINED: only the exact (signal) lookup succeeds.
    pt_regs(regs, kInterrupted + 0x40, fn_sp, 0x10, 0x5555);
    std::uint64_t sp0 = regs - 16;
    k.mem.write64(sp0 + 8, kAsmInterrupt + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kSchedule + 0x10, kAsmInterrupt + 0x10, kInterrupted + 0x40,
                                                  kKthread + 0x10, kRetFromFork + 0x20}));
    ASSERT_EQ(r.frames.size(), 5u);
    EXPECT_TRUE(r.frames[2].interrupt_frame);
    EXPECT_EQ(r.frames[2].kind, FrameKind::Regs);
    EXPECT_FALSE(r.frames[3].interrupt_frame);
}

TEST_P(OrcUnwind, InterruptedAtAnUndefinedInstructionIsUnreliable) {
    std::uint64_t fn_sp = kthread_base() - 8;
    std::uint64_t regs = fn_sp - kPtRegs;
    pt_regs(regs, kInterrupted + 0x3f, fn_sp, 0x10);
    std::uint64_t sp0 = regs - 16;
    k.mem.write64(sp0 + 8, kAsmInterrupt + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("UNDEFINED"), std::string::npos) << r.reason;
    EXPECT_NE(r.reason.find(hex(kInterrupted + 0x3f)), std::string::npos) << r.reason;
}

// -- running tasks (frozen vCPU) ---------------------------------------------

TEST_P(OrcUnwind, VcpuOnIrqStackCrossesToTaskStack) {
    // Task stack: kthread ← interrupted fn ← pt_regs ← irq_caller's frame
    // (a pushed register and the return into asm_interrupt).
    std::uint64_t fn_sp = kthread_base() - 8;
    k.mem.write64(fn_sp, kKthread + 0x10);
    std::uint64_t regs = fn_sp - kPtRegs;
    pt_regs(regs, kInterrupted + 0x40, fn_sp, 0x10);
    std::uint64_t switch_sp = regs - 16;  // irq_caller's sp when it switched stacks
    k.mem.write64(switch_sp + 8, kAsmInterrupt + 0x10);
    // IRQ stack: the top word holds the old sp; the handler's return address below.
    k.mem.write64(kIrqTop - 8, switch_sp);
    k.mem.write64(kIrqTop - 16, kIrqCaller + 0x10);
    UnwindResult r = vcpu(kIrqHandler + 0x20, kIrqTop - 16);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kIrqHandler + 0x20, kIrqCaller + 0x10, kAsmInterrupt + 0x10,
                                                  kInterrupted + 0x40, kKthread + 0x10, kRetFromFork + 0x20}));
    ASSERT_EQ(r.frames.size(), 6u);
    EXPECT_EQ(r.frames[0].kind, FrameKind::Vcpu);
    EXPECT_EQ(r.frames[0].stack, StackType::Irq);
    EXPECT_EQ(r.frames[1].stack, StackType::Irq);
    EXPECT_EQ(r.frames[2].stack, StackType::Task);
    EXPECT_EQ(r.frames[2].stack_name, "task");
}

TEST_P(OrcUnwind, ReturningToAnUnwoundStackIsUnreliable) {
    // As above, but the interrupted frame's saved sp points back into the
    // IRQ stack: the kernel's stack_mask refuses the second visit.
    std::uint64_t regs = kTaskTop - kPtRegs - 256;
    pt_regs(regs, kInterrupted + 0x40, kIrqTop - 0x1000, 0x10);
    std::uint64_t switch_sp = regs - 16;
    k.mem.write64(switch_sp + 8, kAsmInterrupt + 0x10);
    k.mem.write64(kIrqTop - 8, switch_sp);
    k.mem.write64(kIrqTop - 16, kIrqCaller + 0x10);
    k.mem.write64(kIrqTop - 0x1000, kKthread + 0x10);
    UnwindResult r = vcpu(kIrqHandler + 0x20, kIrqTop - 16);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("already unwound"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, SleepingTaskMayNotUseOtherStacks) {
    // The same IRQ-stack picture, but as a sleeping task: only the task
    // stack exists for it.
    std::uint64_t thread_sp = kIrqTop - 0x100;
    k.mem.write64(thread_sp + 48, kSchedule + 0x10);
    UnwindResult r = sleeping(thread_sp);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("not on any stack"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, VcpuInUserModeHasNoKernelFrames) {
    UnwindResult r = vcpu(0x401000, 0x7ffc0000, 0x33);
    EXPECT_TRUE(r.reliable);
    EXPECT_EQ(r.end, UnwindEnd::UserModeVcpu);
    EXPECT_TRUE(r.frames.empty());
}

TEST_P(OrcUnwind, VcpuInEntryCodeWithIretFrameOnEntryStack) {
    // An interrupt from user mode caught before the entry code left the
    // entry stack: the hardware iret frame is at its top.
    std::uint64_t top = entry_stack() + k61::kEntryStackSize;
    std::uint64_t iret = top - 40;
    pt_regs(iret - 128, 0x401000, 0x7ffc0000, 0x33);
    UnwindResult r = vcpu(kEntryPartial, iret);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(r.end, UnwindEnd::UserRegs);
    EXPECT_EQ(ips(r), std::vector<std::uint64_t>{kEntryPartial});
    EXPECT_NE(r.reason.find("entry"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, VcpuRegisterBasedEntryUsesLiveRegisters) {
    // ORC_REG_DI: the previous sp is in rdi (entry code); the vCPU's
    // registers are the full regs it is taken from.
    std::uint64_t kthread_sp = kthread_base();
    k.mem.write64(kthread_sp - 8, kKthread + 0x10);
    di = kthread_sp;
    UnwindResult r = vcpu(kDiFunc + 4, kthread_sp - 0x80);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kDiFunc + 4, kKthread + 0x10, kRetFromFork + 0x20}));
}

TEST_P(OrcUnwind, RegisterBasedEntryWithoutRegsIsUnreliable) {
    // A return address into code whose ORC needs rdi: no pt_regs to read it from.
    std::uint64_t sp0 = kthread_base() - 16;
    k.mem.write64(sp0 + 8, kDiFunc + 5);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("missing RDI"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, FramePointerBasedEntryRestoresBp) {
    // sp_reg BP: prev sp = bp + 16, saved bp at prev sp - 16.
    std::uint64_t kthread_sp = kthread_base();
    std::uint64_t bp = kthread_sp - 16;
    k.mem.write64(bp, 0xabcd);
    k.mem.write64(bp + 8, kKthread + 0x10);
    UnwindStart s;
    s.from_vcpu = true;
    s.ip = kFpFunc + 8;
    s.sp = bp - 0x40;
    s.bp = bp;
    s.cs = 0x10;
    UnwindResult r = unwind_stack(ctx, s);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kFpFunc + 8, kKthread + 0x10, kRetFromFork + 0x20}));
}

TEST_P(OrcUnwind, BpRestoredFromTheStackFeedsTheNextFrame) {
    // schedule saved the caller's bp (bp_reg PREV_SP - 16); the caller's
    // own ORC entry is bp-based (sp_reg BP), so only the restored bp finds it.
    std::uint64_t kthread_sp = kthread_base();
    std::uint64_t bp = kthread_sp - 16;
    k.mem.write64(bp + 8, kKthread + 0x10);
    std::uint64_t s0 = bp - 0x40;
    k.mem.write64(s0, bp);
    k.mem.write64(s0 + 8, kFpFunc + 8);
    UnwindResult r = vcpu(kSchedule + 0x10, s0);  // the vCPU's own rbp is 0
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kSchedule + 0x10, kFpFunc + 8, kKthread + 0x10, kRetFromFork + 0x20}));
}

TEST_P(OrcUnwind, VcpuStackPointerOutsideAnyStack) {
    UnwindResult r = vcpu(kLeaf, 0xffff888012345678ull);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("0xffff888012345678"), std::string::npos) << r.reason;
    // Where the vCPU was is still reported: one frame, its RIP.
    ASSERT_EQ(r.frames.size(), 1u);
    EXPECT_EQ(r.frames[0].ip.value, kLeaf);
    EXPECT_EQ(r.frames[0].kind, FrameKind::Vcpu);
}

TEST_P(OrcUnwind, VcpuRipWithoutOrcDataIsStillTheFirstFrame) {
    std::uint64_t nowhere = 0xffffffffc0ffee00ull;  // no ORC source covers it
    UnwindResult r = vcpu(nowhere, kTaskTop - 0x100);
    EXPECT_FALSE(r.reliable);
    ASSERT_EQ(r.frames.size(), 1u) << r.reason;
    EXPECT_EQ(r.frames[0].ip.value, nowhere);
    EXPECT_EQ(r.frames[0].kind, FrameKind::Vcpu);
}

TEST_P(OrcUnwind, TaskOnCpuIsNotWalkedAsSleeping) {
    UnwindStart s;
    s.sp = kTaskTop - 0x200;
    s.task_on_cpu = true;
    UnwindResult r = unwind_stack(ctx, s);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("on_cpu"), std::string::npos) << r.reason;
}

// -- bad data ------------------------------------------------------------------

TEST_P(OrcUnwind, MissingOrcEntryNamesTheAddress) {
    std::uint64_t sp0 = kthread_base() - 16;
    const std::uint64_t bpf = 0xffffffffa0001234ull;  // generated code: no ORC
    k.mem.write64(sp0 + 8, bpf);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_EQ(r.end, UnwindEnd::Failed);
    EXPECT_NE(r.reason.find("no ORC data for " + hex(bpf)), std::string::npos) << r.reason;
    EXPECT_EQ(r.frames.size(), 2u);  // schedule and the unknown frame
}

TEST_P(OrcUnwind, NotKernelTextIsUnreliableWhenTheCallerKnows) {
    ctx.is_kernel_text = [](std::uint64_t ip) { return ip != kKthread + 0x10; };
    std::uint64_t sp0 = kthread_base() - 16;
    k.mem.write64(sp0 + 8, kKthread + 0x10);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("not kernel text"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, ZeroReturnAddressIsUnreliable) {
    std::uint64_t sp0 = kthread_base() - 16;
    k.mem.write64(sp0 + 8, 0);
    UnwindResult r = sleeping(switch_frame(sp0, kSchedule + 0x10));
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("address 0"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, SpGoingBackwardsIsUnreliable) {
    for (std::uint64_t fn : {kBackwards + 4, kStuck + 4}) {
        std::uint64_t sp = kTaskTop - 0x400;
        k.mem.write64(sp - 8, kLeaf + 1);
        k.mem.write64(sp - 16, kLeaf + 1);
        UnwindResult r = vcpu(fn, sp);
        EXPECT_FALSE(r.reliable);
        EXPECT_NE(r.reason.find("wrong direction"), std::string::npos) << r.reason;
        EXPECT_EQ(r.frames.size(), 1u);
    }
}

TEST_P(OrcUnwind, EndlessChainIsCutAtMaxFrames) {
    // Every slot of the task stack is the same return address into a
    // CALL SP+8 function: sp grows, the walk would run to the stack's end.
    for (std::uint64_t a = kTaskStack; a < kTaskTop; a += 8) k.mem.write64(a, kLoop + 0x10);
    ctx.max_frames = 32;
    UnwindResult r = vcpu(kLoop + 0x10, kTaskStack + 8);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("more than 32 frames"), std::string::npos) << r.reason;
    EXPECT_EQ(r.frames.size(), 32u);

    ctx.max_frames = 100000;  // the stack's end stops it then
    r = vcpu(kLoop + 0x10, kTaskStack + 8);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("not on any stack"), std::string::npos) << r.reason;
    EXPECT_LE(r.frames.size(), k61::kThreadSize / 8);
}

TEST_P(OrcUnwind, UnreadableStackMemoryIsUnreliable) {
    // The task stack is known, but only its lowest page is mapped.
    FakeMemory holes;
    std::vector<std::byte> tables(0x3000);
    k.mem.read(GuestVirtAddr{kTables}, tables);
    holes.map(kTables, tables.size());
    holes.write(kTables, tables.data(), tables.size());
    holes.map(kTaskStack, 0x1000);
    auto source = make_vmlinux_orc(holes, k.tables);
    ctx.memory = &holes;
    ctx.orc = source.get();
    std::uint64_t sp = kTaskStack + 0xff8;
    holes.write64(sp, kLoop + 0x10);  // readable; the next return address is on the missing page
    UnwindResult r = vcpu(kLoop + 0x10, sp);
    EXPECT_FALSE(r.reliable);
    EXPECT_EQ(r.frames.size(), 2u);
    EXPECT_NE(r.reason.find("unreadable"), std::string::npos) << r.reason;
    EXPECT_NE(r.reason.find(hex(kTaskStack + 0x1000)), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, UnknownEntryTypeIsUnreliable) {
    UnwindResult r = vcpu(kBadType + 4, kTaskTop - 0x100);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("unknown ORC entry type"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, InconsistentLayoutsAreUnreliable) {
    ctx.layouts.regs_cs = 4096;
    UnwindResult r = vcpu(kLeaf, kTaskTop - 0x100);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("layout"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, RewrittenReturnAddressNeedsRecovery) {
    ctx.return_trampolines.push_back({kReturnToHandler, kReturnToHandler + 0x40, "return_to_handler"});
    std::uint64_t sp0 = kthread_base() - 16;
    k.mem.write64(sp0 + 8, kReturnToHandler);  // the graph tracer hooked schedule's return
    std::uint64_t thread_sp = switch_frame(sp0, kSchedule + 0x10);
    UnwindResult r = sleeping(thread_sp);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("return_to_handler"), std::string::npos) << r.reason;

    std::uint64_t asked_slot = 0;
    ctx.recover_return_address = [&](std::uint64_t, std::uint64_t slot) -> std::optional<std::uint64_t> {
        asked_slot = slot;
        return kKthread + 0x10;
    };
    r = sleeping(thread_sp);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(asked_slot, sp0 + 8);
    ASSERT_EQ(r.frames.size(), 3u);
    EXPECT_EQ(r.frames[1].ip.value, kKthread + 0x10);
    EXPECT_TRUE(r.frames[1].recovered);

    // Caught inside the trampoline: the caller's address is not on the stack.
    r = vcpu(kReturnToHandler + 8, kTaskTop - 0x100);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("inside return_to_handler"), std::string::npos) << r.reason;
}

TEST_P(OrcUnwind, InitTextUsesTheSlowLookup) {
    // The boot CPU's idle task keeps start_kernel & co. (init text) on its stack.
    std::uint64_t sp = kthread_base();
    k.mem.write64(sp - 8, kRetFromFork + 0x20);  // stands in for secondary_startup_64's END
    UnwindResult r = vcpu(kStartKernel, sp - 8);
    EXPECT_TRUE(r.reliable) << r.reason;
    EXPECT_EQ(ips(r), (std::vector<std::uint64_t>{kStartKernel, kRetFromFork + 0x20}));

    k.tables.inittext_start = GuestVirtAddr{0};
    auto no_init = make_vmlinux_orc(k.mem, k.tables);
    ctx.orc = no_init.get();
    EXPECT_FALSE(vcpu(kStartKernel, sp - 8).reliable);
}

// -- lookup --------------------------------------------------------------------

TEST_P(OrcUnwind, LookupMatchesTheKernelsSearchForEveryTextByte) {
    for (std::uint64_t ip = kText; ip < kText + kTextSize; ++ip) {
        std::optional<OrcEntry> got = orc->find(ip);
        ASSERT_TRUE(got) << hex(ip);
        OrcEntry want = decode_orc_entry(encode_orc_entry(k.entries[k.reference_index(ip)].second, GetParam()).data(),
                                         GetParam());
        ASSERT_EQ(*got, want) << hex(ip);
    }
    EXPECT_FALSE(orc->find(kText - 1));
    EXPECT_FALSE(orc->find(kText + kTextSize));
    EXPECT_FALSE(orc->find(0));
    EXPECT_TRUE(orc->find(kInitText + 0x10));
}

TEST_P(OrcUnwind, LookupIsCached) {
    ASSERT_TRUE(orc->find(kSchedule + 0x10));
    int before = k.mem.reads;
    ASSERT_TRUE(orc->find(kSchedule + 0x10));
    EXPECT_EQ(k.mem.reads, before);
}

TEST_P(OrcUnwind, CorruptLookupTableGivesNoEntry) {
    k.mem.write32(k.tables.lookup_table.value + 4 * 3, 0xffffffffu);  // block 3's start past the table
    auto source = make_vmlinux_orc(k.mem, k.tables);
    EXPECT_FALSE(source->find(kText + 3 * 256 + 5));
    k.tables.lookup_entries = 1;
    auto tiny = make_vmlinux_orc(k.mem, k.tables);
    EXPECT_FALSE(tiny->find(kText + 5));
}

INSTANTIATE_TEST_SUITE_P(Formats, OrcUnwind,
                         ::testing::Values(OrcFormat::V1, OrcFormat::V2, OrcFormat::V3, OrcFormat::V4),
                         [](const auto& info) {
                             switch (info.param) {
                                 case OrcFormat::V1: return std::string("V1");
                                 case OrcFormat::V2: return std::string("V2");
                                 case OrcFormat::V3: return std::string("V3");
                                 case OrcFormat::V4: return std::string("V4");
                             }
                             return std::string("X");
                         });

// -- modules and trampolines --------------------------------------------------

TEST(OrcSources, ModuleTablesAndFtraceTrampolines) {
    Kernel k(OrcFormat::V1);
    k.build();
    constexpr std::uint64_t kMod = 0xffffffffc0001000ull, kModTables = 0xffffffffc0010000ull;
    k.mem.map(kModTables, 0x100);
    const std::pair<std::uint64_t, OrcEntry> mod[] = {{kMod, call(24)}, {kMod + 0x800, of_type(Type::Undefined)}};
    for (int i = 0; i < 2; ++i) {
        std::uint64_t at = kModTables + 4 * i;
        k.mem.write32(at, static_cast<std::uint32_t>(mod[i].first - at));
        auto raw = encode_orc_entry(mod[i].second, OrcFormat::V1);
        k.mem.write(kModTables + 0x40 + 6 * i, raw.data(), 6);
    }
    ModuleOrcTables mt;
    mt.ranges = {{kMod, kMod + 0x1000}};
    mt.ip_table = GuestVirtAddr{kModTables};
    mt.orc_table = GuestVirtAddr{kModTables + 0x40};
    mt.num_entries = 2;
    CompositeOrcSource all;
    all.add(make_vmlinux_orc(k.mem, k.tables));
    all.add(make_module_orc(k.mem, mt));
    all.add_ftrace_trampoline(0xffffffffc0100000ull, 0x100, kSchedule);

    ASSERT_TRUE(all.find(kMod + 0x10));
    EXPECT_EQ(all.find(kMod + 0x10)->sp_offset, 24);
    EXPECT_EQ(all.find(kMod + 0x900)->type, Type::Undefined);
    EXPECT_FALSE(all.find(kMod + 0x1000));
    EXPECT_EQ(all.find(kLeaf)->sp_offset, 8);
    auto tramp = all.find(0xffffffffc0100010ull);
    ASSERT_TRUE(tramp);
    EXPECT_EQ(tramp->sp_offset, 16);  // schedule's entry
    EXPECT_FALSE(all.find(0xffffffffc0100100ull));
}

TEST(OrcSources, UnreadableTablesThrowGuestErrors) {
    FakeMemory empty;
    VmlinuxOrcTables t;
    t.ip_table = GuestVirtAddr{kTables};
    t.orc_table = GuestVirtAddr{kTables + 0x1000};
    t.num_entries = 10;
    t.lookup_table = GuestVirtAddr{kTables + 0x2000};
    t.lookup_entries = 33;
    t.text_start = GuestVirtAddr{kText};
    t.text_end = GuestVirtAddr{kText + kTextSize};
    auto source = make_vmlinux_orc(empty, t);
    try {
        source->find(kLeaf);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
    }
    // ... which the unwinder turns into an unreliable verdict.
    empty.map(kTaskStack, k61::kThreadSize);
    UnwindContext ctx;
    ctx.memory = &empty;
    ctx.orc = source.get();
    ctx.layouts = UnwindLayouts::x86_64();
    ctx.stack_of = k61::stack_lookup({*k61::task_stack_area(kTaskStack)});
    UnwindStart s;
    s.from_vcpu = true;
    s.ip = kLeaf;
    s.sp = kTaskTop - 64;
    UnwindResult r = unwind_stack(ctx, s);
    EXPECT_FALSE(r.reliable);
    EXPECT_NE(r.reason.find("ORC data for"), std::string::npos) << r.reason;
}

// -- entry formats: known bit patterns ------------------------------------------

OrcEntry decode(std::uint16_t flags, OrcFormat f, std::int16_t sp = 16, std::int16_t bp = -16) {
    auto usp = static_cast<std::uint16_t>(sp), ubp = static_cast<std::uint16_t>(bp);
    const std::byte raw[6] = {std::byte(usp & 0xff), std::byte(usp >> 8), std::byte(ubp & 0xff),
                              std::byte(ubp >> 8),   std::byte(flags & 0xff), std::byte(flags >> 8)};
    return decode_orc_entry(raw, f);
}

TEST(OrcFormats, V1BitPatterns) {
    OrcEntry e = decode(0x0115, OrcFormat::V1);  // sp_reg SP, bp_reg PREV_SP, type REGS
    EXPECT_EQ(e.sp_offset, 16);
    EXPECT_EQ(e.bp_offset, -16);
    EXPECT_EQ(e.sp_reg, orc_reg::kSp);
    EXPECT_EQ(e.bp_reg, orc_reg::kPrevSp);
    EXPECT_EQ(e.type, Type::Regs);
    EXPECT_TRUE(e.signal);
    EXPECT_EQ(decode(0x0015, OrcFormat::V1).type, Type::Call);
    EXPECT_FALSE(decode(0x0015, OrcFormat::V1).signal);
    EXPECT_EQ(decode(0x0215, OrcFormat::V1).type, Type::RegsPartial);
    EXPECT_TRUE(decode(0x0215, OrcFormat::V1).signal);
    EXPECT_EQ(decode(0x0315, OrcFormat::V1).type, Type::Invalid);
    EXPECT_EQ(decode(0x0400, OrcFormat::V1).type, Type::EndOfStack);  // sp_reg UNDEFINED, end
    EXPECT_EQ(decode(0x0000, OrcFormat::V1).type, Type::Undefined);
    EXPECT_EQ(decode(0x0405, OrcFormat::V1).type, Type::Call);        // end ignored with sp_reg set
}

TEST(OrcFormats, V2BitPatterns) {
    OrcEntry e = decode(0x0415, OrcFormat::V2);  // CALL with the signal bit
    EXPECT_EQ(e.type, Type::Call);
    EXPECT_TRUE(e.signal);
    EXPECT_EQ(decode(0x0800, OrcFormat::V2).type, Type::EndOfStack);  // end moved to bit 11
    EXPECT_EQ(decode(0x0400, OrcFormat::V2).type, Type::Undefined);   // bit 10 is signal now
    EXPECT_EQ(decode(0x0115, OrcFormat::V2).type, Type::Regs);
    EXPECT_FALSE(decode(0x0115, OrcFormat::V2).signal);
}

TEST(OrcFormats, V3BitPatterns) {
    EXPECT_EQ(decode(0x0000, OrcFormat::V3).type, Type::Undefined);
    EXPECT_EQ(decode(0x0100, OrcFormat::V3).type, Type::EndOfStack);
    EXPECT_EQ(decode(0x0215, OrcFormat::V3).type, Type::Call);
    EXPECT_FALSE(decode(0x0215, OrcFormat::V3).signal);
    OrcEntry e = decode(0x0b15, OrcFormat::V3);  // REGS, signal
    EXPECT_EQ(e.type, Type::Regs);
    EXPECT_TRUE(e.signal);
    EXPECT_EQ(e.sp_reg, orc_reg::kSp);
    EXPECT_EQ(e.bp_reg, orc_reg::kPrevSp);
    EXPECT_EQ(decode(0x0415, OrcFormat::V3).type, Type::RegsPartial);
    EXPECT_EQ(decode(0x0515, OrcFormat::V3).type, Type::Invalid);
    EXPECT_EQ(decode(0x0097, OrcFormat::V3).sp_reg, orc_reg::kR13);
    EXPECT_EQ(decode(0x0097, OrcFormat::V3).bp_reg, 9);
}

TEST(OrcFormats, EncodeRoundTrips) {
    for (OrcFormat f : {OrcFormat::V1, OrcFormat::V2, OrcFormat::V3, OrcFormat::V4})
        for (Type t : {Type::Undefined, Type::EndOfStack, Type::Call, Type::Regs, Type::RegsPartial}) {
            OrcEntry e = t == Type::Call ? call(-40, orc_reg::kBp, orc_reg::kPrevSp, 24) : regs(t, 8);
            if (t == Type::Undefined || t == Type::EndOfStack) e = of_type(t);
            OrcEntry back = decode_orc_entry(encode_orc_entry(e, f).data(), f);
            back.raw_flags = 0;
            EXPECT_EQ(back, e) << to_string(f) << " " << to_string(t);
        }
}

constexpr OrcHeader kHash612 = {0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9,
                                0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25, 0xea, 0xb3, 0xfe, 0x24};
constexpr OrcHeader kHash72 = {0x13, 0x7c, 0x36, 0xad, 0x76, 0x27, 0xc4, 0xdd, 0x55, 0x93,
                               0x21, 0x76, 0xbb, 0x0e, 0xcd, 0xbd, 0x50, 0x41, 0xfc, 0x82};

TEST(OrcFormats, FormatForKernel) {
    EXPECT_EQ(orc_format_for_kernel(4, 14, std::nullopt), OrcFormat::V1);
    EXPECT_EQ(orc_format_for_kernel(5, 10, std::nullopt), OrcFormat::V1);
    EXPECT_EQ(orc_format_for_kernel(6, 1, std::nullopt), OrcFormat::V1);
    EXPECT_EQ(orc_format_for_kernel(6, 2, std::nullopt), OrcFormat::V1);
    EXPECT_EQ(orc_format_for_kernel(6, 3, std::nullopt), OrcFormat::V2);
    EXPECT_EQ(orc_format_for_kernel(6, 4, kHash612), OrcFormat::V3);
    EXPECT_EQ(orc_format_for_kernel(6, 12, kHash612), OrcFormat::V3);
    EXPECT_EQ(orc_format_for_kernel(7, 2, kHash72), OrcFormat::V4);
    EXPECT_EQ(orc_format_for_kernel(6, 1, kHash612), OrcFormat::V3);  // the header wins (a backport)
    EXPECT_EQ(to_hex(kHash72), "137c36ad7627c4dd55932176bb0ecdbd5041fc82");
}

TEST(OrcFormats, UnknownOrMissingHeaderIsRefused) {
    OrcHeader other = kHash72;
    other[19] ^= 1;
    try {
        orc_format_for_kernel(7, 3, other);
        FAIL() << "an unknown hash was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_NE(std::string(e.what()).find("137c36ad7627c4dd55932176bb0ecdbd5041fc83"), std::string::npos) << e.what();
    }
    EXPECT_THROW(orc_format_for_kernel(6, 12, std::nullopt), Error);  // 6.4+ always has one
}

TEST(OrcFormats, SevenXRegistersAreRenumbered) {
    // flags: sp_reg 3 (SP in 7.x), bp_reg 8 (PREV_SP in 7.x), type CALL (2).
    const std::byte raw[6] = {std::byte{0x08}, std::byte{0}, std::byte{0xf0}, std::byte{0xff},
                              std::byte{0x83}, std::byte{0x02}};
    OrcEntry v4 = decode_orc_entry(raw, OrcFormat::V4);
    EXPECT_EQ(v4.sp_reg, orc_reg::kSp);
    EXPECT_EQ(v4.bp_reg, orc_reg::kPrevSp);
    EXPECT_EQ(v4.type, Type::Call);
    OrcEntry v3 = decode_orc_entry(raw, OrcFormat::V3);  // the same bytes in 6.x numbers
    EXPECT_EQ(v3.sp_reg, orc_reg::kDi);
    EXPECT_EQ(v3.bp_reg, orc_reg::kBpIndirect);
    // AX (7.x only) and numbers past the last register.
    const std::byte ax[6] = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0x01}, std::byte{0x03}};
    EXPECT_EQ(decode_orc_entry(ax, OrcFormat::V4).sp_reg, orc_reg::kAx);
    const std::byte eleven[6] = {std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0x0b}, std::byte{0x03}};
    EXPECT_EQ(decode_orc_entry(eleven, OrcFormat::V4).sp_reg, orc_reg::kUnknown);
    EXPECT_EQ(decode_orc_entry(eleven, OrcFormat::V3).sp_reg, orc_reg::kUnknown);
}

// -- stack layouts ----------------------------------------------------------------

TEST(Stacks, Linux61Layout) {
    k61::StackInputs in;
    in.task_stack = kTaskStack;
    in.hardirq_stack_ptr = kHardirqStackPtr;
    in.cea_exception_stacks = kCeaExceptionStacks;
    in.entry_stack = 0xfffffe000003d000ull;  // CPU 1's, cpu_entry_area 0x3b000 bytes
    auto areas = k61::stack_areas(in);
    ASSERT_EQ(areas.size(), 9u);
    auto at = [&](std::size_t i, StackType t, const char* name, std::uint64_t begin, std::uint64_t end) {
        EXPECT_EQ(areas[i].type, t) << i;
        EXPECT_EQ(areas[i].name, name) << i;
        EXPECT_EQ(areas[i].begin, begin) << name;
        EXPECT_EQ(areas[i].end, end) << name;
    };
    at(0, StackType::Task, "task", kTaskStack, kTaskStack + 0x4000);
    at(1, StackType::Irq, "IRQ", 0xffffc90000200000ull, 0xffffc90000204000ull);
    at(2, StackType::Exception, "#DF", kCeaExceptionStacks + 0x1000, kCeaExceptionStacks + 0x3000);
    at(3, StackType::Exception, "NMI", kCeaExceptionStacks + 0x4000, kCeaExceptionStacks + 0x6000);
    at(4, StackType::Exception, "#DB", kCeaExceptionStacks + 0x7000, kCeaExceptionStacks + 0x9000);
    at(5, StackType::Exception, "#MC", kCeaExceptionStacks + 0xa000, kCeaExceptionStacks + 0xc000);
    at(6, StackType::Exception, "#VC", kCeaExceptionStacks + 0xd000, kCeaExceptionStacks + 0xf000);
    at(7, StackType::Exception, "#VC2", kCeaExceptionStacks + 0x10000, kCeaExceptionStacks + 0x12000);
    // CPU 1's entry area: base + IDT page + 1 * sizeof(cpu_entry_area), then the GDT page.
    at(8, StackType::Entry, "entry", 0xfffffe0000001000ull + 0x3b000 + 0x1000, 0xfffffe0000001000ull + 0x3b000 + 0x2000);
    EXPECT_LE(areas[7].end + 0x1000, kCeaExceptionStacks + k61::kCeaExceptionStacksSize);

    auto lookup = k61::stack_lookup(areas);
    EXPECT_EQ(lookup(kCeaExceptionStacks + 0x4008)->name, "NMI");
    EXPECT_FALSE(lookup(kCeaExceptionStacks + 0x3008));  // guard page
    EXPECT_FALSE(lookup(kIrqTop));
    EXPECT_EQ(lookup(kIrqTop - 8)->type, StackType::Irq);
}

TEST(Stacks, MissingAndWrappingInputsAreLeftOut) {
    k61::StackInputs in;
    in.task_stack = ~std::uint64_t{0} - 100;  // would wrap
    in.hardirq_stack_ptr = 0;                  // CPU not up yet
    EXPECT_TRUE(k61::stack_areas(in).empty());
}

}  // namespace
}  // namespace hvpatch
