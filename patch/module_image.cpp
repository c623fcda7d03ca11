#include "patch/module_image.h"

#include <elf.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <set>
#include <sstream>

#include "hvpatch/error.h"
#include "introspect/code_inspect.h"

static_assert(std::endian::native == std::endian::little, "the image is built in x86-64 byte order on the host");

namespace hvpatch {
namespace {

std::string hex_bytes(const std::byte* p, std::size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        auto b = static_cast<unsigned>(p[i]);
        if (i) out += ' ';
        out += digits[b >> 4];
        out += digits[b & 0xf];
    }
    return out;
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::uint64_t align_up(std::uint64_t v, std::uint64_t alignment) {
    if (alignment <= 1) return v;
    return (v + alignment - 1) / alignment * alignment;
}

bool fits_s32(std::int64_t v) { return v >= INT32_MIN && v <= INT32_MAX; }

// ---- Which sections are loaded, and where ----

enum class Fate {
    Text,       // SHF_EXECINSTR: the text region
    Rodata,     // read-only, or "RO after init": the rodata region
    Data,       // SHF_WRITE: the data region
    Skipped,    // .init* / .exit*: code and data for init/exit, which never run
    NotLoaded,  // not part of a module's memory image at all
    Refused,
};

// What a section is for, as far as the loader is concerned.
enum class Role {
    Ordinary,   // code or data of the patch
    SiteTable,  // a table of places in the code that a loader handles (see link_module)
    Inert,      // a table the guest would hand to a subsystem; harmless unregistered
    Other,
};

struct SectionRule {
    std::string_view name;
    bool prefix = false;
    Role role = Role::Other;
    // Refused sections: why. Inert ones: what the guest will not do.
    std::string_view note = {};
    bool refused = false;
    bool ro_after_init = false;
    // A relocation in this section may point into a skipped (.init/.exit)
    // section: the field is left 0 and the entry is dropped by the
    // section's handler (or, for struct module, the pointer stays NULL).
    bool tolerates_skipped_targets = false;
    // Inert: the difference is visible to the guest's users (a warning).
    bool warn = false;
};

// Sections the guest's loader hands to a subsystem hvpatch does not register
// the module with, and without which the module's code would misbehave.
constexpr SectionRule kRefusedSections[] = {
    {.name = ".data..percpu",
     .note =
         "per-CPU variables need the guest's per-CPU allocator (percpu_modalloc) and per-CPU symbol values; hvpatch "
         "does not allocate them",
     .refused = true},
    {.name = "___srcu_struct_ptrs",
     .note = "SRCU structures defined by the module must be initialised by srcu_module_coming() before use",
     .refused = true},
    {.name = "__tracepoints",
     .note = "tracepoints defined by the module must be registered with the guest's tracepoint core",
     .refused = true},
    {.name = "__tracepoints_ptrs",
     .note = "tracepoints defined by the module must be registered with the guest's tracepoint core",
     .refused = true},
    {.name = "__tracepoints_strings",
     .note = "tracepoints defined by the module must be registered with the guest's tracepoint core",
     .refused = true},
    {.name = "_ftrace_events",
     .note = "trace events defined by the module must be registered with the guest's tracing (trace_module_add_events)",
     .refused = true},
    {.name = "_ftrace_eval_map",
     .note = "trace event enum maps must be registered with the guest's tracing",
     .refused = true},
    {.name = "__trace_printk_fmt",
     .note = "trace_printk() formats must be copied by the guest's tracing (hold_module_trace_bprintk_format)",
     .refused = true},
    {.name = "__bpf_raw_tp_map", .note = "raw BPF tracepoints must be registered with the guest", .refused = true},
    {.name = ".kunit_test_suites", .note = "KUnit suites are run by the module's loading", .refused = true},
    {.name = ".ctors", .note = "constructors run from do_init_module(), which hvpatch never calls", .refused = true},
    {.name = ".init_array",
     .note = "constructors run from do_init_module(), which hvpatch never calls",
     .refused = true},
    {.name = ".static_call.text",
     .note = "static-call trampolines defined by the module are only updated once static_call_add_module() knows them",
     .refused = true},
    {.name = ".static_call_tramp_key",
     .note = "static-call trampolines defined by the module are only updated once static_call_add_module() knows them",
     .refused = true},
};

constexpr SectionRule kKnownSections[] = {
    // Code and data of the patch.
    {.name = ".text", .role = Role::Ordinary},
    {.name = ".text.", .prefix = true, .role = Role::Ordinary},
    {.name = ".altinstr_replacement", .role = Role::Ordinary},
    {.name = ".altinstr_aux", .role = Role::Ordinary},
    {.name = ".noinstr.text", .role = Role::Ordinary},
    {.name = ".kprobes.text", .role = Role::Ordinary},
    {.name = ".ref.text", .role = Role::Ordinary},
    {.name = ".sched.text", .role = Role::Ordinary},
    {.name = ".spinlock.text", .role = Role::Ordinary},
    {.name = ".cpuidle.text", .role = Role::Ordinary},
    {.name = ".data..ro_after_init", .role = Role::Ordinary, .ro_after_init = true},
    {.name = ".data", .role = Role::Ordinary},
    {.name = ".data.", .prefix = true, .role = Role::Ordinary},  // .data..read_mostly, .data..once, .data.rel.ro, ...
    {.name = ".bss", .role = Role::Ordinary},
    {.name = ".bss.", .prefix = true, .role = Role::Ordinary},
    {.name = ".rodata", .role = Role::Ordinary},
    {.name = ".rodata.", .prefix = true, .role = Role::Ordinary},
    {.name = ".note.", .prefix = true, .role = Role::Ordinary},  // build id, .note.Linux: the kernel keeps them too
    {.name = ".gnu.linkonce.this_module", .role = Role::Ordinary, .tolerates_skipped_targets = true},
    // Tables of code sites that a loader patches or registers.
    {.name = "__mcount_loc", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".altinstructions", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = "__jump_table", .role = Role::SiteTable, .ro_after_init = true, .tolerates_skipped_targets = true},
    {.name = ".static_call_sites", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".retpoline_sites", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".return_sites", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".parainstructions", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".smp_locks", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = "__bug_table", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".orc_unwind", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".orc_unwind_ip", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".ibt_endbr_seal", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = "__ex_table", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".call_sites", .role = Role::SiteTable, .tolerates_skipped_targets = true},
    {.name = ".orc_header", .role = Role::SiteTable},
    // Tables the guest hands to a subsystem; unregistered they do no harm.
    {.name = "__param",
     .role = Role::Inert,
     .note = "module parameters keep their built-in values: hvpatch passes no arguments and the guest shows no "
             "/sys/module/<name>/parameters",
     .warn = true},
    {.name = "__ksymtab",
     .role = Role::Inert,
     .note = "exported symbols are invisible to the guest: no other module can use them",
     .warn = true},
    {.name = "__ksymtab_gpl",
     .role = Role::Inert,
     .note = "exported symbols are invisible to the guest: no other module can use them",
     .warn = true},
    {.name = "__kcrctab", .role = Role::Inert, .note = "export CRCs: unused, the exports are invisible to the guest"},
    {.name = "__kcrctab_gpl",
     .role = Role::Inert,
     .note = "export CRCs: unused, the exports are invisible to the guest"},
    {.name = "__ksymtab_strings",
     .role = Role::Inert,
     .note = "export names: unused, the exports are invisible to the guest"},
    {.name = "__dyndbg",
     .role = Role::Inert,
     .note = "pr_debug()/dynamic-debug sites stay as built (off unless compiled with DEBUG): the guest's "
             "dynamic_debug/control does not know the module",
     .warn = true},
    {.name = "__dyndbg_classes",
     .role = Role::Inert,
     .note = "dynamic-debug classes: unknown to the guest's dynamic_debug"},
    {.name = ".printk_index",
     .role = Role::Inert,
     .note = "the module's printk formats are not listed in the guest's printk index"},
    {.name = "_kprobe_blacklist",
     .role = Role::Inert,
     .note = "unused: the guest cannot place kprobes in a module it does not know anyway"},
    {.name = "_error_injection_whitelist",
     .role = Role::Inert,
     .note = "unused: the guest cannot inject errors into functions of a module it does not know"},
    {.name = ".BTF",
     .role = Role::Inert,
     .note = "the module's BTF is not registered with the guest (no /sys/kernel/btf/<name>)"},
    // -fpatchable-function-entry (CONFIG_CALL_PADDING, 6.2+): the padding
    // bytes before each function. x86 never reads the table (arm64 and
    // riscv ftrace do); the padding stays int3/nop as built.
    {.name = "__patchable_function_entries",
     .role = Role::Inert,
     .note = "function padding locations: not used by x86 kernels",
     .tolerates_skipped_targets = true},
};

const SectionRule* find_rule(std::string_view name) {
    for (const auto& r : kRefusedSections)
        if (r.prefix ? starts_with(name, r.name) : name == r.name) return &r;
    for (const auto& r : kKnownSections)
        if (r.prefix ? starts_with(name, r.name) : name == r.name) return &r;
    return nullptr;
}

struct SectionFate {
    Fate fate = Fate::NotLoaded;
    const SectionRule* rule = nullptr;
    std::string why;  // for Refused, Skipped, NotLoaded
};

SectionFate classify(const KoSection& s) {
    SectionFate f;
    if (s.index == 0 || s.type == SHT_NULL) return f;
    if (s.type == SHT_RELA || s.type == SHT_REL) {
        // Relocations are applied by hvpatch from the .ko. The kernel keeps
        // the SHF_ALLOC .klp.rela.* sections in module memory only so that it
        // can apply them when a patched module loads later.
        f.why = "relocation metadata, applied on the host";
        return f;
    }
    if (!(s.flags & SHF_ALLOC)) {
        f.why = "not SHF_ALLOC";
        return f;
    }
    if (s.name == ".modinfo" || s.name == "__versions") {
        // rewrite_section_headers(): "Track but don't keep modinfo and
        // version sections."
        f.why = "the kernel clears its SHF_ALLOC (rewrite_section_headers)";
        return f;
    }
    f.rule = find_rule(s.name);
    if (f.rule && f.rule->refused) {
        if (s.size == 0) {
            // An empty table asks nothing of the guest.
            f.fate = Fate::NotLoaded;
            f.why = "empty";
            return f;
        }
        f.fate = Fate::Refused;
        f.why = std::string(f.rule->note);
        return f;
    }
    if (starts_with(s.name, ".init") || starts_with(s.name, ".exit")) {
        // module_init_section()/module_exit_section() prefixes. With
        // CONFIG_MODULE_UNLOAD the kernel keeps .exit.* in the core layout,
        // but hvpatch never calls the module's exit either.
        f.fate = Fate::Skipped;
        f.why = starts_with(s.name, ".init") ? "init-only, and hvpatch never runs the module's init"
                                             : "exit-only, and hvpatch never runs the module's exit";
        return f;
    }
    if ((s.flags & (SHF_WRITE | SHF_EXECINSTR)) == (SHF_WRITE | SHF_EXECINSTR)) {
        f.fate = Fate::Refused;
        f.why = "writable and executable (the kernel refuses it too: module_enforce_rwx_sections)";
        return f;
    }
    if (s.alignment > kModulePageSize) {
        f.fate = Fate::Refused;
        f.why = "alignment " + hex_short(s.alignment) + " exceeds the page alignment of the allocation";
        return f;
    }
    if (!f.rule) {
        f.fate = Fate::Refused;
        f.why = "unknown SHF_ALLOC section: hvpatch does not know what the guest kernel's loader does with it";
        return f;
    }
    if (s.name == "__ex_table" && s.size != 0) {
        f.fate = Fate::Refused;
        f.why =
            "exception table: the guest's fault handler searches only the tables of modules it loaded itself, so a "
            "fault in this patch's code would not find its fixup";
        return f;
    }
    if (s.flags & SHF_EXECINSTR)
        f.fate = Fate::Text;
    else if (f.rule->ro_after_init || !(s.flags & SHF_WRITE))
        f.fate = Fate::Rodata;
    else
        f.fate = Fate::Data;
    return f;
}

bool loaded(Fate f) { return f == Fate::Text || f == Fate::Rodata || f == Fate::Data; }

// x86_nops[] of 6.1 (arch/x86/include/asm/nops.h, 64-bit).
constexpr std::array<std::array<std::uint8_t, 8>, 9> kNops = {{
    {},
    {0x90},
    {0x66, 0x90},
    {0x0f, 0x1f, 0x00},
    {0x0f, 0x1f, 0x40, 0x00},
    {0x0f, 0x1f, 0x44, 0x00, 0x00},
    {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00},
    {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00},
    {0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00},
}};
constexpr unsigned kAsmNopMax = 8;

// add_nops(): fill with the longest NOPs.
void add_nops(std::uint8_t* p, std::size_t len) {
    while (len > 0) {
        std::size_t n = std::min<std::size_t>(len, kAsmNopMax);
        std::memcpy(p, kNops[n].data(), n);
        p += n;
        len -= n;
    }
}

constexpr std::uint16_t kAltInstrFlagInv = 1 << 15;  // ALTINSTR_FLAG_INV

// sizeof(struct alt_instr) with the u32 ft_flags of 6.3+ (4.x-6.2: 12).
constexpr std::size_t kAltInstrFtFlagsSize = 14;

constexpr std::uint8_t kCall = 0xe8, kJmp32 = 0xe9, kJmp8 = 0xeb, kInt3 = 0xcc, kRet = 0xc3;

std::string reloc_type_name(std::uint32_t type) {
    switch (type) {
        case R_X86_64_NONE:
            return "R_X86_64_NONE";
        case R_X86_64_64:
            return "R_X86_64_64";
        case R_X86_64_PC32:
            return "R_X86_64_PC32";
        case R_X86_64_GOT32:
            return "R_X86_64_GOT32";
        case R_X86_64_PLT32:
            return "R_X86_64_PLT32";
        case R_X86_64_GOTPCREL:
            return "R_X86_64_GOTPCREL";
        case R_X86_64_32:
            return "R_X86_64_32";
        case R_X86_64_32S:
            return "R_X86_64_32S";
        case R_X86_64_16:
            return "R_X86_64_16";
        case R_X86_64_PC16:
            return "R_X86_64_PC16";
        case R_X86_64_8:
            return "R_X86_64_8";
        case R_X86_64_PC8:
            return "R_X86_64_PC8";
        case R_X86_64_TPOFF32:
            return "R_X86_64_TPOFF32";
        case R_X86_64_PC64:
            return "R_X86_64_PC64";
        case R_X86_64_GOTPCRELX:
            return "R_X86_64_GOTPCRELX";
        case R_X86_64_REX_GOTPCRELX:
            return "R_X86_64_REX_GOTPCRELX";
        default:
            return "relocation type " + std::to_string(type);
    }
}

// ---- The linker ----

class Linker {
public:
    Linker(const LivepatchModule& module, std::uint64_t base, std::uint64_t extra_text, const GuestLinkFacts& facts)
        : m_(module), facts_(facts) {
        img_.base = base;
        extra_text_ = extra_text;
    }

