// Modules: see modules.h for what is read and how the kernel reads it.
#include "introspect/modules.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "hvpatch/error.h"
#include "introspect/guest_kernel.h"
#include "introspect/guest_list.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t kPageSize = 4096;

// The same error with context in front; the kind is kept (a VMM that went
// away is not the guest's fault).
[[noreturn]] void rethrow_with(const Error& e, const std::string& context) {
    throw Error(e.kind(), context + ": " + e.what());
}

std::string module_label(const GuestModule& module) {
    return "module " + (module.name.empty() ? std::string("?") : module.name) + " at " + hex(module.address);
}

// Whole 4 KiB pages of guest memory, read once: a module's strtab is a few
// pages holding thousands of names, each otherwise one or more guest reads
// (a gdbstub round trip each on some targets). A page that cannot be read
// whole falls back to VirtualMemory::read_cstring, whose error names the
// exact address. Bounded: the cache is dropped past kMaxPages.
class PageCache {
public:
    explicit PageCache(VirtualMemory& memory) : memory_(memory) {}

    std::string cstring(std::uint64_t addr, std::size_t max) {
        std::string out;
        while (out.size() < max) {
            std::uint64_t at = addr + out.size();
            if (at < addr) return memory_.read_cstring(GuestVirtAddr{addr}, max);  // wraps: let it fail there
            const std::vector<std::byte>* page = page_at(at & ~(kPageSize - 1));
            if (!page) return memory_.read_cstring(GuestVirtAddr{addr}, max);
            std::size_t in_page = static_cast<std::size_t>(at & (kPageSize - 1));
            std::size_t n = std::min<std::size_t>(max - out.size(), kPageSize - in_page);
            const char* p = reinterpret_cast<const char*>(page->data()) + in_page;
            const void* nul = std::memchr(p, 0, n);
            if (nul) {
                out.append(p, static_cast<const char*>(nul));
                return out;
            }
            out.append(p, n);
        }
        return out;
    }

private:
    static constexpr std::size_t kMaxPages = 1024;

    const std::vector<std::byte>* page_at(std::uint64_t base) {
        auto it = pages_.find(base);
        if (it != pages_.end()) return it->second ? &*it->second : nullptr;
        if (pages_.size() >= kMaxPages) pages_.clear();
        std::optional<std::vector<std::byte>> bytes;
        try {
            bytes = memory_.read_bytes(GuestVirtAddr{base}, kPageSize);
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Guest) throw;
        }
        auto [pos, inserted] = pages_.emplace(base, std::move(bytes));
        (void)inserted;
        return pos->second ? &*pos->second : nullptr;
    }

    VirtualMemory& memory_;
    std::unordered_map<std::uint64_t, std::optional<std::vector<std::byte>>> pages_;
};

template <typename T>
T load(const std::vector<std::byte>& bytes, std::size_t at) {
    T v{};
    std::memcpy(&v, bytes.data() + at, sizeof v);
    return v;
}

// lib/ctype.c's _ctype, upper/lower bits only.
bool kernel_isupper(unsigned char c) { return (c >= 'A' && c <= 'Z') || (c >= 0xc0 && c <= 0xde && c != 0xd7); }
bool kernel_islower(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= 0xdf && c != 0xf7); }

// kernel/module/kallsyms.c is_arm_mapping_symbol(), applied on every
// architecture by find_kallsyms_symbol(). For the name "$" the kernel reads
// str[2], the byte after the terminator; it is taken as a mapping symbol
// here whatever that byte is.
bool is_arm_mapping_symbol(const std::string& s) {
    if (s.size() >= 2 && s[0] == '.' && s[1] == 'L') return true;
    if (s.empty() || s[0] != '$') return false;
    if (s.size() == 1) return true;
    if (std::strchr("axtd", s[1]) == nullptr) return false;
    return s.size() == 2 || s[2] == '.';
}

LayoutField btf_field(const KernelBtf& btf, std::string_view type, std::string_view path) {
    MemberInfo m = btf.member(type, path);
    if (m.is_bitfield())
        throw Error(ErrorKind::Guest, "guest BTF: struct " + std::string(type) + " member '" + std::string(path) +
                                          "' is a bitfield");
    return LayoutField{m.offset, m.size, path};
}

}  // namespace

// ---- the module list -------------------------------------------------------

