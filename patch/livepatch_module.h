// A standard livepatch kernel module (.ko), read on the host with libelf.
//
// hvpatch's input is the .ko that kbuild (or kpatch-build / klp-build)
// builds against the guest's linux-headers: an ET_REL x86-64 ELF with
// .modinfo (name, vermagic, livepatch=Y, license, depends, ...), a
// `struct module` in .gnu.linkonce.this_module, and a static
// klp_patch -> klp_object[] -> klp_func[] description that its init
// function hands to klp_enable_patch(). hvpatch never runs that init: the
// description is decoded from the module's own data sections and their
// relocations (pointers in a .ko are zero bytes plus an R_X86_64_64
// relocation), with the structure layouts of the guest's BTF.
//
// Finding the klp_patch: klp_enable_patch() refuses a patch without `mod`
// (= THIS_MODULE) and `objs`, so a klp_patch is a place in a writable data
// section with an R_X86_64_64 relocation to `__this_module` at
// klp_patch.mod and one at klp_patch.objs. If several places qualify, the
// one whose address init_module loads just before its call to
// klp_enable_patch wins. The arrays end as the kernel's
// klp_for_each_{object,func}_static() end them: an object whose name and
// funcs are NULL; a func whose old_name, new_func and old_sympos are zero.
//
// Livepatch ELF extensions (Documentation/livepatch/module-elf-format.rst,
// kernel/livepatch/core.c klp_resolve_symbols/klp_apply_section_relocs):
// symbols `.klp.sym.<objname>.<symname>,<sympos>` with st_shndx
// SHN_LIVEPATCH, and SHF_RELA_LIVEPATCH relocation sections
// `.klp.rela.<objname>.<section>` that apply to their sh_info section once
// <objname> is present. Both are parsed and listed; a malformed name is a
// refusal at open(), as the kernel's loader would refuse it.
//
// Errors are hvpatch::Error naming the file and the section or symbol:
// ErrorKind::Usage for a file that is not a usable livepatch module,
// ErrorKind::Guest for a module that does not fit the guest
// (check_compatible) or that hvpatch cannot load faithfully
// (check_supported).
#pragma once

#include <cstddef>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "introspect/guest_layouts.h"