    ModuleImage run();

private:
    struct SymbolValue {
        enum class Kind { Value, Skipped, Livepatch } kind = Kind::Value;
        std::uint64_t value = 0;
    };
    struct Site {  // a field of a table entry
        std::size_t section = 0;
        std::uint64_t offset = 0;  // in the section
    };

    [[noreturn]] void fail(const std::string& what) const { throw Error(ErrorKind::Guest, m_.path() + ": " + what); }

    // Image access.
    std::uint64_t section_address(std::size_t index) const { return img_.base + img_.layout.section_offset.at(index); }
    std::uint64_t field_address(Site s) const { return section_address(s.section) + s.offset; }
    std::byte* at(std::uint64_t address, std::uint64_t length, std::string_view what) {
        if (!img_.contains(address, length))
            fail(std::string(what) + " at " + hex_short(address) + " (" + std::to_string(length) +
                 " bytes) lies outside the module image [" + hex_short(img_.base) + ", " + hex_short(img_.end()) + ")");
        return img_.bytes.data() + (address - img_.base);
    }
    template <typename T>
    T get(std::uint64_t address, std::string_view what) {
        T v;
        std::memcpy(&v, at(address, sizeof(T), what), sizeof(T));
        return v;
    }
    template <typename T>
    void put(std::uint64_t address, T v, std::string_view what) {
        std::memcpy(at(address, sizeof(T), what), &v, sizeof(T));
    }
    // The loaded section holding [address, address + length), if any.
    std::optional<std::size_t> loaded_section_at(std::uint64_t address, std::uint64_t length) const;
    // A code site of `length` bytes: must lie within one loaded section.
    std::uint8_t* code(std::uint64_t address, std::uint64_t length, std::string_view what);
    // "func+0x12" or "section+0x12", for messages.
    std::string describe(std::uint64_t address) const;

    bool is_dropped(Site s) const { return dropped_.contains({s.section, s.offset}); }
    std::string symbol_of(Site s) const {
        auto it = reloc_symbol_.find({s.section, s.offset});
        return it == reloc_symbol_.end() ? std::string() : it->second;
    }
    // The address a self-relative s32 field points to.
    std::uint64_t relative_target(Site s) {
        std::uint64_t a = field_address(s);
        return a + static_cast<std::uint64_t>(static_cast<std::int64_t>(get<std::int32_t>(a, "relative field")));
    }
    void put_relative(Site s, std::uint64_t target) {
        std::uint64_t a = field_address(s);
        auto d = static_cast<std::int64_t>(target - a);
        if (!fits_s32(d)) fail("cannot encode " + hex_short(target) + " relative to " + hex_short(a));
        put<std::int32_t>(a, static_cast<std::int32_t>(d), "relative field");
    }

    // Guest facts.
    std::uint64_t kernel_symbol(const std::string& name, std::string_view needed_for);
    std::optional<std::uint64_t> optional_kernel_symbol(const std::string& name);
    std::uint64_t read_guest_u64(std::uint64_t address, std::string_view what);
    bool cpu_has(unsigned feature, std::string_view needed_for) const;
    // The guest's branch-site choices; fails with what could not be derived.
    const BranchMitigations& mitigations(std::string_view needed_for) const {
        if (!facts_.mitigations.problem.empty())
            fail("cannot tell how the guest patches " + std::string(needed_for) + ": " + facts_.mitigations.problem);
        return facts_.mitigations;
    }
    void check_orc_header(const KoSection& s);

    // Steps.
    void layout_and_copy();
    void resolve_symbols();
    void apply_relocations();
    void apply_livepatch_section(const KoRelocationSection& rs);
    void apply_one(const KoRelocationSection& rs, const KoRelocation& r, std::uint64_t symbol_value,
                   const std::string& symbol_name);
    void apply_paravirt(const KoSection& s);
    void apply_retpolines(const KoSection& s);
    void apply_returns(const KoSection& s);
    void apply_alternatives(const KoSection& s);
    void apply_alternatives_ft_flags(const KoSection& s);
    void optimize_nops(std::uint8_t* instr, std::size_t len, std::uint64_t address, std::size_t decodable);
    void optimize_nop_runs(std::uint8_t* buf, std::size_t len, std::uint64_t address);
    void relocate_replacement(std::uint8_t* buf, std::size_t len, std::uint64_t instr, std::uint64_t repl,
                              std::size_t repl_len, const std::string& label);
    void sort_orc(const KoSection& ip, const KoSection& orc);
    void nop_mcount(const KoSection& s);
    void handle_bug_table(const KoSection& s);
    void apply_jump_labels(const KoSection& s);
    void note_static_calls(const KoSection& s);
    void collect_symbols();
    std::size_t entries(const KoSection& s, std::size_t entry_size);

    void action(const std::string& line) { img_.actions.push_back(line); }
    void warn(const std::string& line) { img_.warnings.push_back(line); }

