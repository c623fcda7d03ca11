#include "patch/system_states.h"

#include <algorithm>

namespace hvpatch {

std::string state_refusal(const VmState& state, const std::string& name, const std::vector<PatchState>& states,
                          bool replace) {
    for (const auto& p : state.patches) {
        if (!is_live(p) || p.name == name) continue;
        for (const auto& old : p.states) {
            auto it = std::ranges::find_if(states, [&](const PatchState& st) { return st.id == old.id; });
            if (it == states.end() && replace)
                return "the patch is not compatible with the patches on this VM (klp_is_patch_compatible): patch " +
                       p.name + " introduced system state " + std::to_string(old.id) + " (version " +
                       std::to_string(old.version) + "), which this cumulative patch does not keep";
            if (it != states.end() && it->version < old.version)
                return "the patch is not compatible with the patches on this VM (klp_is_patch_compatible): it has "
                       "system state " + std::to_string(old.id) + " in version " + std::to_string(it->version) +
                       ", older than version " + std::to_string(old.version) + " of patch " + p.name;
        }
    }
    return "";
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> previous_states(const VmState& state, const AppliedPatch& patch) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    for (const auto& p : state.patches) {
        if (p.name == patch.name) break;
        const bool replaced = std::ranges::find(patch.replaces, p.name) != patch.replaces.end();
        if (!is_live(p) && !(p.phase == PatchPhase::Freeing && replaced)) continue;
        for (const auto& st : p.states) out.emplace_back(st.id, st.address);
    }
    return out;
}

}  // namespace hvpatch
