#include "introspect/branch_mitigations.h"

#include <utility>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

void add_problem(BranchMitigations& m, const std::string& what) {
    m.problem += (m.problem.empty() ? "" : "; ") + what;
}

}  // namespace

std::vector<std::uint32_t> cpu_capability_words(GuestKernel& kernel) {
    auto member = kernel.btf().member("cpuinfo_x86", "x86_capability");
    constexpr std::uint64_t kMaxWords = 64;  // NCAPINTS + NBUGINTS is 24 from 5.10 to 7.x
    if (member.size % 4 != 0 || member.size / 4 > kMaxWords)
        throw Error(ErrorKind::Guest, "guest BTF: cpuinfo_x86.x86_capability has " + std::to_string(member.size) +
                                          " bytes, not a plausible array of capability words");
    std::uint64_t base = kernel.symbol("boot_cpu_data") + member.offset;
    std::vector<std::uint32_t> words(member.size / 4);
    for (std::size_t i = 0; i < words.size(); ++i) words[i] = kernel.memory().read_u32(GuestVirtAddr{base + 4 * i});
    return words;
}

BranchMitigations derive_branch_mitigations(const BranchMitigationInputs& in) {
    BranchMitigations m;
    auto bit = [&](unsigned feature) {
        return feature / 32 < in.caps.size() && ((in.caps[feature / 32] >> (feature % 32)) & 1);
    };
    if (in.caps.size() <= kFeatureRethunk / 32)
        add_problem(m, "boot_cpu_data has " + std::to_string(in.caps.size()) + " capability words, too few for word 11");
    m.retpoline = bit(kFeatureRetpoline);
    m.retpoline_lfence = bit(kFeatureRetpolineLfence);
    m.rethunk = bit(kFeatureRethunk);

    if (!in.spectre_v2_enabled || !in.v2_retpoline || !in.v2_lfence || !in.v2_eibrs_retpoline ||
        !in.v2_eibrs_lfence) {
        add_problem(m, std::string("cannot cross-check X86_FEATURE_RETPOLINE: ") +
                           (in.spectre_v2_enabled ? "the SPECTRE_V2_* enumerators are not in the guest's BTF"
                                                  : "the guest has no spectre_v2_enabled"));
    } else {
        std::int64_t mode = *in.spectre_v2_enabled;
        bool lfence = mode == *in.v2_lfence || mode == *in.v2_eibrs_lfence;
        bool retpoline = lfence || mode == *in.v2_retpoline || mode == *in.v2_eibrs_retpoline;
        if (retpoline != m.retpoline || lfence != m.retpoline_lfence)
            add_problem(m, "X86_FEATURE_RETPOLINE/_LFENCE (word 11 bits 12/13) read " + std::to_string(m.retpoline) +
                               "/" + std::to_string(m.retpoline_lfence) + " but the guest's spectre_v2_enabled (" +
                               std::to_string(mode) + ") implies " + std::to_string(retpoline) + "/" +
                               std::to_string(lfence) + ": the capability bits are not where hvpatch reads them");
    }

    if (in.x86_return_thunk && in.bare_return_thunk && !m.rethunk && *in.x86_return_thunk != *in.bare_return_thunk)
        add_problem(m, "X86_FEATURE_RETHUNK (word 11 bit 14) reads 0 but x86_return_thunk was moved to " +
                           hex(*in.x86_return_thunk) + ": the capability bits are not where hvpatch reads them");

    if (in.its_mitigation) {
        if (!in.its_aligned_thunks)
            add_problem(m, "the guest has its_mitigation but its BTF lacks ITS_MITIGATION_ALIGNED_THUNKS");
        else
            m.indirect_its_thunks = *in.its_mitigation == *in.its_aligned_thunks && !m.retpoline;
    }
    m.call_depth_tracking = in.thunks_initialized.value_or(0) != 0;
    return m;
}

BranchMitigations derive_branch_mitigations(GuestKernel& kernel) {
    return derive_branch_mitigations(kernel, cpu_capability_words(kernel));
}

BranchMitigations derive_branch_mitigations(GuestKernel& kernel, std::vector<std::uint32_t> caps) {
    BranchMitigationInputs in;
    in.caps = std::move(caps);
    auto& mem = kernel.memory();
    const KernelBtf& btf = kernel.btf();
    if (auto at = kernel.find_symbol("spectre_v2_enabled")) in.spectre_v2_enabled = mem.read_u32(GuestVirtAddr{*at});
    in.v2_retpoline = btf.enum_value("SPECTRE_V2_RETPOLINE");
    in.v2_lfence = btf.enum_value("SPECTRE_V2_LFENCE");
    in.v2_eibrs_retpoline = btf.enum_value("SPECTRE_V2_EIBRS_RETPOLINE");
    in.v2_eibrs_lfence = btf.enum_value("SPECTRE_V2_EIBRS_LFENCE");
    auto thunk = kernel.find_symbol("x86_return_thunk");
    auto bare = kernel.find_symbol("__x86_return_thunk");
    if (thunk && bare) {
        in.x86_return_thunk = mem.read_u64(GuestVirtAddr{*thunk});
        in.bare_return_thunk = *bare;
    }
    if (auto at = kernel.find_symbol("its_mitigation")) in.its_mitigation = mem.read_u32(GuestVirtAddr{*at});
    in.its_aligned_thunks = btf.enum_value("ITS_MITIGATION_ALIGNED_THUNKS");
    if (auto at = kernel.find_symbol("thunks_initialized")) in.thunks_initialized = mem.read_u8(GuestVirtAddr{*at});
    return derive_branch_mitigations(in);
}

}  // namespace hvpatch
