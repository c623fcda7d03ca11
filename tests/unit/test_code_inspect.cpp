// Decoding, entry classification and instruction boundaries on real x86-64
// encodings of what guest kernels put at function entries (ftrace NOP,
// endbr64 and its poison, ftrace calls, jmps, int3) and of ordinary
// prologues, at kernel addresses near the top of the address space.
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/code_inspect.h"

namespace hvpatch {
namespace {

std::vector<std::byte> bytes(std::initializer_list<int> values) {
    std::vector<std::byte> out;
    for (int v : values) out.push_back(static_cast<std::byte>(v));
    return out;
}

// A call/jmp rel32 at `at` to `target` (the encoding the kernel's
// text_gen_insn() makes).
std::vector<std::byte> rel32_insn(int opcode, std::uint64_t at, std::uint64_t target) {
    auto rel = static_cast<std::uint32_t>(target - (at + 5));
    return bytes({opcode, int(rel & 0xff), int((rel >> 8) & 0xff), int((rel >> 16) & 0xff), int(rel >> 24)});
}

std::vector<std::byte> concat(std::vector<std::byte> a, const std::vector<std::byte>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

ErrorKind error_kind_of(auto&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.kind();
    }
    ADD_FAILURE() << "no hvpatch::Error thrown";
    return ErrorKind::Internal;
}

constexpr std::uint64_t kFunc = 0xffffffff81234560ULL;       // a function in kernel text
constexpr std::uint64_t kTrampoline = 0xffffffffc0123000ULL;  // module space
constexpr std::uint64_t kFtraceCaller = 0xffffffff81069a40ULL;  // below kFunc: negative rel32

const auto kFtraceNop = bytes({0x0f, 0x1f, 0x44, 0x00, 0x00});
const auto kEndbr64 = bytes({0xf3, 0x0f, 0x1e, 0xfa});
const auto kEndbrPoison = bytes({0x66, 0x0f, 0x1f, 0x00});
// push rbp; mov rbp, rsp; push r15; push r14; mov rax, [rip + 0x1234]
const auto kPrologue = bytes({0x55, 0x48, 0x89, 0xe5, 0x41, 0x57, 0x41, 0x56, 0x48, 0x8b, 0x05, 0x34, 0x12, 0x00, 0x00});

// --- decode ------------------------------------------------------------------

TEST(Decode, FtraceNopAndPrologue) {
    auto code = concat(kFtraceNop, kPrologue);
    DecodeStop stop;
    auto insns = decode(code, kFunc, 100, &stop);
    ASSERT_EQ(insns.size(), 6u);
    EXPECT_EQ(insns[0].address, kFunc);
    EXPECT_EQ(insns[0].size, 5u);
    EXPECT_EQ(insns[0].bytes, kFtraceNop);
    EXPECT_EQ(insns[0].mnemonic, "nop");
    EXPECT_EQ(insns[0].text(), "nop dword ptr [rax + rax]");
    EXPECT_EQ(insns[0].flow, ControlFlow::None);
    EXPECT_FALSE(insns[0].branch_target);
    EXPECT_FALSE(insns[0].rip_relative_target);
    EXPECT_EQ(insns[1].address, kFunc + 5);
    EXPECT_EQ(insns[1].text(), "push rbp");
    EXPECT_EQ(insns[2].text(), "mov rbp, rsp");
    EXPECT_EQ(insns[3].address, kFunc + 9);
    EXPECT_EQ(insns[3].size, 2u);
    EXPECT_EQ(insns[5].address, kFunc + 13);
    EXPECT_EQ(insns[5].size, 7u);
    EXPECT_EQ(insns[5].text(), "mov rax, qword ptr [rip + 0x1234]");
    EXPECT_EQ(insns[5].rip_relative_target, kFunc + 20 + 0x1234);
    EXPECT_EQ(stop.reason, DecodeEnd::EndOfInput);
    EXPECT_EQ(stop.address, kFunc + code.size());
}

TEST(Decode, RelativeCallTargets) {
    // Forward into module space (kernel text -> ftrace trampoline).
    auto fwd = rel32_insn(0xe8, kFunc, kTrampoline);
    auto insns = decode(fwd, kFunc, 1);
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].flow, ControlFlow::Call);
    EXPECT_EQ(insns[0].branch_target, kTrampoline);
    EXPECT_EQ(insns[0].text(), "call 0xffffffffc0123000");

