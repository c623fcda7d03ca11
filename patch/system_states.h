// System states (klp_patch.states) across the patches on a VM, as the
// guest's livepatch core keeps them (kernel/livepatch/state.c), computed
// from the VM's record.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "patch/applied_state.h"
#include "patch/livepatch_module.h"

namespace hvpatch {

// klp_is_patch_compatible() for a new patch `name` declaring `states`:
// every state a live patch on the VM introduced must be kept, never in an
// older version; a cumulative (`replace`) patch must declare them all.
// "" if compatible, else why not (naming the patch, state and versions).
std::string state_refusal(const VmState& state, const std::string& name, const std::vector<PatchState>& states,
                          bool replace);

// What klp_get_prev_state() answers `patch` now, as (id, struct klp_state
// address) pairs in walk order (the last match wins): the states of the
// patches before it in the record, as the core walks klp_patches up to the
// patch in transition. Patches it is replacing count until they are freed,
// as they stay on klp_patches until then.
std::vector<std::pair<std::uint64_t, std::uint64_t>> previous_states(const VmState& state, const AppliedPatch& patch);

}  // namespace hvpatch
