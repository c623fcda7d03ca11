// x86-64 decoding with Capstone 4 (detail on), entry classification and
// instruction boundaries. See code_inspect.h for what a guest function
// entry can hold and why.
//
// Capstone notes (4.0.2, measured):
//  - A failed decode sets no error (cs_errno() stays CS_ERR_OK) and does not
//    say whether the bytes were invalid or merely cut short. truncated_at()
//    tells them apart by completing the bytes: if some completion decodes
//    into an instruction longer than what is left, the input ended inside
//    an instruction. (A bare EVEX prefix at the very end is not recognised
//    this way and reads as invalid.)
//  - Relative branch operands are already absolute (address + size + disp,
//    wrapping modulo 2^64). `loop*` are in CS_GRP_BRANCH_RELATIVE but not in
//    CS_GRP_JUMP, so both groups count as jumps.
//  - endbr64 decodes by name; `66 e9 rel16` decodes as a 4-byte jmp (AMD's
//    reading; Intel ignores 66 there and reads rel32). The kernel emits
//    neither at entries except endbr64.
#include "introspect/code_inspect.h"

#include <capstone/capstone.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "hvpatch/address.h"
#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::size_t kMaxInstructionSize = 15;
constexpr std::size_t kPatchSiteSize = 5;
constexpr std::array<std::uint8_t, 4> kEndbr64 = {0xf3, 0x0f, 0x1e, 0xfa};
// gen_endbr_poison(): 0x001f0f66, "osp nopl (%rax)" (arch/x86/include/asm/ibt.h).
// 6.2-6.x seal with `66 0f 1f 00` (osp nopl (%rax)); 7.x with
// `0f 1f 40 d6` (nopl -0x2a(%rax)) (arch/x86/include/asm/ibt.h).
constexpr std::array<std::uint8_t, 4> kEndbrPoison = {0x66, 0x0f, 0x1f, 0x00};
constexpr std::array<std::uint8_t, 4> kEndbrPoison7 = {0x0f, 0x1f, 0x40, 0xd6};

// One Capstone handle and instruction buffer per thread (a handle must not
// be shared between threads; opening one per call costs an allocation of
// Capstone's tables each time).
class Capstone {
public:
    Capstone() {
        if (cs_open(CS_ARCH_X86, CS_MODE_64, &handle_) != CS_ERR_OK)
            throw Error(ErrorKind::Internal, "capstone: cannot open an x86-64 disassembler");
        cs_option(handle_, CS_OPT_DETAIL, CS_OPT_ON);
        insn_ = cs_malloc(handle_);
        if (!insn_) {
            cs_close(&handle_);
            throw Error(ErrorKind::Internal, "capstone: out of memory");
        }
    }
    ~Capstone() {
        cs_free(insn_, 1);
        cs_close(&handle_);
    }
    Capstone(const Capstone&) = delete;
    Capstone& operator=(const Capstone&) = delete;

    // Decodes one instruction at the start of `code` into insn().
    bool decode_one(std::span<const std::uint8_t> code, std::uint64_t address) {
        const std::uint8_t* p = code.data();
        std::size_t left = code.size();
        return cs_disasm_iter(handle_, &p, &left, &address, insn_);
    }
    const cs_insn& insn() const { return *insn_; }
    bool in_group(cs_group_type group) const { return cs_insn_group(handle_, insn_, group); }

private:
    csh handle_ = 0;
    cs_insn* insn_ = nullptr;
};

Capstone& capstone() {
    thread_local Capstone instance;
    return instance;
}

std::span<const std::uint8_t> as_u8(std::span<const std::byte> bytes) {
    return {reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()};
}

bool starts_with(std::span<const std::byte> bytes, std::span<const std::uint8_t> pattern) {
    return bytes.size() >= pattern.size() && std::memcmp(bytes.data(), pattern.data(), pattern.size()) == 0;
}

Instruction make_instruction(Capstone& cs) {
    const cs_insn& insn = cs.insn();
    Instruction out;
    out.address = insn.address;
    out.size = insn.size;
    out.bytes.resize(insn.size);
    std::memcpy(out.bytes.data(), insn.bytes, insn.size);
    out.mnemonic = insn.mnemonic;
    out.operands = insn.op_str;

    if (cs.in_group(CS_GRP_CALL)) {
        out.flow = ControlFlow::Call;
    } else if (cs.in_group(CS_GRP_JUMP) || cs.in_group(CS_GRP_BRANCH_RELATIVE)) {
        out.flow = insn.id == X86_INS_JMP || insn.id == X86_INS_LJMP ? ControlFlow::Jump
                                                                      : ControlFlow::ConditionalJump;
    } else if (cs.in_group(CS_GRP_RET) || cs.in_group(CS_GRP_IRET)) {
        out.flow = ControlFlow::Return;
    }

    const cs_x86& x86 = insn.detail->x86;
    if ((out.flow == ControlFlow::Call || out.flow == ControlFlow::Jump ||
         out.flow == ControlFlow::ConditionalJump) &&
        x86.op_count >= 1 && x86.operands[0].type == X86_OP_IMM) {
        out.branch_target = static_cast<std::uint64_t>(x86.operands[0].imm);
    }
    out.imm_offset = x86.encoding.imm_offset;
    out.imm_size = x86.encoding.imm_size;
    out.disp_offset = x86.encoding.disp_offset;
    out.disp_size = x86.encoding.disp_size;
    out.opcode = {x86.opcode[0], x86.opcode[1]};
    for (std::uint8_t p : x86.prefix) out.rep_prefix |= p == 0xf3;
    for (std::uint8_t i = 0; i < x86.op_count; ++i) {
        const cs_x86_op& op = x86.operands[i];
        if (op.type == X86_OP_MEM && op.mem.base == X86_REG_RIP) {
            out.rip_relative_target = out.end() + static_cast<std::uint64_t>(op.mem.disp);
            break;
        }
    }
    return out;
}

