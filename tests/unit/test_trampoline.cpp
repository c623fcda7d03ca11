// The universe trampoline (guest-shim/): its encoding, its range checks, and
// — the point — its behaviour, by executing relocated blobs on the host.
//
// Execution set-up: the test thread's GS base (unused by glibc and gtest on
// x86-64, which use FS for TLS) points at a fake per-CPU area whose
// current_task slot points at a fake task_struct. A blob is relocated into
// an mmap'd page between two landing pads (one before it, one after it, so
// that both jump directions are exercised). An assembly harness loads every
// GPR and RFLAGS with known values and calls the trampoline; the pad it
// lands on stores every GPR, RSP and RFLAGS and returns to the harness.
#include <gtest/gtest.h>

#include <asm/prctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "guest-shim/trampoline.h"
#include "hvpatch/address.h"
#include "hvpatch/error.h"
#include "introspect/code_inspect.h"

// --- the assembly harness ------------------------------------------------------
//
// struct HarnessFrame (offsets used below):
//   0    in.gpr[16]   rax rbx rcx rdx rsi rdi rbp rsp r8..r15 (in.rsp unused)
//   128  in.rflags
//   136  out.gpr[16]  as the landing pad found them (out.rsp: RSP at the pad)
//   264  out.rflags
//   272  landed       address of the pad that ran
//   280  entry_rsp    RSP the called code sees at its entry (harness sets it)
//
// trampoline_test_call(frame, target): saves the callee-saved registers,
// keeps `frame` and `target` on its stack, loads RFLAGS then every GPR from
// frame->in (only mov after popfq: nothing changes a flag), and calls
// *target through a memory operand (no register left to spare). The callee
// sees [rsp] = return address, [rsp + 8] = target, [rsp + 16] = frame.
// Returns with DF cleared, as the C ABI requires.
//
// trampoline_test_pad_start..end: a position-independent landing pad, copied
// into the test page. It saves RFLAGS and rax on the stack before anything
// else, fetches `frame` from [entry rsp + 16], stores everything, records
// its own address (rip-relative, so the copy reports where it runs) and
// returns to the harness.
asm(R"(
	.pushsection .text
	.globl trampoline_test_call
	.hidden trampoline_test_call
	.type trampoline_test_call, @function
trampoline_test_call:
	push	%rbp
	push	%rbx
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	push	%rdi			# frame
	push	%rsi			# target
	lea	-8(%rsp), %rax
	mov	%rax, 280(%rdi)		# entry_rsp: after the call pushes its return address
	pushq	128(%rdi)
	popfq
	mov	0(%rdi), %rax
	mov	8(%rdi), %rbx
	mov	16(%rdi), %rcx
	mov	24(%rdi), %rdx
	mov	32(%rdi), %rsi
	mov	48(%rdi), %rbp
	mov	64(%rdi), %r8
	mov	72(%rdi), %r9
	mov	80(%rdi), %r10
	mov	88(%rdi), %r11
	mov	96(%rdi), %r12
	mov	104(%rdi), %r13
	mov	112(%rdi), %r14
	mov	120(%rdi), %r15
	mov	40(%rdi), %rdi
	call	*(%rsp)
	cld
	add	$16, %rsp
	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%rbx
	pop	%rbp
	ret
	.size trampoline_test_call, . - trampoline_test_call

	.globl trampoline_test_pad_start
	.hidden trampoline_test_pad_start
	.globl trampoline_test_pad_end
	.hidden trampoline_test_pad_end
trampoline_test_pad_start:
.Lpad_here:
	pushfq
	push	%rax
	mov	32(%rsp), %rax		# frame, at entry rsp + 16
	popq	136(%rax)		# out.rax
	popq	264(%rax)		# out.rflags; RSP is back at its entry value
	mov	%rbx, 144(%rax)
	mov	%rcx, 152(%rax)
	mov	%rdx, 160(%rax)
	mov	%rsi, 168(%rax)
	mov	%rdi, 176(%rax)
	mov	%rbp, 184(%rax)
	mov	%rsp, 192(%rax)
	mov	%r8, 200(%rax)
	mov	%r9, 208(%rax)
	mov	%r10, 216(%rax)
	mov	%r11, 224(%rax)
	mov	%r12, 232(%rax)
	mov	%r13, 240(%rax)
	mov	%r14, 248(%rax)
	mov	%r15, 256(%rax)
	lea	.Lpad_here(%rip), %rbx
	mov	%rbx, 272(%rax)		# landed
	ret
trampoline_test_pad_end:
	.popsection
)");

