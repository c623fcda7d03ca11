// The host-side linker of hvpatch's module loader: turns a livepatch .ko
// (LivepatchModule) and the guest address of one allocation into the exact
// bytes to write there, as the guest kernel's own loader would have left
// them after load_module() (kernel/module/main.c, arch/x86/kernel/module.c,
// arch/x86/kernel/alternative.c, kernel/livepatch/core.c of Linux 6.1) —
// minus what only matters to a module the guest knows about.
//
// hvpatch never runs the module's init and never registers the module with
// the guest (no struct module on the guest's list, no ftrace records, no
// jump-label or static-call registration, no kallsyms, no bug or exception
// table lookup). So every section the kernel's loader would act on is
// handled here deliberately, and every ModuleImage says in `actions` what
// was done with each special section and in `warnings` where the result
// differs from an insmod'ed module. What hvpatch cannot do faithfully is
// refused with Error(Guest) naming the section or symbol.
//
// Layout: one allocation, [text | rodata | data], each region page-aligned
// so the caller can make text RO+X, rodata RO+NX, data RW+NX. The regions
// take the sections layout_sections() would put in the core layout, in the
// same order (section index order within each class):
//   text    SHF_EXECINSTR sections, then `extra_text` bytes (16-aligned)
//           reserved for hvpatch's own trampolines
//   rodata  SHF_ALLOC sections without SHF_WRITE, then the "RO after init"
//           ones (.data..ro_after_init, __jump_table): init never runs, so
//           "after init" is from the start
//   data    SHF_WRITE sections (incl. .gnu.linkonce.this_module, .bss)
// Not loaded: non-SHF_ALLOC sections, .modinfo and __versions (the kernel
// clears their SHF_ALLOC: rewrite_section_headers), relocation sections
// (including the SHF_ALLOC .klp.rela.* ones, which the kernel keeps only for
// late module patching; hvpatch applies them here from the .ko), and
// .init*/.exit* sections (module_init_section / module_exit_section
// prefixes): init and exit never run.
//
// Formats are those of Linux 6.1 x86-64 (struct alt_instr, jump_entry,
// bug_entry with relative pointers, paravirt_patch_site, ORC v1) and the
// X86_FEATURE_* numbers of 6.1.0-56 (cpufeatures.h: NCAPINTS 22, NBUGINTS 2,
// X86_FEATURE_INDIRECT_THUNK_ITS = 21*32+5).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "introspect/branch_mitigations.h"
#include "introspect/orc_unwind.h"
#include "patch/livepatch_module.h"

namespace hvpatch {

inline constexpr std::uint64_t kModulePageSize = 4096;

// Layout of the one guest allocation: [text | rodata | data], each region
// page-aligned (4096).
struct ModuleLayout {
    std::uint64_t text_size = 0, rodata_size = 0, data_size = 0;  // each a multiple of 4096
    std::uint64_t total_size() const { return text_size + rodata_size + data_size; }
    std::uint64_t rodata_offset() const { return text_size; }
    std::uint64_t data_offset() const { return text_size + rodata_size; }
    // Offset of the reserved trampoline space from the base (16-aligned,
    // inside the text region, after the module's code).
    std::uint64_t extra_text_offset = 0;
    std::uint64_t extra_text_size = 0;
    // Loaded section index -> offset from the base.
    std::map<std::size_t, std::uint64_t> section_offset;
};

// Places the module's loaded sections. Throws Error(Guest) naming every
// SHF_ALLOC section hvpatch refuses (unknown sections, per-CPU data,
// tracepoints, ... see module_image.cpp) and why.
ModuleLayout plan_module_layout(const LivepatchModule& module, std::uint64_t extra_text);

// What the linker needs to know about the running guest.
struct GuestLinkFacts {
    // Resolves a symbol of the running guest. object: "" for an ordinary
    // undefined symbol (search vmlinux first, then loaded modules, exported
    // or not); "vmlinux" or a module name for a
    // .klp.sym.<object>.<name>,<sympos> symbol (sympos 0 = must be unique).
    // The linker also asks ("vmlinux", name, 0) for kernel internals it
    // needs: __x86_indirect_thunk_array, __x86_indirect_its_thunk_array,
    // x86_return_thunk, its_return_thunk, pv_ops, _paravirt_nop,
    // paravirt_BUG — only when the module has sites that need them.
    // nullopt = not found.
    std::function<std::optional<std::uint64_t>(const std::string& object, const std::string& name,
                                               std::uint64_t sympos)>
        resolve;
    // boot_cpu_data.x86_capability words (NCAPINTS + bug words, i.e. 24
    // words), for .altinstructions.
    std::vector<std::uint32_t> cpu_capabilities;
    // How the guest patches retpoline, return and call sites
    // (.retpoline_sites, .return_sites, .call_sites); its `problem`, if set,
    // refuses modules with such sites.
    BranchMitigations mitigations;
    // The guest image's .orc_header (6.4+), compared with the module's.
    std::optional<OrcHeader> orc_header;
    // Reads a 32-bit value of guest kernel memory (static_key.enabled; two
    // reads for a pointer such as pv_ops[i] or x86_return_thunk), nullopt
    // if unreadable.
    std::function<std::optional<std::uint32_t>(std::uint64_t address)> read_u32;
    // Which loaded objects exist ("vmlinux" always; module names), for
    // .klp.rela.<object>.* sections.
    std::function<bool(const std::string& object)> object_loaded;
    // sizeof(struct alt_instr) in the guest's BTF (0: not in BTF, or a
    // layout other than the two hvpatch knows: 12 bytes with a u16 cpuid up
    // to 6.2 and in 5.10/6.1, 14 with a u32 ft_flags from 6.3, each checked
    // member by member in link_format_facts()).
    std::uint64_t alt_instr_size = 12;
    // struct bug_entry (GENERIC_BUG_RELATIVE_POINTERS) as the guest's BTF
    // lays it out: 12 bytes (bug_addr_disp, file_disp, line, flags) up to
    // 6.x, 16 on 7.x (format_disp after bug_addr_disp). size 0: unknown.
    struct BugEntryLayout {
        std::uint64_t size = 12;
        std::uint64_t bug_addr = 0, flags = 10;
        std::optional<std::uint64_t> file = 4, line = 8;  // CONFIG_DEBUG_BUGVERBOSE
        bool has_format = false;                          // HAVE_ARCH_BUG_FORMAT (7.x)
    } bug_entry;
    // 7.x WARN()s with arguments trap in the guest's __WARN_trap with their
    // bug_entry in a register (HAVE_ARCH_BUG_FORMAT_ARGS): the guest
    // reports those itself, module or not. Set when the guest has it.
    bool warn_trap_with_entry = false;
};

// The guest structures the linker would write that it does not know in this
// guest's form (GuestLinkFacts::alt_instr_size, bug_entry): checked
// before any guest memory is allocated, and by link_module(). Throws
// Error(Guest) naming them.
void check_link_formats(const LivepatchModule& module, const GuestLinkFacts& facts);

// A symbol defined in a loaded section of the module.
struct ModuleSymbol {
    std::string name;
    std::uint64_t address = 0;
    std::uint64_t size = 0;
    unsigned type = 0;  // STT_*
    unsigned bind = 0;  // STB_*
};

struct ModuleImage {
    std::uint64_t base = 0;
    ModuleLayout layout;
    std::vector<std::byte> bytes;  // layout.total_size() bytes, to be written at base

