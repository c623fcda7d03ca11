// Relocating the klp_get_prev_state template (prev_state.S): copy the
// bytes, fill the return jump, and encode the table.
#include "guest-shim/prev_state.h"

#include <cstring>
#include <string>

#include "guest-shim/trampoline.h"
#include "hvpatch/error.h"

extern "C" {
extern const unsigned char hvpatch_prev_state_template[];
extern const std::uint32_t hvpatch_prev_state_size;
extern const std::uint32_t hvpatch_prev_state_return_field;
extern const std::uint32_t hvpatch_prev_state_ret_offset;
extern const std::uint32_t hvpatch_prev_state_table_field;
extern const std::uint32_t hvpatch_prev_state_capacity;
}

namespace hvpatch::shim {
namespace {

void store_le(std::byte* at, std::uint64_t value, std::size_t bytes) {
    for (std::size_t i = 0; i < bytes; ++i) at[i] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
}

// The template's published layout, checked once (a mistake in the .S must
// not become a wrong guest blob).
void check_layout() {
    static const bool checked = [] {
        const std::uint32_t size = hvpatch_prev_state_size, field = hvpatch_prev_state_return_field,
                            table = hvpatch_prev_state_table_field;
        if (size == 0 || size % 16 != 0 || field < 1 || field + 4 != hvpatch_prev_state_ret_offset ||
            hvpatch_prev_state_template[field - 1] != 0xe9 || hvpatch_prev_state_template[field + 4] != 0xc3 ||
            table % 8 != 0 || table + 8 + 16 * std::uint64_t{hvpatch_prev_state_capacity} > size)
            throw Error(ErrorKind::Internal, "prev_state template: inconsistent layout");
        return true;
    }();
    (void)checked;
}

}  // namespace

std::size_t prev_state_size() {
    check_layout();
    return hvpatch_prev_state_size;
}
std::size_t prev_state_capacity() { return hvpatch_prev_state_capacity; }
std::size_t prev_state_ret_jump_offset() {
    check_layout();
    return hvpatch_prev_state_return_field - 1;
}
std::size_t prev_state_table_offset() {
    check_layout();
    return hvpatch_prev_state_table_field;
}

std::vector<std::byte> build_prev_state(std::uint64_t address, std::uint64_t return_target) {
    check_layout();
    std::vector<std::byte> blob(hvpatch_prev_state_size);
    std::memcpy(blob.data(), hvpatch_prev_state_template, blob.size());
    // The return jump, encoded (and its reach checked) as every hvpatch jmp rel32.
    const std::uint64_t jmp_at = address + hvpatch_prev_state_return_field - 1;
    const std::uint64_t next = address + hvpatch_prev_state_ret_offset;
    const auto jmp = jmp_rel32(jmp_at, return_target ? return_target : next);  // rel32 0: on to the `ret`
    std::memcpy(&blob[hvpatch_prev_state_return_field], &jmp[1], 4);
    return blob;
}

std::vector<std::byte> prev_state_table(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& entries) {
    check_layout();
    if (entries.size() > hvpatch_prev_state_capacity)
        throw Error(ErrorKind::Guest, "the patches on this VM declare " + std::to_string(entries.size()) +
                                          " system states; hvpatch's klp_get_prev_state holds at most " +
                                          std::to_string(hvpatch_prev_state_capacity));
    std::vector<std::byte> table(8 + 16 * std::size_t{hvpatch_prev_state_capacity});
    store_le(table.data(), entries.size(), 8);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        store_le(&table[8 + 16 * i], entries[i].first, 8);
        store_le(&table[16 + 16 * i], entries[i].second, 8);
    }
    return table;
}

}  // namespace hvpatch::shim