namespace hvpatch {

// Section flag and symbol section index of the livepatch ELF format
// (include/uapi/linux/elf.h).
inline constexpr std::uint64_t kShfRelaLivepatch = 0x00100000;
inline constexpr std::uint16_t kShnLivepatch = 0xff20;

struct KoSection {
    std::size_t index = 0;
    std::string name;
    std::uint32_t type = 0;    // SHT_*
    std::uint64_t flags = 0;   // SHF_*
    std::uint64_t size = 0;
    std::uint64_t alignment = 0;
    std::uint64_t offset = 0;  // in the file (meaningless for SHT_NOBITS)
    std::uint32_t link = 0, info = 0;
    std::uint64_t entsize = 0;
};

struct KoSymbol {
    std::size_t index = 0;
    std::string name;
    std::uint64_t value = 0, size = 0;
    unsigned type = 0;            // STT_*
    unsigned bind = 0;            // STB_*
    std::uint16_t shndx = 0;      // SHN_UNDEF, a section index, SHN_ABS, kShnLivepatch, ...
};

struct KoRelocation {
    std::uint64_t offset = 0;  // in the target section
    std::uint32_t type = 0;    // R_X86_64_*
    std::uint32_t symbol = 0;  // index in symbols()
    std::int64_t addend = 0;
};

struct KoRelocationSection {
    std::size_t index = 0;   // this SHT_RELA section
    std::string name;
    std::size_t target = 0;  // sh_info: the section the relocations apply to
    bool livepatch = false;  // SHF_RELA_LIVEPATCH (a .klp.rela.* section)
    std::vector<KoRelocation> entries;
};

// `.klp.sym.<object>.<name>,<sympos>`: object is "vmlinux" or a module
// name (no '.'), name may contain '.' (e.g. "foo.isra.0"), sympos is the
// 1-based position among same-named symbols of that object, 0 = unique.
struct KlpSymbolName {
    std::string object;
    std::string name;
    std::uint64_t sympos = 0;
};
// `.klp.rela.<object>.<section>`.
struct KlpRelaName {
    std::string object;
    std::string section;  // e.g. "text.cmdline_proc_show"
};
// Parse those names the way the guest kernel does (sscanf
// ".klp.sym.%55[^.].%511[^,],%lu" and ".klp.rela.%55[^.]"), strictly:
// nothing may follow the sympos. Throw Error(Usage) naming the bad name.
KlpSymbolName parse_klp_symbol_name(std::string_view name);
KlpRelaName parse_klp_rela_name(std::string_view name);

struct KlpSymbol {
    std::size_t symbol = 0;  // index in symbols()
    KlpSymbolName parsed;
};
struct KlpRelaSection {
    std::size_t section = 0;  // index in sections()
    std::size_t target = 0;   // sh_info
    KlpRelaName parsed;
    std::size_t relocations = 0;
};

// What the patch replaces: klp_func of one klp_object.
struct PatchedFunction {
    std::string object;          // klp_object.name; "" = vmlinux (NULL name)
    std::string old_name;        // klp_func.old_name
    std::uint64_t old_sympos = 0;  // klp_func.old_sympos (0 = the only one)
    std::string new_func;        // the module symbol klp_func.new_func points to
    // Where this klp_func lies in the module (section index, offset): a
    // loader fills in klp_func.old_func there, as klp_init_func() does, for
    // patch code that calls the old function through it.
    std::size_t func_section = 0;
    std::uint64_t func_offset = 0;
    // False for a klp-build module: its klp_func exists only once its init
    // has built it, so there is no old_func to fill in.
    bool has_klp_func = true;
    // What is patched, not where the description lies.
    bool operator==(const PatchedFunction& o) const {
        return object == o.object && old_name == o.old_name && old_sympos == o.old_sympos && new_func == o.new_func;
    }
};

// One klp_object of the patch, for its callbacks (struct klp_callbacks):
// where it lies in the module and which callbacks it sets.
struct PatchObject {
    std::string name;  // klp_object.name; "" = vmlinux (NULL name)
    std::size_t section = 0;
    std::uint64_t offset = 0;
    // pre_patch, post_patch, pre_unpatch, post_unpatch: set or NULL.
    std::array<bool, 4> callbacks{};
    bool has_callbacks() const { return callbacks[0] || callbacks[1] || callbacks[2] || callbacks[3]; }
};
// One struct klp_state of klp_patch.states[] (the array ends at id 0).
struct PatchState {
    std::uint64_t id = 0;
    std::uint64_t version = 0;
    std::size_t section = 0;  // where it lies in the module
    std::uint64_t offset = 0;
};

inline constexpr const char* kKlpCallbackNames[4] = {"pre_patch", "post_patch", "pre_unpatch", "post_unpatch"};

// A section whose contents a loader must handle deliberately.
struct SpecialSection {
    std::size_t index = 0;
    std::string name;
    std::uint64_t size = 0;
    std::string handling;  // what hvpatch does with it (or why it refuses)
    bool refused = false;  // check_supported() refuses the module for it
};

// SHA-256 of `data` as 64 lower-case hex digits (FIPS 180-4).
std::string sha256_hex(std::span<const std::byte> data);

class LivepatchModule {
public:
    // Reads and validates `path`. Throws Error(Usage): "PATH: not an ELF
    // file", "PATH: truncated or corrupt ELF: ...", "PATH: not a 64-bit
    // x86-64 relocatable object (...)", "PATH: not a kernel module (no
    // .modinfo / .gnu.linkonce.this_module)", "PATH: not a livepatch module
    // (no livepatch=Y in .modinfo)", malformed .klp.* names; Error(Internal)
    // if the file cannot be read.
    static LivepatchModule open(const std::string& path);

    const std::string& path() const { return path_; }
    std::uint64_t file_size() const { return bytes_.size(); }
    const std::string& sha256() const { return sha256_; }

    // .modinfo "key=value" entries in file order (a key may repeat).
    const std::vector<std::pair<std::string, std::string>>& modinfo() const { return modinfo_; }
    // The first value of `key`, if any.
    std::optional<std::string> modinfo_value(std::string_view key) const;
    const std::string& name() const { return name_; }          // modinfo name=
    const std::string& vermagic() const { return vermagic_; }  // modinfo vermagic= ("" if absent)
    std::string license() const;                               // modinfo license= ("" if absent)
    std::vector<std::string> depends() const;                  // modinfo depends=, split at ','
    // The kernel release vermagic was built for: its first word.
    std::string vermagic_release() const;

    const std::vector<KoSection>& sections() const { return sections_; }
    const std::vector<KoSymbol>& symbols() const { return symbols_; }
    const std::vector<KoRelocationSection>& relocation_sections() const { return relocations_; }
    const std::vector<KlpSymbol>& klp_symbols() const { return klp_symbols_; }
    const std::vector<KlpRelaSection>& klp_rela_sections() const { return klp_relas_; }
    const KoSection* find_section(std::string_view name) const;
    const KoSymbol* find_symbol(std::string_view name) const;
    // The file bytes of a section (empty for SHT_NOBITS).
    std::span<const std::byte> section_data(std::size_t index) const;

