// LivepatchModule on synthetic ELF files written with libelf: refusals (not
// an ELF, truncated, not a module, not a livepatch module), .modinfo, the
// klp_patch -> klp_object -> klp_func decoding, .klp.sym/.klp.rela names,
// special sections, vermagic, and SHA-256 known answers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <list>
#include <span>
#include <stdexcept>
#include <optional>
#include <string>
#include <vector>

#include "hvpatch/error.h"
#include "patch/livepatch_module.h"

namespace hvpatch::test {
namespace {

using ::testing::HasSubstr;

// A temporary file removed at the end of the test.
class TempFile {
public:
    TempFile() {
        char name[] = "/tmp/hvpatch-ko-test-XXXXXX";
        int fd = mkstemp(name);
        if (fd < 0) throw std::runtime_error("mkstemp failed");
        close(fd);
        path_ = name;
    }
    ~TempFile() { unlink(path_.c_str()); }
    const std::string& path() const { return path_; }
    void write(const std::string& bytes) const {
        std::ofstream out(path_, std::ios::binary | std::ios::trunc);
        out << bytes;
    }
    std::string read() const {
        std::ifstream in(path_, std::ios::binary);
        return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    }

private:
    std::string path_;
};

// Writes an ELF relocatable with libelf: sections, a .symtab, RELA sections.
class ElfWriter {
public:
    struct Section {
        std::string name;
        Elf64_Word type = SHT_PROGBITS;
        Elf64_Xword flags = 0;
        std::string data;
        Elf64_Xword align = 1;
        Elf64_Xword entsize = 0;
    };
    Elf64_Half machine = EM_X86_64;
    Elf64_Half type = ET_REL;

    // Section indices start at 1.
    std::size_t add_section(Section s) {
        sections_.push_back(std::move(s));
        return sections_.size();
    }
    // Symbol indices start at 1; a section symbol for every section is NOT
    // added automatically (use section_symbol()).
    std::uint32_t add_symbol(const std::string& name, std::uint64_t value, std::uint64_t size, unsigned type,
                             unsigned bind, std::uint16_t shndx) {
        symbols_.push_back({name, value, size, type, bind, shndx});
        return static_cast<std::uint32_t>(symbols_.size());
    }
    std::uint32_t section_symbol(std::size_t section) { return add_symbol("", 0, 0, STT_SECTION, STB_LOCAL, section); }
    // A relocation in the RELA section `name` (".rela<target name>" by default).
    void add_rela(std::size_t target, std::uint64_t offset, std::uint32_t rtype, std::uint32_t sym,
                  std::int64_t addend, const std::string& name = "", Elf64_Xword flags = 0) {
        std::string n = name.empty() ? ".rela" + sections_.at(target - 1).name : name;
        for (auto& r : relas_) {
            if (r.name == n) {
                r.entries.push_back({offset, ELF64_R_INFO(sym, rtype), addend});
                return;
            }
        }
        relas_.push_back({n, target, flags, {{offset, ELF64_R_INFO(sym, rtype), addend}}});
    }

    void write(const std::string& path) {
        if (elf_version(EV_CURRENT) == EV_NONE) throw std::runtime_error("libelf");
        int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CREAT, 0644);
        if (fd < 0) throw std::runtime_error("open " + path);
        Elf* elf = elf_begin(fd, ELF_C_WRITE, nullptr);
        if (!elf) throw std::runtime_error(elf_errmsg(-1));
        Elf64_Ehdr* eh = elf64_newehdr(elf);
        eh->e_ident[EI_DATA] = ELFDATA2LSB;
        eh->e_machine = machine;
        eh->e_type = type;
        eh->e_version = EV_CURRENT;

        std::size_t n = sections_.size();
        std::size_t symtab_index = n + relas_.size() + 1;
        std::size_t strtab_index = symtab_index + 1;
        std::size_t shstrtab_index = strtab_index + 1;