    // Backward (negative rel32): module -> kernel text, and kernel text ->
    // ftrace_caller below it.
    auto back = rel32_insn(0xe8, kTrampoline, 0xffffffff81000000ULL);
    EXPECT_EQ(back, bytes({0xe8, 0xfb, 0xcf, 0xed, 0xc0}));
    insns = decode(back, kTrampoline, 1);
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].branch_target, 0xffffffff81000000ULL);
    insns = decode(rel32_insn(0xe8, kFunc, kFtraceCaller), kFunc, 1);
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].branch_target, kFtraceCaller);

    // The most negative rel32.
    insns = decode(bytes({0xe8, 0x00, 0x00, 0x00, 0x80}), kFunc, 1);
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].branch_target, kFunc + 5 - 0x80000000ULL);

    // Indirect calls have no target; call [rip + disp] names its slot.
    insns = decode(bytes({0xff, 0xd0, 0xff, 0x15, 0x10, 0x00, 0x00, 0x00}), kFunc, 10);
    ASSERT_EQ(insns.size(), 2u);
    EXPECT_EQ(insns[0].text(), "call rax");
    EXPECT_EQ(insns[0].flow, ControlFlow::Call);
    EXPECT_FALSE(insns[0].branch_target);
    EXPECT_EQ(insns[1].flow, ControlFlow::Call);
    EXPECT_FALSE(insns[1].branch_target);
    EXPECT_EQ(insns[1].rip_relative_target, kFunc + 8 + 0x10);
}

TEST(Decode, JumpsAndReturns) {
    const std::uint64_t at = 0xffffffff81000100ULL;
    auto code = bytes({
        0xeb, 0xfe,                          // jmp . (rel8 -2)
        0x74, 0x80,                          // je  -128
        0x0f, 0x85, 0x00, 0x01, 0x00, 0x00,  // jne +0x100
        0xe2, 0xf0,                          // loop -16
        0xe3, 0x05,                          // jrcxz +5
        0xff, 0xe0,                          // jmp rax
        0xc3, 0xcc,                          // ret; int3 (straight-line speculation)
    });
    auto insns = decode(code, at, 100);
    ASSERT_EQ(insns.size(), 8u);
    EXPECT_EQ(insns[0].flow, ControlFlow::Jump);
    EXPECT_EQ(insns[0].branch_target, at);
    EXPECT_EQ(insns[1].flow, ControlFlow::ConditionalJump);
    EXPECT_EQ(insns[1].branch_target, at + 4 - 128);
    EXPECT_EQ(insns[2].flow, ControlFlow::ConditionalJump);
    EXPECT_EQ(insns[2].branch_target, at + 10 + 0x100);
    EXPECT_EQ(insns[3].mnemonic, "loop");
    EXPECT_EQ(insns[3].flow, ControlFlow::ConditionalJump);
    EXPECT_EQ(insns[3].branch_target, at + 12 - 16);
    EXPECT_EQ(insns[4].mnemonic, "jrcxz");
    EXPECT_EQ(insns[4].branch_target, at + 14 + 5);
    EXPECT_EQ(insns[5].flow, ControlFlow::Jump);
    EXPECT_FALSE(insns[5].branch_target);
    EXPECT_EQ(insns[6].flow, ControlFlow::Return);
    EXPECT_EQ(insns[7].text(), "int3");
    EXPECT_EQ(insns[7].flow, ControlFlow::None);
}

TEST(Decode, RetpolineAndRethunkEpilogue) {
    // What a 6.1 RETPOLINE+RETHUNK kernel emits: calls through
    // __x86_indirect_thunk_rax and `jmp __x86_return_thunk; int3` for ret.
    const std::uint64_t at = 0xffffffff812a0000ULL;
    const std::uint64_t thunk = 0xffffffff81e03a20ULL, return_thunk = 0xffffffff81e03d80ULL;
    auto code = concat(rel32_insn(0xe8, at, thunk), bytes({0x5d}));
    code = concat(code, rel32_insn(0xe9, at + 6, return_thunk));
    code = concat(code, bytes({0xcc}));
    auto insns = decode(code, at, 100);
    ASSERT_EQ(insns.size(), 4u);
    EXPECT_EQ(insns[0].branch_target, thunk);
    EXPECT_EQ(insns[1].text(), "pop rbp");
    EXPECT_EQ(insns[2].flow, ControlFlow::Jump);
    EXPECT_EQ(insns[2].branch_target, return_thunk);
    EXPECT_EQ(insns[3].address, at + 11);
}

