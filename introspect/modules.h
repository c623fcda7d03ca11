// The guest's loaded kernel modules and their symbols, read from raw guest
// memory the way the guest kernel itself reads them (linux 6.1:
// kernel/module/main.c, kernel/module/kallsyms.c, kernel/kallsyms.c,
// include/linux/module.h).
//
//  - The module list: `modules` (a list_head in vmlinux) through
//    module.list, newest first; MODULE_STATE_UNFORMED entries are skipped,
//    as every reader in the kernel (and /proc/modules) skips them.
//  - A module's symbols: mod->kallsyms (RCU; the full init-time copy while
//    the module is COMING, &mod->core_kallsyms once do_init_module() is
//    done): Elf64_Sym symtab[num_symtab], strtab, typetab[num_symtab] (one
//    nm letter per symbol, written by elf_type() at load; before 5.2 the
//    letter was stored in st_info instead, which is read when the guest's
//    BTF has no mod_kallsyms.typetab).
//  - /proc/kallsyms' letter case for module symbols (s_show): the letter is
//    toupper()ed when module_get_kallsym() reports the symbol exported and
//    tolower()ed otherwise, whatever the ELF binding. "Exported" is
//    is_exported(): a binary search (lib bsearch) by name of mod->syms
//    (EXPORT_SYMBOL only; EXPORT_SYMBOL_GPL exports are in mod->gpl_syms
//    and are NOT searched, so they print in lower case) whose value must
//    also equal st_value. See module_symbol_type().
//
// Everything is untrusted guest data: list walks are bounded and cycle-safe,
// counts are capped, every pointer is read through VirtualMemory, and a
// failure throws Error(Guest) naming the module and the address.
//
// The core functions take (VirtualMemory&, const GuestLayouts&, addresses)
// so they run on synthetic memory in unit tests; the GuestKernel overloads
// look up `modules` and the BTF-only layouts and call them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/address.h"
#include "introspect/guest_layouts.h"
#include "introspect/kallsyms.h"
#include "introspect/kernel_btf.h"
#include "introspect/orc_unwind.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

class GuestKernel;

// Preprocessor constants of the module code (not in BTF; unchanged 4.14..6.12).
namespace modconst {
inline constexpr std::size_t kKsymNameLen = 512;    // KSYM_NAME_LEN (6.1+; 128 before): names are cut to 511 bytes
inline constexpr std::uint64_t kElfSymSize = 24;    // sizeof(Elf64_Sym): ELF ABI
inline constexpr std::uint64_t kElfSymName = 0;     // Elf64_Sym.st_name (u32, offset into strtab)
inline constexpr std::uint64_t kElfSymInfo = 4;     // Elf64_Sym.st_info (u8)
inline constexpr std::uint64_t kElfSymShndx = 6;    // Elf64_Sym.st_shndx (u16)
inline constexpr std::uint64_t kElfSymValue = 8;    // Elf64_Sym.st_value (u64)
inline constexpr std::uint16_t kShnUndef = 0;       // SHN_UNDEF
}  // namespace modconst

// core_layout / init_layout of struct module (6.4+: mem[MOD_TEXT] /
// mem[MOD_INIT_TEXT], whose size is the text only; see GuestLayouts).
struct GuestModuleRegion {
    std::uint64_t base = 0;
    std::uint64_t size = 0;
    std::uint64_t text_size = 0;
    // within_module_core()/within_module_init(): base <= addr < base + size
    // (the kernel's arithmetic, wrapping included).
    bool contains(std::uint64_t addr) const { return base <= addr && addr < base + size; }
};

// module.arch's ORC tables (CONFIG_UNWINDER_ORC), sorted by the kernel at
// load (unwind_module_init()).
struct GuestModuleOrc {
    GuestVirtAddr ip_table;   // arch.orc_unwind_ip (s32 self-relative)
    GuestVirtAddr orc_table;  // arch.orc_unwind (6-byte entries)
    std::uint64_t num_entries = 0;  // arch.num_orcs
};

struct GuestModule {
    std::uint64_t address = 0;  // struct module *
    std::string name;           // mod->name (at most MODULE_NAME_LEN - 1 bytes)
    int state = 0;              // enum module_state: GuestLayouts::Module::state_live etc.
    GuestModuleRegion core;     // the module's code and data (init freed: only this remains)
    GuestModuleRegion init;     // base 0, size 0 once do_init_module() freed it
    std::uint64_t kallsyms = 0; // mod->kallsyms (struct mod_kallsyms *)
    // Absent without CONFIG_UNWINDER_ORC, or when arch.orc_unwind or
    // arch.orc_unwind_ip is NULL (orc_module_find() then finds nothing).
    std::optional<GuestModuleOrc> orc;
    bool livepatch = false;     // mod->klp (CONFIG_LIVEPATCH): the module is a livepatch