GuestModule read_module(VirtualMemory& memory, const GuestLayouts& layouts, std::uint64_t address) {
    const auto& m = layouts.module;
    GuestModule mod;
    mod.address = address;
    try {
        mod.state = static_cast<int>(static_cast<std::int32_t>(read_layout_field(memory, address, m.state)));
        // module_get_kallsym() copies it with strscpy(.., MODULE_NAME_LEN).
        mod.name = memory.read_cstring(GuestVirtAddr{address + m.name.offset}, m.name.size ? m.name.size - 1 : 0);
        mod.core.base = read_layout_field(memory, address, m.core.base);
        mod.core.size = read_layout_field(memory, address, m.core.size);
        mod.core.text_size = read_layout_field(memory, address, m.core.text_size);
        mod.init.base = read_layout_field(memory, address, m.init.base);
        mod.init.size = read_layout_field(memory, address, m.init.size);
        mod.init.text_size = read_layout_field(memory, address, m.init.text_size);
        mod.kallsyms = read_layout_field(memory, address, m.kallsyms);
        if (m.orc) {
            std::uint64_t num = read_layout_field(memory, address, m.orc->num_orcs);
            std::uint64_t ip = read_layout_field(memory, address, m.orc->orc_unwind_ip);
            std::uint64_t orc = read_layout_field(memory, address, m.orc->orc_unwind);
            if (ip != 0 && orc != 0) mod.orc = GuestModuleOrc{GuestVirtAddr{ip}, GuestVirtAddr{orc}, num};
        }
        if (m.klp) mod.livepatch = read_layout_field(memory, address, *m.klp) != 0;
    } catch (const Error& e) {
        rethrow_with(e, "module at " + hex(address) + (mod.name.empty() ? "" : " (" + mod.name + ")"));
    }
    return mod;
}

std::vector<GuestModule> list_modules(VirtualMemory& memory, const GuestLayouts& layouts,
                                      std::uint64_t modules_head, const ModuleListOptions& options) {
    const auto& m = layouts.module;
    std::vector<std::uint64_t> entries =
        walk_list(memory, modules_head, m.list.offset, options.max_modules, "modules list at " + hex(modules_head));
    std::vector<GuestModule> modules;
    for (std::uint64_t address : entries) {
        std::int64_t state;
        try {
            state = static_cast<std::int32_t>(read_layout_field(memory, address, m.state));
        } catch (const Error& e) {
            rethrow_with(e, "module at " + hex(address));
        }
        // list_for_each_entry_rcu(mod, &modules, list) { if (mod->state ==
        // MODULE_STATE_UNFORMED) continue; ... }: still being loaded.
        if (state == m.state_unformed) continue;
        modules.push_back(read_module(memory, layouts, address));
    }
    return modules;
}

std::vector<GuestModule> list_modules(GuestKernel& kernel, const ModuleListOptions& options) {
    return list_modules(kernel.memory(), kernel.layouts(), kernel.symbol("modules"), options);
}

const GuestModule* module_for_address(const std::vector<GuestModule>& modules, std::uint64_t addr) {
    for (const GuestModule& m : modules)
        if (m.within(addr)) return &m;
    return nullptr;
}

// ---- symbol tables ---------------------------------------------------------