TEST(Decode, TargetsWrapAtTheTopOfTheAddressSpace) {
    const std::uint64_t at = 0xfffffffffffffff0ULL;
    auto insns = decode(bytes({0xeb, 0x20}), at, 1);  // past 2^64
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].branch_target, 0x12u);
    insns = decode(bytes({0xe9, 0x00, 0x00, 0x00, 0x80}), at, 1);
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].branch_target, 0xffffffff7ffffff5ULL);
    insns = decode(bytes({0x48, 0x8b, 0x05, 0xf0, 0xff, 0xff, 0xff}), at, 1);  // [rip - 0x10]
    ASSERT_EQ(insns.size(), 1u);
    EXPECT_EQ(insns[0].rip_relative_target, at + 7 - 0x10);
}

TEST(Decode, EndbrAndItsPoison) {
    auto insns = decode(concat(kEndbr64, kEndbrPoison), kFunc, 10);
    ASSERT_EQ(insns.size(), 2u);
    EXPECT_EQ(insns[0].text(), "endbr64");
    EXPECT_EQ(insns[0].size, 4u);
    EXPECT_EQ(insns[1].mnemonic, "nop");
    EXPECT_EQ(insns[1].size, 4u);
}

TEST(Decode, InvalidBytesStopDecoding) {
    // 06 (push es) and 27 (daa) do not exist in 64-bit mode.
    for (int invalid : {0x06, 0x27, 0x60, 0xd6}) {
        auto code = concat(kFtraceNop, bytes({invalid, 0x55, 0xc3}));
        DecodeStop stop;
        auto insns = decode(code, kFunc, 100, &stop);
        ASSERT_EQ(insns.size(), 1u) << invalid;
        EXPECT_EQ(stop.reason, DecodeEnd::Invalid) << invalid;
        EXPECT_EQ(stop.address, kFunc + 5);
        EXPECT_NE(stop.description.find("invalid instruction at 0xffffffff81234565"), std::string::npos)
            << stop.description;
    }
    // Invalid right at the start; the stop pointer is optional.
    DecodeStop stop;
    EXPECT_TRUE(decode(bytes({0x06}), kFunc, 10, &stop).empty());
    EXPECT_EQ(stop.reason, DecodeEnd::Invalid);
    EXPECT_EQ(stop.address, kFunc);
    EXPECT_TRUE(decode(bytes({0x06}), kFunc, 10).empty());
}

TEST(Decode, TruncatedInput) {
    // The input ends inside an instruction: a call missing its last byte,
    // the ftrace NOP cut after 3 bytes, a lone REX prefix, a lone 0f escape.
    for (const auto& tail : {bytes({0xe8, 0xfb, 0xcf, 0xed}), bytes({0x0f, 0x1f, 0x44}), bytes({0x48}),
                             bytes({0x0f}), bytes({0x48, 0x8b, 0x05, 0x34, 0x12})}) {
        auto code = concat(bytes({0x55}), tail);
        DecodeStop stop;
        auto insns = decode(code, kFunc, 100, &stop);
        ASSERT_EQ(insns.size(), 1u) << format_code_bytes(tail);
        EXPECT_EQ(stop.reason, DecodeEnd::Truncated) << format_code_bytes(tail) << ": " << stop.description;
        EXPECT_EQ(stop.address, kFunc + 1);
        EXPECT_NE(stop.description.find("input ends inside the instruction at 0xffffffff81234561"),
                  std::string::npos)
            << stop.description;
    }
}

TEST(Decode, LimitAndEmptyInput) {
    auto code = concat(kFtraceNop, kPrologue);
    DecodeStop stop;
    auto insns = decode(code, kFunc, 2, &stop);
    ASSERT_EQ(insns.size(), 2u);
    EXPECT_EQ(stop.reason, DecodeEnd::Limit);
    EXPECT_EQ(stop.address, kFunc + 6);
    EXPECT_TRUE(decode({}, kFunc, 10, &stop).empty());
    EXPECT_EQ(stop.reason, DecodeEnd::EndOfInput);
    EXPECT_EQ(stop.address, kFunc);
    EXPECT_TRUE(decode(code, kFunc, 0, &stop).empty());
    EXPECT_EQ(stop.reason, DecodeEnd::Limit);
}

// --- classify_entry --------------------------------------------------------------