    // Defined symbols (not STT_SECTION/STT_FILE) of loaded sections.
    std::vector<ModuleSymbol> symbols;
    // Address of a symbol defined in the module (function or object): the
    // global one of that name, else the only local one. Error(Usage) if
    // absent or if several local symbols share the name.
    std::uint64_t symbol_address(std::string_view name) const;
    // Offset in `bytes` of (section index, offset in it) of the module, for
    // a structure hvpatch fills in or points the guest at; Error(Guest)
    // naming `what` if that section is not loaded.
    std::uint64_t image_offset(std::size_t section, std::uint64_t offset, const std::string& what) const;

    // [start, end) of each defined FUNC symbol in loaded text, for stack checks.
    std::vector<std::tuple<std::string, std::uint64_t, std::uint64_t>> functions;

    // The module's ORC tables as loaded and sorted (unwind_module_init):
    // guest addresses of .orc_unwind_ip (s32 self-relative each) and
    // .orc_unwind (6-byte entries) and the number of entries that describe
    // loaded code (entries for skipped .init/.exit code are moved behind
    // them, zeroed). 0 if the module has no ORC data. The host copy is in
    // `bytes` at orc_unwind_ip - base and orc_unwind - base.
    std::uint64_t orc_unwind_ip = 0, orc_unwind = 0;
    std::size_t orc_entries = 0;

    // Objects whose .klp.rela.<object>.* relocations were left unapplied
    // because the object is not loaded (the kernel applies them when the
    // module loads, klp_module_coming; hvpatch would have to re-link).
    std::vector<std::string> unlinked_objects;

    // One line per special section and what was done ("__mcount_loc: 3
    // call sites turned into NOPs", ...).
    std::vector<std::string> actions;
    // Where the result differs from the same module loaded by insmod.
    std::vector<std::string> warnings;

    std::uint64_t end() const { return base + bytes.size(); }
    bool contains(std::uint64_t address, std::uint64_t length = 1) const {
        return address >= base && length <= bytes.size() && address - base <= bytes.size() - length;
    }
};

// Whether a return at `address` goes through the return thunk, as the
// guest's patch_return() decides it: with return thunks on (`rethunk`,
// thunk `return_thunk`), except that the ITS return thunk serves only
// returns in the lower half of a cache line; else a plain ret.
bool uses_return_thunk(bool rethunk, std::uint64_t return_thunk, std::optional<std::uint64_t> its_return_thunk,
                       std::uint64_t address);

// Links `module` for the allocation at `base` (page-aligned, module area):
// lays out and copies the sections, resolves every symbol, applies every
// relocation (.klp.rela.* included), and handles the special sections.
// Throws Error(Guest) naming the symbol/section when a symbol is not found
// in the guest, a relocation is out of range (e.g. PC32 beyond ±2 GiB), a
// relocation type is unknown, or a special section cannot be honoured;
// Error(Usage) for a misaligned base. Never returns a half-linked image.
ModuleImage link_module(const LivepatchModule& module, std::uint64_t base, std::uint64_t extra_text,
                        const GuestLinkFacts& facts);

}  // namespace hvpatch