std::vector<ModuleSymtabEntry> read_module_symtab(VirtualMemory& memory, const GuestLayouts& layouts,
                                                  const GuestModule& module, const ModuleListOptions& options) {
    const std::string where = module_label(module);
    const auto& k = layouts.mod_kallsyms;
    if (module.kallsyms == 0) throw Error(ErrorKind::Guest, where + ": mod->kallsyms is NULL");
    const std::string table = where + ": mod_kallsyms at " + hex(module.kallsyms);

    std::uint64_t symtab = 0, num = 0, strtab = 0, typetab = 0;
    try {
        symtab = read_layout_field(memory, module.kallsyms, k.symtab);
        num = read_layout_field(memory, module.kallsyms, k.num_symtab);
        strtab = read_layout_field(memory, module.kallsyms, k.strtab);
        if (k.typetab) typetab = read_layout_field(memory, module.kallsyms, *k.typetab);
    } catch (const Error& e) {
        rethrow_with(e, table + " unreadable");
    }
    if (num > options.max_symbols)
        throw Error(ErrorKind::Guest, table + ": num_symtab " + std::to_string(num) + " is more than " +
                                          std::to_string(options.max_symbols));
    if (num == 0) return {};
    if (symtab == 0) throw Error(ErrorKind::Guest, table + ": symtab is NULL (" + std::to_string(num) + " symbols)");
    if (strtab == 0) throw Error(ErrorKind::Guest, table + ": strtab is NULL");
    if (k.typetab && typetab == 0) throw Error(ErrorKind::Guest, table + ": typetab is NULL");
    const std::uint64_t symtab_bytes = num * modconst::kElfSymSize;
    if (symtab + symtab_bytes < symtab)
        throw Error(ErrorKind::Guest, table + ": symtab at " + hex(symtab) + " with " + std::to_string(num) +
                                          " symbols wraps the address space");

    std::vector<std::byte> raw, types;
    try {
        raw = memory.read_bytes(GuestVirtAddr{symtab}, static_cast<std::size_t>(symtab_bytes));
    } catch (const Error& e) {
        rethrow_with(e, table + ": symtab at " + hex(symtab) + " (" + std::to_string(num) + " symbols) unreadable");
    }
    if (k.typetab) {
        try {
            types = memory.read_bytes(GuestVirtAddr{typetab}, static_cast<std::size_t>(num));
        } catch (const Error& e) {
            rethrow_with(e, table + ": typetab at " + hex(typetab) + " (" + std::to_string(num) + " bytes) unreadable");
        }
    }

    PageCache strings(memory);
    std::vector<ModuleSymtabEntry> out(static_cast<std::size_t>(num));
    for (std::size_t i = 0; i < out.size(); ++i) {
        const std::size_t at = i * modconst::kElfSymSize;
        ModuleSymtabEntry& e = out[i];
        const std::uint32_t st_name = load<std::uint32_t>(raw, at + modconst::kElfSymName);
        e.value = load<std::uint64_t>(raw, at + modconst::kElfSymValue);
        e.shndx = load<std::uint16_t>(raw, at + modconst::kElfSymShndx);
        e.type = static_cast<char>(k.typetab ? std::to_integer<unsigned char>(types[i])
                                              : load<std::uint8_t>(raw, at + modconst::kElfSymInfo));
        const std::uint64_t name_at = strtab + st_name;
        try {
            if (name_at < strtab) throw Error(ErrorKind::Guest, "strtab + st_name wraps the address space");
            e.name = strings.cstring(name_at, modconst::kKsymNameLen - 1);
        } catch (const Error& e2) {
            rethrow_with(e2, table + ": name of symbol " + std::to_string(i) + " at " + hex(name_at) + " (strtab " +
                                 hex(strtab) + " + " + std::to_string(st_name) + ") unreadable");
        }
    }
    return out;
}

// ---- exports and letter case ----------------------------------------------

ModuleExportLayout ModuleExportLayout::from_btf(const KernelBtf& btf) {
    ModuleExportLayout l;
    l.syms = btf_field(btf, "module", "syms");
    l.num_syms = btf_field(btf, "module", "num_syms");
    l.symbol_size = btf.size_of("kernel_symbol");
    if (btf.find_member("kernel_symbol", "value_offset")) {
        l.relative = true;
        l.value = btf_field(btf, "kernel_symbol", "value_offset");
        l.name = btf_field(btf, "kernel_symbol", "name_offset");
    } else {
        l.relative = false;
        l.value = btf_field(btf, "kernel_symbol", "value");
        l.name = btf_field(btf, "kernel_symbol", "name");
    }
    const std::uint64_t want = l.relative ? 4 : 8;
    for (const LayoutField* f : {&l.value, &l.name})
        if (f->size != want || f->offset + f->size > l.symbol_size)
            throw Error(ErrorKind::Guest, "guest BTF: struct kernel_symbol member '" + std::string(f->path) +
                                              "' has size " + std::to_string(f->size) + " at offset " +
                                              std::to_string(f->offset) + " (struct size " +
                                              std::to_string(l.symbol_size) + ")");
    if (l.syms.size != 8)
        throw Error(ErrorKind::Guest, "guest BTF: struct module member 'syms' has size " + std::to_string(l.syms.size));
    return l;
}

char module_symbol_type(char type, bool exported) {
    auto c = static_cast<unsigned char>(type);
    if (exported && kernel_islower(c)) c = static_cast<unsigned char>(c - ('a' - 'A'));
    if (!exported && kernel_isupper(c)) c = static_cast<unsigned char>(c - ('A' - 'a'));
    return static_cast<char>(c);
}

