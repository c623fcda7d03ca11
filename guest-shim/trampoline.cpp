// Relocating the trampoline template (trampoline.S) into a guest blob: copy
// the bytes, fill the four 32-bit fields whose positions the assembler
// published.
#include "guest-shim/trampoline.h"

#include <cstring>
#include <limits>
#include <string>

#include "hvpatch/address.h"
#include "hvpatch/error.h"

// Defined by trampoline.S (read-only data, no relocations inside).
extern "C" {
extern const unsigned char hvpatch_trampoline_template[];
extern const std::uint32_t hvpatch_trampoline_size;
extern const std::uint32_t hvpatch_trampoline_current_task_field;
extern const std::uint32_t hvpatch_trampoline_patch_state_field;
extern const std::uint32_t hvpatch_trampoline_new_jmp_field;
extern const std::uint32_t hvpatch_trampoline_old_jmp_field;
}

namespace hvpatch::shim {
namespace {

constexpr std::size_t kFieldSize = 4;
constexpr std::size_t kMaxTemplateSize = 256;  // sanity bound on the assembled size
constexpr std::byte kJmpRel32Opcode{0xe9};

// The template's layout, checked once against what the assembler produced
// (a mistake in trampoline.S must not turn into a wrong guest blob).
struct TemplateLayout {
    std::size_t size = 0;
    std::size_t current_task_field = 0;
    std::size_t patch_state_field = 0;
    std::size_t new_jmp_field = 0;
    std::size_t old_jmp_field = 0;
};

const TemplateLayout& template_layout() {
    static const TemplateLayout layout = [] {
        TemplateLayout l{hvpatch_trampoline_size, hvpatch_trampoline_current_task_field,
                         hvpatch_trampoline_patch_state_field, hvpatch_trampoline_new_jmp_field,
                         hvpatch_trampoline_old_jmp_field};
        if (l.size == 0 || l.size % 16 != 0 || l.size > kMaxTemplateSize)
            throw Error(ErrorKind::Internal,
                        "trampoline template: size " + std::to_string(l.size) + " is not a multiple of 16 up to " +
                            std::to_string(kMaxTemplateSize));
        const std::size_t fields[] = {l.current_task_field, l.patch_state_field, l.new_jmp_field, l.old_jmp_field};
        for (std::size_t field : fields) {
            if (field < 1 || field + kFieldSize > l.size)
                throw Error(ErrorKind::Internal, "trampoline template: field at " + std::to_string(field) +
                                                     " outside its " + std::to_string(l.size) + " bytes");
            for (std::size_t i = 0; i < kFieldSize; ++i)
                if (hvpatch_trampoline_template[field + i] != 0)
                    throw Error(ErrorKind::Internal, "trampoline template: field at " + std::to_string(field) +
                                                         " is not a zero placeholder");
        }
        for (std::size_t jmp_field : {l.new_jmp_field, l.old_jmp_field})
            if (std::byte{hvpatch_trampoline_template[jmp_field - 1]} != kJmpRel32Opcode)
                throw Error(ErrorKind::Internal, "trampoline template: no jmp rel32 opcode before the field at " +
                                                     std::to_string(jmp_field));
        return l;
    }();
    return layout;
}

// rel32 of a branch whose displacement field ends at `next` (the next
// instruction's address), as the CPU computes it: target - next modulo 2^64,
// which must fit a sign-extended 32-bit value.
// `context` prefixes the error message.
std::int32_t rel32(std::uint64_t next, std::uint64_t target, std::uint64_t from, const std::string& context,
                   const char* what) {
    auto distance = static_cast<std::int64_t>(target - next);
    if (distance < std::numeric_limits<std::int32_t>::min() || distance > std::numeric_limits<std::int32_t>::max())
        throw Error(ErrorKind::Guest, context + "jmp rel32 at " + hex(from) + " cannot reach " + what + " at " +
                                          hex(target) + " (more than 2 GiB away)");
    return static_cast<std::int32_t>(distance);
}

void store_le32(std::byte* at, std::int32_t value) {
    auto v = static_cast<std::uint32_t>(value);
    for (int i = 0; i < 4; ++i) at[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

}  // namespace

std::size_t trampoline_size() { return template_layout().size; }

std::vector<std::byte> build_trampoline(const TrampolineParams& params) {
    const TemplateLayout& layout = template_layout();
    if (params.patch_state_offset < 0)
        throw Error(ErrorKind::Guest, "trampoline at " + hex(params.address) + ": task_struct.patch_state offset " +
                                          std::to_string(params.patch_state_offset) + " is negative");

    std::vector<std::byte> blob(layout.size);
    std::memcpy(blob.data(), hvpatch_trampoline_template, layout.size);
    store_le32(&blob[layout.current_task_field], params.current_task_offset);
    store_le32(&blob[layout.patch_state_field], params.patch_state_offset);
    // A jmp's rel32 is its last field: the next instruction starts right after it.
    auto jmp_at = [&](std::size_t field) { return params.address + field - 1; };
    auto next_after = [&](std::size_t field) { return params.address + field + kFieldSize; };
    const std::string context = "trampoline at " + hex(params.address) + ": ";
    store_le32(&blob[layout.new_jmp_field], rel32(next_after(layout.new_jmp_field), params.new_function,
                                                  jmp_at(layout.new_jmp_field), context, "the new function"));
    store_le32(&blob[layout.old_jmp_field], rel32(next_after(layout.old_jmp_field), params.old_continue,
                                                  jmp_at(layout.old_jmp_field), context, "the old function's continuation"));
    return blob;
}

std::array<std::byte, 5> jmp_rel32(std::uint64_t from, std::uint64_t to) {
    std::array<std::byte, 5> insn{};
    insn[0] = kJmpRel32Opcode;
    store_le32(&insn[1], rel32(from + insn.size(), to, from, "", "its target"));
    return insn;
}

}  // namespace hvpatch::shim