TEST(ClassifyEntry, FtraceNop) {
    auto code = concat(kFtraceNop, kPrologue);
    EntryKind kind = classify_entry(std::span(code).first(16), kFunc);
    EXPECT_EQ(kind.type, EntryType::FtraceNop);
    EXPECT_TRUE(kind.ftrace_nop());
    EXPECT_EQ(kind.landing, EntryLanding::None);
    EXPECT_EQ(kind.entry, kFunc);
    EXPECT_EQ(kind.patch_site, kFunc);
    EXPECT_EQ(kind.site_bytes, kFtraceNop);
    EXPECT_FALSE(kind.target);
    EXPECT_EQ(kind.instruction, "nop dword ptr [rax + rax]");
    EXPECT_EQ(kind.description, "ftrace NOP at 0xffffffff81234560");
    // Five bytes are enough.
    EXPECT_EQ(classify_entry(kFtraceNop, kFunc).type, EntryType::FtraceNop);
}

TEST(ClassifyEntry, EndbrThenFtraceNop) {
    EntryKind kind = classify_entry(concat(concat(kEndbr64, kFtraceNop), kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Endbr64FtraceNop);
    EXPECT_TRUE(kind.ftrace_nop());
    EXPECT_EQ(kind.landing, EntryLanding::Endbr64);
    EXPECT_EQ(kind.patch_site, kFunc + 4);
    EXPECT_EQ(kind.site_bytes, kFtraceNop);
    EXPECT_EQ(kind.description, "endbr64 at 0xffffffff81234560, then ftrace NOP at 0xffffffff81234564");

    kind = classify_entry(concat(kEndbrPoison, kFtraceNop), kFunc);
    EXPECT_EQ(kind.type, EntryType::Endbr64FtraceNop);
    EXPECT_EQ(kind.landing, EntryLanding::PoisonedEndbr);
    EXPECT_EQ(kind.patch_site, kFunc + 4);
    EXPECT_NE(kind.description.find("poisoned endbr64"), std::string::npos);

    // An IBT kernel with ftrace enabled on the function: the call is at +4.
    kind = classify_entry(concat(kEndbr64, rel32_insn(0xe8, kFunc + 4, kTrampoline)), kFunc);
    EXPECT_EQ(kind.type, EntryType::Call);
    EXPECT_EQ(kind.landing, EntryLanding::Endbr64);
    EXPECT_EQ(kind.patch_site, kFunc + 4);
    EXPECT_EQ(kind.target, kTrampoline);

    // endbr64 without fentry.
    kind = classify_entry(concat(kEndbr64, kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_EQ(kind.patch_site, kFunc + 4);
    EXPECT_EQ(kind.instruction, "push rbp");
}

TEST(ClassifyEntry, SevenXSealsWithAnotherPoison) {
    // 7.x's sealed endbr64: nopl -0x2a(%rax).
    EntryKind kind = classify_entry(concat(bytes({0x0f, 0x1f, 0x40, 0xd6}), kFtraceNop), kFunc);
    EXPECT_EQ(kind.type, EntryType::Endbr64FtraceNop);
    EXPECT_EQ(kind.landing, EntryLanding::PoisonedEndbr);
    EXPECT_EQ(kind.patch_site, kFunc + 4);
}

TEST(ClassifyEntry, TheGuestsOwnFtraceNop) {
    // 5.10 on QEMU's default CPU: ideal_nops gave the K8 NOP.
    const std::array<std::uint8_t, 5> k8 = {0x66, 0x66, 0x66, 0x66, 0x90};
    const auto k8_bytes = bytes({0x66, 0x66, 0x66, 0x66, 0x90});
    EntryKind kind = classify_entry(concat(k8_bytes, kPrologue), kFunc, k8);
    EXPECT_EQ(kind.type, EntryType::FtraceNop);
    EXPECT_EQ(kind.site_bytes, k8_bytes);
    // The same bytes with the 6.x NOP expected: a NOP, but not ftrace's.
    kind = classify_entry(concat(k8_bytes, kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_NE(kind.description.find("not ftrace's"), std::string::npos) << kind.description;
    // And the 6.x NOP is not ftrace's on a guest that uses the K8 one.
    EXPECT_EQ(classify_entry(concat(kFtraceNop, kPrologue), kFunc, k8).type, EntryType::Other);
}

TEST(ClassifyEntry, CallFromTheGuestsFtrace) {
    auto code = concat(rel32_insn(0xe8, kFunc, kTrampoline), kPrologue);
    EntryKind kind = classify_entry(code, kFunc);
    EXPECT_EQ(kind.type, EntryType::Call);
    EXPECT_FALSE(kind.ftrace_nop());
    EXPECT_EQ(kind.patch_site, kFunc);
    EXPECT_EQ(kind.target, kTrampoline);
    EXPECT_EQ(kind.instruction, "call 0xffffffffc0123000");
    EXPECT_EQ(kind.description,
              "call to 0xffffffffc0123000 (ftrace trampoline or livepatch?) at 0xffffffff81234560");
    // Negative rel32: ftrace_regs_caller below the function in kernel text.
    kind = classify_entry(rel32_insn(0xe8, kFunc, kFtraceCaller), kFunc);
    EXPECT_EQ(kind.type, EntryType::Call);
    EXPECT_EQ(kind.target, kFtraceCaller);
    // A function in a module calling a kernel-text trampoline.
    kind = classify_entry(rel32_insn(0xe8, kTrampoline + 0x1000, 0xffffffff81000000ULL), kTrampoline + 0x1000);
    EXPECT_EQ(kind.target, 0xffffffff81000000ULL);
}

TEST(ClassifyEntry, Jmp) {
    const std::uint64_t replacement = 0xffffffffc0456010ULL;
    EntryKind kind = classify_entry(concat(rel32_insn(0xe9, kFunc, replacement), kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Jmp);
    EXPECT_EQ(kind.target, replacement);
    EXPECT_EQ(kind.instruction, "jmp 0xffffffffc0456010");
    EXPECT_NE(kind.description.find("jmp to 0xffffffffc0456010"), std::string::npos) << kind.description;
    kind = classify_entry(rel32_insn(0xe9, kFunc, kFunc - 0x100000), kFunc);
    EXPECT_EQ(kind.target, kFunc - 0x100000);
    // Short jmp backwards (rel8 = -0x10).
    kind = classify_entry(concat(bytes({0xeb, 0xf0}), kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Jmp);
    EXPECT_EQ(kind.target, kFunc + 2 - 0x10);
    EXPECT_NE(kind.description.find("short jmp"), std::string::npos);
}

TEST(ClassifyEntry, Int3) {
    // text_poke_bp() mid-update over the ftrace NOP: int3, then the old tail.
    EntryKind kind = classify_entry(concat(bytes({0xcc, 0x1f, 0x44, 0x00, 0x00}), kPrologue), kFunc);
    EXPECT_EQ(kind.type, EntryType::Int3);
    EXPECT_EQ(kind.patch_site, kFunc);
    EXPECT_FALSE(kind.target);
    EXPECT_EQ(kind.instruction, "int3");
    EXPECT_EQ(kind.description,
              "int3 at 0xffffffff81234560, then 1f 44 00 00 (kprobe, breakpoint, or text_poke_bp mid-update?)");
}

TEST(ClassifyEntry, Other) {
    EntryKind kind = classify_entry(kPrologue, kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_EQ(kind.patch_site, kFunc);
    EXPECT_EQ(kind.instruction, "push rbp");
    EXPECT_NE(kind.description.find("`push rbp`"), std::string::npos) << kind.description;
    // Another 5-byte NOP is not the ftrace one.
    kind = classify_entry(bytes({0x0f, 0x1f, 0x44, 0x00, 0x08, 0x55}), kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_NE(kind.description.find("5-byte NOP that is not ftrace's"), std::string::npos) << kind.description;
    // Garbage.
    kind = classify_entry(bytes({0x06, 0x00, 0x00, 0x00, 0x00}), kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_EQ(kind.instruction, "");
    EXPECT_NE(kind.description.find("invalid instruction at 0xffffffff81234560"), std::string::npos)
        << kind.description;
    // Five bytes that end inside a longer first instruction.
    kind = classify_entry(bytes({0x48, 0x8b, 0x05, 0x34, 0x12}), kFunc);
    EXPECT_EQ(kind.type, EntryType::Other);
    EXPECT_EQ(kind.instruction, "");
    EXPECT_NE(kind.description.find("input ends inside"), std::string::npos) << kind.description;
}

TEST(ClassifyEntry, TooFewBytes) {
    EXPECT_EQ(error_kind_of([] { classify_entry(bytes({0x0f, 0x1f, 0x44, 0x00}), kFunc); }), ErrorKind::Usage);
    EXPECT_EQ(error_kind_of([] { classify_entry({}, kFunc); }), ErrorKind::Usage);
    // With an endbr64 in front, the site needs 9 bytes.
    EXPECT_EQ(error_kind_of([] { classify_entry(concat(kEndbr64, bytes({0x0f, 0x1f, 0x44, 0x00})), kFunc); }),
              ErrorKind::Usage);
    try {
        classify_entry(bytes({0xe8, 0x00}), kFunc);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("0xffffffff81234560"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("e8 00"), std::string::npos) << e.what();
    }
}

// --- instruction_boundaries ---------------------------------------------------------

TEST(InstructionBoundaries, FtraceNopIsOneWholeInstruction) {
    auto code = concat(kFtraceNop, kPrologue);
    EXPECT_EQ(instruction_boundaries(code, kFunc, 5), std::vector<std::uint64_t>{kFunc});
    EXPECT_TRUE(covers_whole_instructions(code, kFunc, 5));
    EXPECT_EQ(instruction_boundaries(code, kFunc, 6), (std::vector<std::uint64_t>{kFunc, kFunc + 5}));
    EXPECT_TRUE(covers_whole_instructions(code, kFunc, 6));
    // The site alone, without a byte more, is enough.
    EXPECT_TRUE(covers_whole_instructions(kFtraceNop, kFunc, 5));
}

TEST(InstructionBoundaries, PrologueSplitsFiveBytes) {
    // push rbp (1) | mov rbp, rsp (3) | push r15 (2): 5 bytes end inside push r15.
    EXPECT_EQ(instruction_boundaries(kPrologue, kFunc, 5),
              (std::vector<std::uint64_t>{kFunc, kFunc + 1, kFunc + 4}));
    EXPECT_FALSE(covers_whole_instructions(kPrologue, kFunc, 5));
    EXPECT_TRUE(covers_whole_instructions(kPrologue, kFunc, 6));
    // One long instruction covers the range and more.
    auto mov = bytes({0x48, 0x8b, 0x05, 0x34, 0x12, 0x00, 0x00});
    EXPECT_EQ(instruction_boundaries(mov, kFunc, 5), std::vector<std::uint64_t>{kFunc});
    EXPECT_FALSE(covers_whole_instructions(mov, kFunc, 5));
    // Endbr64 + ftrace NOP, looked at from the entry and from the site.
    auto ibt = concat(kEndbr64, kFtraceNop);
    EXPECT_EQ(instruction_boundaries(ibt, kFunc, 9), (std::vector<std::uint64_t>{kFunc, kFunc + 4}));
    EXPECT_TRUE(covers_whole_instructions(std::span(ibt).subspan(4), kFunc + 4, 5));
}

TEST(InstructionBoundaries, EmptyRange) {
    EXPECT_TRUE(instruction_boundaries(kPrologue, kFunc, 0).empty());
    EXPECT_TRUE(covers_whole_instructions({}, kFunc, 0));
}

TEST(InstructionBoundaries, InvalidBytesInsideTheRangeThrow) {
    auto code = bytes({0x55, 0x06, 0x90, 0x90, 0x90, 0x90});
    EXPECT_EQ(error_kind_of([&] { instruction_boundaries(code, kFunc, 5); }), ErrorKind::Guest);
    try {
        instruction_boundaries(code, kFunc, 5);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("0xffffffff81234561"), std::string::npos) << e.what();
    }
    // ... but not beyond it.
    auto after = concat(kFtraceNop, bytes({0x06}));
    EXPECT_EQ(instruction_boundaries(after, kFunc, 5), std::vector<std::uint64_t>{kFunc});
}

TEST(InstructionBoundaries, TooLittleCodeThrows) {
    // Ends inside `mov rbp, rsp`.
    EXPECT_EQ(error_kind_of([] { instruction_boundaries(bytes({0x55, 0x48, 0x89}), kFunc, 5); }), ErrorKind::Usage);
    // Ends on a boundary before the range is covered.
    EXPECT_EQ(error_kind_of([] { instruction_boundaries(bytes({0x55}), kFunc, 5); }), ErrorKind::Usage);
    EXPECT_EQ(error_kind_of([] { covers_whole_instructions(bytes({0x55, 0x48}), kFunc, 5); }), ErrorKind::Usage);
}

TEST(FormatCodeBytes, SpacedHex) {
    EXPECT_EQ(format_code_bytes(kFtraceNop), "0f 1f 44 00 00");
    EXPECT_EQ(format_code_bytes({}), "");
}

}  // namespace
}  // namespace hvpatch