ModuleExports::ModuleExports(VirtualMemory& memory, const ModuleExportLayout& layout, const GuestModule& module,
                             const ModuleListOptions& options)
    : memory_(memory), layout_(layout), module_name_(module_label(module)) {
    try {
        table_ = read_layout_field(memory, module.address, layout.syms);
        count_ = read_layout_field(memory, module.address, layout.num_syms);
    } catch (const Error& e) {
        rethrow_with(e, module_name_ + ": syms/num_syms unreadable");
    }
    if (count_ > options.max_exports)
        throw Error(ErrorKind::Guest, module_name_ + ": num_syms " + std::to_string(count_) + " is more than " +
                                          std::to_string(options.max_exports));
    if (count_ != 0 && table_ == 0)
        throw Error(ErrorKind::Guest, module_name_ + ": syms is NULL (" + std::to_string(count_) + " exports)");
}

const ModuleExports::Entry& ModuleExports::entry(std::uint64_t index) {
    auto it = cache_.find(index);
    if (it != cache_.end()) return it->second;
    const std::uint64_t at = table_ + index * layout_.symbol_size;
    Entry e;
    std::uint64_t name_ptr = 0;
    try {
        if (layout_.relative) {
            // offset_to_ptr(&ks->value_offset): the field's address + its s32.
            auto value_rel = static_cast<std::int32_t>(memory_.read_u32(GuestVirtAddr{at + layout_.value.offset}));
            auto name_rel = static_cast<std::int32_t>(memory_.read_u32(GuestVirtAddr{at + layout_.name.offset}));
            e.value = at + layout_.value.offset + static_cast<std::uint64_t>(static_cast<std::int64_t>(value_rel));
            name_ptr = at + layout_.name.offset + static_cast<std::uint64_t>(static_cast<std::int64_t>(name_rel));
        } else {
            e.value = memory_.read_u64(GuestVirtAddr{at + layout_.value.offset});
            name_ptr = memory_.read_u64(GuestVirtAddr{at + layout_.name.offset});
        }
        // KSYM_NAME_LEN bytes: a longer name compares like its 512-byte
        // prefix against kallsyms names, which are at most 511 bytes.
        e.name = memory_.read_cstring(GuestVirtAddr{name_ptr}, modconst::kKsymNameLen);
    } catch (const Error& err) {
        rethrow_with(err, module_name_ + ": export " + std::to_string(index) + " (kernel_symbol at " + hex(at) +
                              (name_ptr ? ", name at " + hex(name_ptr) : std::string()) + ") unreadable");
    }
    return cache_.emplace(index, std::move(e)).first->second;
}

bool ModuleExports::is_exported(const std::string& name, std::uint64_t value) {
    // include/linux/bsearch.h __inline_bsearch with cmp_name (strcmp,
    // unsigned bytes: std::string::compare does the same).
    std::uint64_t base = 0, num = count_;
    while (num > 0) {
        std::uint64_t pivot = base + (num >> 1);
        const Entry& e = entry(pivot);
        int result = name.compare(e.name);
        if (result == 0) return e.value == value;
        if (result > 0) {
            base = pivot + 1;
            num--;
        }
        num >>= 1;
    }
    return false;
}

std::vector<KernelSymbol> module_symbols(VirtualMemory& memory, const GuestLayouts& layouts,
                                         const ModuleExportLayout& exports, const GuestModule& module,
                                         const ModuleListOptions& options) {
    std::vector<ModuleSymtabEntry> symtab = read_module_symtab(memory, layouts, module, options);
    ModuleExports exported(memory, exports, module, options);
    std::vector<KernelSymbol> out;
    out.reserve(symtab.size());
    for (const ModuleSymtabEntry& e : symtab) {
        if (e.name.empty()) continue;  // s_show: "Some debugging symbols have no name.  Ignore them."
        KernelSymbol s;
        s.name = e.name;
        s.address = GuestVirtAddr{e.value};
        s.type = module_symbol_type(e.type, exported.is_exported(e.name, e.value));
        s.module = module.name;
        out.push_back(std::move(s));
    }
    return out;
}

std::vector<KernelSymbol> module_symbols(GuestKernel& kernel, const GuestModule& module,
                                         const ModuleListOptions& options) {
    return module_symbols(kernel.memory(), kernel.layouts(), ModuleExportLayout::from_btf(kernel.btf()), module,
                          options);
}

// ---- address resolution ----------------------------------------------------

