// Machine code at guest function entries: an x86-64 decoder (Capstone
// underneath, never exposed here), a classifier that says what sits at a
// function's entry, and instruction boundaries for the patcher.
//
// What the guest kernel puts at a function entry (x86-64, CONFIG_FENTRY,
// dynamic ftrace; arch/x86/kernel/ftrace.c, arch/x86/include/asm/ibt.h):
//   0f 1f 44 00 00            the 5-byte ftrace NOP (x86_nops[5]) that the
//                             build put where `call __fentry__` was
//   e8 rel32                  ftrace enabled: a call to ftrace_caller /
//                             ftrace_regs_caller in kernel text, or to an
//                             ops' own trampoline in module space (the
//                             function tracer, livepatch, a kprobe at the
//                             entry on KPROBES_ON_FTRACE kernels, a BPF or
//                             direct-call trampoline)
//   cc ...                    int3: a kprobe (not at the ftrace site on
//                             KPROBES_ON_FTRACE kernels), a breakpoint, or
//                             text_poke_bp() in the middle of rewriting
//                             the 5 bytes (first byte int3, then the tail,
//                             then the first byte)
//   e9 rel32 / eb rel8        not written by ftrace: another patcher, an
//                             optimised kprobe, or a live hvpatch redirection
// On IBT kernels (CONFIG_X86_KERNEL_IBT) all of these come after a 4-byte
// `endbr64` (f3 0f 1e fa), or after its poison in functions that are never
// called indirectly (`66 0f 1f 00` osp nopl (%rax) on 6.x, `0f 1f 40 d6`
// nopl -0x2a(%rax) on 7.x); the ftrace site is then entry + 4. 5.10 chose
// the NOP per CPU at boot (ideal_nops: `66 66 66 66 90` on QEMU's default
// CPU), so the caller passes the guest's own. Kernels without fentry (or notrace functions) start with
// ordinary code.
//
// All input is untrusted guest memory: nothing here reads outside the span
// it is given, and undecodable bytes are reported, never guessed at.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace hvpatch {

enum class ControlFlow {
    None,             // falls through to the next instruction
    Call,             // call (relative: branch_target set; indirect: not)
    Jump,             // unconditional jmp
    ConditionalJump,  // jcc, loop*, jrcxz
    Return,           // ret
};

struct Instruction {
    std::uint64_t address = 0;
    std::size_t size = 0;
    std::vector<std::byte> bytes;  // `size` bytes, as in memory
    std::string mnemonic;          // Intel syntax, as Capstone prints it: "call"
    std::string operands;          // "0xffffffff81001000", "qword ptr [rip + 0x10]"
    ControlFlow flow = ControlFlow::None;
    // Relative call/jmp/jcc/loop/jrcxz: the absolute target (address + size +
    // displacement, modulo 2^64). Unset for indirect and non-branches.
    std::optional<std::uint64_t> branch_target;
    // An operand [rip + disp]: the address it refers to. The patcher must
    // fix these up when it moves an instruction.
    std::optional<std::uint64_t> rip_relative_target;
    // Where the immediate and displacement fields lie in `bytes` (size 0:
    // none), and the opcode bytes after any prefixes: what a loader needs
    // to move an instruction (the kernel's __apply_relocation).
    std::uint8_t imm_offset = 0, imm_size = 0, disp_offset = 0, disp_size = 0;
    std::array<std::uint8_t, 2> opcode{};
    bool rep_prefix = false;  // F3 (REP/REPE): `f3 90` is PAUSE, not a NOP

    std::uint64_t end() const { return address + size; }
    // "mnemonic operands" (just the mnemonic when there are no operands).
    std::string text() const;
};

// Why decode() stopped.
enum class DecodeEnd {
    EndOfInput,  // every byte was decoded
    Limit,       // max_instructions reached
    Invalid,     // the bytes at `address` are no x86-64 instruction
    Truncated,   // the input ends inside an instruction starting at `address`
};

struct DecodeStop {
    DecodeEnd reason = DecodeEnd::EndOfInput;
    std::uint64_t address = 0;  // where decoding stopped (the next instruction)
    // "invalid instruction at 0x... (bytes 06 ...)", "input ends inside the
    // instruction at 0x... (3 bytes: e8 fb ff)", ...
    std::string description;
};