// True if `rest` (which did not decode) is the beginning of an instruction
// that continues past its end: some completion of it decodes to more bytes
// than `rest` has.
bool truncated_at(Capstone& cs, std::span<const std::uint8_t> rest, std::uint64_t address) {
    if (rest.size() >= kMaxInstructionSize) return false;
    std::array<std::uint8_t, kMaxInstructionSize> buf{};
    std::copy(rest.begin(), rest.end(), buf.begin());
    for (unsigned fill = 0; fill < 256; ++fill) {
        std::fill(buf.begin() + static_cast<std::ptrdiff_t>(rest.size()), buf.end(), static_cast<std::uint8_t>(fill));
        if (cs.decode_one(buf, address) && cs.insn().size > rest.size()) return true;
    }
    return false;
}

// The instructions decoded from `address` that start inside [address,
// address + length), the last one reaching or passing its end; throws as
// instruction_boundaries() documents.
std::vector<Instruction> covering(std::span<const std::byte> code, std::uint64_t address, std::size_t length) {
    if (length == 0) return {};
    std::span<const std::byte> window = code.first(std::min(code.size(), length + kMaxInstructionSize));
    DecodeStop stop;
    std::vector<Instruction> insns = decode(window, address, length, &stop);
    std::vector<Instruction> out;
    for (auto& insn : insns) {
        std::uint64_t offset = insn.address - address;
        if (offset >= length) break;
        out.push_back(std::move(insn));
    }
    if (!out.empty() && out.back().end() - address >= length) return out;
    const std::string range = "[" + hex(address) + ", " + hex(address + length) + ")";
    if (stop.reason == DecodeEnd::Invalid)
        throw Error(ErrorKind::Guest, "instruction boundaries of " + range + ": " + stop.description);
    throw Error(ErrorKind::Usage, "instruction boundaries of " + range + ": " + stop.description +
                                      "; give the code up to the end of the last instruction (length + 15 bytes)");
}

}  // namespace

std::string format_code_bytes(std::span<const std::byte> bytes) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 3);
    for (std::byte b : bytes) {
        if (!out.empty()) out += ' ';
        auto v = static_cast<unsigned>(b);
        out += kDigits[v >> 4];
        out += kDigits[v & 0xf];
    }
    return out;
}

std::string Instruction::text() const { return operands.empty() ? mnemonic : mnemonic + " " + operands; }

std::vector<Instruction> decode(std::span<const std::byte> code, std::uint64_t address,
                                std::size_t max_instructions, DecodeStop* stop) {
    Capstone& cs = capstone();
    std::span<const std::uint8_t> bytes = as_u8(code);
    std::vector<Instruction> out;
    std::size_t offset = 0;
    DecodeStop result;
    while (true) {
        const std::uint64_t at = address + offset;
        if (offset == bytes.size()) {
            result = {DecodeEnd::EndOfInput, at, "end of input at " + hex(at)};
            break;
        }
        if (out.size() >= max_instructions) {
            result = {DecodeEnd::Limit, at, std::to_string(max_instructions) + " instructions decoded, up to " + hex(at)};
            break;
        }
        std::span<const std::uint8_t> rest = bytes.subspan(offset);
        if (!cs.decode_one(rest, at)) {
            std::span<const std::byte> shown = code.subspan(offset, std::min<std::size_t>(rest.size(), 8));
            if (truncated_at(cs, rest, at)) {
                result = {DecodeEnd::Truncated, at,
                          "input ends inside the instruction at " + hex(at) + " (" + std::to_string(rest.size()) +
                              " byte" + (rest.size() == 1 ? "" : "s") + " left: " + format_code_bytes(shown) + ")"};
            } else {
                result = {DecodeEnd::Invalid, at,
                          "invalid instruction at " + hex(at) + " (bytes " + format_code_bytes(shown) +
                              (rest.size() > shown.size() ? " ..." : "") + ")"};
            }
            break;
        }
        out.push_back(make_instruction(cs));
        offset += out.back().size;
    }
    if (stop) *stop = std::move(result);
    return out;
}

