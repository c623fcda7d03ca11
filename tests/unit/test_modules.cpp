// Modules on a synthetic guest: struct module, mod_kallsyms, Elf64_Sym
// tables, strtab, typetab and kernel_symbol export tables laid out the way
// the 6.1 module loader lays them out (layout_symtab/add_kallsyms), with
// made-up offsets handed in through GuestLayouts, in a fake guest memory.
#include <gtest/gtest.h>

#include "region_memory.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/modules.h"

namespace hvpatch {
namespace {

using ModMemory = test::RegionMemory;

// Offsets are made up (not 6.1's): nothing may depend on the real ones.
GuestLayouts synthetic_layouts(bool with_typetab = true) {
    GuestLayouts g;
    g.list_head = {16, {0, 8, "next"}, {8, 8, "prev"}};
    auto& m = g.module;
    m.size = 1024;
    m.state = {4, 4, "state"};
    m.list = {16, 16, "list"};
    m.name = {40, 56, "name"};
    m.core = {{200, 8, "core_layout.base"}, {208, 4, "core_layout.size"}, {212, 4, "core_layout.text_size"}};
    m.init = {{264, 8, "init_layout.base"}, {272, 4, "init_layout.size"}, {276, 4, "init_layout.text_size"}};
    m.kallsyms = {520, 8, "kallsyms"};
    m.core_kallsyms = {528, 32, "core_kallsyms"};
    m.orc = GuestLayouts::ModuleOrc{{600, 4, "arch.num_orcs"}, {608, 8, "arch.orc_unwind_ip"},
                                    {616, 8, "arch.orc_unwind"}};
    m.klp = LayoutField{700, 1, "klp"};
    m.state_live = 0;
    m.state_coming = 1;
    m.state_going = 2;
    m.state_unformed = 3;
    auto& k = g.mod_kallsyms;
    k.size = 32;
    k.symtab = {0, 8, "symtab"};
    k.num_symtab = {8, 4, "num_symtab"};
    k.strtab = {16, 8, "strtab"};
    if (with_typetab) k.typetab = LayoutField{24, 8, "typetab"};
    return g;
}

ModuleExportLayout relative_exports() {
    ModuleExportLayout l;
    l.syms = {800, 8, "syms"};
    l.num_syms = {808, 4, "num_syms"};
    l.symbol_size = 12;
    l.relative = true;
    l.value = {0, 4, "value_offset"};
    l.name = {4, 4, "name_offset"};
    return l;
}

ModuleExportLayout absolute_exports() {
    ModuleExportLayout l = relative_exports();
    l.symbol_size = 24;
    l.relative = false;
    l.value = {0, 8, "value"};
    l.name = {8, 8, "name"};
    return l;
}

struct Sym {
    std::string name;
    std::uint64_t value = 0;
    char type = 't';
    std::uint16_t shndx = 1;
};

struct Export {
    std::string name;
    std::uint64_t value = 0;
};

struct ModSpec {
    std::string name;
    int state = 0;
    std::uint64_t core_base = 0, core_size = 0x3000, core_text = 0x1000;
    std::uint64_t init_base = 0, init_size = 0, init_text = 0;
    std::vector<Sym> syms;         // after the ELF null symbol (index 0), added here
    std::vector<Export> exports;   // EXPORT_SYMBOL (mod->syms); sorted by name unless `unsorted_exports`
    bool unsorted_exports = false;
    bool klp = false;
    bool orc = true;
};

constexpr std::uint64_t kHead = 0xffffffff82a00000;  // &modules
constexpr std::uint64_t kModArea = 0xffffffffc0000000;
constexpr std::uint64_t kModStride = 0x100000;

// Each module: struct module at +0, mod_kallsyms (core_kallsyms) inside it,
// symtab at +0x1000, strtab at +0x20000, typetab at +0x40000, exports at
// +0x50000 with their names at +0x58000, all in one mapped 0x60000 block.
// Its code (core_base) is elsewhere and not mapped: nothing reads it.
struct SynthKernel {
    ModMemory mem;
    GuestLayouts layouts;
    ModuleExportLayout exports = relative_exports();
    std::vector<std::uint64_t> modules;  // struct module addresses, list order