namespace {

enum Gpr { kRax, kRbx, kRcx, kRdx, kRsi, kRdi, kRbp, kRsp, kR8, kR9, kR10, kR11, kR12, kR13, kR14, kR15, kGprCount };
const char* const kGprNames[kGprCount] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                          "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};

struct RegisterFile {
    std::uint64_t gpr[kGprCount] = {};
    std::uint64_t rflags = 0;
};

struct HarnessFrame {
    RegisterFile in;
    RegisterFile out;
    std::uint64_t landed = 0;
    std::uint64_t entry_rsp = 0;
};
static_assert(offsetof(HarnessFrame, in.rflags) == 128);
static_assert(offsetof(HarnessFrame, out) == 136);
static_assert(offsetof(HarnessFrame, out.rflags) == 264);
static_assert(offsetof(HarnessFrame, landed) == 272);
static_assert(offsetof(HarnessFrame, entry_rsp) == 280);

}  // namespace

extern "C" {
void trampoline_test_call(HarnessFrame* frame, const void* target);
extern const unsigned char trampoline_test_pad_start[];
extern const unsigned char trampoline_test_pad_end[];
}

namespace hvpatch::shim {
namespace {

// RFLAGS bits user code can set and the trampoline must leave alone.
constexpr std::uint64_t kCF = 1ULL << 0, kPF = 1ULL << 2, kAF = 1ULL << 4, kZF = 1ULL << 6, kSF = 1ULL << 7,
                        kDF = 1ULL << 10, kOF = 1ULL << 11;
constexpr std::uint64_t kStatusAndDirection = kCF | kPF | kAF | kZF | kSF | kDF | kOF;
constexpr std::uint64_t kTF = 1ULL << 8, kAC = 1ULL << 18;  // never set: single-step, alignment checks

// Values like the guest's: a per-CPU offset well above zero, a patch_state
// offset that is 4- but not 8-aligned (the load must be a 32-bit one).
constexpr std::int32_t kCurrentTaskOffset = 0x1a440;
constexpr std::int32_t kPatchStateOffset = 0x9cc;

// Sets the thread's GS base for its lifetime, then puts the old one back.
class GsBase {
public:
    explicit GsBase(const void* base) {
        if (syscall(SYS_arch_prctl, ARCH_GET_GS, &saved_) != 0) throw std::runtime_error("ARCH_GET_GS failed");
        if (syscall(SYS_arch_prctl, ARCH_SET_GS, reinterpret_cast<unsigned long>(base)) != 0)
            throw std::runtime_error("ARCH_SET_GS failed");
    }
    ~GsBase() { syscall(SYS_arch_prctl, ARCH_SET_GS, saved_); }
    GsBase(const GsBase&) = delete;
    GsBase& operator=(const GsBase&) = delete;

private:
    unsigned long saved_ = 0;
};

// One page: landing pads and a trampoline between them, made executable.
class CodePage {
public:
    static constexpr std::size_t kSize = 4096;
    CodePage() {
        void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
        base_ = static_cast<unsigned char*>(p);
        std::memset(base_, 0xcc, kSize);
    }
    ~CodePage() { munmap(base_, kSize); }
    CodePage(const CodePage&) = delete;
    CodePage& operator=(const CodePage&) = delete;