ModuleSymbolResolver::ModuleSymbolResolver(VirtualMemory& memory, const GuestLayouts& layouts,
                                           const ModuleExportLayout& exports, std::vector<GuestModule> modules,
                                           const ModuleListOptions& options)
    : memory_(memory), layouts_(layouts), export_layout_(exports), modules_(std::move(modules)), options_(options) {}

ModuleSymbolResolver ModuleSymbolResolver::for_kernel(GuestKernel& kernel, const ModuleListOptions& options) {
    return ModuleSymbolResolver(kernel.memory(), kernel.layouts(), ModuleExportLayout::from_btf(kernel.btf()),
                                list_modules(kernel, options), options);
}

ModuleSymbolResolver::Tables& ModuleSymbolResolver::tables_of(std::size_t index) {
    auto it = tables_.find(index);
    if (it != tables_.end()) return it->second;
    Tables t;
    t.symtab = read_module_symtab(memory_, layouts_, modules_[index], options_);
    t.exports = std::make_unique<ModuleExports>(memory_, export_layout_, modules_[index], options_);
    return tables_.emplace(index, std::move(t)).first->second;
}

std::optional<KallsymsTable::Resolved> ModuleSymbolResolver::resolve(std::uint64_t addr) {
    const GuestModule* mod = module_for_address(modules_, addr);
    if (!mod) return std::nullopt;
    Tables& t = tables_of(static_cast<std::size_t>(mod - modules_.data()));
    const auto& symtab = t.symtab;
    if (symtab.empty()) return std::nullopt;

    // find_kallsyms_symbol(): "At worse, next value is at end of module".
    std::uint64_t nextval = mod->within_init(addr) ? mod->init.base + mod->init.text_size
                                                   : mod->core.base + mod->core.text_size;
    std::size_t best = 0;
    std::uint64_t bestval = symtab[0].value;
    for (std::size_t i = 1; i < symtab.size(); ++i) {
        const ModuleSymtabEntry& s = symtab[i];
        if (s.shndx == modconst::kShnUndef) continue;
        if (s.name.empty() || is_arm_mapping_symbol(s.name)) continue;
        if (s.value <= addr && s.value > bestval) {
            best = i;
            bestval = s.value;
        }
        if (s.value > addr && s.value < nextval) nextval = s.value;
    }
    if (best == 0) return std::nullopt;

    const ModuleSymtabEntry& s = symtab[best];
    KallsymsTable::Resolved r;
    r.symbol.name = s.name;
    r.symbol.address = GuestVirtAddr{s.value};
    r.symbol.type = module_symbol_type(s.type, t.exports->is_exported(s.name, s.value));
    r.symbol.module = mod->name;
    r.offset = addr - bestval;
    r.size = nextval - bestval;
    return r;
}

std::string format_symbol(const KallsymsTable::Resolved& resolved) {
    std::string out = resolved.symbol.name + "+" + hex_short(resolved.offset) + "/" + hex_short(resolved.size);
    if (!resolved.symbol.module.empty()) out += " [" + resolved.symbol.module + "]";
    return out;
}

// ---- ORC -------------------------------------------------------------------

std::optional<ModuleOrcTables> module_orc_tables(const GuestModule& module, OrcFormat format) {
    if (!module.orc) return std::nullopt;
    ModuleOrcTables t;
    // __module_address(): the core layout always, the init layout while it
    // is in the module tree (mod_tree_insert: init_layout.size != 0).
    t.ranges.push_back({module.core.base, module.core.base + module.core.size});
    if (module.init.size != 0) t.ranges.push_back({module.init.base, module.init.base + module.init.size});
    t.ip_table = module.orc->ip_table;
    t.orc_table = module.orc->orc_table;
    t.num_entries = module.orc->num_entries;
    t.format = format;
    return t;
}

void add_module_orc_sources(CompositeOrcSource& composite, VirtualMemory& memory,
                            const std::vector<GuestModule>& modules, OrcFormat format) {
    for (const GuestModule& m : modules)
        if (auto tables = module_orc_tables(m, format)) composite.add(make_module_orc(memory, *tables));
}

std::optional<KallsymsTable::Resolved> resolve_kernel_address(const KallsymsTable& vmlinux,
                                                              ModuleSymbolResolver& modules, std::uint64_t addr) {
    if (module_for_address(modules.modules(), addr)) return modules.resolve(addr);
    return vmlinux.resolve(GuestVirtAddr{addr});
}

}  // namespace hvpatch