    explicit SynthKernel(const std::vector<ModSpec>& specs, bool with_typetab = true,
                         ModuleExportLayout export_layout = relative_exports())
        : layouts(synthetic_layouts(with_typetab)), exports(export_layout) {
        mem.map(kHead & ~0xfffULL, 0x1000);
        for (std::size_t i = 0; i < specs.size(); ++i) {
            std::uint64_t mod = kModArea + i * kModStride;
            mem.map(mod, 0x60000);
            modules.push_back(mod);
            write_module(mod, specs[i]);
        }
        link_all();
    }

    std::uint64_t list_node(std::uint64_t mod) const { return mod + layouts.module.list.offset; }
    std::uint64_t kallsyms(std::uint64_t mod) const { return mod + layouts.module.core_kallsyms.offset; }

    void link_all() {
        std::vector<std::uint64_t> nodes{kHead};
        for (std::uint64_t m : modules) nodes.push_back(list_node(m));
        for (std::size_t i = 0; i < nodes.size(); ++i) {
            mem.put<std::uint64_t>(nodes[i], nodes[(i + 1) % nodes.size()]);
            mem.put<std::uint64_t>(nodes[i] + 8, nodes[(i + nodes.size() - 1) % nodes.size()]);
        }
    }

    void write_module(std::uint64_t mod, const ModSpec& s) {
        const auto& m = layouts.module;
        mem.put<std::uint32_t>(mod + m.state.offset, static_cast<std::uint32_t>(s.state));
        mem.put_string(mod + m.name.offset, s.name);
        mem.put<std::uint64_t>(mod + m.core.base.offset, s.core_base);
        mem.put<std::uint32_t>(mod + m.core.size.offset, static_cast<std::uint32_t>(s.core_size));
        mem.put<std::uint32_t>(mod + m.core.text_size.offset, static_cast<std::uint32_t>(s.core_text));
        mem.put<std::uint64_t>(mod + m.init.base.offset, s.init_base);
        mem.put<std::uint32_t>(mod + m.init.size.offset, static_cast<std::uint32_t>(s.init_size));
        mem.put<std::uint32_t>(mod + m.init.text_size.offset, static_cast<std::uint32_t>(s.init_text));
        mem.put<std::uint8_t>(mod + m.klp->offset, s.klp ? 1 : 0);
        if (s.orc) {
            mem.put<std::uint32_t>(mod + m.orc->num_orcs.offset, 7);
            mem.put<std::uint64_t>(mod + m.orc->orc_unwind_ip.offset, mod + 0x5f000);
            mem.put<std::uint64_t>(mod + m.orc->orc_unwind.offset, mod + 0x5f800);
        }

        // mod->kallsyms = &mod->core_kallsyms
        std::uint64_t ks = kallsyms(mod);
        mem.put<std::uint64_t>(mod + m.kallsyms.offset, ks);
        std::uint64_t symtab = mod + 0x1000, strtab = mod + 0x20000, typetab = mod + 0x40000;
        std::vector<Sym> all{{"", 0, 'U', 0}};
        all.insert(all.end(), s.syms.begin(), s.syms.end());
        const auto& k = layouts.mod_kallsyms;
        mem.put<std::uint64_t>(ks + k.symtab.offset, symtab);
        mem.put<std::uint32_t>(ks + k.num_symtab.offset, static_cast<std::uint32_t>(all.size()));
        mem.put<std::uint64_t>(ks + k.strtab.offset, strtab);
        if (k.typetab) mem.put<std::uint64_t>(ks + k.typetab->offset, typetab);
        std::uint32_t str_off = 0;
        for (std::size_t i = 0; i < all.size(); ++i) {
            std::uint64_t e = symtab + i * 24;
            mem.put<std::uint32_t>(e + 0, str_off);
            // Before 5.2 (no typetab) add_kallsyms() stored the letter in st_info.
            mem.put<std::uint8_t>(e + 4, k.typetab ? 0x12 : static_cast<std::uint8_t>(all[i].type));
            mem.put<std::uint16_t>(e + 6, all[i].shndx);
            mem.put<std::uint64_t>(e + 8, all[i].value);
            mem.put<std::uint64_t>(e + 16, 0x10);
            mem.put_string(strtab + str_off, all[i].name);
            str_off += static_cast<std::uint32_t>(all[i].name.size() + 1);
            if (k.typetab) mem.put<char>(typetab + i, all[i].type);
        }

        std::vector<Export> ex = s.exports;
        if (!s.unsorted_exports)
            std::sort(ex.begin(), ex.end(), [](const Export& a, const Export& b) { return a.name < b.name; });
        std::uint64_t table = mod + 0x50000, names = mod + 0x58000;
        mem.put<std::uint64_t>(mod + exports.syms.offset, ex.empty() ? 0 : table);
        mem.put<std::uint32_t>(mod + exports.num_syms.offset, static_cast<std::uint32_t>(ex.size()));
        for (std::size_t i = 0; i < ex.size(); ++i) {
            std::uint64_t ks_at = table + i * exports.symbol_size;
            mem.put_string(names, ex[i].name);
            if (exports.relative) {
                std::uint64_t v_at = ks_at + exports.value.offset, n_at = ks_at + exports.name.offset;
                mem.put<std::int32_t>(v_at, static_cast<std::int32_t>(static_cast<std::int64_t>(ex[i].value - v_at)));
                mem.put<std::int32_t>(n_at, static_cast<std::int32_t>(static_cast<std::int64_t>(names - n_at)));
            } else {
                mem.put<std::uint64_t>(ks_at + exports.value.offset, ex[i].value);
                mem.put<std::uint64_t>(ks_at + exports.name.offset, names);
            }
            names += ex[i].name.size() + 1;
        }
    }