    std::uint64_t address(std::size_t offset) const { return reinterpret_cast<std::uint64_t>(base_) + offset; }
    void put(std::size_t offset, const void* bytes, std::size_t size) {
        if (offset + size > kSize) throw std::runtime_error("code page overflow");
        std::memcpy(base_ + offset, bytes, size);
    }
    void make_executable() {
        if (mprotect(base_, kSize, PROT_READ | PROT_EXEC) != 0) throw std::runtime_error("mprotect failed");
    }

private:
    unsigned char* base_ = nullptr;
};

// Where things go in the page. Old pad before the trampoline and new pad
// after it (a negative and a positive rel32), or the other way round.
struct PageLayout {
    std::size_t old_pad, trampoline, new_pad;
};
constexpr PageLayout kOldBelowNewAbove{0x000, 0x400, 0x800};
constexpr PageLayout kNewBelowOldAbove{0x800, 0x400, 0x000};

struct Landing {
    bool old_pad = false;
    bool new_pad = false;
    HarnessFrame frame;
};

// A fake guest: per-CPU area and task, both full of non-zero garbage.
class FakeGuest {
public:
    FakeGuest() : percpu_(0x20000, 0x5a), task_(0x2000, 0xa5) {
        auto* task = task_.data();
        std::memcpy(percpu_.data() + kCurrentTaskOffset, &task, sizeof task);
    }
    void set_patch_state(std::int32_t state) {
        std::memcpy(task_.data() + kPatchStateOffset, &state, sizeof state);
    }
    // The 4 bytes on each side of patch_state.
    void set_neighbours(std::uint32_t before, std::uint32_t after) {
        std::memcpy(task_.data() + kPatchStateOffset - 4, &before, 4);
        std::memcpy(task_.data() + kPatchStateOffset + 4, &after, 4);
    }
    const void* percpu_base() const { return percpu_.data(); }

private:
    std::vector<unsigned char> percpu_;
    std::vector<unsigned char> task_;
};

// Relocates a trampoline into a fresh page with both pads, loads `in` and
// calls it with GS pointing at `guest`'s per-CPU area.
// `gs_bias` moves GS above the area and the disp32 down by as much: a
// negative disp32, as 6.15+ kernels address current_task (its image
// address, sign-extended, with per-CPU bases biased to match).
Landing run_trampoline(const FakeGuest& guest, const RegisterFile& in, const PageLayout& layout = kOldBelowNewAbove,
                       std::int32_t gs_bias = 0) {
    CodePage page;
    const std::size_t pad_size = trampoline_test_pad_end - trampoline_test_pad_start;
    page.put(layout.old_pad, trampoline_test_pad_start, pad_size);
    page.put(layout.new_pad, trampoline_test_pad_start, pad_size);
    TrampolineParams params;
    params.address = page.address(layout.trampoline);
    params.current_task_offset = kCurrentTaskOffset - gs_bias;
    params.patch_state_offset = kPatchStateOffset;
    params.old_continue = page.address(layout.old_pad);
    params.new_function = page.address(layout.new_pad);
    auto blob = build_trampoline(params);
    page.put(layout.trampoline, blob.data(), blob.size());
    page.make_executable();

    Landing landing;
    landing.frame.in = in;
    {
        GsBase gs(static_cast<const unsigned char*>(guest.percpu_base()) + gs_bias);
        trampoline_test_call(&landing.frame, reinterpret_cast<const void*>(params.address));
    }
    landing.old_pad = landing.frame.landed == params.old_continue;
    landing.new_pad = landing.frame.landed == params.new_function;
    return landing;
}

std::uint64_t current_rflags() { return __builtin_ia32_readeflags_u64() & ~(kStatusAndDirection | kTF | kAC); }

// Distinct values in every register; `seed` varies them between runs.
RegisterFile distinct_registers(std::uint64_t seed, std::uint64_t status_flags) {
    RegisterFile r;
    for (int i = 0; i < kGprCount; ++i) r.gpr[i] = (0x0101010101010101ULL * (i + 1)) ^ (seed << 8) ^ 0x8000000000000000ULL;
    r.gpr[kRsp] = 0;  // not loaded
    r.rflags = current_rflags() | status_flags;
    return r;
}

// Every GPR (RSP: the value the callee saw at its entry) and RFLAGS exactly
// as loaded.
void expect_state_preserved(const Landing& landing, const std::string& what) {
    const HarnessFrame& f = landing.frame;
    for (int i = 0; i < kGprCount; ++i) {
        std::uint64_t expected = i == kRsp ? f.entry_rsp : f.in.gpr[i];
        EXPECT_EQ(f.out.gpr[i], expected) << what << ": " << kGprNames[i] << " is " << hvpatch::hex(f.out.gpr[i])
                                          << ", was " << hvpatch::hex(expected);
    }
    EXPECT_EQ(f.out.rflags, f.in.rflags) << what << ": RFLAGS " << hvpatch::hex(f.out.rflags) << ", was "
                                         << hvpatch::hex(f.in.rflags);
}

// --- executing the trampoline -------------------------------------------------

struct StateCase {
    std::int32_t patch_state;
    bool takes_new;
    const char* name;
};

TEST(TrampolineExecution, ChoosesAsKlpFtraceHandlerAndPreservesEverything) {
    const StateCase cases[] = {
        {0, false, "KLP_UNPATCHED"},
        {1, true, "KLP_PATCHED"},
        {-1, true, "KLP_UNDEFINED"},
        {2, true, "2"},
        {INT_MIN, true, "INT_MIN"},
    };
    const std::uint64_t flag_patterns[] = {0, kStatusAndDirection, kCF | kZF | kDF, kSF | kOF | kPF | kAF};
    FakeGuest guest;
    std::uint64_t seed = 1;
    for (const auto& c : cases) {
        guest.set_patch_state(c.patch_state);
        for (std::uint64_t flags : flag_patterns) {
            for (const PageLayout& layout : {kOldBelowNewAbove, kNewBelowOldAbove}) {
                std::string what = std::string("patch_state ") + c.name + ", flags " + hvpatch::hex(flags) +
                                   (layout.old_pad < layout.new_pad ? ", old pad below" : ", new pad below");
                auto landing = run_trampoline(guest, distinct_registers(seed++, flags), layout);
                EXPECT_EQ(landing.new_pad, c.takes_new) << what;
                EXPECT_EQ(landing.old_pad, !c.takes_new) << what;
                expect_state_preserved(landing, what);
            }
        }
    }
}

TEST(TrampolineExecution, ReadsPatchStateAsA32BitInt) {
    FakeGuest guest;
    guest.set_patch_state(0);
    guest.set_neighbours(0xffffffffU, 0xdeadbeefU);  // a 64-bit or misplaced read would see these
    auto landing = run_trampoline(guest, distinct_registers(7, kZF));
    EXPECT_TRUE(landing.old_pad);
    expect_state_preserved(landing, "garbage around patch_state 0");

    guest.set_neighbours(0, 0);
    guest.set_patch_state(1);
    landing = run_trampoline(guest, distinct_registers(8, 0));
    EXPECT_TRUE(landing.new_pad);
    expect_state_preserved(landing, "zeros around patch_state 1");
}

TEST(TrampolineExecution, DecisionDoesNotDependOnIncomingRcxOrFlags) {
    // rcx = 0 on entry (what jrcxz would test had the loads gone wrong), and
    // ZF set (what a jz would test).
    FakeGuest guest;
    for (std::int32_t state : {0, 1}) {
        guest.set_patch_state(state);
        for (std::uint64_t incoming_rcx : {std::uint64_t{0}, std::uint64_t{1}}) {
            auto regs = distinct_registers(9, state == 0 ? 0 : kZF);
            regs.gpr[kRcx] = incoming_rcx;
            auto landing = run_trampoline(guest, regs);
            EXPECT_EQ(landing.new_pad, state != 0) << "patch_state " << state << ", rcx " << incoming_rcx;
            expect_state_preserved(landing, "rcx " + std::to_string(incoming_rcx));
        }
    }
}

// --- encoding ------------------------------------------------------------------

constexpr std::uint64_t kTrampoline = 0xffffffffc0a01000ULL;  // module space
constexpr std::uint64_t kOldContinue = 0xffffffff81234565ULL;  // kernel text: function + 5 (below)
constexpr std::uint64_t kNewFunction = 0xffffffffc0a02040ULL;  // the livepatch module (above)

TrampolineParams kernel_params() {
    TrampolineParams p;
    p.address = kTrampoline;
    p.current_task_offset = kCurrentTaskOffset;
    p.patch_state_offset = kPatchStateOffset;
    p.old_continue = kOldContinue;
    p.new_function = kNewFunction;
    return p;
}

std::vector<hvpatch::Instruction> decode_all(const std::vector<std::byte>& blob, std::uint64_t address) {
    hvpatch::DecodeStop stop;
    auto insns = hvpatch::decode(blob, address, 64, &stop);
    EXPECT_EQ(stop.reason, hvpatch::DecodeEnd::EndOfInput) << stop.description;
    return insns;
}

TEST(TrampolineEncoding, SizeIsAMultipleOf16) {
    EXPECT_EQ(trampoline_size() % 16, 0u);
    EXPECT_GT(trampoline_size(), 0u);
    EXPECT_EQ(build_trampoline(kernel_params()).size(), trampoline_size());
}

TEST(TrampolineEncoding, DecodesToTheFlagFreeSequence) {
    auto blob = build_trampoline(kernel_params());
    auto insns = decode_all(blob, kTrampoline);
    ASSERT_GE(insns.size(), 8u);
    EXPECT_EQ(insns[0].text(), "push rcx");
    EXPECT_EQ(insns[1].text(), "mov rcx, qword ptr gs:[0x1a440]");
    EXPECT_EQ(insns[2].text(), "movsxd rcx, dword ptr [rcx + 0x9cc]");
    EXPECT_EQ(insns[3].mnemonic, "jrcxz");
    EXPECT_EQ(insns[3].branch_target, insns[6].address);
    EXPECT_EQ(insns[4].text(), "pop rcx");
    EXPECT_EQ(insns[5].mnemonic, "jmp");
    EXPECT_EQ(insns[5].size, 5u);
    EXPECT_EQ(insns[5].branch_target, kNewFunction);
    EXPECT_EQ(insns[6].text(), "pop rcx");
    EXPECT_EQ(insns[7].mnemonic, "jmp");
    EXPECT_EQ(insns[7].size, 5u);
    EXPECT_EQ(insns[7].branch_target, kOldContinue);
    for (std::size_t i = 8; i < insns.size(); ++i) EXPECT_EQ(insns[i].mnemonic, "int3") << "padding at " << i;
}

TEST(TrampolineEncoding, NoReturnNoIndirectBranch) {
    // Several relocations, including displacements that contain c3 and ff
    // bytes: decoded, none of them is a ret or an indirect jump/call.
    std::vector<TrampolineParams> all = {kernel_params()};
    auto p = kernel_params();
    p.new_function = kTrampoline + 0x7fc3c3ff;
    p.old_continue = kTrampoline - 0x3cffc3;
    p.current_task_offset = 0xc3c3;
    p.patch_state_offset = 0xffc3;
    all.push_back(p);
    for (const auto& params : all) {
        auto blob = build_trampoline(params);
        for (const auto& insn : decode_all(blob, params.address)) {
            EXPECT_NE(insn.flow, hvpatch::ControlFlow::Return) << insn.text();
            EXPECT_NE(insn.flow, hvpatch::ControlFlow::Call) << insn.text();
            if (insn.flow == hvpatch::ControlFlow::Jump || insn.flow == hvpatch::ControlFlow::ConditionalJump) {
                EXPECT_TRUE(insn.branch_target) << "indirect: " << insn.text();
            }
        }
    }
    // With small field values, not even a c3 or ff byte (ret; the opcode
    // group of indirect jmp/call) appears anywhere in the blob.
    auto near = kernel_params();
    near.address = 0x1000;
    near.new_function = 0x1100;
    near.old_continue = 0x1200;
    for (std::byte b : build_trampoline(near)) {
        EXPECT_NE(b, std::byte{0xc3});
        EXPECT_NE(b, std::byte{0xff});
    }
}

// --- ranges ------------------------------------------------------------------------

template <typename Fn>
std::string guest_error_of(Fn&& fn) {
    try {
        fn();
    } catch (const hvpatch::Error& e) {
        EXPECT_EQ(e.kind(), hvpatch::ErrorKind::Guest) << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no hvpatch::Error thrown";
    return {};
}

TEST(TrampolineRange, TargetsBeyondRel32ReachThrowNamingTheAddresses) {
    auto far_new = kernel_params();
    far_new.new_function = kTrampoline + 0x80000000ULL + 0x100;
    auto message = guest_error_of([&] { build_trampoline(far_new); });
    EXPECT_NE(message.find(hvpatch::hex(far_new.new_function)), std::string::npos) << message;
    EXPECT_NE(message.find(hvpatch::hex(kTrampoline)), std::string::npos) << message;

    auto far_old = kernel_params();
    far_old.old_continue = kTrampoline - 0x80000000ULL - 0x100;
    message = guest_error_of([&] { build_trampoline(far_old); });
    EXPECT_NE(message.find(hvpatch::hex(far_old.old_continue)), std::string::npos) << message;

    // A module far above kernel text (e.g. a bad allocation) cannot reach back.
    auto far_module = kernel_params();
    far_module.address = 0xffffffffff000000ULL - 0x1000;
    far_module.new_function = far_module.address + 0x100;
    far_module.old_continue = 0xffffffff00000000ULL;
    guest_error_of([&] { build_trampoline(far_module); });
}

TEST(TrampolineRange, NegativePatchStateOffsetThrows) {
    auto p = kernel_params();
    p.patch_state_offset = -4;
    guest_error_of([&] { build_trampoline(p); });
}

TEST(TrampolineExecution, ReadsCurrentTaskThroughANegativeDisp32) {
    // 7.x: %gs:0xffffffffb5e2xxxx, a sign-extended disp32 below GS.
    FakeGuest guest;
    const std::int32_t bias = 0x1c000;  // disp32 = 0x1a440 - 0x1c000 < 0
    guest.set_patch_state(1);
    auto landing = run_trampoline(guest, distinct_registers(11, 0), kOldBelowNewAbove, bias);
    EXPECT_TRUE(landing.new_pad);
    expect_state_preserved(landing, "negative disp32, patched");
    guest.set_patch_state(0);
    landing = run_trampoline(guest, distinct_registers(12, kZF), kOldBelowNewAbove, bias);
    EXPECT_TRUE(landing.old_pad);
    expect_state_preserved(landing, "negative disp32, unpatched");
}

std::array<std::byte, 5> jmp_bytes(int b0, int b1, int b2, int b3, int b4) {
    return {std::byte(b0), std::byte(b1), std::byte(b2), std::byte(b3), std::byte(b4)};
}

TEST(JmpRel32, EncodesPositiveNegativeAndZeroDisplacements) {
    // Kernel text -> module space: 0xffffffffc0001000 - 0xffffffff81000005 = 0x3f000ffb.
    EXPECT_EQ(jmp_rel32(0xffffffff81000000ULL, 0xffffffffc0001000ULL), jmp_bytes(0xe9, 0xfb, 0x0f, 0x00, 0x3f));
    // Module space -> kernel text: 0xffffffff81000000 - 0xffffffffc0001005 = -0x3f001005.
    EXPECT_EQ(jmp_rel32(0xffffffffc0001000ULL, 0xffffffff81000000ULL), jmp_bytes(0xe9, 0xfb, 0xef, 0xff, 0xc0));
    EXPECT_EQ(jmp_rel32(0x1000, 0x1005), jmp_bytes(0xe9, 0, 0, 0, 0));
    EXPECT_EQ(jmp_rel32(0x1000, 0x1000), jmp_bytes(0xe9, 0xfb, 0xff, 0xff, 0xff));  // jmp to itself
}

TEST(JmpRel32, LimitsOfReach) {
    constexpr std::uint64_t from = 0xffffffffc0000000ULL;
    EXPECT_EQ(jmp_rel32(from, from + 5 + 0x7fffffffULL), jmp_bytes(0xe9, 0xff, 0xff, 0xff, 0x7f));
    EXPECT_EQ(jmp_rel32(from, from + 5 - 0x80000000ULL), jmp_bytes(0xe9, 0x00, 0x00, 0x00, 0x80));
    auto message = guest_error_of([&] { jmp_rel32(from, from + 5 + 0x80000000ULL); });
    EXPECT_NE(message.find(hvpatch::hex(from)), std::string::npos) << message;
    EXPECT_NE(message.find(hvpatch::hex(from + 5 + 0x80000000ULL)), std::string::npos) << message;
    guest_error_of([&] { jmp_rel32(from, from + 5 - 0x80000001ULL); });
}

TEST(JmpRel32, DecodesToItsTarget) {
    for (auto [from, to] : {std::pair{kOldContinue - 5, kTrampoline}, std::pair{kTrampoline, kOldContinue}}) {
        auto insn = jmp_rel32(from, to);
        auto decoded = hvpatch::decode(insn, from, 1);
        ASSERT_EQ(decoded.size(), 1u);
        EXPECT_EQ(decoded[0].branch_target, to);
    }
}

}  // namespace
}  // namespace hvpatch::shim