    bool within_init(std::uint64_t addr) const { return init.contains(addr); }
    bool within_core(std::uint64_t addr) const { return core.contains(addr); }
    bool within(std::uint64_t addr) const { return within_init(addr) || within_core(addr); }
};

struct ModuleListOptions {
    std::size_t max_modules = 1 << 14;  // refuse guests claiming more (a distro boot loads ~100-200)
    std::uint64_t max_symbols = 1 << 20;  // num_symtab cap per module (livepatch modules keep all; ~10^4 typical)
    std::uint64_t max_exports = 1 << 18;  // num_syms cap per module
};

// Reads one struct module. Throws Error(Guest) "module at X: ..." when it
// is unreadable.
GuestModule read_module(VirtualMemory& memory, const GuestLayouts& layouts, std::uint64_t address);

// The formed modules on the list headed at `modules_head` (&modules), in
// list order (= /proc/modules order: newest first). Throws Error(Guest) for
// a corrupt list (cycle, dangling pointer, more than max_modules) or an
// unreadable module.
std::vector<GuestModule> list_modules(VirtualMemory& memory, const GuestLayouts& layouts,
                                      std::uint64_t modules_head, const ModuleListOptions& options = {});
std::vector<GuestModule> list_modules(GuestKernel& kernel, const ModuleListOptions& options = {});

// The module `addr` belongs to (__module_address(): init or core region),
// or nullptr.
const GuestModule* module_for_address(const std::vector<GuestModule>& modules, std::uint64_t addr);

// One Elf64_Sym of mod->kallsyms, as the kernel's module kallsyms code sees it.
struct ModuleSymtabEntry {
    std::string name;          // strtab + st_name, cut to KSYM_NAME_LEN - 1 bytes (strscpy)
    std::uint64_t value = 0;   // st_value (kallsyms_symbol_value on x86)
    std::uint16_t shndx = 0;   // st_shndx (SHN_UNDEF: not a symbol of the module)
    char type = '?';           // typetab[i] (st_info before 5.2): elf_type()'s nm letter
};

// mod->kallsyms of `module`, every entry (including index 0, the ELF null
// symbol, and nameless ones). Throws Error(Guest) naming the module and the
// address when mod->kallsyms, symtab, strtab or typetab is NULL or
// unreadable, a name is unreadable, or num_symtab exceeds max_symbols.
std::vector<ModuleSymtabEntry> read_module_symtab(VirtualMemory& memory, const GuestLayouts& layouts,
                                                  const GuestModule& module, const ModuleListOptions& options = {});

// What module_get_kallsym()'s `exported` needs that GuestLayouts does not
// carry: struct module's syms/num_syms and struct kernel_symbol, from BTF.
struct ModuleExportLayout {
    LayoutField syms;            // module.syms: const struct kernel_symbol *
    LayoutField num_syms;        // module.num_syms: unsigned int
    std::uint64_t symbol_size = 0;  // sizeof(struct kernel_symbol)
    // CONFIG_HAVE_ARCH_PREL32_RELOCATIONS (x86-64 4.19+): value_offset and
    // name_offset, s32 relative to their own address (offset_to_ptr).
    // Otherwise value and name: absolute pointers.
    bool relative = true;
    LayoutField value, name;
    // Throws Error(Guest) naming the missing member or type.
    static ModuleExportLayout from_btf(const KernelBtf& btf);
};

// The letter /proc/kallsyms prints for a module symbol (kernel/kallsyms.c
// s_show): toupper(type) if exported, else tolower(type), with the kernel's
// own ctype (lib/ctype.c: Latin-1 letters 0xc0-0xde/0xdf-0xff have case
// too; everything else, like '?', is left alone).
char module_symbol_type(char type, bool exported);