    std::vector<GuestModule> list(const ModuleListOptions& options = {}) {
        return list_modules(mem, layouts, kHead, options);
    }
    std::vector<KernelSymbol> symbols(const GuestModule& m, const ModuleListOptions& options = {}) {
        return module_symbols(mem, layouts, exports, m, options);
    }
};

// Runs `f`, expects Error(Guest) whose message contains every `parts`.
template <typename F>
void expect_guest_error(F&& f, std::initializer_list<std::string> parts) {
    try {
        f();
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
        if (std::getenv("HVPATCH_SHOW_ERRORS")) std::cout << "  error: " << e.what() << "\n";
    }
}

constexpr std::uint64_t kText = 0xffffffffc1000000;

ModSpec virtio_ring_like() {
    ModSpec s;
    s.name = "virtio_ring";
    s.core_base = kText;
    s.core_size = 0x6000;
    s.core_text = 0x2000;
    s.syms = {
        {"vring_interrupt", kText + 0x100, 't'},        // EXPORT_SYMBOL_GPL: not in mod->syms
        {"virtqueue_kick", kText + 0x200, 't'},         // EXPORT_SYMBOL: in mod->syms
        {"detach_buf_split", kText + 0x300, 't'},       // static
        {"", kText + 0x380, 't'},                       // nameless: /proc skips it
        {"vring_create_virtqueue", kText + 0x400, 't'}, // exported with another value: not exported
        {"__UNIQUE_ID_license", kText + 0x3000, 'r'},
        {"virtqueue_flag", kText + 0x4000, 'd'},        // exported data
        {"vring_weak", kText + 0x500, 'w'},             // exported weak
        {"odd", kText + 0x600, '?'},
    };
    s.exports = {
        {"virtqueue_kick", kText + 0x200},
        {"vring_create_virtqueue", kText + 0x999},
        {"virtqueue_flag", kText + 0x4000},
        {"vring_weak", kText + 0x500},
    };
    return s;
}

TEST(Modules, ListsFormedModulesInListOrderSkippingUnformed) {
    ModSpec a = virtio_ring_like();
    ModSpec b;
    b.name = "loading";
    b.state = 3;  // MODULE_STATE_UNFORMED
    ModSpec c;
    c.name = "virtio_blk";
    c.state = 1;  // COMING: init still there
    c.core_base = kText + 0x100000;
    c.init_base = kText + 0x200000;
    c.init_size = 0x800;
    c.init_text = 0x400;
    c.klp = true;
    c.orc = false;
    SynthKernel k({a, b, c});
    std::vector<GuestModule> mods = k.list();
    ASSERT_EQ(mods.size(), 2u);
    EXPECT_EQ(mods[0].name, "virtio_ring");
    EXPECT_EQ(mods[0].address, k.modules[0]);
    EXPECT_EQ(mods[0].state, 0);
    EXPECT_EQ(mods[0].core.base, kText);
    EXPECT_EQ(mods[0].core.size, 0x6000u);
    EXPECT_EQ(mods[0].core.text_size, 0x2000u);
    EXPECT_EQ(mods[0].init.size, 0u);
    EXPECT_EQ(mods[0].kallsyms, k.kallsyms(k.modules[0]));
    ASSERT_TRUE(mods[0].orc);
    EXPECT_EQ(mods[0].orc->ip_table.value, k.modules[0] + 0x5f000);
    EXPECT_EQ(mods[0].orc->orc_table.value, k.modules[0] + 0x5f800);
    EXPECT_EQ(mods[0].orc->num_entries, 7u);
    EXPECT_FALSE(mods[0].livepatch);
    EXPECT_EQ(mods[1].name, "virtio_blk");
    EXPECT_EQ(mods[1].address, k.modules[2]);
    EXPECT_EQ(mods[1].state, 1);
    EXPECT_EQ(mods[1].init.base, kText + 0x200000);
    EXPECT_EQ(mods[1].init.size, 0x800u);
    EXPECT_EQ(mods[1].init.text_size, 0x400u);
    EXPECT_FALSE(mods[1].orc);
    EXPECT_TRUE(mods[1].livepatch);

    EXPECT_EQ(module_for_address(mods, kText), &mods[0]);
    EXPECT_EQ(module_for_address(mods, kText + 0x5fff), &mods[0]);
    EXPECT_EQ(module_for_address(mods, kText + 0x6000), nullptr);
    EXPECT_EQ(module_for_address(mods, kText + 0x200400), &mods[1]);  // init
    EXPECT_EQ(module_for_address(mods, kText + 0x200800), nullptr);
    EXPECT_EQ(module_for_address(mods, kText - 1), nullptr);
}

TEST(Modules, EmptyList) {
    SynthKernel k({});
    EXPECT_TRUE(k.list().empty());
}

TEST(Modules, SymbolsAsProcKallsymsPrintsThem) {
    SynthKernel k({virtio_ring_like()});
    auto mods = k.list();
    ASSERT_EQ(mods.size(), 1u);
    std::vector<KernelSymbol> syms = k.symbols(mods[0]);
    std::vector<std::string> got;
    for (const auto& s : syms) {
        EXPECT_EQ(s.module, "virtio_ring");
        got.push_back(hex(s.address.value) + " " + s.type + " " + s.name);
    }
    std::vector<std::string> want = {
        hex(kText + 0x100) + " t vring_interrupt",
        hex(kText + 0x200) + " T virtqueue_kick",
        hex(kText + 0x300) + " t detach_buf_split",
        hex(kText + 0x400) + " t vring_create_virtqueue",
        hex(kText + 0x3000) + " r __UNIQUE_ID_license",
        hex(kText + 0x4000) + " D virtqueue_flag",
        hex(kText + 0x500) + " W vring_weak",
        hex(kText + 0x600) + " ? odd",
    };
    EXPECT_EQ(got, want);
}

TEST(Modules, ExportsAreFoundByTheKernelsBinarySearchOnly) {
    // An export table out of order (the kernel's is sorted at build time):
    // bsearch misses "aaa" that a linear scan would find, and so does the
    // kernel, which then prints it in lower case.
    ModSpec s;
    s.name = "m";
    s.core_base = kText;
    s.syms = {{"aaa", kText + 0x10, 't'}, {"mmm", kText + 0x20, 't'}, {"zzz", kText + 0x30, 't'}};
    s.exports = {{"zzz", kText + 0x30}, {"mmm", kText + 0x20}, {"aaa", kText + 0x10}};
    s.unsorted_exports = true;
    SynthKernel k({s});
    auto syms = k.symbols(k.list().at(0));
    ASSERT_EQ(syms.size(), 3u);
    EXPECT_EQ(syms[0].type, 't') << "aaa: bsearch goes right of 'mmm' and never sees it";
    EXPECT_EQ(syms[1].type, 'T') << "mmm is the pivot";
    EXPECT_EQ(syms[2].type, 't') << "zzz: bsearch goes left of 'mmm'";
}

TEST(Modules, AbsoluteKernelSymbolsAndTypeInStInfo) {
    // !CONFIG_HAVE_ARCH_PREL32_RELOCATIONS, and a pre-5.2 mod_kallsyms
    // without typetab (the letter lives in st_info).
    SynthKernel k({virtio_ring_like()}, /*with_typetab=*/false, absolute_exports());
    auto syms = k.symbols(k.list().at(0));
    ASSERT_EQ(syms.size(), 8u);
    EXPECT_EQ(syms[0].type, 't');
    EXPECT_EQ(syms[1].type, 'T');
    EXPECT_EQ(syms[5].type, 'D');
}

TEST(Modules, LivepatchModuleKeepsUndefinedSymbolsAsLowerU) {
    ModSpec s;
    s.name = "livepatch_fix";
    s.klp = true;
    s.core_base = kText;
    s.syms = {{"livepatch_cmdline_proc_show", kText + 0x10, 't'}, {"seq_printf", 0, 'U', 0}};
    SynthKernel k({s});
    auto syms = k.symbols(k.list().at(0));
    ASSERT_EQ(syms.size(), 2u);
    EXPECT_EQ(syms[1].name, "seq_printf");
    EXPECT_EQ(syms[1].type, 'u');
    EXPECT_EQ(syms[1].address.value, 0u);
}

TEST(Modules, LetterCaseUsesTheKernelsCtype) {
    EXPECT_EQ(module_symbol_type('t', true), 'T');
    EXPECT_EQ(module_symbol_type('t', false), 't');
    EXPECT_EQ(module_symbol_type('T', false), 't');
    EXPECT_EQ(module_symbol_type('U', false), 'u');
    EXPECT_EQ(module_symbol_type('?', true), '?');
    EXPECT_EQ(module_symbol_type('a', true), 'A');
    // lib/ctype.c gives Latin-1 letters case; 0xd7 and 0xf7 are not letters.
    EXPECT_EQ(module_symbol_type(static_cast<char>(0xe9), true), static_cast<char>(0xc9));
    EXPECT_EQ(module_symbol_type(static_cast<char>(0xc9), false), static_cast<char>(0xe9));
    EXPECT_EQ(module_symbol_type(static_cast<char>(0xf7), true), static_cast<char>(0xf7));
    EXPECT_EQ(module_symbol_type(static_cast<char>(0xd7), false), static_cast<char>(0xd7));
    EXPECT_EQ(module_symbol_type(static_cast<char>(0xdf), true), static_cast<char>(0xbf));
}

TEST(Modules, LongNamesAreCutLikeStrscpy) {
    ModSpec s;
    s.name = "m";
    s.core_base = kText;
    std::string long_name(700, 'x');
    s.syms = {{long_name, kText + 0x10, 't'}};
    s.exports = {{long_name, kText + 0x10}};
    SynthKernel k({s});
    auto syms = k.symbols(k.list().at(0));
    ASSERT_EQ(syms.size(), 1u);
    EXPECT_EQ(syms[0].name, std::string(511, 'x'));
    // The cut name is not the exported one: strcmp sees the longer export.
    EXPECT_EQ(syms[0].type, 't');
}

TEST(Modules, CyclicListIsAnError) {
    ModSpec a, b, c;
    a.name = "a";
    b.name = "b";
    c.name = "c";
    SynthKernel k({a, b, c});
    // c.next -> b instead of the head.
    k.mem.put<std::uint64_t>(k.list_node(k.modules[2]), k.list_node(k.modules[1]));
    expect_guest_error([&] { k.list(); }, {"modules list at " + hex(kHead), "loops back to " + hex(k.list_node(k.modules[1]))});
    // A self-loop of the first entry.
    k.mem.put<std::uint64_t>(k.list_node(k.modules[0]), k.list_node(k.modules[0]));
    expect_guest_error([&] { k.list(); }, {"loops back to " + hex(k.list_node(k.modules[0]))});
}

TEST(Modules, DanglingNextPointerIsAnError) {
    ModSpec a, b;
    a.name = "a";
    b.name = "b";
    SynthKernel k({a, b});
    const std::uint64_t dangling = 0xffffffffc7770000;
    k.mem.put<std::uint64_t>(k.list_node(k.modules[0]), dangling);
    expect_guest_error([&] { k.list(); }, {"list node at " + hex(dangling) + " unreadable"});
}

TEST(Modules, TooManyModulesIsAnError) {
    std::vector<ModSpec> specs(5);
    for (std::size_t i = 0; i < specs.size(); ++i) specs[i].name = "m" + std::to_string(i);
    SynthKernel k(specs);
    ModuleListOptions options;
    options.max_modules = 4;
    expect_guest_error([&] { k.list(options); }, {"more than 4 entries"});
    options.max_modules = 5;
    EXPECT_EQ(k.list(options).size(), 5u);
}

TEST(Modules, AbsurdNumSymtabIsAnError) {
    SynthKernel k({virtio_ring_like()});
    auto mods = k.list();
    std::uint64_t ks = k.kallsyms(k.modules[0]);
    k.mem.put<std::uint32_t>(ks + k.layouts.mod_kallsyms.num_symtab.offset, 0xfffffff0);
    expect_guest_error([&] { k.symbols(mods[0]); },
                       {"module virtio_ring at " + hex(k.modules[0]), "mod_kallsyms at " + hex(ks),
                        "num_symtab 4294967280"});
    // Under the cap but past the mapping: the symtab read fails, named.
    k.mem.put<std::uint32_t>(ks + k.layouts.mod_kallsyms.num_symtab.offset, 100000);
    expect_guest_error([&] { k.symbols(mods[0]); },
                       {"module virtio_ring", "symtab at " + hex(k.modules[0] + 0x1000), "100000 symbols"});
}

TEST(Modules, BadStrtabPointerIsAnError) {
    SynthKernel k({virtio_ring_like()});
    auto mods = k.list();
    std::uint64_t ks = k.kallsyms(k.modules[0]);
    const std::uint64_t bad = 0xffffffffc9990000;
    k.mem.put<std::uint64_t>(ks + k.layouts.mod_kallsyms.strtab.offset, bad);
    expect_guest_error([&] { k.symbols(mods[0]); },
                       {"module virtio_ring at " + hex(k.modules[0]), "name of symbol 0 at " + hex(bad),
                        "strtab " + hex(bad)});
    k.mem.put<std::uint64_t>(ks + k.layouts.mod_kallsyms.strtab.offset, 0);
    expect_guest_error([&] { k.symbols(mods[0]); }, {"module virtio_ring", "strtab is NULL"});
}

TEST(Modules, BadStNameIsAnError) {
    SynthKernel k({virtio_ring_like()});
    auto mods = k.list();
    std::uint64_t symtab = k.modules[0] + 0x1000;
    k.mem.put<std::uint32_t>(symtab + 3 * 24, 0x01000000);  // symbol 3's st_name
    std::uint64_t at = k.modules[0] + 0x20000 + 0x01000000;
    expect_guest_error([&] { k.symbols(mods[0]); }, {"name of symbol 3 at " + hex(at)});
}

TEST(Modules, OtherBadPointersAreErrors) {
    SynthKernel k({virtio_ring_like()});
    auto mods = k.list();
    std::uint64_t ks = k.kallsyms(k.modules[0]);
    const auto& kl = k.layouts.mod_kallsyms;

    GuestModule no_kallsyms = mods[0];
    no_kallsyms.kallsyms = 0;
    expect_guest_error([&] { k.symbols(no_kallsyms); }, {"module virtio_ring", "mod->kallsyms is NULL"});
    GuestModule dangling = mods[0];
    dangling.kallsyms = 0xffffffffc5550000;
    expect_guest_error([&] { k.symbols(dangling); }, {"mod_kallsyms at 0xffffffffc5550000 unreadable"});

    k.mem.put<std::uint64_t>(ks + kl.typetab->offset, 0xffffffffc6660000);
    expect_guest_error([&] { k.symbols(mods[0]); }, {"typetab at 0xffffffffc6660000"});
    k.mem.put<std::uint64_t>(ks + kl.typetab->offset, k.modules[0] + 0x40000);

    // The export table: an absurd count, then a dangling pointer.
    k.mem.put<std::uint32_t>(k.modules[0] + k.exports.num_syms.offset, 0x7fffffff);
    expect_guest_error([&] { k.symbols(mods[0]); }, {"module virtio_ring", "num_syms 2147483647"});
    k.mem.put<std::uint32_t>(k.modules[0] + k.exports.num_syms.offset, 4);
    k.mem.put<std::uint64_t>(k.modules[0] + k.exports.syms.offset, 0xffffffffc4440000);
    expect_guest_error([&] { k.symbols(mods[0]); }, {"module virtio_ring", "kernel_symbol at 0xffffffffc444"});

    // An unreadable struct module on the list.
    k.mem.put<std::uint64_t>(kHead, 0xffffffffc3330000 + k.layouts.module.list.offset);
    k.mem.map(0xffffffffc3330000 + k.layouts.module.list.offset, 16);  // only the list node
    k.mem.put<std::uint64_t>(0xffffffffc3330000 + k.layouts.module.list.offset, kHead);
    expect_guest_error([&] { k.list(); }, {"module at 0xffffffffc3330000"});
}

TEST(Modules, ResolverFindsTheSymbolLikeFindKallsymsSymbol) {
    ModSpec s = virtio_ring_like();
    s.syms.push_back({"undefined_here", kText + 0x150, 't', 0});  // SHN_UNDEF: ignored
    s.syms.push_back({"$x", kText + 0x160, 't'});                 // ARM mapping symbol: ignored
    s.syms.push_back({".Ltmp", kText + 0x170, 't'});              // likewise
    s.syms.push_back({"alias_of_kick", kText + 0x200, 't'});      // same address, later: loses
    ModSpec init_mod;
    init_mod.name = "coming";
    init_mod.state = 1;
    init_mod.core_base = kText + 0x100000;
    init_mod.core_text = 0x800;
    init_mod.init_base = kText + 0x200000;
    init_mod.init_size = 0x1000;
    init_mod.init_text = 0x400;
    init_mod.syms = {{"core_fn", kText + 0x100010, 't'}, {"init_fn", kText + 0x200100, 't'}};
    init_mod.exports = {{"core_fn", kText + 0x100010}};
    SynthKernel k({s, init_mod});
    ModuleSymbolResolver r(k.mem, k.layouts, k.exports, k.list());

    auto x = r.resolve(kText + 0x11a);
    ASSERT_TRUE(x);
    EXPECT_EQ(x->symbol.name, "vring_interrupt");
    EXPECT_EQ(x->symbol.address.value, kText + 0x100);
    EXPECT_EQ(x->symbol.module, "virtio_ring");
    EXPECT_EQ(x->symbol.type, 't');
    EXPECT_EQ(x->offset, 0x1au);
    EXPECT_EQ(x->size, 0x100u);
    EXPECT_EQ(format_symbol(*x), "vring_interrupt+0x1a/0x100 [virtio_ring]");

    x = r.resolve(kText + 0x200);
    ASSERT_TRUE(x);
    EXPECT_EQ(format_symbol(*x), "virtqueue_kick+0x0/0x100 [virtio_ring]");
    EXPECT_EQ(x->symbol.type, 'T');
    // The last text symbol ends at the end of the core text.
    x = r.resolve(kText + 0x610);
    ASSERT_TRUE(x);
    EXPECT_EQ(format_symbol(*x), "odd+0x10/0x1a00 [virtio_ring]");
    // Below the first symbol: the kernel has no name for it.
    EXPECT_FALSE(r.resolve(kText + 0x10));
    // Outside every module.
    EXPECT_FALSE(r.resolve(kText - 1));
    EXPECT_FALSE(r.resolve(0xffffffff81000000));
    // A data address after the text: size runs to the text end (wraps, as
    // in the kernel).
    x = r.resolve(kText + 0x4008);
    ASSERT_TRUE(x);
    EXPECT_EQ(x->symbol.name, "virtqueue_flag");
    EXPECT_EQ(x->size, (kText + 0x2000) - (kText + 0x4000));

    // A module still in init: init addresses end at the init text.
    x = r.resolve(kText + 0x200180);
    ASSERT_TRUE(x);
    EXPECT_EQ(format_symbol(*x), "init_fn+0x80/0x300 [coming]");
    x = r.resolve(kText + 0x100020);
    ASSERT_TRUE(x);
    EXPECT_EQ(format_symbol(*x), "core_fn+0x10/0x7f0 [coming]");
    EXPECT_EQ(x->symbol.type, 'T');

    int reads = k.mem.reads;
    r.resolve(kText + 0x11a);
    EXPECT_LT(k.mem.reads - reads, 3) << "tables are read once per module";
}

TEST(Modules, FormatSymbolForVmlinux) {
    KallsymsTable::Resolved r;
    r.symbol.name = "schedule";
    r.offset = 0;
    r.size = 0xa0;
    EXPECT_EQ(format_symbol(r), "schedule+0x0/0xa0");
}

TEST(Modules, OrcTablesAndSources) {
    ModSpec a = virtio_ring_like();
    ModSpec b;
    b.name = "coming";
    b.state = 1;
    b.core_base = kText + 0x100000;
    b.init_base = kText + 0x200000;
    b.init_size = 0x1000;
    ModSpec c;
    c.name = "no_orc";
    c.core_base = kText + 0x300000;
    c.orc = false;
    SynthKernel k({a, b, c});
    auto mods = k.list();
    ASSERT_EQ(mods.size(), 3u);

    auto t = module_orc_tables(mods[0], OrcFormat::V1);
    ASSERT_TRUE(t);
    ASSERT_EQ(t->ranges.size(), 1u);
    EXPECT_EQ(t->ranges[0].begin, kText);
    EXPECT_EQ(t->ranges[0].end, kText + 0x6000);
    EXPECT_EQ(t->ip_table.value, k.modules[0] + 0x5f000);
    EXPECT_EQ(t->orc_table.value, k.modules[0] + 0x5f800);
    EXPECT_EQ(t->num_entries, 7u);
    EXPECT_EQ(t->format, OrcFormat::V1);
    auto tb = module_orc_tables(mods[1], OrcFormat::V3);
    ASSERT_TRUE(tb);
    ASSERT_EQ(tb->ranges.size(), 2u);
    EXPECT_EQ(tb->ranges[1].begin, kText + 0x200000);
    EXPECT_EQ(tb->ranges[1].end, kText + 0x201000);
    EXPECT_FALSE(module_orc_tables(mods[2], OrcFormat::V1));

    // A real table for the first module: entries at text +0x100 and +0x200.
    std::uint64_t ip_table = k.modules[0] + 0x5f000, orc_table = k.modules[0] + 0x5f800;
    k.mem.put<std::uint32_t>(k.modules[0] + k.layouts.module.orc->num_orcs.offset, 2);
    OrcEntry e1;
    e1.type = OrcEntry::Type::Call;
    e1.sp_reg = orc_reg::kSp;
    e1.sp_offset = 8;
    e1.bp_reg = orc_reg::kUndefined;
    OrcEntry e2 = e1;
    e2.sp_offset = 16;
    std::uint64_t ips[2] = {kText + 0x100, kText + 0x200};
    OrcEntry es[2] = {e1, e2};
    for (int i = 0; i < 2; ++i) {
        std::uint64_t slot = ip_table + 4 * static_cast<std::uint64_t>(i);
        k.mem.put<std::int32_t>(slot, static_cast<std::int32_t>(static_cast<std::int64_t>(ips[i] - slot)));
        auto raw = encode_orc_entry(es[i], OrcFormat::V1);
        k.mem.write(orc_table + 6 * static_cast<std::uint64_t>(i), raw.data(), raw.size());
    }
    mods = k.list();
    CompositeOrcSource all;
    add_module_orc_sources(all, k.mem, mods, OrcFormat::V1);
    auto found = all.find(kText + 0x180);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->sp_offset, 8);
    found = all.find(kText + 0x5000);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->sp_offset, 16);
    EXPECT_FALSE(all.find(kText + 0x6000)) << "outside the module";
    EXPECT_FALSE(all.find(kText + 0x300010)) << "a module without ORC tables";
}

// The test guest's own BTF (see test_guest_layouts.cpp for how to get it):
// x86-64 6.1 has CONFIG_HAVE_ARCH_PREL32_RELOCATIONS.
TEST(Modules, ExportLayoutFromRealGuestBtf) {
    const char* path = std::getenv("HVPATCH_GUEST_BTF");
    if (!path || !*path) GTEST_SKIP() << "HVPATCH_GUEST_BTF not set (path to the guest vmlinux's .BTF section)";
    std::ifstream in(path, std::ios::binary);
    if (!in) GTEST_SKIP() << "HVPATCH_GUEST_BTF=" << path << " cannot be read";
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    KernelBtf btf = KernelBtf::parse(std::as_bytes(std::span(bytes)));
    ModuleExportLayout l = ModuleExportLayout::from_btf(btf);
    EXPECT_TRUE(l.relative);
    EXPECT_EQ(l.symbol_size, 12u);
    EXPECT_EQ(l.value.path, "value_offset");
    EXPECT_EQ(l.value.offset, 0u);
    EXPECT_EQ(l.name.offset, 4u);
    EXPECT_EQ(l.syms.size, 8u);
    EXPECT_EQ(l.num_syms.size, 4u);
}

}  // namespace
}  // namespace hvpatch