    const LivepatchModule& m_;
    const GuestLinkFacts& facts_;
    std::uint64_t extra_text_ = 0;
    ModuleImage img_;
    std::vector<SectionFate> fate_;
    std::vector<SymbolValue> sym_;
    // Fields (target section, offset) whose relocation points into a skipped
    // section: left 0; the section's handler drops the entry.
    std::set<std::pair<std::size_t, std::uint64_t>> dropped_;
    // Fields (target section, offset) -> the symbol their relocation names.
    std::map<std::pair<std::size_t, std::uint64_t>, std::string> reloc_symbol_;
    std::map<std::string, std::optional<std::uint64_t>> kernel_symbols_;
};

std::optional<std::size_t> Linker::loaded_section_at(std::uint64_t address, std::uint64_t length) const {
    if (!img_.contains(address, length)) return std::nullopt;
    std::uint64_t off = address - img_.base;
    for (const auto& [index, start] : img_.layout.section_offset) {
        const KoSection& s = m_.sections()[index];
        if (off < start) continue;
        std::uint64_t rel = off - start;
        if (length == 0 ? rel < s.size : rel <= s.size && s.size - rel >= length) return index;
    }
    return std::nullopt;
}

std::uint8_t* Linker::code(std::uint64_t address, std::uint64_t length, std::string_view what) {
    if (!loaded_section_at(address, length))
        fail(std::string(what) + " at " + hex_short(address) + " (" + std::to_string(length) +
             " bytes) does not lie within a loaded section of the module");
    return reinterpret_cast<std::uint8_t*>(img_.bytes.data() + (address - img_.base));
}

std::string Linker::describe(std::uint64_t address) const {
    auto sec = loaded_section_at(address, 0);
    if (!sec) return hex_short(address);
    std::uint64_t off = address - section_address(*sec);
    const KoSymbol* best = nullptr;
    for (const auto& s : m_.symbols()) {
        if (s.shndx != *sec || s.type == STT_SECTION || s.type == STT_FILE || s.name.empty()) continue;
        if (s.value > off) continue;
        if (s.size != 0 && off >= s.value + s.size) continue;
        if (!best || s.value > best->value || (s.value == best->value && s.type == STT_FUNC)) best = &s;
    }
    if (best) return best->name + "+" + hex_short(off - best->value);
    return m_.sections()[*sec].name + "+" + hex_short(off);
}

std::optional<std::uint64_t> Linker::optional_kernel_symbol(const std::string& name) {
    auto it = kernel_symbols_.find(name);
    if (it != kernel_symbols_.end()) return it->second;
    auto v = facts_.resolve("vmlinux", name, 0);
    kernel_symbols_[name] = v;
    return v;
}

std::uint64_t Linker::kernel_symbol(const std::string& name, std::string_view needed_for) {
    auto v = optional_kernel_symbol(name);
    if (!v) fail("guest symbol " + name + " not found in vmlinux (needed for " + std::string(needed_for) + ")");
    return *v;
}

std::uint64_t Linker::read_guest_u64(std::uint64_t address, std::string_view what) {
    if (!facts_.read_u32) throw Error(ErrorKind::Internal, "GuestLinkFacts.read_u32 is not set");
    auto lo = facts_.read_u32(address);
    auto hi = lo ? facts_.read_u32(address + 4) : std::nullopt;
    if (!lo || !hi) fail("cannot read " + std::string(what) + " at " + hex_short(address) + " in guest memory");
    return std::uint64_t(*hi) << 32 | *lo;
}

bool Linker::cpu_has(unsigned feature, std::string_view needed_for) const {
    if (feature / 32 >= facts_.cpu_capabilities.size())
        fail("CPU feature " + std::to_string(feature / 32) + "*32+" + std::to_string(feature % 32) + " (needed for " +
             std::string(needed_for) + ") lies beyond the " + std::to_string(facts_.cpu_capabilities.size()) +
             " capability words given for the guest");
    return (facts_.cpu_capabilities[feature / 32] >> (feature % 32)) & 1;
}

std::size_t Linker::entries(const KoSection& s, std::size_t entry_size) {
    if (s.size % entry_size != 0)
        fail("section " + s.name + " has " + std::to_string(s.size) + " bytes, not a multiple of its " +
             std::to_string(entry_size) + "-byte entries");
    return s.size / entry_size;
}

// ---- layout, symbols, relocations ----

void Linker::layout_and_copy() {
    img_.layout = plan_module_layout(m_, extra_text_);
    if (img_.base % kModulePageSize != 0)
        throw Error(ErrorKind::Usage, m_.path() + ": module base " + hex_short(img_.base) + " is not page-aligned");
    if (img_.base + img_.layout.total_size() < img_.base)
        throw Error(ErrorKind::Usage, m_.path() + ": module base " + hex_short(img_.base) + " + size " +
                                          hex_short(img_.layout.total_size()) + " wraps around");
    img_.bytes.assign(img_.layout.total_size(), std::byte{0});  // move_module(): memset 0, SHT_NOBITS stay 0
    for (const auto& s : m_.sections()) fate_.push_back(classify(s));
    for (const auto& [index, offset] : img_.layout.section_offset) {
        auto data = m_.section_data(index);
        if (!data.empty()) std::memcpy(img_.bytes.data() + offset, data.data(), data.size());
    }
}

void Linker::resolve_symbols() {
    // simplify_symbols(): every symbol gets its final value, referenced or not.
    if (!facts_.resolve) throw Error(ErrorKind::Internal, "GuestLinkFacts.resolve is not set");
    std::vector<std::string> missing;
    sym_.resize(m_.symbols().size());
    for (const auto& s : m_.symbols()) {
        SymbolValue& v = sym_[s.index];
        if (s.index == 0) continue;
        switch (s.shndx) {
            case SHN_UNDEF: {
                auto value = facts_.resolve("", s.name, 0);
                if (value) {
                    v.value = *value;
                } else if (s.bind == STB_WEAK) {
                    // "Ok if weak": st_value stays 0.
                    action("weak symbol " + s.name + ": not found in the guest, resolves to 0 (as in the kernel)");
                } else if (s.name == "_GLOBAL_OFFSET_TABLE_") {
                    // ignore_undef_symbol(): an unreferenced artefact of older binutils.
                } else {
                    missing.push_back(s.name);
                }
                break;
            }
            case SHN_ABS:
                v.value = s.value;
                break;
            case SHN_COMMON:
                fail("symbol " + s.name + " is a common symbol (the kernel refuses them: compile with -fno-common)");
            case kShnLivepatch:
                v.kind = SymbolValue::Kind::Livepatch;
                break;
            default:
                if (s.shndx >= m_.sections().size())
                    fail("symbol " + s.name + " has section index " + hex_short(s.shndx) + ", which the kernel refuses");
                if (loaded(fate_[s.shndx].fate))
                    v.value = section_address(s.shndx) + s.value;
                else
                    v.kind = SymbolValue::Kind::Skipped;
                break;
        }
    }
    if (!missing.empty()) {
        std::string list;
        for (const auto& n : missing) list += (list.empty() ? "" : ", ") + n;
        fail("symbol" + std::string(missing.size() > 1 ? "s" : "") + " not found in the guest: " + list);
    }
}

void Linker::apply_one(const KoRelocationSection& rs, const KoRelocation& r, std::uint64_t symbol_value,
                       const std::string& symbol_name) {
    // __apply_relocate_add() of arch/x86/kernel/module.c, with the overflow
    // check for PC32/PLT32 that 6.1 has under "#if 0": a truncated branch
    // displacement is a silent wrong jump, so it is refused here.
    const KoSection& target = m_.sections()[rs.target];
    auto where = [&] {
        return rs.name + " entry at " + target.name + "+" + hex_short(r.offset) + " (" + reloc_type_name(r.type) + " " +
               symbol_name + (r.addend < 0 ? "-" : "+") +
               hex_short(r.addend < 0 ? 0 - static_cast<std::uint64_t>(r.addend) : static_cast<std::uint64_t>(r.addend)) +
               ")";
    };
    std::uint64_t width = 0;
    switch (r.type) {
        case R_X86_64_NONE:
            return;
        case R_X86_64_64:
        case R_X86_64_PC64:
            width = 8;
            break;
        case R_X86_64_32:
        case R_X86_64_32S:
        case R_X86_64_PC32:
        case R_X86_64_PLT32:
            width = 4;
            break;
        default:
            fail("unknown relocation type: " + where() + "; the guest kernel's apply_relocate_add refuses it too");
    }
    if (r.offset > target.size || target.size - r.offset < width) fail(where() + " lies outside " + target.name);
    std::uint64_t place = section_address(rs.target) + r.offset;
    std::byte* loc = at(place, width, "relocation");
    std::uint64_t existing = 0;
    std::memcpy(&existing, loc, width);
    if (existing != 0)
        fail(where() + ": the field already holds " + hex_short(existing) +
             " (the kernel refuses a relocation of a nonzero field: invalid relocation target)");
    std::uint64_t val = symbol_value + static_cast<std::uint64_t>(r.addend);
    switch (r.type) {
        case R_X86_64_64:
            break;
        case R_X86_64_32:
            if (val > UINT32_MAX) fail(where() + ": value " + hex_short(val) + " does not fit 32 bits (zero-extended)");
            break;
        case R_X86_64_32S:
            if (!fits_s32(static_cast<std::int64_t>(val)))
                fail(where() + ": value " + hex_short(val) + " does not fit 32 bits (sign-extended)");
            break;
        case R_X86_64_PC32:
        case R_X86_64_PLT32:
            val -= place;
            if (!fits_s32(static_cast<std::int64_t>(val)))
                fail(where() + ": target " + hex_short(symbol_value + static_cast<std::uint64_t>(r.addend)) +
                     " is out of range of a 32-bit displacement from " + hex_short(place) + " (more than 2 GiB away)");
            break;
        case R_X86_64_PC64:
            val -= place;
            break;
    }
    std::memcpy(loc, &val, width);
}

void Linker::apply_relocations() {
    for (const auto& s : m_.sections()) {
        // apply_relocations() hands SHT_REL to apply_relocate(), which is the
        // weak "REL relocation unsupported" stub on x86-64.
        if (s.type == SHT_REL && s.info < m_.sections().size() && loaded(fate_[s.info].fate))
            fail("section " + s.name + " holds REL relocations, which x86-64 modules do not support");
    }
    for (const auto& rs : m_.relocation_sections()) {
        const KoSection& target = m_.sections()[rs.target];
        const SectionFate& tf = fate_[rs.target];
        if (!loaded(tf.fate)) {
            // The kernel skips relocations of non-SHF_ALLOC sections (debug
            // info); those of .init/.exit sections go with the sections.
            if (rs.livepatch && tf.fate == Fate::Skipped)
                action(rs.name + ": not applied, its section " + target.name + " is not loaded");
            continue;
        }
        if (rs.livepatch) {
            apply_livepatch_section(rs);
            continue;
        }
        for (const auto& r : rs.entries) {
            const KoSymbol& sym = m_.symbols()[r.symbol];
            const SymbolValue& v = sym_[r.symbol];
            std::string name = sym.name.empty() ? "symbol " + std::to_string(r.symbol) : sym.name;
            reloc_symbol_[{rs.target, r.offset}] = name;
            if (r.type == R_X86_64_NONE) continue;  // the kernel ignores its symbol too
            if (v.kind == SymbolValue::Kind::Livepatch)
                fail(rs.name + ": an ordinary relocation at " + target.name + "+" + hex_short(r.offset) +
                     " names livepatch symbol " + name + ", which only .klp.rela sections may use");
            if (v.kind == SymbolValue::Kind::Skipped) {
                const KoSection& in = m_.sections()[sym.shndx];
                if (tf.rule && tf.rule->tolerates_skipped_targets) {
                    dropped_.insert({rs.target, r.offset});
                    continue;
                }
                fail(rs.name + ": " + target.name + "+" + hex_short(r.offset) + " refers to " + name + " in section " +
                     in.name + ", which is not loaded (" + fate_[sym.shndx].why + ")");
            }
            apply_one(rs, r, v.value, name);
        }
    }
    // What the skipped references mean in struct module: no init, no exit.
    std::size_t this_module = 0;
    for (const auto& [section, offset] : dropped_)
        if (m_.sections()[section].name == ".gnu.linkonce.this_module") ++this_module;
    if (this_module)
        action(".gnu.linkonce.this_module: " + std::to_string(this_module) +
               " pointer(s) into skipped .init/.exit code left NULL (struct module then says: no init/exit "
               "function; the guest never sees this struct module anyway)");
}

void Linker::apply_livepatch_section(const KoRelocationSection& rs) {
    // klp_apply_section_relocs()/klp_resolve_symbols() of kernel/livepatch/core.c.
    KlpRelaName sec = parse_klp_rela_name(rs.name);
    if (sec.object != "vmlinux") {
        if (!facts_.object_loaded) throw Error(ErrorKind::Internal, "GuestLinkFacts.object_loaded is not set");
        if (!facts_.object_loaded(sec.object)) {
            // The kernel applies these when the module loads
            // (klp_module_coming); until then the fields stay 0.
            if (std::find(img_.unlinked_objects.begin(), img_.unlinked_objects.end(), sec.object) ==
                img_.unlinked_objects.end())
                img_.unlinked_objects.push_back(sec.object);
            action(rs.name + ": " + std::to_string(rs.entries.size()) + " relocation(s) not applied: module " +
                   sec.object + " is not loaded in the guest");
            warn("module " + sec.object + " is not loaded: the patch's code for it is not linked (" + rs.name +
                 "); its functions must not be patched until hvpatch links the patch again");
            return;
        }
    }
    std::map<std::size_t, KlpSymbolName> klp_names;
    for (const auto& k : m_.klp_symbols()) klp_names[k.symbol] = k.parsed;
    for (const auto& r : rs.entries) {
        const KoSymbol& sym = m_.symbols()[r.symbol];
        auto it = klp_names.find(r.symbol);
        if (sym.shndx != kShnLivepatch || it == klp_names.end())
            fail("symbol " + sym.name + " is not marked as a livepatch symbol (" + rs.name + ")");
        const KlpSymbolName& k = it->second;
        if (sec.object != "vmlinux" && k.object == "vmlinux")
            fail("invalid access to vmlinux symbol '" + k.name +
                 "' from module-specific livepatch relocation section " + rs.name + " (the kernel refuses it too)");
        auto value = facts_.resolve(k.object, k.name, k.sympos);
        if (!value)
            fail("livepatch symbol " + sym.name + ": '" + k.name + "' " +
                 (k.sympos ? "at position " + std::to_string(k.sympos) : std::string("(unique)")) + " not found in " +
                 k.object + " in the guest (" + rs.name + ")");
        reloc_symbol_[{rs.target, r.offset}] = sym.name;
        apply_one(rs, r, *value, sym.name);
    }
    action(rs.name + ": " + std::to_string(rs.entries.size()) +
           " livepatch relocation(s) applied, symbols resolved in " + sec.object);
}

// ---- module_finalize() ----

void Linker::apply_paravirt(const KoSection& s) {
    // apply_paravirt(): struct paravirt_patch_site { u8 *instr; u8 type;
    // u8 len; } (16 bytes); each site becomes a direct call to pv_ops[type]
    // (paravirt_patch()), NOPs for _paravirt_nop, a call to paravirt_BUG for
    // a NULL op, padded with NOPs.
    // The kernel walks the table in steps of sizeof(struct
    // paravirt_patch_site) (16) while below its end; 5.10's entries are 12
    // bytes (a u16 clobber follows len), each 8-aligned, so its last one
    // has no padding: a table of 16n + 12 bytes holds n + 1 entries.
    constexpr std::size_t kEntry = 16, kUsed = 10;
    if (s.size % kEntry != 0 && s.size % kEntry < kUsed)
        fail("section " + s.name + " has " + std::to_string(s.size) +
             " bytes: its last entry is cut short of instr, type and len");
    std::size_t n = (s.size + kEntry - 1) / kEntry, patched = 0, dropped = 0, nops = 0;
    for (std::size_t i = 0; i < n; ++i) {
        Site f{s.index, i * kEntry};
        if (is_dropped(f)) {
            ++dropped;
            continue;
        }
        std::uint64_t e = field_address(f);
        auto instr = get<std::uint64_t>(e, ".parainstructions entry");
        auto type = get<std::uint8_t>(e + 8, ".parainstructions entry");
        auto len = get<std::uint8_t>(e + 9, ".parainstructions entry");
        if (len > 254)
            fail(".parainstructions entry " + std::to_string(i) + ": length " + std::to_string(len) +
                 " exceeds MAX_PATCH_LEN (the kernel BUGs)");
        std::uint8_t* site = code(instr, len, ".parainstructions site");
        std::uint64_t pv_ops = kernel_symbol("pv_ops", ".parainstructions");
        std::uint64_t op = read_guest_u64(pv_ops + 8ull * type, "pv_ops[" + std::to_string(type) + "]");
        std::array<std::uint8_t, 256> buf{};
        std::memcpy(buf.data(), site, len);
        std::size_t used = 0;
        std::uint64_t target = 0;
        if (op == 0) {
            target = kernel_symbol("paravirt_BUG", "a NULL pv_ops entry");
            used = 5;
        } else if (op == kernel_symbol("_paravirt_nop", ".parainstructions")) {
            used = 0;
            ++nops;
        } else {
            target = op;
            used = 5;
        }
        if (used > len)
            fail(".parainstructions site at " + describe(instr) + " has " + std::to_string(len) +
                 " bytes, too few for a call (the kernel BUGs)");
        if (used) {
            auto d = static_cast<std::int64_t>(target - (instr + 5));
            if (!fits_s32(d))
                fail("pv_ops[" + std::to_string(type) + "] = " + hex_short(target) + " is out of call range of " +
                     describe(instr));
            buf[0] = kCall;
            auto d32 = static_cast<std::int32_t>(d);
            std::memcpy(&buf[1], &d32, 4);
        }
        add_nops(buf.data() + used, len - used);
        std::memcpy(site, buf.data(), len);
        ++patched;
    }
    action(".parainstructions: " + std::to_string(patched) + " paravirt site(s) patched for the guest's pv_ops (" +
           std::to_string(nops) + " to NOPs)" +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
}

void Linker::optimize_nops(std::uint8_t* instr, std::size_t len, std::uint64_t address, std::size_t decodable) {
    // optimize_nops(): walk the instructions of [instr, instr + len) and
    // turn each run of two or more single-byte NOPs (0x90) into long NOPs.
    // Capstone stands in for the kernel's insn decoder; both stop at bytes
    // that do not decode.
    std::size_t i = 0;
    while (i < len) {
        auto one = decode(std::as_bytes(std::span(instr + i, decodable - i)), address + i, 1);
        if (one.empty()) return;
        if (one[0].size == 1 && instr[i] == 0x90) {
            std::size_t j = i;
            while (j < len && instr[j] == 0x90) ++j;
            if (j - i > 1) add_nops(instr + i, j - i);
            i = j;
        } else {
            i += one[0].size;
        }
    }
}

void Linker::apply_retpolines(const KoSection& s) {
    // apply_retpolines()/patch_retpoline(): each CALL/JMP/Jcc to
    // __x86_indirect_thunk_<reg> becomes an indirect branch (LFENCE-prefixed
    // for RETPOLINE_LFENCE), or a branch to an ITS-safe thunk when the
    // indirect branch would sit in the lower half of a cache line; sites stay
    // as built under plain RETPOLINE, or when the inline form does not fit.
    // For ITS the kernel allocates per-module thunk pages (its_alloc) and
    // falls back to the static __x86_indirect_its_thunk_array[reg] when that
    // fails; hvpatch always takes the static thunks (same code, same
    // alignment), so no extra guest allocation is needed.
    std::size_t n = entries(s, 4), inlined = 0, its = 0, kept = 0, dropped = 0;
    if (n) mitigations(".retpoline_sites");
    const bool retpoline = facts_.mitigations.retpoline, lfence = facts_.mitigations.retpoline_lfence;
    const bool its_on = facts_.mitigations.indirect_its_thunks;
    for (std::size_t i = 0; i < n; ++i) {
        Site f{s.index, i * 4};
        if (is_dropped(f)) {
            ++dropped;
            continue;
        }
        std::uint64_t addr = relative_target(f);
        const std::uint8_t* p = code(addr, 1, ".retpoline_sites site");
        // The instructions objtool records: [cs] call/jmp rel32, [cs] jcc rel32.
        std::size_t prefix = p[0] == 0x2e ? 1 : 0;
        const std::uint8_t* q = code(addr, prefix + 2, ".retpoline_sites site") + prefix;
        std::uint8_t op1 = q[0], op2 = q[1];
        bool jcc = op1 == 0x0f && op2 >= 0x80 && op2 <= 0x8f;
        std::size_t len = prefix + (jcc ? 6 : 5);
        if (!(op1 == kCall || op1 == kJmp32 || jcc)) {
            warn(".retpoline_sites: unexpected instruction at " + describe(addr) + " (" +
                 hex_bytes(reinterpret_cast<const std::byte*>(p), prefix + 2) + "), left as built (the kernel WARNs)");
            ++kept;
            continue;
        }
        std::uint8_t* site = code(addr, len, ".retpoline_sites site");
        std::int32_t imm;
        std::memcpy(&imm, site + len - 4, 4);
        std::uint64_t target = addr + len + static_cast<std::uint64_t>(static_cast<std::int64_t>(imm));
        std::uint64_t array = kernel_symbol("__x86_indirect_thunk_array", ".retpoline_sites");
        auto diff = static_cast<std::int64_t>(target - array);
        if (diff < 0 || diff >= 16 * 32 || diff % 32 != 0) {
            warn(".retpoline_sites: the branch at " + describe(addr) + " goes to " + hex_short(target) +
                 ", not to a retpoline thunk; left as built (the kernel WARNs)");
            ++kept;
            continue;
        }
        int reg = static_cast<int>(diff / 32);
        if (reg == 4)
            fail(".retpoline_sites: indirect branch through %rsp at " + describe(addr) + " (the kernel BUGs)");
        if (retpoline && !lfence) {
            ++kept;
            continue;
        }
        std::array<std::uint8_t, 16> bytes{};
        std::size_t k = 0;
        std::uint8_t op = op1;
        auto gen = [&](std::size_t at_index, std::uint8_t opcode, std::uint64_t dest) {
            // __text_gen_insn(bytes + at_index, opcode, addr + at_index, dest, 5)
            auto d = static_cast<std::int64_t>(dest - (addr + at_index + 5));
            if (!fits_s32(d)) fail("ITS thunk " + hex_short(dest) + " is out of branch range of " + describe(addr));
            bytes[at_index] = opcode;
            auto d32 = static_cast<std::int32_t>(d);
            std::memcpy(&bytes[at_index + 1], &d32, 4);
        };
        if (jcc) {
            bytes[k++] = static_cast<std::uint8_t>(0x70 + ((op2 & 0xf) ^ 1));  // Jncc.d8 over the rest
            bytes[k++] = static_cast<std::uint8_t>(len - 2);
            op = kJmp32;
        }
        if (lfence) {
            bytes[k++] = 0x0f;
            bytes[k++] = 0xae;
            bytes[k++] = 0xe8;
        }
        bool via_its = its_on && !((addr + k + 1 + reg / 8) & 0x20);  // cpu_wants_indirect_its_thunk_at()
        if (via_its) {
            // emit_its_trampoline() -> __emit_trampoline(), from the start of
            // the buffer: the Jcc.d8/LFENCE just emitted are overwritten.
            std::uint64_t thunk = kernel_symbol("__x86_indirect_its_thunk_array", "ITS") + 64ull * reg;
            k = 0;
            if (jcc) {
                bytes[k++] = 0x0f;
                gen(k, op2, thunk);
                k += 5;
            } else {
                if (len == 6) bytes[k++] = 0x2e;
                gen(k, op1, thunk);
                k += 5;
            }
        } else {
            // emit_indirect(): call/jmp *%reg.
            int r = reg;
            if (r >= 8) {
                bytes[k++] = 0x41;  // REX.B
                r -= 8;
            }
            bytes[k++] = 0xff;
            bytes[k++] = static_cast<std::uint8_t>((op == kCall ? 0x10 : 0x20) | 0xc0 | r);
            if (op == kJmp32 && k < len) bytes[k++] = kInt3;
            while (k < len) bytes[k++] = 0x90;
        }
        if (k != len) {
            ++kept;  // does not fit: the kernel leaves the thunk call
            continue;
        }
        optimize_nops(bytes.data(), len, addr, len);
        std::memcpy(site, bytes.data(), len);
        ++(via_its ? its : inlined);
    }
    std::string what = retpoline && !lfence ? "the guest uses retpolines" : "";
    action(".retpoline_sites: " + std::to_string(inlined) + " thunk call(s) inlined as indirect branches, " +
           std::to_string(its) + " sent to ITS-safe thunks, " + std::to_string(kept) + " kept calling the thunks" +
           (what.empty() ? "" : " (" + what + ")") +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
}

void Linker::apply_returns(const KoSection& s) {
    // apply_returns()/patch_return(): each `jmp __x86_return_thunk` becomes
    // `jmp x86_return_thunk` (the guest's chosen return thunk) or a plain
    // `ret; int3...`. Not optional: in 6.1.0-56 __x86_return_thunk itself is
    // a bare `ret`, so a site left as built would return unmitigated
    // (retbleed/SRSO/ITS) on a guest that needs a return thunk.
    std::size_t n = entries(s, 4), thunk = 0, ret = 0, kept = 0, dropped = 0;
    if (n == 0) {
        action(".return_sites: empty");
        return;
    }
    const bool rethunk = mitigations(".return_sites").rethunk;
    std::uint64_t return_thunk = 0;
    std::optional<std::uint64_t> its_return_thunk;
    if (rethunk) {
        return_thunk = read_guest_u64(kernel_symbol("x86_return_thunk", ".return_sites"), "x86_return_thunk");
        its_return_thunk = optional_kernel_symbol("its_return_thunk");
    }
    std::uint64_t bare_thunk = kernel_symbol("__x86_return_thunk", ".return_sites");
    for (std::size_t i = 0; i < n; ++i) {
        Site f{s.index, i * 4};
        if (is_dropped(f)) {
            ++dropped;
            continue;
        }
        std::uint64_t addr = relative_target(f);
        std::uint8_t* site = code(addr, 1, ".return_sites site");
        std::uint8_t op = site[0];
        // __static_call_fixup(): a static-call trampoline of this module
        // (its `ud1 %esp,%ecx` signature after the 5 bytes).
        if (loaded_section_at(addr, 8) && site[5] == 0x0f && site[6] == 0xb9 && site[7] == 0xcc)
            fail(".return_sites: " + describe(addr) +
                 " is a static-call trampoline of the module, which hvpatch cannot "
                 "register with the guest's static calls");
        std::optional<std::uint64_t> dest;
        if (op == kJmp32) {
            site = code(addr, 5, ".return_sites site");
            std::int32_t imm;
            std::memcpy(&imm, site + 1, 4);
            dest = addr + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(imm));
        }
        if (dest != bare_thunk) {
            warn(".return_sites: missing return thunk at " + describe(addr) + " (" +
                 hex_bytes(reinterpret_cast<const std::byte*>(site), 1) + "...), left as built (the kernel WARNs)");
            ++kept;
            continue;
        }
        std::array<std::uint8_t, 5> bytes{};
        std::size_t k = 0;
        bool want_thunk = uses_return_thunk(rethunk, return_thunk, its_return_thunk, addr);
        if (want_thunk) {
            auto d = static_cast<std::int64_t>(return_thunk - (addr + 5));
            if (!fits_s32(d))
                fail("x86_return_thunk " + hex_short(return_thunk) + " is out of jump range of " + describe(addr));
            bytes[0] = kJmp32;
            auto d32 = static_cast<std::int32_t>(d);
            std::memcpy(&bytes[1], &d32, 4);
            k = 5;
            ++thunk;
        } else {
            bytes[k++] = kRet;
            ++ret;
        }
        while (k < 5) bytes[k++] = kInt3;
        std::memcpy(site, bytes.data(), 5);
    }
    action(".return_sites: " + std::to_string(thunk) + " return(s) sent to the guest's return thunk (" +
           (rethunk ? hex_short(return_thunk) : std::string("none")) + "), " + std::to_string(ret) + " turned into ret" +
           (kept ? ", " + std::to_string(kept) + " left as built" : "") +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
}

void Linker::apply_alternatives(const KoSection& s) {
    // apply_alternatives() with struct alt_instr of 6.1 (12 bytes, packed):
    // s32 instr_offset, s32 repl_offset, u16 cpuid (bit 15 = ALTINSTR_FLAG_INV:
    // patch when the feature is absent), u8 instrlen, u8 replacementlen. In
    // table order (a later entry may rewrite an earlier one's bytes).
    constexpr std::size_t kEntry = 12;  // check_link_formats() refused other forms
    std::size_t n = entries(s, kEntry), applied = 0, kept = 0, dropped = 0;
    for (std::size_t i = 0; i < n; ++i) {
        Site f_instr{s.index, i * kEntry}, f_repl{s.index, i * kEntry + 4};
        if (is_dropped(f_instr)) {
            ++dropped;
            continue;
        }
        if (is_dropped(f_repl))
            fail(".altinstructions entry " + std::to_string(i) + ": its replacement lies in a skipped section");
        std::uint64_t e = field_address(f_instr);
        std::uint64_t instr = relative_target(f_instr);
        std::uint64_t repl = relative_target(f_repl);
        auto cpuid = get<std::uint16_t>(e + 8, ".altinstructions entry");
        auto instrlen = get<std::uint8_t>(e + 10, ".altinstructions entry");
        auto repllen = get<std::uint8_t>(e + 11, ".altinstructions entry");
        unsigned feature = cpuid & ~kAltInstrFlagInv;
        bool inverted = cpuid & kAltInstrFlagInv;
        std::string label = ".altinstructions entry " + std::to_string(i) + " (" + describe(instr) + ", feature " +
                            (inverted ? "!" : "") + std::to_string(feature / 32) + "*32+" +
                            std::to_string(feature % 32) + ")";
        if (instrlen > 254) fail(label + ": instrlen " + std::to_string(instrlen) + " exceeds MAX_PATCH_LEN");
        if (repllen > instrlen)
            fail(label + ": replacement (" + std::to_string(repllen) + " bytes) longer than the original (" +
                 std::to_string(instrlen) + "); the kernel would overwrite the code after it");
        bool apply = cpu_has(feature, label) != inverted;
        if (instrlen == 0) {
            ++(apply ? applied : kept);  // nothing to write, nothing to optimize
            continue;
        }
        std::uint8_t* site = code(instr, instrlen, label);
        const std::uint8_t* replacement = repllen ? code(repl, repllen, label + " replacement") : nullptr;
        // How far the instruction decoder may look (the kernel decodes in place).
        auto sec = loaded_section_at(instr, instrlen);
        std::size_t decodable = section_address(*sec) + m_.sections()[*sec].size - instr;
        if (apply) {
            std::array<std::uint8_t, 256> buf{};
            if (repllen) std::memcpy(buf.data(), replacement, repllen);
            // A relative CALL as the whole replacement: fix its displacement.
            if (repllen == 5 && buf[0] == kCall) {
                std::int32_t d;
                std::memcpy(&d, &buf[1], 4);
                d = static_cast<std::int32_t>(static_cast<std::uint32_t>(d) + static_cast<std::uint32_t>(repl - instr));
                std::memcpy(&buf[1], &d, 4);
            }
            // recompute_jump(): a 5-byte JMP becomes a 2- or 5-byte JMP from
            // the original place, with the kernel's quirks (a backward jump
            // always stays 5 bytes).
            if (repllen && (replacement[0] == kJmp8 || replacement[0] == kJmp32) && repllen == 5) {
                std::int32_t o_dspl;
                std::memcpy(&o_dspl, &buf[1], 4);
                std::uint64_t tgt = repl + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(o_dspl));
                auto delta = static_cast<std::int64_t>(tgt - instr);
                std::int64_t n_dspl = static_cast<std::int32_t>(delta);  // s32 n_dspl = tgt_rip - orig_insn
                bool two = delta >= 0 ? (n_dspl - 2 <= 127) : (((n_dspl - 2) & 0xff) == n_dspl - 2);
                if (two) {
                    buf[0] = kJmp8;
                    buf[1] = static_cast<std::uint8_t>(n_dspl - 2);
                    add_nops(&buf[2], 3);
                } else {
                    buf[0] = kJmp32;
                    auto d = static_cast<std::int32_t>(static_cast<std::uint32_t>(n_dspl - 5));
                    std::memcpy(&buf[1], &d, 4);
                }
            }
            for (std::size_t k = repllen; k < instrlen; ++k) buf[k] = 0x90;
            std::memcpy(site, buf.data(), instrlen);
            ++applied;
        } else {
            ++kept;
        }
        optimize_nops(site, instrlen, instr, decodable);  // applied or not, as the kernel does
    }
    action(".altinstructions: " + std::to_string(applied) + " alternative(s) applied, " + std::to_string(kept) +
           " kept (for the guest's boot_cpu_data capabilities)" +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
}

// add_nop() of 6.7+: up to 8 bytes the longest NOP, longer runs a JMP over
// INT3 padding.
void add_nop_or_jump(std::uint8_t* buf, std::size_t len) {
    if (len == 0) return;
    if (len <= kAsmNopMax) {
        add_nops(buf, len);
        return;
    }
    std::size_t k = 0;
    if (len < 128) {
        buf[k++] = kJmp8;
        buf[k++] = static_cast<std::uint8_t>(len - 2);
    } else {
        buf[k++] = kJmp32;
        auto d = static_cast<std::int32_t>(len - 5);
        std::memcpy(buf + 1, &d, 4);
        k = 5;
    }
    std::memset(buf + k, kInt3, len - k);
}

// insn_is_nop() of 6.12: NOP (not PAUSE) and NOPL. 7.x also counts mov
// %reg,%reg, lea 0(%reg),%reg and jmp +0: it may fold those into a longer
// NOP where hvpatch keeps them; the code does the same.
bool is_nop(const Instruction& insn) {
    return (insn.opcode[0] == 0x90 && insn.mnemonic == "nop" && !insn.rep_prefix) ||
           (insn.opcode[0] == 0x0f && insn.opcode[1] == 0x1f);
}

void Linker::optimize_nop_runs(std::uint8_t* buf, std::size_t len, std::uint64_t address) {
    // optimize_nops() of 6.7+: every run of NOPs (of any length each) that
    // does not already end the buffer as one instruction is rewritten by
    // add_nop(). The kernel decodes the buffer alone (insn_decode_kernel).
    std::size_t i = 0;
    while (i < len) {
        auto one = decode(std::as_bytes(std::span(buf + i, len - i)), address + i, 1);
        if (one.empty()) return;
        std::size_t next = i + one[0].size;
        if (is_nop(one[0])) {
            if (next == len) return;
            while (next < len) {
                auto more = decode(std::as_bytes(std::span(buf + next, len - next)), address + next, 1);
                if (more.empty() || !is_nop(more[0])) break;
                next += more[0].size;
            }
            add_nop_or_jump(buf + i, next - i);
        }
        i = next;
    }
}

void Linker::relocate_replacement(std::uint8_t* buf, std::size_t len, std::uint64_t instr, std::uint64_t repl,
                                  std::size_t repl_len, const std::string& label) {
    // __apply_relocation() of 6.7+: each relative branch and RIP-relative
    // operand of the replacement that points outside the replacement is
    // moved by (repl - instr); a JMP.d32 becomes a JMP.d8 where that fits
    // (computed from the displacement as built, as the kernel does).
    const std::uint64_t diff = repl - instr;
    auto outside = [&](std::int64_t offset) {
        std::uint64_t target = repl + static_cast<std::uint64_t>(offset);
        return target < repl || target > repl + repl_len;
    };
    auto add = [&](std::uint8_t* field, std::size_t n) {
        std::int64_t v = 0;
        if (n == 1) v = static_cast<std::int8_t>(field[0]);
        else if (n == 2) { std::int16_t t; std::memcpy(&t, field, 2); v = t; }
        else if (n == 4) { std::int32_t t; std::memcpy(&t, field, 4); v = t; }
        else fail(label + ": a relative field of " + std::to_string(n) + " bytes (the kernel BUGs)");
        // s32 arithmetic, as apply_reloc_n(): the field must still fit.
        auto r = static_cast<std::int32_t>(static_cast<std::uint32_t>(v) + static_cast<std::uint32_t>(diff));
        if ((r >> 31) != (r >> (8 * n - 1)))
            fail(label + ": the replacement's relative field does not reach its target from " + describe(instr) +
                 " (the kernel BUGs)");
        std::memcpy(field, &r, n);
    };
    std::size_t i = 0;
    while (i < len) {
        auto one = decode(std::as_bytes(std::span(buf + i, len - i)), instr + i, 1);
        if (one.empty()) {
            warn(label + ": the replacement does not decode at +" + std::to_string(i) +
                 "; its relocation stops there (the kernel WARNs)");
            return;
        }
        const Instruction& insn = one[0];
        const std::size_t next = i + insn.size;
        const std::uint8_t op = insn.opcode[0];
        const bool jcc32 = op == 0x0f && insn.opcode[1] >= 0x80 && insn.opcode[1] <= 0x8f;
        const bool branch = jcc32 || (op >= 0x70 && op <= 0x7f) || op == kJmp8 || op == kJmp32 || op == kCall;
        if (branch && insn.imm_size) {
            std::int64_t imm = 0;
            if (insn.imm_size == 1) imm = static_cast<std::int8_t>(buf[i + insn.imm_offset]);
            else { std::int32_t t; std::memcpy(&t, buf + i + insn.imm_offset, 4); imm = t; }
            if (outside(static_cast<std::int64_t>(next) + imm)) add(buf + i + insn.imm_offset, insn.imm_size);
            if (op == kJmp32) {
                auto j = static_cast<std::int32_t>(static_cast<std::uint32_t>(imm) + static_cast<std::uint32_t>(diff) + 3u);
                if ((j >> 31) == (j >> 7)) {
                    buf[i] = kJmp8;
                    buf[i + 1] = static_cast<std::uint8_t>(static_cast<std::int8_t>(j));
                    std::memset(buf + i + 2, kInt3, insn.size - 2);
                }
            }
        }
        if (insn.rip_relative_target && insn.disp_size) {
            std::int32_t disp;
            std::memcpy(&disp, buf + i + insn.disp_offset, 4);
            if (insn.disp_size == 4 && outside(static_cast<std::int64_t>(next) + disp))
                add(buf + i + insn.disp_offset, insn.disp_size);
        }
        i = next;
    }
}

void Linker::apply_alternatives_ft_flags(const KoSection& s) {
    // apply_alternatives() of 6.3+ with struct alt_instr of 14 bytes: s32
    // instr_offset, s32 repl_offset, u32 ft_flags (cpuid: bits 0-15,
    // flags: 16-31; ALT_FLAG_NOT = 1: patch when the feature is absent,
    // ALT_FLAG_DIRECT_CALL = 2), u8 instrlen, u8 replacementlen. As 7.x's
    // analyze_patch_site/prep_patch_site/patch_site (6.7-6.x apply the same
    // entries one after the other, with the same result): consecutive
    // entries for one site are nested alternatives; the site gets the
    // longest instrlen of them and the last eligible replacement.
    constexpr std::size_t kEntry = kAltInstrFtFlagsSize;
    constexpr std::uint16_t kFlagNot = 1, kFlagDirectCall = 2;
    std::size_t n = entries(s, kEntry), applied = 0, kept = 0, dropped = 0, sites = 0;
    std::size_t i = 0;
    while (i < n) {
        if (is_dropped({s.index, i * kEntry})) {
            ++dropped;
            ++i;
            continue;
        }
        const std::uint64_t instr = relative_target({s.index, i * kEntry});
        std::size_t len = 0;
        std::optional<std::size_t> chosen;
        std::size_t j = i;
        std::string label = ".altinstructions entry " + std::to_string(i) + " (" + describe(instr) + ")";
        for (; j < n && !is_dropped({s.index, j * kEntry}) && relative_target({s.index, j * kEntry}) == instr; ++j) {
            const std::uint64_t e = field_address({s.index, j * kEntry});
            const auto ft = get<std::uint32_t>(e + 8, ".altinstructions entry");
            const unsigned feature = ft & 0xffff;
            const auto flags = static_cast<std::uint16_t>(ft >> 16);
            if (flags & ~(kFlagNot | kFlagDirectCall))
                fail(label + ": unknown alternative flags " + hex_short(flags) + " (hvpatch knows ALT_FLAG_NOT and "
                     "ALT_FLAG_DIRECT_CALL)");
            len = std::max<std::size_t>(len, get<std::uint8_t>(e + 12, ".altinstructions entry"));
            const bool inverted = flags & kFlagNot;
            std::string what = label + ", feature " + (inverted ? "!" : "") + std::to_string(feature / 32) + "*32+" +
                               std::to_string(feature % 32);
            if (cpu_has(feature, what) != inverted) chosen = j;
        }
        if (j - i > 1) label += " and " + std::to_string(j - i - 1) + " nested";
        ++sites;
        std::array<std::uint8_t, 256> buf{};
        if (len == 0) {
            ++(chosen ? applied : kept);
            i = j;
            continue;
        }
        std::uint8_t* site = code(instr, len, label);
        if (!chosen) {
            std::memcpy(buf.data(), site, len);
            ++kept;
        } else {
            const std::uint64_t e = field_address({s.index, *chosen * kEntry});
            if (is_dropped({s.index, *chosen * kEntry + 4}))
                fail(label + ": its replacement lies in a skipped section");
            const std::uint64_t repl = relative_target({s.index, *chosen * kEntry + 4});
            const auto flags = static_cast<std::uint16_t>(get<std::uint32_t>(e + 8, ".altinstructions entry") >> 16);
            const std::size_t repllen = get<std::uint8_t>(e + 13, ".altinstructions entry");
            if (repllen > len)
                fail(label + ": replacement (" + std::to_string(repllen) + " bytes) longer than the site (" +
                     std::to_string(len) + "); the kernel would write past it");
            if (repllen) std::memcpy(buf.data(), code(repl, repllen, label + " replacement"), repllen);
            std::size_t used = repllen;
            if (flags & kFlagDirectCall) {
                // alt_replace_call(): `call *disp(%rip)` becomes a direct call
                // of the pointer's current value (BUG_func if NULL), or NOPs
                // for nop_func. The replacement is `call BUG_func`.
                if (repllen != 5 || buf[0] != kCall)
                    fail(label + ": ALT_FLAG_DIRECT_CALL on a replacement that is not a 5-byte call (the kernel BUGs)");
                if (len != 6 || site[0] != 0xff || site[1] != 0x15)
                    fail(label + ": ALT_FLAG_DIRECT_CALL on a site that is not `call *disp32(%rip)` (the kernel BUGs)");
                std::int32_t disp;
                std::memcpy(&disp, site + 2, 4);
                const std::uint64_t slot = instr + 6 + static_cast<std::uint64_t>(static_cast<std::int64_t>(disp));
                std::uint64_t target = img_.contains(slot, 8) ? get<std::uint64_t>(slot, "direct-call pointer")
                                                               : read_guest_u64(slot, "the pointer called at " + describe(instr));
                const std::uint64_t bug = kernel_symbol("BUG_func", "ALT_FLAG_DIRECT_CALL");
                if (target == 0) target = bug;
                std::int32_t rel;
                std::memcpy(&rel, &buf[1], 4);
                rel = static_cast<std::int32_t>(static_cast<std::uint32_t>(rel) +
                                                static_cast<std::uint32_t>(target - bug));
                std::memcpy(&buf[1], &rel, 4);
                if (auto nop = optional_kernel_symbol("nop_func"); nop && target == *nop) used = 0;
            }
            for (std::size_t k = used; k < len; ++k) buf[k] = 0x90;
            relocate_replacement(buf.data(), len, instr, repl, repllen, label);
            ++applied;
        }
        optimize_nop_runs(buf.data(), len, instr);
        std::memcpy(site, buf.data(), len);
        i = j;
    }
    action(".altinstructions: " + std::to_string(sites) + " site(s): " + std::to_string(applied) +
           " alternative(s) applied, " + std::to_string(kept) +
           " kept (for the guest's boot_cpu_data capabilities; 6.3+ entries)" +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
}

void Linker::sort_orc(const KoSection& ip_sec, const KoSection& orc_sec) {
    // unwind_module_init(): both tables sorted by address; at one address,
    // the "weak" section terminator (sp_reg ORC_REG_UNDEFINED, !end) first.
    // Entries for skipped code go behind the kept ones, zeroed, and are not
    // counted.
    std::size_t n = entries(ip_sec, 4);
    if (entries(orc_sec, 6) != n)
        fail(".orc_unwind_ip has " + std::to_string(n) + " entries but .orc_unwind " +
             std::to_string(orc_sec.size / 6));
    struct Entry {
        std::uint64_t ip;
        std::array<std::byte, 6> orc;
    };
    std::vector<Entry> kept;
    std::uint64_t orc_base = section_address(orc_sec.index);
    for (std::size_t i = 0; i < n; ++i) {
        Site f{ip_sec.index, i * 4};
        if (is_dropped(f)) continue;
        Entry e;
        e.ip = relative_target(f);
        std::memcpy(e.orc.data(), at(orc_base + 6 * i, 6, ".orc_unwind entry"), 6);
        kept.push_back(e);
    }
    auto terminator = [](const Entry& e) {
        std::uint16_t flags;
        std::memcpy(&flags, e.orc.data() + 4, 2);
        return (flags & 0xf) == 0 && !((flags >> 10) & 1);
    };
    std::stable_sort(kept.begin(), kept.end(), [&](const Entry& a, const Entry& b) {
        if (a.ip != b.ip) return a.ip < b.ip;
        return terminator(a) && !terminator(b);
    });
    for (std::size_t i = 0; i < n; ++i) {
        if (i < kept.size()) {
            put_relative({ip_sec.index, i * 4}, kept[i].ip);
            std::memcpy(at(orc_base + 6 * i, 6, ".orc_unwind entry"), kept[i].orc.data(), 6);
        } else {
            put<std::int32_t>(field_address({ip_sec.index, i * 4}), 0, ".orc_unwind_ip entry");
            std::memset(at(orc_base + 6 * i, 6, ".orc_unwind entry"), 0, 6);
        }
    }
    img_.orc_unwind_ip = section_address(ip_sec.index);
    img_.orc_unwind = orc_base;
    img_.orc_entries = kept.size();
    action(".orc_unwind/.orc_unwind_ip: " + std::to_string(kept.size()) + " ORC entries sorted" +
           (kept.size() < n ? " (" + std::to_string(n - kept.size()) + " for skipped code zeroed at the end)" : "") +
           "; kept for hvpatch's own unwinding (the guest's unwinder does not know the module)");
}

void Linker::check_orc_header(const KoSection& s) {
    // 6.4+: the hash of the ORC format the module was built with. The guest's
    // loader ignores it, but hvpatch unwinds through the module's ORC
    // entries with the guest's format: they must be the same.
    const auto data = m_.section_data(s.index);
    if (data.size() != std::tuple_size_v<OrcHeader>)
        fail(".orc_header has " + std::to_string(data.size()) + " bytes, not a 20-byte hash");
    OrcHeader module_header{};
    std::memcpy(module_header.data(), data.data(), module_header.size());
    if (!facts_.orc_header)
        fail(".orc_header: the module's ORC format (" + to_hex(module_header) +
             ") cannot be checked: the guest kernel has no .orc_header (it predates 6.4)");
    if (*facts_.orc_header != module_header)
        fail(".orc_header: the module's ORC format " + to_hex(module_header) + " is not the guest kernel's (" +
             to_hex(*facts_.orc_header) + "): built for another kernel");
    action(".orc_header: the module's ORC format is the guest's (" + to_hex(module_header).substr(0, 12) + "...)");
}

void Linker::nop_mcount(const KoSection& s) {
    // ftrace_module_init() -> ftrace_process_locs(): the table is sorted and
    // NULL entries are skipped; each `call __fentry__` becomes the 5-byte
    // NOP, after checking that the bytes are that call
    // (ftrace_make_nop/ftrace_verify_code).
    std::size_t n = entries(s, 8), done = 0, skipped = 0;
    std::vector<std::uint64_t> locs;
    std::uint64_t table = section_address(s.index);
    std::optional<std::uint64_t> fentry;
    for (std::size_t i = 0; i < n; ++i) {
        Site f{s.index, i * 8};
        auto addr = is_dropped(f) ? 0 : get<std::uint64_t>(table + 8 * i, "__mcount_loc entry");
        locs.push_back(addr);
        if (addr == 0) {
            ++skipped;
            continue;
        }
        if (!fentry) {
            const KoSymbol* sym = m_.find_symbol("__fentry__");
            fentry =
                sym && sym->shndx == SHN_UNDEF ? sym_[sym->index].value : kernel_symbol("__fentry__", "__mcount_loc");
        }
        std::uint8_t* site = code(addr, 5, "__mcount_loc entry " + std::to_string(i));
        std::int32_t d;
        std::memcpy(&d, site + 1, 4);
        if (site[0] != kCall || addr + 5 + static_cast<std::uint64_t>(static_cast<std::int64_t>(d)) != *fentry)
            fail("__mcount_loc entry " + std::to_string(i) + ": the bytes at " + describe(addr) + " (" +
                 hex_bytes(reinterpret_cast<const std::byte*>(site), 5) + ") are not a call to __fentry__ (" +
                 hex_short(*fentry) + "); not changing them (ftrace_module_init would fail there too)");
        std::memcpy(site, kNops[5].data(), 5);
        ++done;
    }
    std::sort(locs.begin(), locs.end());
    for (std::size_t i = 0; i < n; ++i) put<std::uint64_t>(table + 8 * i, locs[i], "__mcount_loc entry");
    action("__mcount_loc: " + std::to_string(done) + " call site(s) turned into NOPs" +
           (skipped ? ", " + std::to_string(skipped) + " empty or in skipped code" : "") +
           " (the guest's ftrace does not know these functions: they cannot be traced)");
}

void Linker::handle_bug_table(const KoSection& s) {
    // struct bug_entry (GENERIC_BUG_RELATIVE_POINTERS, DEBUG_BUGVERBOSE), as
    // the guest's BTF lays it out: s32 bug_addr_disp, s32 file_disp, u16
    // line, u16 flags (12 bytes, up to 6.x); 7.x adds s32 format_disp after
    // bug_addr_disp (16). The guest finds a module's entries only through its
    // module list (module_find_bug), so for this module report_bug() says
    // "not a bug" and the ud2 of a WARN would become an "invalid opcode" oops
    // instead of a warning. hvpatch turns WARN's ud2 into a 2-byte NOP:
    // execution continues as after a WARN, without the report. BUG's ud2
    // stays: fatal either way. 7.x's WARN()s with arguments have no ud2 at
    // their site: they call __WARN_trap with their entry in a register
    // (BUGFLAG_ARGS), and the guest reports those from the entry itself.
    const auto& layout = facts_.bug_entry;
    const std::size_t kEntry = layout.size;
    constexpr std::uint16_t kBugFlagWarning = 1, kBugFlagArgs = 1 << 4;
    std::size_t n = entries(s, kEntry), warns = 0, bugs = 0, dropped = 0, reported = 0;
    for (std::size_t i = 0; i < n; ++i) {
        Site f{s.index, i * kEntry + layout.bug_addr};
        if (is_dropped(f)) {
            ++dropped;
            continue;
        }
        std::uint64_t e = section_address(s.index) + i * kEntry;
        std::uint64_t addr = relative_target(f);
        auto line = layout.line ? get<std::uint16_t>(e + *layout.line, "__bug_table entry") : 0;
        auto flags = get<std::uint16_t>(e + layout.flags, "__bug_table entry");
        std::string file = "?";
        if (layout.file && !is_dropped({s.index, i * kEntry + *layout.file})) {
            std::uint64_t fa = relative_target({s.index, i * kEntry + *layout.file});
            if (auto sec = loaded_section_at(fa, 1)) {
                std::uint64_t end = section_address(*sec) + m_.sections()[*sec].size;
                const char* p = reinterpret_cast<const char*>(img_.bytes.data() + (fa - img_.base));
                file = std::string(p, strnlen(p, end - fa));
            }
        }
        std::string where = file + ":" + std::to_string(line) + " (" + describe(addr) + ")";
        if ((flags & kBugFlagWarning) && (flags & kBugFlagArgs) && layout.has_format && facts_.warn_trap_with_entry) {
            const std::uint8_t* site = code(addr, 1, "__bug_table entry " + std::to_string(i));
            if (site[0] != 0x0f) {  // not a ud2/ud1 site: the __WARN_trap call form
                ++reported;
                continue;
            }
        }
        std::uint8_t* site = code(addr, 2, "__bug_table entry " + std::to_string(i));
        if (flags & kBugFlagWarning) {
            if (site[0] != 0x0f || site[1] != 0x0b)
                fail("__bug_table: the WARN site at " + where + " holds " +
                     hex_bytes(reinterpret_cast<const std::byte*>(site), 2) + ", not ud2");
            std::memcpy(site, kNops[2].data(), 2);
            warn("WARN at " + where + " silenced: if it triggers, the guest continues without the warning report");
            ++warns;
        } else {
            ++bugs;
        }
    }
    if (reported)
        action("__bug_table: " + std::to_string(reported) +
               " WARN() with arguments left as built (the guest's __WARN_trap reports it from its entry)");
    action("__bug_table: " + std::to_string(warns) + " WARN site(s) turned into NOPs, " + std::to_string(bugs) +
           " BUG site(s) kept (the guest reports them as \"invalid opcode\" without file and line)" +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
    if (bugs)
        warn(std::to_string(bugs) +
             " BUG() site(s) in the patch: if one triggers, the guest oopses with "
             "\"invalid opcode\" instead of \"kernel BUG at file:line\"");
}

void Linker::apply_jump_labels(const KoSection& s) {
    // struct jump_entry (HAVE_ARCH_JUMP_LABEL_RELATIVE): s32 code, s32
    // target, long key (relative; bit 0 = branch default, bit 1 = init).
    // jump_label_add_module() sorts the table by (key, code) and brings each
    // site to jump_label_type() = (key->enabled > 0) ^ branch: JMP or NOP,
    // 2 or 5 bytes as built (arch_jump_entry_size).
    constexpr std::size_t kEntry = 16;
    std::size_t n = entries(s, kEntry), jumps = 0, nops = 0, dropped = 0;
    struct Entry {
        std::uint64_t code, target, key;
        std::uint64_t flags;
    };
    std::vector<Entry> kept;
    std::map<std::string, std::size_t> sites_per_key;
    for (std::size_t i = 0; i < n; ++i) {
        Site fc{s.index, i * kEntry}, ft{s.index, i * kEntry + 4}, fk{s.index, i * kEntry + 8};
        if (is_dropped(fc)) {
            ++dropped;
            continue;
        }
        if (is_dropped(ft) || is_dropped(fk))
            fail("__jump_table entry " + std::to_string(i) + " at " + describe(relative_target(fc)) +
                 ": its target or key lies in a skipped section");
        Entry e;
        e.code = relative_target(fc);
        e.target = relative_target(ft);
        std::uint64_t kf = field_address(fk);
        auto raw = get<std::int64_t>(kf, "__jump_table entry");
        e.key = kf + static_cast<std::uint64_t>(raw & ~3LL);
        e.flags = static_cast<std::uint64_t>(raw) & 1;  // the init bit is cleared: nothing is init here
        std::string key_name = symbol_of(fk);
        if (key_name.empty()) key_name = hex_short(e.key);
        std::int32_t enabled;
        if (img_.contains(e.key, 4)) {
            // A key of the module itself: its value as built (init never ran).
            enabled = get<std::int32_t>(e.key, "static key");
        } else {
            if (!facts_.read_u32) throw Error(ErrorKind::Internal, "GuestLinkFacts.read_u32 is not set");
            auto v = facts_.read_u32(e.key);
            if (!v)
                fail("cannot read static key " + key_name + " at " + hex_short(e.key) + " in guest memory (__jump_table)");
            enabled = static_cast<std::int32_t>(*v);
        }
        bool jump = (enabled > 0) != (e.flags & 1);
        std::uint8_t* site = code(e.code, 2, "__jump_table site");
        std::size_t size;
        if ((site[0] == kJmp8) || (site[0] == 0x66 && site[1] == 0x90))
            size = 2;
        else if (site[0] == kJmp32 || std::memcmp(site, kNops[5].data(), 1) == 0)
            size = 5;
        else
            fail("__jump_table: unexpected instruction at " + describe(e.code) + " (" +
                 hex_bytes(reinterpret_cast<const std::byte*>(site), 2) + "...; the kernel BUGs)");
        site = code(e.code, size, "__jump_table site");
        std::array<std::uint8_t, 5> jmp{};
        auto d = static_cast<std::int64_t>(e.target - (e.code + size));
        if (size == 2 ? (d < INT8_MIN || d > INT8_MAX) : !fits_s32(d))
            fail("__jump_table: target " + describe(e.target) + " out of range of the " + std::to_string(size) +
                 "-byte jump at " + describe(e.code));
        jmp[0] = size == 2 ? kJmp8 : kJmp32;
        if (size == 2) {
            jmp[1] = static_cast<std::uint8_t>(static_cast<std::int8_t>(d));
        } else {
            auto d32 = static_cast<std::int32_t>(d);
            std::memcpy(&jmp[1], &d32, 4);
        }
        if (std::memcmp(site, jmp.data(), size) != 0 && std::memcmp(site, kNops[size].data(), size) != 0)
            fail("__jump_table: the site at " + describe(e.code) + " holds " +
                 hex_bytes(reinterpret_cast<const std::byte*>(site), size) + ", neither its jump nor a NOP");
        std::memcpy(site, jump ? jmp.data() : kNops[size].data(), size);
        ++(jump ? jumps : nops);
        ++sites_per_key[key_name];
        kept.push_back(e);
    }
    std::stable_sort(kept.begin(), kept.end(),
                     [](const Entry& a, const Entry& b) { return a.key != b.key ? a.key < b.key : a.code < b.code; });
    for (std::size_t i = 0; i < n; ++i) {
        std::uint64_t e = section_address(s.index) + i * kEntry;
        if (i < kept.size()) {
            put_relative({s.index, i * kEntry}, kept[i].code);
            put_relative({s.index, i * kEntry + 4}, kept[i].target);
            put<std::int64_t>(
                e + 8, static_cast<std::int64_t>(kept[i].key - (e + 8)) | static_cast<std::int64_t>(kept[i].flags),
                "__jump_table entry");
        } else {
            std::memset(at(e, kEntry, "__jump_table entry"), 0, kEntry);
        }
    }
    action("__jump_table: " + std::to_string(jumps) + " static branch(es) set to jump, " + std::to_string(nops) +
           " to NOP, from their keys' current state" +
           (dropped ? ", " + std::to_string(dropped) + " in skipped code ignored" : ""));
    if (!sites_per_key.empty()) {
        std::string keys;
        for (const auto& [k, c] : sites_per_key)
            keys += (keys.empty() ? "" : ", ") + k + " (" + std::to_string(c) + ")";
        warn(
            "static branches follow their keys as they are now and will not change with them: the guest's "
            "jump-label code does not know this module's sites. Keys: " +
            keys);
    }
}

void Linker::note_static_calls(const KoSection& s) {
    // static_call_add_module() would turn each `call __SCT__<name>` into a
    // direct call of the current target; but only registered sites follow
    // later static_call_update()s. Left as built, each site calls the
    // trampoline, which the guest keeps current: always correct, at the cost
    // of one more direct jump per call.
    std::size_t n = entries(s, 8);
    action(".static_call_sites: " + std::to_string(n) +
           " site(s) left calling their static-call trampolines (kept current by the guest; one extra jump per "
           "call)");
}

void Linker::collect_symbols() {
    for (const auto& s : m_.symbols()) {
        if (s.index == 0 || s.type == STT_SECTION || s.type == STT_FILE || s.name.empty()) continue;
        if (s.shndx == SHN_UNDEF || s.shndx >= m_.sections().size() || !loaded(fate_[s.shndx].fate)) continue;
        std::uint64_t a = section_address(s.shndx) + s.value;
        img_.symbols.push_back({s.name, a, s.size, s.type, s.bind});
        if (s.type == STT_FUNC && fate_[s.shndx].fate == Fate::Text) img_.functions.emplace_back(s.name, a, a + s.size);
    }
    std::sort(img_.functions.begin(), img_.functions.end(),
              [](const auto& a, const auto& b) { return std::get<1>(a) < std::get<1>(b); });
}

ModuleImage Linker::run() {
    m_.check_supported();  // a non-empty __ex_table
    if (facts_.mitigations.call_depth_tracking)
        fail(
            "the guest runs call-depth tracking (retbleed=stuff or its=stuff: thunks_initialized is set): its loader "
            "would route the module's calls through call thunks and account its returns (callthunks_patch_module_calls), "
            "which hvpatch does not do");
    layout_and_copy();
    resolve_symbols();
    apply_relocations();

    auto find = [&](std::string_view name) -> const KoSection* {
        const KoSection* s = m_.find_section(name);
        return s && loaded(fate_[s->index].fate) ? s : nullptr;
    };
    // module_finalize(), in its order: paravirt, retpolines, returns,
    // alternatives, IBT, SMP locks, ORC.
    if (auto s = find(".parainstructions")) apply_paravirt(*s);
    if (auto s = find(".retpoline_sites")) apply_retpolines(*s);
    if (auto s = find(".return_sites")) apply_returns(*s);
    if (auto s = find(".call_sites"))
        action(".call_sites: " + std::to_string(s->size / 4) +
               " call site(s) left as built (call-depth tracking is off in the guest: callthunks_patch_module_calls "
               "does nothing)");
    if (auto s = find(".altinstructions")) {
        if (facts_.alt_instr_size == kAltInstrFtFlagsSize)
            apply_alternatives_ft_flags(*s);
        else
            apply_alternatives(*s);
    }
    if (auto s = find(".ibt_endbr_seal"))
        action(
            ".ibt_endbr_seal: " + std::to_string(s->size / 4) +
            " ENDBR64 kept (apply_ibt_endbr only poisons them on IBT kernels; unsealed they are plain landing pads)");
    if (auto s = find(".smp_locks"))
        action(".smp_locks: " + std::to_string(s->size / 4) +
               " lock prefix(es) kept as built (correct on any number of CPUs; the kernel only drops them while a "
               "guest that could hot-add CPUs runs on one: alternatives_smp_module_add)");
    {
        auto ip = find(".orc_unwind_ip"), orc = find(".orc_unwind");
        if (ip && orc)
            sort_orc(*ip, *orc);
        else if (ip || orc)
            action((ip ? ip : orc)->name + ": ignored without its twin (unwind_module_init needs both)");
    }
    if (auto s = find(".orc_header")) check_orc_header(*s);
    // ftrace_module_init().
    if (auto s = find("__mcount_loc")) nop_mcount(*s);
    // complete_formation(): module_bug_finalize().
    if (auto s = find("__bug_table")) handle_bug_table(*s);
    // prepare_coming_module(): the jump-label and static-call notifiers.
    if (auto s = find("__jump_table")) apply_jump_labels(*s);
    if (auto s = find(".static_call_sites")) note_static_calls(*s);
    if (find("__ex_table")) action("__ex_table: empty, nothing to do");

    for (const auto& s : m_.sections()) {
        const SectionFate& f = fate_[s.index];
        if (f.fate == Fate::Skipped) {
            action(s.name + ": skipped (" + f.why + ")");
        } else if (loaded(f.fate) && f.rule && f.rule->role == Role::Inert && s.size != 0) {
            action(s.name + ": loaded, unregistered: " + std::string(f.rule->note));
            if (f.rule->warn) warn(s.name + ": " + std::string(f.rule->note));
        } else if (f.fate == Fate::NotLoaded && f.rule && f.rule->refused) {
            action(s.name + ": empty, nothing to register");
        }
    }
    collect_symbols();
    return std::move(img_);
}

}  // namespace

ModuleLayout plan_module_layout(const LivepatchModule& module, std::uint64_t extra_text) {
    constexpr std::uint64_t kMaxModuleSize = 1ull << 30;  // far beyond any module, far below the module area's size
    std::vector<SectionFate> fates;
    std::string refusals;
    for (const auto& s : module.sections()) {
        fates.push_back(classify(s));
        if (fates.back().fate == Fate::Refused)
            refusals += (refusals.empty() ? "" : "; ") + ("section " + s.name + ": " + fates.back().why);
    }
    if (!refusals.empty()) throw Error(ErrorKind::Guest, module.path() + ": cannot be loaded by hvpatch: " + refusals);
    if (extra_text > kMaxModuleSize)
        throw Error(ErrorKind::Usage, module.path() + ": extra text of " + hex_short(extra_text) + " bytes is too large");

    ModuleLayout layout;
    auto place = [&](std::uint64_t start, auto wanted) {
        std::uint64_t off = start;
        for (const auto& s : module.sections()) {
            if (!wanted(s, fates[s.index])) continue;
            off = align_up(off, s.alignment);
            layout.section_offset[s.index] = off;
            if (s.size > kMaxModuleSize || off + s.size > kMaxModuleSize)
                throw Error(ErrorKind::Guest, module.path() + ": section " + s.name + " (" + hex_short(s.size) +
                                                  " bytes) makes the module larger than " + hex_short(kMaxModuleSize) +
                                                  " bytes");
            off += s.size;
        }
        return off;
    };
    std::uint64_t end = place(0, [](const KoSection&, const SectionFate& f) { return f.fate == Fate::Text; });
    layout.extra_text_offset = align_up(end, 16);
    layout.extra_text_size = extra_text;
    layout.text_size = align_up(layout.extra_text_offset + extra_text, kModulePageSize);
    // RO sections first, then "RO after init" ones, as layout_sections().
    end = place(layout.text_size, [](const KoSection&, const SectionFate& f) {
        return f.fate == Fate::Rodata && !f.rule->ro_after_init;
    });
    end = place(end,
                [](const KoSection&, const SectionFate& f) { return f.fate == Fate::Rodata && f.rule->ro_after_init; });
    layout.rodata_size = align_up(end, kModulePageSize) - layout.text_size;
    end = place(layout.text_size + layout.rodata_size,
                [](const KoSection&, const SectionFate& f) { return f.fate == Fate::Data; });
    layout.data_size = align_up(end, kModulePageSize) - layout.text_size - layout.rodata_size;
    return layout;
}

bool uses_return_thunk(bool rethunk, std::uint64_t return_thunk, std::optional<std::uint64_t> its_return_thunk,
                       std::uint64_t address) {
    return rethunk && (!its_return_thunk || return_thunk != *its_return_thunk || !(address & 0x20));
}

std::uint64_t ModuleImage::image_offset(std::size_t section, std::uint64_t offset, const std::string& what) const {
    auto it = layout.section_offset.find(section);
    if (it == layout.section_offset.end()) throw Error(ErrorKind::Guest, what + " is in a section hvpatch does not load");
    return it->second + offset;
}

std::uint64_t ModuleImage::symbol_address(std::string_view name) const {
    const ModuleSymbol* found = nullptr;
    std::size_t locals = 0;
    for (const auto& s : symbols) {
        if (s.name != name) continue;
        if (s.bind == STB_GLOBAL || s.bind == STB_WEAK) return s.address;
        found = &s;
        ++locals;
    }
    if (!found) throw Error(ErrorKind::Usage, "no symbol " + std::string(name) + " defined in the module image");
    if (locals > 1)
        throw Error(ErrorKind::Usage, std::to_string(locals) + " local symbols named " + std::string(name) +
                                          " in the module image: ambiguous");
    return found->address;
}

void check_link_formats(const LivepatchModule& module, const GuestLinkFacts& facts) {
    std::string refusals;
    for (const auto& s : module.sections()) {
        if (s.name == ".altinstructions" && facts.alt_instr_size != 12 && facts.alt_instr_size != kAltInstrFtFlagsSize)
            refusals += (refusals.empty() ? "" : "; ") +
                        std::string(".altinstructions: the guest's struct alt_instr is not a form hvpatch knows "
                                    "(the 12-byte one of 4.x-6.2 or the 14-byte one with ft_flags of 6.3+, member "
                                    "by member)");
        if (s.name == "__bug_table" && facts.bug_entry.size == 0)
            refusals += (refusals.empty() ? "" : "; ") +
                        std::string("__bug_table: the guest's struct bug_entry is not a form hvpatch knows "
                                    "(relative bug_addr_disp and a u16 flags, per its BTF)");
    }
    if (!refusals.empty())
        throw Error(ErrorKind::Guest, module.path() + " cannot be loaded by hvpatch into this guest: " + refusals);
}

ModuleImage link_module(const LivepatchModule& module, std::uint64_t base, std::uint64_t extra_text,
                        const GuestLinkFacts& facts) {
    check_link_formats(module, facts);
    return Linker(module, base, extra_text, facts).run();
}

}  // namespace hvpatch
