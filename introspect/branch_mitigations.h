// How the guest kernel patches the branch sites of a module it loads
// (apply_retpolines/apply_returns/callthunks in arch/x86/kernel/alternative.c
// and callthunks.c), as decided at its boot. hvpatch's loader must make the
// same choice for a patch module, or the patch would run with weaker
// Spectre/retbleed/ITS protection than the rest of the kernel.
//
// The kernel decides from X86_FEATURE_* bits in boot_cpu_data. Those numbers
// are #defines (not in BTF), and the one that moves between releases —
// X86_FEATURE_INDIRECT_THUNK_ITS: 21*32+5 in 6.1.y, +6 in 6.12.y, +10 in 7.x
// — is not read by number at all:
//
//   retpoline, retpoline_lfence  X86_FEATURE_RETPOLINE(_LFENCE), word 11 bits
//       12/13 from 5.19 (and the 5.10.y/5.15.y backports) to 7.x; each
//       cross-checked against the guest's spectre_v2_enabled, whose
//       enumerators (names from BTF) imply them: RETPOLINE and EIBRS_RETPOLINE
//       set RETPOLINE, LFENCE and EIBRS_LFENCE set both
//       (spectre_v2_select_mitigation). A mismatch is a guest whose bits
//       hvpatch misreads: refused.
//   rethunk  X86_FEATURE_RETHUNK, word 11 bit 14. Cross-check: a guest
//       without it never moved x86_return_thunk off __x86_return_thunk.
//   indirect_its_thunks  from its_mitigation == ITS_MITIGATION_ALIGNED_THUNKS
//       and not retpoline (its_apply_mitigation / its_select_mitigation force
//       X86_FEATURE_INDIRECT_THUNK_ITS exactly then); false when the kernel
//       has no its_mitigation (no ITS support).
//   call_depth_tracking  the guest's `thunks_initialized` (callthunks_setup
//       sets it when X86_FEATURE_CALL_DEPTH is on: retbleed=stuff), which
//       makes every call site of a module go through call thunks
//       (callthunks_patch_module_calls); hvpatch does not build those.
//
// Each field that could not be derived or cross-checked leaves `problem`
// set; the loader fails with it only when a module actually has sites that
// depend on these decisions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "introspect/guest_kernel.h"

namespace hvpatch {

struct BranchMitigations {
    bool retpoline = false;
    bool retpoline_lfence = false;
    bool rethunk = false;
    bool indirect_its_thunks = false;
    bool call_depth_tracking = false;
    // Non-empty: what could not be derived or did not cross-check.
    std::string problem;
};

// X86_FEATURE_* bits that have kept their numbers from 5.10.y to 7.x.
inline constexpr unsigned kFeatureRetpoline = 11 * 32 + 12;
inline constexpr unsigned kFeatureRetpolineLfence = 11 * 32 + 13;
inline constexpr unsigned kFeatureRethunk = 11 * 32 + 14;

// boot_cpu_data.x86_capability (NCAPINTS + NBUGINTS words, size from BTF).
std::vector<std::uint32_t> cpu_capability_words(GuestKernel& kernel);

// `caps`: cpu_capability_words(kernel), for a caller that has them already.
BranchMitigations derive_branch_mitigations(GuestKernel& kernel, std::vector<std::uint32_t> caps);
BranchMitigations derive_branch_mitigations(GuestKernel& kernel);

// The derivation on values already read (unit-testable): `caps` are the
// capability words; the rest are the guest's variables and the values of the
// enumerators, nullopt where the guest has no such symbol or enumerator.
struct BranchMitigationInputs {
    std::vector<std::uint32_t> caps;
    std::optional<std::uint32_t> spectre_v2_enabled;
    std::optional<std::int64_t> v2_retpoline, v2_lfence, v2_eibrs_retpoline, v2_eibrs_lfence;
    std::optional<std::uint64_t> x86_return_thunk, bare_return_thunk;  // value of the pointer, __x86_return_thunk
    std::optional<std::uint32_t> its_mitigation;
    std::optional<std::int64_t> its_aligned_thunks;
    std::optional<std::uint8_t> thunks_initialized;
};
BranchMitigations derive_branch_mitigations(const BranchMitigationInputs& in);

}  // namespace hvpatch