    // Special sections present (.altinstructions, __mcount_loc,
    // __jump_table, .static_call_sites, .retpoline_sites, .return_sites,
    // .orc_unwind, .orc_unwind_ip, __bug_table, __ex_table, .parainstructions,
    // .smp_locks, .init.*, .exit.*), in section order.
    std::vector<SpecialSection> special_sections() const;

    // Throws Error(Guest) when the module was built for another kernel
    // release: "PATH: vermagic '...' is for kernel 6.1.0-50-amd64, the
    // guest runs 6.1.0-56-amd64".
    void check_compatible(std::string_view guest_release) const;
    // Throws Error(Guest) naming each section hvpatch cannot honour, with
    // the reason (a non-empty __ex_table: the guest's fault handler would
    // not find the fixups of a module it does not know about).
    void check_supported() const;

    // Decodes klp_patch -> klp_object[] -> klp_func[] with the guest's
    // livepatch layouts. Throws Error(Usage) naming the section, offset or
    // symbol when the description is missing or malformed.
    std::vector<PatchedFunction> patched_functions(const GuestLayouts::Livepatch& layouts) const;
    // The klp_objects, in array order (the order the core runs their
    // callbacks in); an object with callbacks and no functions included.
    // Errors as patched_functions().
    std::vector<PatchObject> patch_objects(const GuestLayouts::Livepatch& layouts) const;
    // klp_patch.states: the system states the patch declares (empty if
    // none). Error(Usage) for an array without its terminating entry.
    std::vector<PatchState> patch_states(const GuestLayouts::Livepatch& layouts) const;
    // Where the klp_patch lies: "<symbol>" or "<section>+0x<offset>".
    std::string klp_patch_location(const GuestLayouts::Livepatch& layouts) const;
    // A module in klp-build's form (Linux 6.19+, scripts/livepatch/init.c):
    // no static klp_patch, but `.init.klp_objects` (earlier `__klp_objects`)
    // with struct klp_object_ext[] pointing at struct klp_func_ext[]
    // (include/linux/livepatch_external.h: fixed layouts, 64 and 24 bytes),
    // which its init turns into a klp_patch. Decoded from those; replace is
    // what the init stores into klp_patch.replace (klp-build's default
    // true; --no-replace builds store nothing, kzalloc left it false).
    // Callbacks of that form are refused for now (hvpatch would have to
    // build the klp_object they receive).
    bool klp_build_form() const;
    // klp_patch.replace: an atomic-replace (cumulative) patch. Callbacks and
    // system states, which hvpatch does not act on yet, are refused by
    // patched_functions(); replace is decided by the caller, which knows
    // what else is applied.
    bool replaces(const GuestLayouts::Livepatch& layouts) const;

private:
    struct Place {
        std::size_t section = 0;
        std::uint64_t offset = 0;
    };
    // A pointer-sized field's value: where it points in the module, or the
    // undefined symbol it names (symbol + addend), or nothing (NULL).
    struct Pointer {
        bool null = true;
        std::optional<Place> place;  // defined in this module
        std::string external;        // undefined symbol name
        std::int64_t addend = 0;     // for external
    };
    Pointer read_pointer(Place at, std::string_view what) const;
    std::uint64_t read_integer(Place at, std::uint64_t size, std::string_view what) const;
    std::string read_string(const Pointer& p, std::string_view what) const;
    std::string describe(Place p) const;
    std::string symbol_at(Place p) const;
    Place find_klp_patch(const GuestLayouts::Livepatch& layouts) const;
    // Which callbacks of the klp_object at `object` are set.
    std::array<bool, 4> object_callbacks(Place object, const GuestLayouts::Livepatch& layouts) const;
    struct Description {
        std::vector<PatchedFunction> functions;
        std::vector<PatchObject> objects;
    };
    Description decode(const GuestLayouts::Livepatch& layouts) const;
    Description decode_klp_build(const GuestLayouts::Livepatch& layouts) const;
    const KoSection* klp_build_objects() const;
    bool klp_build_replace(const GuestLayouts::Livepatch& layouts) const;

    std::string path_;
    std::string bytes_;
    std::string sha256_;
    std::vector<std::pair<std::string, std::string>> modinfo_;
    std::string name_, vermagic_;
    std::vector<KoSection> sections_;
    std::vector<KoSymbol> symbols_;
    std::vector<KoRelocationSection> relocations_;
    std::vector<KlpSymbol> klp_symbols_;
    std::vector<KlpRelaSection> klp_relas_;
    // (target section, offset) -> (relocation section, entry), for
    // relocations of SHF_ALLOC sections (not .klp.rela).
    std::map<std::pair<std::size_t, std::uint64_t>, std::pair<std::size_t, std::size_t>> reloc_at_;
};

}  // namespace hvpatch