const char* to_string(EntryType type) {
    switch (type) {
        case EntryType::FtraceNop: return "ftrace-nop";
        case EntryType::Endbr64FtraceNop: return "endbr64-ftrace-nop";
        case EntryType::Call: return "call";
        case EntryType::Jmp: return "jmp";
        case EntryType::Int3: return "int3";
        case EntryType::Other: return "other";
    }
    return "?";
}

EntryKind classify_entry(std::span<const std::byte> first_bytes, std::uint64_t address,
                         std::span<const std::uint8_t, 5> ftrace_nop) {
    EntryKind kind;
    kind.entry = address;
    std::size_t offset = 0;
    if (starts_with(first_bytes, kEndbr64)) {
        kind.landing = EntryLanding::Endbr64;
        offset = kEndbr64.size();
    } else if (starts_with(first_bytes, kEndbrPoison) || starts_with(first_bytes, kEndbrPoison7)) {
        kind.landing = EntryLanding::PoisonedEndbr;
        offset = kEndbrPoison.size();
    }
    if (first_bytes.size() < offset + kPatchSiteSize)
        throw Error(ErrorKind::Usage, "classifying the entry at " + hex(address) + " needs at least " +
                                          std::to_string(offset + kPatchSiteSize) + " bytes, got " +
                                          std::to_string(first_bytes.size()) + " (" +
                                          format_code_bytes(first_bytes) + ")");
    kind.patch_site = address + offset;
    std::span<const std::byte> site = first_bytes.subspan(offset);
    kind.site_bytes.assign(site.begin(), site.begin() + kPatchSiteSize);

    DecodeStop stop;
    std::vector<Instruction> first = decode(site, kind.patch_site, 1, &stop);
    if (!first.empty()) kind.instruction = first.front().text();

    const std::string at = " at " + hex(kind.patch_site);
    std::string landing;
    if (kind.landing == EntryLanding::Endbr64) landing = "endbr64 at " + hex(address) + ", then ";
    if (kind.landing == EntryLanding::PoisonedEndbr) landing = "poisoned endbr64 (sealed) at " + hex(address) + ", then ";

    const auto u8 = [&](std::size_t i) { return static_cast<std::uint8_t>(site[i]); };
    const auto rel32 = [&] {
        std::int32_t rel;
        std::memcpy(&rel, site.data() + 1, sizeof rel);
        return kind.patch_site + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(rel));
    };

    if (starts_with(site, ftrace_nop)) {
        kind.type = kind.landing == EntryLanding::None ? EntryType::FtraceNop : EntryType::Endbr64FtraceNop;
        kind.description = landing + "ftrace NOP" + at;
    } else if (u8(0) == 0xe8) {
        kind.type = EntryType::Call;
        kind.target = rel32();
        kind.description = landing + "call to " + hex(*kind.target) + " (ftrace trampoline or livepatch?)" + at;
    } else if (u8(0) == 0xe9) {
        kind.type = EntryType::Jmp;
        kind.target = rel32();
        kind.description = landing + "jmp to " + hex(*kind.target) + " (another patcher or an hvpatch redirection?)" + at;
    } else if (u8(0) == 0xeb) {
        kind.type = EntryType::Jmp;
        kind.target = kind.patch_site + 2 + static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int8_t>(u8(1))));
        kind.description = landing + "short jmp to " + hex(*kind.target) +
                           " (another patcher?; the 5-byte site is not one instruction)" + at;
    } else if (u8(0) == 0xcc) {
        kind.type = EntryType::Int3;
        kind.description = landing + "int3" + at + ", then " + format_code_bytes(site.subspan(1, 4)) +
                           " (kprobe, breakpoint, or text_poke_bp mid-update?)";
    } else {
        kind.type = EntryType::Other;
        if (!first.empty() && first.front().mnemonic == "nop" && first.front().size == kPatchSiteSize) {
            kind.description = landing + "a 5-byte NOP that is not ftrace's (" + format_code_bytes(site.first(5)) +
                               ")" + at;
        } else if (!first.empty()) {
            kind.description = landing + "no ftrace NOP" + at + ": starts with `" + kind.instruction +
                               "` (built without fentry, or notrace?)";
        } else {
            kind.description = landing + "no ftrace NOP" + at + ": " + stop.description;
        }
    }
    return kind;
}

std::vector<std::uint64_t> instruction_boundaries(std::span<const std::byte> code, std::uint64_t address,
                                                  std::size_t length) {
    std::vector<std::uint64_t> starts;
    for (const auto& insn : covering(code, address, length)) starts.push_back(insn.address);
    return starts;
}

bool covers_whole_instructions(std::span<const std::byte> code, std::uint64_t address, std::size_t length) {
    std::vector<Instruction> insns = covering(code, address, length);
    return insns.empty() || insns.back().end() - address == length;
}

}  // namespace hvpatch