        std::string shstrtab(1, '\0');
        auto shname = [&](const std::string& name) {
            std::size_t off = shstrtab.size();
            shstrtab += name;
            shstrtab += '\0';
            return static_cast<Elf64_Word>(off);
        };
        std::string strtab(1, '\0');
        syms_.assign(1, Elf64_Sym{});
        for (const auto& s : symbols_) {
            Elf64_Sym sym{};
            if (!s.name.empty()) {
                sym.st_name = static_cast<Elf64_Word>(strtab.size());
                strtab += s.name;
                strtab += '\0';
            }
            sym.st_value = s.value;
            sym.st_size = s.size;
            sym.st_info = ELF64_ST_INFO(s.bind, s.type);
            sym.st_shndx = s.shndx;
            syms_.push_back(sym);
        }
        buffers_.clear();
        auto add = [&](Elf64_Word name, Elf64_Word type, Elf64_Xword flags, const void* buf, std::size_t size,
                       Elf64_Xword align, Elf64_Word link, Elf64_Word info, Elf64_Xword entsize) {
            Elf_Scn* scn = elf_newscn(elf);
            Elf_Data* d = elf_newdata(scn);
            d->d_buf = const_cast<void*>(buf);
            d->d_size = size;
            d->d_type = ELF_T_BYTE;
            d->d_align = align ? align : 1;
            Elf64_Shdr* sh = elf64_getshdr(scn);
            sh->sh_name = name;
            sh->sh_type = type;
            sh->sh_flags = flags;
            sh->sh_addralign = align;
            sh->sh_link = link;
            sh->sh_info = info;
            sh->sh_entsize = entsize;
            if (type == SHT_NOBITS) sh->sh_size = size;
        };
        std::vector<Elf64_Word> names;
        for (const auto& s : sections_) names.push_back(shname(s.name));
        std::vector<Elf64_Word> rela_names;
        for (const auto& r : relas_) rela_names.push_back(shname(r.name));
        Elf64_Word symtab_name = shname(".symtab"), strtab_name = shname(".strtab"), shstrtab_name = shname(".shstrtab");
        for (std::size_t i = 0; i < n; ++i) {
            const auto& s = sections_[i];
            add(names[i], s.type, s.flags, s.type == SHT_NOBITS ? nullptr : s.data.data(), s.data.size(), s.align, 0,
                0, s.entsize);
        }
        for (std::size_t i = 0; i < relas_.size(); ++i) {
            const auto& r = relas_[i];
            add(rela_names[i], SHT_RELA, SHF_INFO_LINK | r.flags, r.entries.data(), r.entries.size() * sizeof(Elf64_Rela),
                8, static_cast<Elf64_Word>(symtab_index), static_cast<Elf64_Word>(r.target), sizeof(Elf64_Rela));
        }
        add(symtab_name, SHT_SYMTAB, 0, syms_.data(), syms_.size() * sizeof(Elf64_Sym), 8,
            static_cast<Elf64_Word>(strtab_index), static_cast<Elf64_Word>(syms_.size()), sizeof(Elf64_Sym));
        buffers_.push_back(strtab);
        add(strtab_name, SHT_STRTAB, 0, buffers_.back().data(), buffers_.back().size(), 1, 0, 0, 0);
        buffers_.push_back(shstrtab);
        add(shstrtab_name, SHT_STRTAB, 0, buffers_.back().data(), buffers_.back().size(), 1, 0, 0, 0);
        elf64_getehdr(elf)->e_shstrndx = static_cast<Elf64_Half>(shstrtab_index);
        if (elf_update(elf, ELF_C_WRITE) < 0) throw std::runtime_error(std::string("elf_update: ") + elf_errmsg(-1));
        elf_end(elf);
        close(fd);
    }

private:
    struct Sym {
        std::string name;
        std::uint64_t value, size;
        unsigned type, bind;
        std::uint16_t shndx;
    };
    struct Rela {
        std::string name;
        std::size_t target;
        Elf64_Xword flags;
        std::vector<Elf64_Rela> entries;
    };
    std::vector<Section> sections_;
    std::vector<Sym> symbols_;
    std::vector<Rela> relas_;
    std::vector<Elf64_Sym> syms_;
    std::list<std::string> buffers_;
};

// Small layouts for the synthetic klp structures (the real ones come from
// the guest's BTF): klp_patch {mod, objs}, klp_object {name, funcs, pad},
// klp_func {old_name, new_func, old_sympos}.
GuestLayouts::Livepatch test_layouts() {
    GuestLayouts::Livepatch L;
    L.patch.size = 16;
    L.patch.mod = {0, 8, "mod"};
    L.patch.objs = {8, 8, "objs"};
    L.object.size = 24;
    L.object.name = {0, 8, "name"};
    L.object.funcs = {8, 8, "funcs"};
    L.func.size = 24;
    L.func.old_name = {0, 8, "old_name"};
    L.func.new_func = {8, 8, "new_func"};
    L.func.old_sympos = {16, 8, "old_sympos"};
    return L;
}

std::string modinfo(const std::string& extra = "livepatch=Y") {
    std::string m = "license=GPL";
    m += '\0';
    m += "depends=ext4,jbd2";
    m += '\0';
    m += "name=lp_test";
    m += '\0';
    m += "vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ";
    m += '\0';
    if (!extra.empty()) {
        m += extra;
        m += '\0';
    }
    return m;
}

struct ModuleSpec {
    std::string modinfo = hvpatch::test::modinfo();
    bool this_module = true;
    bool klp = true;          // the klp_patch description in .data
    bool two_patches = false;  // a second klp_patch-shaped object; init_module picks
    std::string ex_table;     // contents of __ex_table (absent if empty and !with_ex_table)
    bool with_ex_table = false;
    bool klp_elf = false;     // a .klp.sym symbol and a .klp.rela section
};

// A livepatch module: vmlinux's "vmlinux_fn" -> new_a, ext4's "ext4_fn" (sympos 2) -> new_b.
void write_module(const std::string& path, const ModuleSpec& spec) {
    ElfWriter w;
    std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(48, '\xcc'), 16});
    std::string strings = std::string("vmlinux_fn\0ext4_fn\0ext4\0", 24);
    std::size_t rodata = w.add_section({".rodata.str1.1", SHT_PROGBITS, SHF_ALLOC | SHF_MERGE | SHF_STRINGS, strings, 1, 1});
    w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, spec.modinfo, 1});
    w.add_section({"__mcount_loc", SHT_PROGBITS, SHF_ALLOC, std::string(16, '\0'), 1});
    w.add_section({".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(16, '\xcc'), 16});
    if (spec.with_ex_table || !spec.ex_table.empty())
        w.add_section({"__ex_table", SHT_PROGBITS, SHF_ALLOC, spec.ex_table, 4});
    std::string data(400, '\0');
    data[136 + 16] = 2;  // ext4 func old_sympos
    std::size_t dsec = w.add_section({".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, data, 32});
    std::size_t mod = 0;
    if (spec.this_module)
        mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
    w.add_section({".bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, std::string(8, '\0'), 8});

    std::uint32_t text_sym = w.section_symbol(text);
    std::uint32_t ro_sym = w.section_symbol(rodata);
    std::uint32_t data_sym = w.section_symbol(dsec);
    w.add_symbol("new_a", 0, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("new_b", 16, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("the_patch", 0, 16, STT_OBJECT, STB_LOCAL, dsec);
    w.add_symbol("decoy_patch", 200, 16, STT_OBJECT, STB_LOCAL, dsec);
    w.add_symbol("init_module", 32, 16, STT_FUNC, STB_GLOBAL, text);
    std::uint32_t this_module = 0;
    if (spec.this_module) this_module = w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
    std::uint32_t enable = w.add_symbol("klp_enable_patch", 0, 0, STT_NOTYPE, STB_GLOBAL, SHN_UNDEF);

    if (spec.klp && spec.this_module) {
        // klp_patch at 0: mod, objs -> .data+16
        w.add_rela(dsec, 0, R_X86_64_64, this_module, 0);
        w.add_rela(dsec, 8, R_X86_64_64, data_sym, 16);
        // objs[0] at 16: name NULL, funcs -> .data+88
        w.add_rela(dsec, 16 + 8, R_X86_64_64, data_sym, 88);
        // objs[1] at 40: name "ext4", funcs -> .data+136; objs[2] at 64: terminator
        w.add_rela(dsec, 40, R_X86_64_64, ro_sym, 19);
        w.add_rela(dsec, 40 + 8, R_X86_64_64, data_sym, 136);
        // vmlinux funcs at 88: {"vmlinux_fn", new_a, 0}, terminator at 112
        w.add_rela(dsec, 88, R_X86_64_64, ro_sym, 0);
        w.add_rela(dsec, 96, R_X86_64_64, text_sym, 0);
        // ext4 funcs at 136: {"ext4_fn", new_b, 2}, terminator at 160
        w.add_rela(dsec, 136, R_X86_64_64, ro_sym, 11);
        w.add_rela(dsec, 144, R_X86_64_64, text_sym, 16);
        // init_module: mov $the_patch, %rdi; call klp_enable_patch
        w.add_rela(text, 32 + 3, R_X86_64_32S, data_sym, 0);
        w.add_rela(text, 32 + 8, R_X86_64_PLT32, enable, -4);
        if (spec.two_patches) {
            // decoy at 200: mod, objs -> the same objs
            w.add_rela(dsec, 200, R_X86_64_64, this_module, 0);
            w.add_rela(dsec, 208, R_X86_64_64, data_sym, 16);
        }
    }
    if (spec.klp_elf) {
        std::uint32_t ks = w.add_symbol(".klp.sym.vmlinux.saved_command_line,0", 0, 0, STT_NOTYPE, STB_GLOBAL, kShnLivepatch);
        w.add_rela(text, 4, R_X86_64_PC32, ks, -4, ".klp.rela.vmlinux.text", SHF_ALLOC | kShfRelaLivepatch);
        std::uint32_t ks2 = w.add_symbol(".klp.sym.ext4.ext4_attr_show.isra.0,2", 0, 0, STT_NOTYPE, STB_GLOBAL, kShnLivepatch);
        w.add_rela(text, 20, R_X86_64_PC32, ks2, -4, ".klp.rela.ext4.text.new_b", SHF_ALLOC | kShfRelaLivepatch);
    }
    w.write(path);
}

void expect_error(const std::string& path, const std::string& needle) {
    try {
        LivepatchModule::open(path);
        ADD_FAILURE() << "open(" << path << ") succeeded; expected: " << needle;
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr(needle));
        EXPECT_THAT(e.what(), HasSubstr(path));
        EXPECT_EQ(e.kind(), ErrorKind::Usage) << e.what();
    }
}

TEST(LivepatchModule, RefusesAFileThatIsNotElf) {
    TempFile f;
    f.write("#!/bin/sh\necho not a module\n");
    expect_error(f.path(), "not an ELF file");
    f.write("");
    expect_error(f.path(), "not an ELF file");
    f.write("\x7f" "EL");
    expect_error(f.path(), "not an ELF file");
}

TEST(LivepatchModule, RefusesATruncatedElf) {
    TempFile f;
    write_module(f.path(), {});
    std::string full = f.read();
    ASSERT_NO_THROW(LivepatchModule::open(f.path()));
    for (std::size_t size : {std::size_t(8), std::size_t(40), std::size_t(64), std::size_t(300), full.size() / 2,
                             full.size() - 1}) {
        SCOPED_TRACE("truncated to " + std::to_string(size) + " of " + std::to_string(full.size()));
        f.write(full.substr(0, size));
        expect_error(f.path(), "truncated or corrupt ELF");
    }
}

TEST(LivepatchModule, RefusesAnElfThatIsNotAKernelModule) {
    TempFile f;
    {
        ElfWriter w;  // a plain object file: gcc -c of an ordinary C file
        std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(16, '\x90'), 16});
        w.add_symbol("main", 0, 16, STT_FUNC, STB_GLOBAL, text);
        w.write(f.path());
    }
    expect_error(f.path(), "not a kernel module (no .modinfo / .gnu.linkonce.this_module)");

    ModuleSpec no_this_module;
    no_this_module.this_module = false;
    write_module(f.path(), no_this_module);
    expect_error(f.path(), "not a kernel module (no .modinfo / .gnu.linkonce.this_module)");
}

TEST(LivepatchModule, RefusesAnElfForAnotherMachineOrType) {
    TempFile f;
    ElfWriter w;
    w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
    w.machine = EM_AARCH64;
    w.write(f.path());
    expect_error(f.path(), "not a 64-bit x86-64 relocatable object");
    w.machine = EM_X86_64;
    w.type = ET_DYN;
    w.write(f.path());
    expect_error(f.path(), "not a 64-bit x86-64 relocatable object");
}

TEST(LivepatchModule, RefusesAModuleWithoutLivepatchY) {
    TempFile f;
    ModuleSpec spec;
    spec.modinfo = modinfo("");
    write_module(f.path(), spec);
    expect_error(f.path(), "not a livepatch module (no livepatch=Y in .modinfo)");
    spec.modinfo = modinfo("livepatch=N");
    write_module(f.path(), spec);
    expect_error(f.path(), "not a livepatch module (no livepatch=Y in .modinfo)");
}

TEST(LivepatchModule, ReadsModinfoSectionsSymbolsAndRelocations) {
    TempFile f;
    write_module(f.path(), {});
    auto m = LivepatchModule::open(f.path());
    EXPECT_EQ(m.name(), "lp_test");
    EXPECT_EQ(m.vermagic(), "6.1.0-56-amd64 SMP preempt mod_unload modversions ");
    EXPECT_EQ(m.vermagic_release(), "6.1.0-56-amd64");
    EXPECT_EQ(m.license(), "GPL");
    EXPECT_EQ(m.depends(), (std::vector<std::string>{"ext4", "jbd2"}));
    EXPECT_EQ(m.modinfo_value("livepatch"), "Y");
    EXPECT_FALSE(m.modinfo_value("nope"));

    const KoSection* data = m.find_section(".data");
    ASSERT_NE(data, nullptr);
    EXPECT_EQ(data->type, SHT_PROGBITS);
    EXPECT_EQ(data->flags, SHF_ALLOC | SHF_WRITE);
    EXPECT_EQ(data->size, 400u);
    EXPECT_EQ(data->alignment, 32u);
    EXPECT_EQ(m.section_data(data->index).size(), 400u);
    const KoSection* bss = m.find_section(".bss");
    ASSERT_NE(bss, nullptr);
    EXPECT_EQ(bss->type, SHT_NOBITS);
    EXPECT_TRUE(m.section_data(bss->index).empty());

    const KoSymbol* new_b = m.find_symbol("new_b");
    ASSERT_NE(new_b, nullptr);
    EXPECT_EQ(new_b->value, 16u);
    EXPECT_EQ(new_b->type, STT_FUNC);
    EXPECT_EQ(m.sections().at(new_b->shndx).name, ".text");
    const KoSymbol* enable = m.find_symbol("klp_enable_patch");
    ASSERT_NE(enable, nullptr);
    EXPECT_EQ(enable->shndx, SHN_UNDEF);

    bool found = false;
    for (const auto& r : m.relocation_sections()) {
        if (r.name != ".rela.data") continue;
        found = true;
        EXPECT_EQ(r.target, data->index);
        EXPECT_FALSE(r.livepatch);
        EXPECT_EQ(r.entries.size(), 9u);
        EXPECT_EQ(r.entries[0].type, R_X86_64_64);
        EXPECT_EQ(m.symbols().at(r.entries[0].symbol).name, "__this_module");
    }
    EXPECT_TRUE(found);
    EXPECT_TRUE(m.klp_symbols().empty());
    EXPECT_TRUE(m.klp_rela_sections().empty());
}

TEST(LivepatchModule, Sha256IsOfTheWholeFile) {
    TempFile f;
    write_module(f.path(), {});
    auto m = LivepatchModule::open(f.path());
    std::string bytes = f.read();
    EXPECT_EQ(m.sha256(), sha256_hex(std::as_bytes(std::span(bytes.data(), bytes.size()))));
    EXPECT_EQ(m.file_size(), bytes.size());
}

TEST(LivepatchModule, DecodesKlpPatchObjectsAndFuncs) {
    TempFile f;
    write_module(f.path(), {});
    auto m = LivepatchModule::open(f.path());
    auto funcs = m.patched_functions(test_layouts());
    ASSERT_EQ(funcs.size(), 2u);
    EXPECT_EQ(funcs[0], (PatchedFunction{"", "vmlinux_fn", 0, "new_a"}));
    EXPECT_EQ(funcs[1], (PatchedFunction{"ext4", "ext4_fn", 2, "new_b"}));
    EXPECT_EQ(m.klp_patch_location(test_layouts()), "the_patch");
}

TEST(LivepatchModule, PicksTheKlpPatchInitModulePasses) {
    TempFile f;
    ModuleSpec spec;
    spec.two_patches = true;
    write_module(f.path(), spec);
    auto m = LivepatchModule::open(f.path());
    EXPECT_EQ(m.klp_patch_location(test_layouts()), "the_patch");
    EXPECT_EQ(m.patched_functions(test_layouts()).size(), 2u);
}

TEST(LivepatchModule, RefusesAModuleWithoutKlpPatch) {
    TempFile f;
    ModuleSpec spec;
    spec.klp = false;
    write_module(f.path(), spec);
    auto m = LivepatchModule::open(f.path());
    try {
        m.patched_functions(test_layouts());
        ADD_FAILURE() << "no klp_patch, but patched_functions succeeded";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("no klp_patch found"));
    }
}

// A static klp_patch with klp_object callbacks and klp_patch.states:
// patch {mod, objs, states}, object {name, funcs, callbacks[5]}, state
// {id, version, data}.
GuestLayouts::Livepatch callbacks_layouts() {
    GuestLayouts::Livepatch L = test_layouts();
    L.patch.size = 24;
    L.patch.states = {16, 8, "states"};
    L.object.size = 56;
    L.object.callbacks = {16, 40, "callbacks"};
    L.state.size = 24;
    L.state.id = {0, 8, "id"};
    L.state.version = {8, 4, "version"};
    L.state.data = {16, 8, "data"};
    return L;
}

void write_callbacks_module(const std::string& path, bool terminated_states = true) {
    ElfWriter w;
    std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(48, '\xcc'), 16});
    std::size_t rodata = w.add_section({".rodata.str1.1", SHT_PROGBITS, SHF_ALLOC | SHF_MERGE | SHF_STRINGS,
                                        std::string("vmlinux_fn\0", 11), 1, 1});
    w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
    std::string data(terminated_states ? 272 : 248, '\0');
    data[200] = 5;  // states[0]: id 5, version 2
    data[208] = 2;
    data[224] = 9;  // states[1]: id 9, version 1
    data[232] = 1;
    std::size_t dsec = w.add_section({".data", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, data, 32});
    std::size_t mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
    std::uint32_t text_sym = w.section_symbol(text);
    std::uint32_t ro_sym = w.section_symbol(rodata);
    std::uint32_t data_sym = w.section_symbol(dsec);
    w.add_symbol("new_a", 0, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("pre_patch_cb", 16, 8, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("post_unpatch_cb", 24, 8, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("the_patch", 0, 24, STT_OBJECT, STB_LOCAL, dsec);
    std::uint32_t this_module = w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
    w.add_rela(dsec, 0, R_X86_64_64, this_module, 0);
    w.add_rela(dsec, 8, R_X86_64_64, data_sym, 32);    // objs
    w.add_rela(dsec, 16, R_X86_64_64, data_sym, 200);  // states
    w.add_rela(dsec, 32 + 8, R_X86_64_64, data_sym, 144);        // objs[0].funcs
    w.add_rela(dsec, 32 + 16, R_X86_64_64, text_sym, 16);        // .callbacks.pre_patch
    w.add_rela(dsec, 32 + 16 + 24, R_X86_64_64, text_sym, 24);   // .callbacks.post_unpatch
    w.add_rela(dsec, 144, R_X86_64_64, ro_sym, 0);                // funcs[0].old_name
    w.add_rela(dsec, 152, R_X86_64_64, text_sym, 0);              // funcs[0].new_func
    w.write(path);
}

TEST(LivepatchModule, DecodesObjectCallbacksAndSystemStates) {
    TempFile f;
    write_callbacks_module(f.path());
    auto m = LivepatchModule::open(f.path());
    const auto L = callbacks_layouts();
    auto funcs = m.patched_functions(L);
    ASSERT_EQ(funcs.size(), 1u);
    EXPECT_EQ(funcs[0], (PatchedFunction{"", "vmlinux_fn", 0, "new_a"}));
    auto objects = m.patch_objects(L);
    ASSERT_EQ(objects.size(), 1u);
    EXPECT_EQ(objects[0].name, "");
    EXPECT_EQ(objects[0].callbacks, (std::array<bool, 4>{true, false, false, true}));
    EXPECT_TRUE(objects[0].has_callbacks());
    auto states = m.patch_states(L);
    ASSERT_EQ(states.size(), 2u);
    EXPECT_EQ(states[0].id, 5u);
    EXPECT_EQ(states[0].version, 2u);
    EXPECT_EQ(states[1].id, 9u);
    EXPECT_EQ(states[1].version, 1u);
    EXPECT_FALSE(m.replaces(L)) << "no replace field in this layout";
}

TEST(LivepatchModule, RefusesAStatesArrayWithoutItsTerminator) {
    TempFile f;
    write_callbacks_module(f.path(), /*terminated_states=*/false);
    auto m = LivepatchModule::open(f.path());
    try {
        m.patch_states(callbacks_layouts());
        ADD_FAILURE() << "a klp_state array running off its section was accepted";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("has no terminating entry"));
        EXPECT_EQ(e.kind(), ErrorKind::Usage);
    }
}

// klp-build's form (Linux 6.19+): .init.klp_objects / .init.klp_funcs and
// an init that builds the klp_patch. `replace_store`: the init's byte store
// into klp_patch.replace (absent: built with --no-replace); `callbacks`:
// a pre_patch callback in the vmlinux object.
void write_klp_build_module(const std::string& path, std::optional<std::uint8_t> replace_store, bool callbacks = false,
                            const std::string& objects_section = ".init.klp_objects") {
    ElfWriter w;
    std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(48, '\xcc'), 16});
    std::string strings = std::string("vmlinux_fn\0ext4_fn\0ext4\0", 24);
    std::size_t rodata = w.add_section({".rodata.str1.1", SHT_PROGBITS, SHF_ALLOC | SHF_MERGE | SHF_STRINGS, strings, 1, 1});
    w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
    // init_module: mov %rax <- kzalloc'ed patch ...; movb $N, 0x48(%rax); ret
    std::string init = "\x48\x31\xc0";  // xor rax, rax (stands for the kzalloc)
    if (replace_store) init += std::string("\xc6\x40\x48", 3) + static_cast<char>(*replace_store);
    init += "\xc3";
    std::size_t init_text = w.add_section({".init.text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, init, 16});
    std::string ext(128, '\0');  // struct klp_object_ext[2]; pointers through relocations below
    ext[56] = 2;                 // vmlinux: 2 functions
    ext[64 + 56] = 1;            // ext4: 1
    std::size_t objs = w.add_section({objects_section, SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, ext, 8});
    std::string funcs(72, '\0');  // struct klp_func_ext[3]
    funcs[48 + 16] = 2;           // ext4_fn sympos 2
    std::size_t fsec = w.add_section({".init.klp_funcs", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, funcs, 8});
    std::size_t mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
    std::uint32_t text_sym = w.section_symbol(text);
    std::uint32_t ro_sym = w.section_symbol(rodata);
    std::uint32_t funcs_sym = w.section_symbol(fsec);
    w.add_symbol("new_a", 0, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("new_b", 16, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("new_c", 32, 16, STT_FUNC, STB_LOCAL, text);
    w.add_symbol("init_module", 0, init.size(), STT_FUNC, STB_GLOBAL, init_text);
    w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
    // objects[0]: vmlinux, funcs -> .init.klp_funcs+0 (2); objects[1]: "ext4", funcs -> +48 (1)
    w.add_rela(objs, 8, R_X86_64_64, funcs_sym, 0);
    w.add_rela(objs, 64, R_X86_64_64, ro_sym, 19);
    w.add_rela(objs, 64 + 8, R_X86_64_64, funcs_sym, 48);
    if (callbacks) w.add_rela(objs, 16, R_X86_64_64, text_sym, 32);
    // funcs: {"vmlinux_fn", new_a, 0}, {"vmlinux_fn", new_c, 0}, {"ext4_fn", new_b, 2}
    w.add_rela(fsec, 0, R_X86_64_64, ro_sym, 0);
    w.add_rela(fsec, 8, R_X86_64_64, text_sym, 0);
    w.add_rela(fsec, 24, R_X86_64_64, ro_sym, 0);
    w.add_rela(fsec, 32, R_X86_64_64, text_sym, 32);
    w.add_rela(fsec, 48, R_X86_64_64, ro_sym, 11);
    w.add_rela(fsec, 56, R_X86_64_64, text_sym, 16);
    w.write(path);
}

GuestLayouts::Livepatch klp_build_layouts() {
    GuestLayouts::Livepatch L = test_layouts();
    L.patch.size = 0x50;
    L.patch.replace = {0x48, 1, "replace"};
    return L;
}

TEST(LivepatchModule, ReadsTheKlpBuildForm) {
    TempFile f;
    write_klp_build_module(f.path(), 1);
    auto m = LivepatchModule::open(f.path());
    EXPECT_TRUE(m.klp_build_form());
    auto funcs = m.patched_functions(klp_build_layouts());
    ASSERT_EQ(funcs.size(), 3u);
    EXPECT_EQ(funcs[0], (PatchedFunction{"", "vmlinux_fn", 0, "new_a"}));
    EXPECT_EQ(funcs[1], (PatchedFunction{"", "vmlinux_fn", 0, "new_c"}));
    EXPECT_EQ(funcs[2], (PatchedFunction{"ext4", "ext4_fn", 2, "new_b"}));
    EXPECT_FALSE(funcs[0].has_klp_func) << "no klp_func to fill old_func in";
    EXPECT_EQ(m.patch_objects(klp_build_layouts()).size(), 2u);
    EXPECT_TRUE(m.patch_states(klp_build_layouts()).empty());
    EXPECT_TRUE(m.replaces(klp_build_layouts())) << "klp-build's default: the init stores replace = true";
}

TEST(LivepatchModule, KlpBuildNoReplaceAndTheOlderSectionName) {
    TempFile f;
    write_klp_build_module(f.path(), std::nullopt, false, "__klp_objects");
    auto m = LivepatchModule::open(f.path());
    EXPECT_TRUE(m.klp_build_form());
    EXPECT_FALSE(m.replaces(klp_build_layouts())) << "--no-replace: the init stores nothing";
    EXPECT_EQ(m.patched_functions(klp_build_layouts()).size(), 3u);
    TempFile zero;
    write_klp_build_module(zero.path(), 0);
    EXPECT_FALSE(LivepatchModule::open(zero.path()).replaces(klp_build_layouts()));
}

TEST(LivepatchModule, KlpBuildCallbacksAreRefusedNotIgnored) {
    TempFile f;
    write_klp_build_module(f.path(), 1, /*callbacks=*/true);
    auto m = LivepatchModule::open(f.path());
    try {
        m.patched_functions(klp_build_layouts());
        ADD_FAILURE() << "callbacks of the klp-build form were accepted";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("klp_object_ext 'vmlinux' (klp-build) has callbacks"));
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
    }
}

TEST(LivepatchModule, ParsesKlpSymbolNames) {
    auto s = parse_klp_symbol_name(".klp.sym.vmlinux.printk,0");
    EXPECT_EQ(s.object, "vmlinux");
    EXPECT_EQ(s.name, "printk");
    EXPECT_EQ(s.sympos, 0u);
    s = parse_klp_symbol_name(".klp.sym.btrfs.can_modify_feature.isra.3,12");
    EXPECT_EQ(s.object, "btrfs");
    EXPECT_EQ(s.name, "can_modify_feature.isra.3");
    EXPECT_EQ(s.sympos, 12u);

    for (const char* bad : {"printk", ".klp.sym.", ".klp.sym.vmlinux", ".klp.sym.vmlinux.printk",
                            ".klp.sym.vmlinux.printk,", ".klp.sym.vmlinux.printk,x", ".klp.sym.vmlinux.printk,1x",
                            ".klp.sym.vmlinux.printk,-1", ".klp.sym..printk,0", ".klp.sym.vmlinux.,0",
                            ".klp.rela.vmlinux.printk,0"}) {
        SCOPED_TRACE(bad);
        try {
            parse_klp_symbol_name(bad);
            ADD_FAILURE() << "accepted";
        } catch (const Error& e) {
            EXPECT_THAT(e.what(), HasSubstr("malformed livepatch symbol name '" + std::string(bad) + "'"));
            EXPECT_EQ(e.kind(), ErrorKind::Usage);
        }
    }
    std::string long_object = ".klp.sym." + std::string(56, 'm') + ".f,0";
    EXPECT_THROW(parse_klp_symbol_name(long_object), Error);
    EXPECT_NO_THROW(parse_klp_symbol_name(".klp.sym." + std::string(55, 'm') + ".f,0"));
}

TEST(LivepatchModule, ParsesKlpRelaSectionNames) {
    auto r = parse_klp_rela_name(".klp.rela.vmlinux.text.cmdline_proc_show");
    EXPECT_EQ(r.object, "vmlinux");
    EXPECT_EQ(r.section, "text.cmdline_proc_show");
    r = parse_klp_rela_name(".klp.rela.ext4.text.ext4.attr.store");
    EXPECT_EQ(r.object, "ext4");
    EXPECT_EQ(r.section, "text.ext4.attr.store");
    for (const char* bad : {".klp.rela.", ".klp.rela.vmlinux", ".klp.rela.vmlinux.", ".klp.rela..text", ".rela.text"}) {
        SCOPED_TRACE(bad);
        EXPECT_THROW(parse_klp_rela_name(bad), Error);
    }
}

TEST(LivepatchModule, ListsKlpSymbolsAndRelaSections) {
    TempFile f;
    ModuleSpec spec;
    spec.klp_elf = true;
    write_module(f.path(), spec);
    auto m = LivepatchModule::open(f.path());
    ASSERT_EQ(m.klp_symbols().size(), 2u);
    EXPECT_EQ(m.klp_symbols()[0].parsed.object, "vmlinux");
    EXPECT_EQ(m.klp_symbols()[0].parsed.name, "saved_command_line");
    EXPECT_EQ(m.klp_symbols()[1].parsed.object, "ext4");
    EXPECT_EQ(m.klp_symbols()[1].parsed.name, "ext4_attr_show.isra.0");
    EXPECT_EQ(m.klp_symbols()[1].parsed.sympos, 2u);
    EXPECT_EQ(m.symbols().at(m.klp_symbols()[0].symbol).shndx, kShnLivepatch);
    ASSERT_EQ(m.klp_rela_sections().size(), 2u);
    EXPECT_EQ(m.klp_rela_sections()[0].parsed.object, "vmlinux");
    EXPECT_EQ(m.klp_rela_sections()[0].parsed.section, "text");
    EXPECT_EQ(m.sections().at(m.klp_rela_sections()[0].target).name, ".text");
    EXPECT_EQ(m.klp_rela_sections()[0].relocations, 1u);
    EXPECT_EQ(m.klp_rela_sections()[1].parsed.object, "ext4");
    // The klp relocations do not count as the module's own (not in patched_functions' view).
    EXPECT_EQ(m.patched_functions(test_layouts()).size(), 2u);
}

TEST(LivepatchModule, RefusesMalformedLivepatchElfExtensions) {
    TempFile f;
    {
        ModuleSpec spec;
        ElfWriter w;
        std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(16, '\x90'), 16});
        w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
        std::size_t mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
        w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
        std::uint32_t bad = w.add_symbol(".klp.sym.vmlinux.printk", 0, 0, STT_NOTYPE, STB_GLOBAL, kShnLivepatch);
        (void)bad;
        (void)text;
        w.write(f.path());
    }
    expect_error(f.path(), "malformed livepatch symbol name '.klp.sym.vmlinux.printk'");
    {
        ElfWriter w;
        std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(16, '\x90'), 16});
        w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
        std::size_t mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
        w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
        std::uint32_t plain = w.add_symbol("printk", 0, 0, STT_NOTYPE, STB_GLOBAL, SHN_UNDEF);
        w.add_rela(text, 4, R_X86_64_PC32, plain, -4, ".klp.rela.vmlinux.text", SHF_ALLOC | kShfRelaLivepatch);
        w.write(f.path());
    }
    expect_error(f.path(), "symbol printk is not marked as a livepatch symbol");
    {
        ElfWriter w;
        std::size_t text = w.add_section({".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, std::string(16, '\x90'), 16});
        w.add_section({".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo(), 1});
        std::size_t mod = w.add_section({".gnu.linkonce.this_module", SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, std::string(64, '\0'), 64});
        w.add_symbol("__this_module", 0, 64, STT_OBJECT, STB_GLOBAL, mod);
        std::uint32_t ks = w.add_symbol(".klp.sym.vmlinux.printk,0", 0, 0, STT_NOTYPE, STB_GLOBAL, kShnLivepatch);
        w.add_rela(text, 4, R_X86_64_PC32, ks, -4, ".klp.rela.vmlinux", SHF_ALLOC | kShfRelaLivepatch);
        w.write(f.path());
    }
    expect_error(f.path(), "malformed livepatch relocation section name '.klp.rela.vmlinux'");
}

TEST(LivepatchModule, ClassifiesSpecialSections) {
    TempFile f;
    ModuleSpec spec;
    spec.with_ex_table = true;  // empty __ex_table: fine
    write_module(f.path(), spec);
    auto m = LivepatchModule::open(f.path());
    std::vector<std::string> names;
    for (const auto& s : m.special_sections()) {
        names.push_back(s.name);
        EXPECT_FALSE(s.refused) << s.name;
        EXPECT_FALSE(s.handling.empty()) << s.name;
    }
    EXPECT_EQ(names, (std::vector<std::string>{"__mcount_loc", ".init.text", "__ex_table"}));
    EXPECT_NO_THROW(m.check_supported());
}

TEST(LivepatchModule, RefusesANonEmptyExceptionTable) {
    TempFile f;
    ModuleSpec spec;
    spec.ex_table = std::string(24, '\0');
    write_module(f.path(), spec);
    auto m = LivepatchModule::open(f.path());  // listing it is fine
    try {
        m.check_supported();
        ADD_FAILURE() << "a non-empty __ex_table was accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_THAT(e.what(), HasSubstr(f.path()));
        EXPECT_THAT(e.what(), HasSubstr("section __ex_table"));
        EXPECT_THAT(e.what(), HasSubstr("2 entries"));
        EXPECT_THAT(e.what(), HasSubstr("fixup"));
    }
}

TEST(LivepatchModule, ChecksVermagicAgainstTheGuestRelease) {
    TempFile f;
    write_module(f.path(), {});
    auto m = LivepatchModule::open(f.path());
    EXPECT_NO_THROW(m.check_compatible("6.1.0-56-amd64"));
    try {
        m.check_compatible("6.1.0-50-amd64");
        ADD_FAILURE() << "vermagic mismatch accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_THAT(e.what(), HasSubstr("6.1.0-56-amd64"));
        EXPECT_THAT(e.what(), HasSubstr("the guest runs 6.1.0-50-amd64"));
        EXPECT_THAT(e.what(), HasSubstr("vermagic '6.1.0-56-amd64 SMP preempt mod_unload modversions '"));
    }
    // A prefix of the release is not the release.
    EXPECT_THROW(m.check_compatible("6.1.0-56"), Error);
    EXPECT_THROW(m.check_compatible("6.1.0-56-amd64-rt"), Error);
}

std::string sha(std::string_view s) { return sha256_hex(std::as_bytes(std::span(s.data(), s.size()))); }

TEST(Sha256, KnownAnswers) {
    EXPECT_EQ(sha(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // Padding edge cases: 55 bytes fit one block, 64 need a second.
    EXPECT_EQ(sha(std::string(55, 'x')), "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072");
    EXPECT_EQ(sha(std::string(64, 'x')), "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c");
    EXPECT_EQ(sha(std::string(1000000, 'a')), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

}  // namespace
}  // namespace hvpatch::test