// Decodes `code`, which is at guest address `address`, as x86-64 (64-bit
// mode) until the bytes end, `max_instructions` are decoded, or bytes that
// are not an instruction come. `stop` (if given) says which and where.
// Never throws for bad bytes.
std::vector<Instruction> decode(std::span<const std::byte> code, std::uint64_t address,
                                std::size_t max_instructions, DecodeStop* stop = nullptr);

// What occupies a function's entry.
enum class EntryType {
    FtraceNop,         // 0f 1f 44 00 00 at the entry: untouched, patchable
    Endbr64FtraceNop,  // an endbr64 (or its poison), then the ftrace NOP at entry + 4
    Call,              // e8 rel32 at the patch site: the guest's own ftrace (tracer, livepatch, ...)
    Jmp,               // e9 rel32 / eb rel8: another patcher or a live hvpatch redirection
    Int3,              // cc: a kprobe, a breakpoint, or text_poke_bp() mid-update
    Other,             // anything else: no ftrace site (no fentry, notrace, ...)
};

const char* to_string(EntryType type);

// What precedes the patch site.
enum class EntryLanding {
    None,           // the patch site is the entry
    Endbr64,        // f3 0f 1e fa
    PoisonedEndbr,  // 66 0f 1f 00: an IBT kernel sealed this function
};

struct EntryKind {
    EntryType type = EntryType::Other;
    EntryLanding landing = EntryLanding::None;
    std::uint64_t entry = 0;       // the function's address
    std::uint64_t patch_site = 0;  // where the 5 bytes to redirect are: entry, or entry + 4
    std::vector<std::byte> site_bytes;  // the 5 bytes at patch_site, as given
    // Call and Jmp: where the instruction at the patch site goes.
    std::optional<std::uint64_t> target;
    // The instruction at the patch site, decoded ("" if undecodable, or if
    // the bytes given end inside it).
    std::string instruction;
    // For people: "ftrace NOP at 0x...", "call to 0x... (ftrace trampoline
    // or livepatch?)", ...
    std::string description;

    // The site holds the ftrace NOP (with or without an endbr64 before it).
    bool ftrace_nop() const { return type == EntryType::FtraceNop || type == EntryType::Endbr64FtraceNop; }
};

// Classifies the first bytes of a function at guest address `address`.
// Needs the 5 bytes of the patch site: at least 5 bytes, 9 if the function
// starts with endbr64 or its poison; give 16 so that Other can show a whole
// first instruction. Throws Error(Usage) if too few bytes are given.
// `ftrace_nop` is the guest's own (derive_ftrace_nop(): 5.10 picks it per
// CPU at boot); the 6.x one by default.
inline constexpr std::array<std::uint8_t, 5> kDefaultFtraceNop = {0x0f, 0x1f, 0x44, 0x00, 0x00};
EntryKind classify_entry(std::span<const std::byte> first_bytes, std::uint64_t address,
                         std::span<const std::uint8_t, 5> ftrace_nop = kDefaultFtraceNop);

// The start addresses of the instructions that cover [address, address +
// length), decoding from `address` (the first is `address`; empty when
// length is 0). The last one may end beyond address + length: see
// covers_whole_instructions(). `code` starts at `address` and must hold the
// last covering instruction whole (length + 15 bytes always do). Throws
// Error(Guest) naming the address if bytes in the range do not decode, and
// Error(Usage) if `code` ends inside an instruction of the range.
std::vector<std::uint64_t> instruction_boundaries(std::span<const std::byte> code, std::uint64_t address,
                                                  std::size_t length);

// True if [address, address + length) is made of whole instructions: one of
// the instructions decoded from `address` ends exactly at address + length.
// Throws like instruction_boundaries().
bool covers_whole_instructions(std::span<const std::byte> code, std::uint64_t address, std::size_t length);

// "0f 1f 44 00 00": bytes as a spaced hex string, for messages.
std::string format_code_bytes(std::span<const std::byte> bytes);

}  // namespace hvpatch