// is_exported(name, value, mod) for one module: the kernel's binary search
// over mod->syms[0..num_syms), strcmp by name, then value equality. Entries
// are read lazily (a search touches log2(num_syms) of them) and cached.
class ModuleExports {
public:
    // Reads mod->syms and mod->num_syms. Throws Error(Guest) when they are
    // unreadable or num_syms exceeds max_exports.
    ModuleExports(VirtualMemory& memory, const ModuleExportLayout& layout, const GuestModule& module,
                  const ModuleListOptions& options = {});
    // Throws Error(Guest) naming the module and the entry when an entry
    // the search visits is unreadable.
    bool is_exported(const std::string& name, std::uint64_t value);
    std::uint64_t count() const { return count_; }

private:
    struct Entry {
        std::string name;
        std::uint64_t value = 0;
    };
    const Entry& entry(std::uint64_t index);

    VirtualMemory& memory_;
    ModuleExportLayout layout_;
    std::string module_name_;
    std::uint64_t table_ = 0, count_ = 0;
    std::map<std::uint64_t, Entry> cache_;
};

// The module's lines of /proc/kallsyms, in the order it prints them
// (module_get_kallsym(): symtab order; s_show skips empty names): address
// (st_value), letter (module_symbol_type), name (cut to 511 bytes), module.
// No SHN_UNDEF filtering: /proc prints what the table holds (a livepatch
// module keeps its undefined symbols, shown as 'u').
std::vector<KernelSymbol> module_symbols(VirtualMemory& memory, const GuestLayouts& layouts,
                                         const ModuleExportLayout& exports, const GuestModule& module,
                                         const ModuleListOptions& options = {});
std::vector<KernelSymbol> module_symbols(GuestKernel& kernel, const GuestModule& module,
                                         const ModuleListOptions& options = {});

// Address → module symbol, as module_address_lookup() / %pS do it
// (find_kallsyms_symbol(): among mod->kallsyms entries that are defined,
// named and not ARM mapping symbols, the greatest st_value <= addr, the
// first such entry on ties; size up to the next greater st_value, or to
// the end of the text of the region holding addr — init if within init,
// else core, even for a data address, where the kernel's unsigned
// subtraction wraps the same way). Module tables are read on first use and
// cached: one resolver per freeze; not thread-safe.
class ModuleSymbolResolver {
public:
    ModuleSymbolResolver(VirtualMemory& memory, const GuestLayouts& layouts, const ModuleExportLayout& exports,
                         std::vector<GuestModule> modules, const ModuleListOptions& options = {});
    // For a GuestKernel (lists the modules itself). `kernel` must outlive it.
    static ModuleSymbolResolver for_kernel(GuestKernel& kernel, const ModuleListOptions& options = {});

    const std::vector<GuestModule>& modules() const { return modules_; }
    // nullopt when addr is in no module, or its module has no symbol at or
    // below it (the kernel then prints the bare address). symbol.module is
    // the module's name; symbol.type the /proc/kallsyms letter. Throws
    // Error(Guest) when the module's tables are unreadable.
    std::optional<KallsymsTable::Resolved> resolve(std::uint64_t addr);

private:
    struct Tables {
        std::vector<ModuleSymtabEntry> symtab;
        std::unique_ptr<ModuleExports> exports;
    };
    Tables& tables_of(std::size_t index);

    VirtualMemory& memory_;
    const GuestLayouts& layouts_;
    ModuleExportLayout export_layout_;
    std::vector<GuestModule> modules_;
    ModuleListOptions options_;
    std::map<std::size_t, Tables> tables_;
};

// "name+0x1a/0x40 [module]" as %pS / /proc/PID/stack print it
// (__sprint_symbol without build ids), " [module]" only for module symbols.
std::string format_symbol(const KallsymsTable::Resolved& resolved);

// Any kernel address to symbol+offset: module text and data through the
// module resolver, everything else through vmlinux's kallsyms.
std::optional<KallsymsTable::Resolved> resolve_kernel_address(const KallsymsTable& vmlinux,
                                                              ModuleSymbolResolver& modules, std::uint64_t addr);

// The ORC tables of a module for make_module_orc() (orc_unwind.h): the
// module's core region and, while it is live, its init region. nullopt when
// the module has no ORC tables (GuestModule::orc).
std::optional<ModuleOrcTables> module_orc_tables(const GuestModule& module, OrcFormat format);
// make_module_orc() for each module with ORC tables, added to `composite`
// in list order (orc_find() tries vmlinux first: add it before).
void add_module_orc_sources(CompositeOrcSource& composite, VirtualMemory& memory,
                            const std::vector<GuestModule>& modules, OrcFormat format);

}  // namespace hvpatch
