// klp_get_prev_state() for hvpatch patches: guest code in the patch's
// memory that a patch module's calls of klp_get_prev_state are linked to,
// answering from a table hvpatch keeps up to date. Why, and the code:
// prev_state.S.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace hvpatch::shim {

// Size of the blob (code and table), a multiple of 16.
std::size_t prev_state_size();
// How many (id, klp_state address) entries the table holds.
std::size_t prev_state_capacity();

// The blob for `address`, with an empty table. `return_target` is the
// guest's __x86_return_thunk when the guest uses return thunks, or 0 for a
// plain `ret`. Throws Error(Guest) if the thunk is beyond rel32 reach.
std::vector<std::byte> build_prev_state(std::uint64_t address, std::uint64_t return_target);

// Where the return `jmp rel32` starts in the blob.
std::size_t prev_state_ret_jump_offset();

// The table part: where it lies in the blob, and its bytes for `entries`
// (id, struct klp_state * in the guest), oldest patch first. Throws
// Error(Guest) when there are more entries than prev_state_capacity().
std::size_t prev_state_table_offset();
std::vector<std::byte> prev_state_table(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& entries);

}  // namespace hvpatch::shim
