// The module linker (patch/module_image) on two fixtures in tests/unit/data:
//   livepatch_cmdline.ko      the real example patch built by kbuild for
//                             6.1.0-56-amd64 (debug info stripped)
//   module_image_fixture.ko   a synthetic module with one of each special
//                             section at hand-placed sites
//                             (module_image_fixture.S)
// against a fake guest (symbols, memory words, CPU features). Expected bytes
// are recomputed by hand from `readelf -rW` / `objdump -d` of the fixtures;
// the offsets quoted in comments come from there.
#include <elf.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "hvpatch/error.h"
#include "patch/livepatch_module.h"
#include "patch/module_image.h"
#include "test_data.h"

namespace hvpatch::test {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

std::string data_path(const std::string& name) { return std::string(HVPATCH_TEST_DATA) + "/" + name; }

constexpr std::uint64_t kBase = 0xffffffffc0100000;  // module area, ~1 GiB above kernel text

// X86_FEATURE_* of 6.1.0-56 (cpufeatures.h) used by the fixture.
constexpr unsigned kSmap = 9 * 32 + 20, kLfenceRdtsc = 3 * 32 + 18, kErms = 9 * 32 + 9;

// A guest as the linker sees it.
struct FakeGuest {
    std::map<std::string, std::uint64_t> symbols = {
        {"__fentry__", 0xffffffff81001000},
        {"pv_ops", 0xffffffff82000000},
        {"_paravirt_nop", 0xffffffff81003000},
        {"paravirt_BUG", 0xffffffff81003100},
        {"slow_path", 0xffffffff81004000},
        {"fast_path", 0xffffffff81004100},
        {"__x86_indirect_thunk_array", 0xffffffff81e00000},
        {"__x86_indirect_thunk_rax", 0xffffffff81e00000},
        {"__x86_indirect_thunk_rcx", 0xffffffff81e00000 + 1 * 32},
        {"__x86_indirect_thunk_r11", 0xffffffff81e00000 + 11 * 32},
        {"__x86_indirect_its_thunk_array", 0xffffffff81e01020},
        {"__SCT__foo", 0xffffffff81005000},
        {"__SCK__foo", 0xffffffff82100000},
        {"external_key", 0xffffffff82200000},
        {"__x86_return_thunk", 0xffffffff81e02000},
        {"x86_return_thunk", 0xffffffff82300000},
        {"retbleed_return_thunk", 0xffffffff81e02040},
        {"its_return_thunk", 0xffffffff81e020a0},
        {"abs32", 0x12345678},
        {"abs32s", 0xffffffff80001234},
        {"ext_none", 0xffffffff81006000},
        {"ext_pc64", 0xffffffff82400000},
        {"seq_printf", 0xffffffff81300000},
        {"klp_enable_patch", 0xffffffff81310000},
        {"native_op", 0xffffffff81002000},
    };
    std::map<std::tuple<std::string, std::string, std::uint64_t>, std::uint64_t> livepatch_symbols = {
        {{"vmlinux", "secret_var", 0}, 0xffffffff82500000},
        {{"othermod", "other_func", 1}, 0xffffffffc0400000},
    };
    std::map<std::uint64_t, std::uint32_t> memory;
    std::vector<std::uint32_t> capabilities = std::vector<std::uint32_t>(24, 0);
    std::set<std::string> modules = {"othermod"};
    BranchMitigations mitigations;  // how the guest patches branch sites (derived separately)
    std::optional<OrcHeader> orc_header;
    std::vector<std::string> resolved;  // what the linker asked for

    FakeGuest() {
        set_u64(symbols["pv_ops"] + 8, symbols["native_op"]);
        set_u64(symbols["x86_return_thunk"], symbols["retbleed_return_thunk"]);
        memory[symbols["external_key"]] = 0;
    }
    void set_u64(std::uint64_t address, std::uint64_t value) {
        memory[address] = static_cast<std::uint32_t>(value);
        memory[address + 4] = static_cast<std::uint32_t>(value >> 32);
    }
    void feature(unsigned bit, bool on) {
        if (on)
            capabilities[bit / 32] |= 1u << (bit % 32);
        else
            capabilities[bit / 32] &= ~(1u << (bit % 32));
    }
    GuestLinkFacts facts() {
        GuestLinkFacts f;
        f.resolve = [this](const std::string& object, const std::string& name,
                           std::uint64_t sympos) -> std::optional<std::uint64_t> {
            resolved.push_back(object + ":" + name);
            if (object.empty() || (object == "vmlinux" && sympos == 0 && symbols.contains(name))) {
                auto it = symbols.find(name);
                if (it != symbols.end()) return it->second;
                if (!object.empty()) return std::nullopt;
            }
            auto it = livepatch_symbols.find({object, name, sympos});
            if (it != livepatch_symbols.end()) return it->second;
            return std::nullopt;
        };
        f.cpu_capabilities = capabilities;
        f.mitigations = mitigations;
        f.orc_header = orc_header;
        f.read_u32 = [this](std::uint64_t address) -> std::optional<std::uint32_t> {
            auto it = memory.find(address);
            if (it == memory.end()) return std::nullopt;
            return it->second;
        };
        f.object_loaded = [this](const std::string& object) { return object == "vmlinux" || modules.contains(object); };
        return f;
    }
};

// Bytes of the image at a guest address.
std::vector<std::uint8_t> bytes_at(const ModuleImage& image, std::uint64_t address, std::size_t n) {
    EXPECT_TRUE(image.contains(address, n)) << std::hex << address;
    std::vector<std::uint8_t> out(n);
    std::memcpy(out.data(), image.bytes.data() + (address - image.base), n);
    return out;
}
template <typename T>
T value_at(const ModuleImage& image, std::uint64_t address) {
    T v{};
    EXPECT_TRUE(image.contains(address, sizeof(T))) << std::hex << address;
    std::memcpy(&v, image.bytes.data() + (address - image.base), sizeof(T));
    return v;
}
// The 5 bytes of `op rel32` at `at` going to `to`.
std::vector<std::uint8_t> rel32(std::uint8_t op, std::uint64_t at, std::uint64_t to) {
    auto d = static_cast<std::int32_t>(static_cast<std::int64_t>(to - (at + 5)));
    std::vector<std::uint8_t> out = {op, 0, 0, 0, 0};
    std::memcpy(&out[1], &d, 4);
    return out;
}
std::int32_t disp32_to(std::uint64_t at_field, std::uint64_t to, std::int64_t addend = 0) {
    return static_cast<std::int32_t>(static_cast<std::int64_t>(to + static_cast<std::uint64_t>(addend) - at_field));
}

std::uint64_t section_address(const ModuleImage& image, const LivepatchModule& m, std::string_view name) {
    const KoSection* s = m.find_section(name);
    EXPECT_NE(s, nullptr) << name;
    EXPECT_TRUE(image.layout.section_offset.contains(s->index)) << name << " is not loaded";
    return image.base + image.layout.section_offset.at(s->index);
}

// A copy of a fixture with some bytes changed, removed at the end of the test.
class ModifiedCopy {
public:
    explicit ModifiedCopy(const std::string& fixture) {
        std::ifstream in(data_path(fixture), std::ios::binary);
        bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        char name[] = "/tmp/hvpatch-module-image-XXXXXX";
        int fd = mkstemp(name);
        if (fd < 0) throw std::runtime_error("mkstemp failed");
        close(fd);
        path_ = name;
    }
    ~ModifiedCopy() { unlink(path_.c_str()); }
    std::string& bytes() { return bytes_; }
    LivepatchModule open() {
        std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes_;
        return LivepatchModule::open(path_);
    }

private:
    std::string bytes_, path_;
};

void expect_guest_error(const std::function<void()>& f, const std::vector<std::string>& substrings) {
    try {
        f();
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        for (const auto& s : substrings) EXPECT_THAT(e.what(), HasSubstr(s));
    }
}

// ---- the real example patch ----

class CmdlinePatch : public ::testing::Test {
protected:
    LivepatchModule module = LivepatchModule::open(data_path("livepatch_cmdline.ko"));
    FakeGuest guest;
};

TEST_F(CmdlinePatch, LaysOutTextRodataDataInPageAlignedRegions) {
    ModuleLayout layout = plan_module_layout(module, 100);
    EXPECT_EQ(layout.text_size % 4096, 0u);
    EXPECT_EQ(layout.rodata_size % 4096, 0u);
    EXPECT_EQ(layout.data_size % 4096, 0u);
    EXPECT_EQ(layout.text_size, 4096u);
    EXPECT_EQ(layout.rodata_size, 4096u);
    EXPECT_EQ(layout.data_size, 4096u);
    EXPECT_EQ(layout.total_size(), 3 * 4096u);
    // .text (0x4f bytes) first; the trampoline space 16-aligned after it.
    EXPECT_EQ(layout.section_offset.at(module.find_section(".text")->index), 0u);
    EXPECT_EQ(layout.extra_text_offset, 0x50u);
    EXPECT_EQ(layout.extra_text_size, 100u);
    // Everything else by class, in section order, aligned.
    for (const auto& [index, offset] : layout.section_offset) {
        const KoSection& s = module.sections()[index];
        EXPECT_EQ(offset % std::max<std::uint64_t>(s.alignment, 1), 0u) << s.name;
        bool exec = s.flags & SHF_EXECINSTR, write = s.flags & SHF_WRITE;
        if (exec) {
            EXPECT_LT(offset, layout.text_size) << s.name;
        } else if (!write) {
            EXPECT_TRUE(offset >= layout.rodata_offset() && offset < layout.data_offset()) << s.name;
        } else {
            EXPECT_GE(offset, layout.data_offset()) << s.name;
        }
    }
    // Not loaded: .modinfo and __versions (the kernel drops them), .init/.exit
    // data, relocation sections, non-SHF_ALLOC sections.
    for (std::string_view name :
         {".modinfo", "__versions", ".init.data", ".exit.data", ".rela.text", ".symtab", ".comment"})
        EXPECT_FALSE(layout.section_offset.contains(module.find_section(name)->index)) << name;
    for (std::string_view name :
         {".note.gnu.build-id", ".note.Linux", "__mcount_loc", ".rodata.str1.1", ".return_sites", ".orc_unwind",
          ".orc_unwind_ip", ".data", ".gnu.linkonce.this_module", ".bss"})
        EXPECT_TRUE(layout.section_offset.contains(module.find_section(name)->index)) << name;
}

TEST_F(CmdlinePatch, AppliesEveryRelocation) {
    guest.mitigations.rethunk = true;
    ModuleImage image = link_module(module, kBase, 64, guest.facts());
    ASSERT_EQ(image.bytes.size(), image.layout.total_size());
    std::uint64_t text = section_address(image, module, ".text");
    std::uint64_t data = section_address(image, module, ".data");
    std::uint64_t strings = section_address(image, module, ".rodata.str1.1");
    std::uint64_t this_module = section_address(image, module, ".gnu.linkonce.this_module");

    // .text+0x44 R_X86_64_PLT32 seq_printf - 4: the call in livepatch_cmdline_proc_show.
    EXPECT_EQ(bytes_at(image, text + 0x43, 5), rel32(0xe8, text + 0x43, guest.symbols["seq_printf"]));
    // .text+0x1d R_X86_64_PLT32 klp_enable_patch - 4 (init_module, loaded: it lives in .text).
    EXPECT_EQ(value_at<std::int32_t>(image, text + 0x1d),
              disp32_to(text + 0x1d, guest.symbols["klp_enable_patch"], -4));
    // .text+0x18 R_X86_64_32S .data + 0; +0x38 .rodata.str1.1 + 0; +0x3f .rodata.str1.1 + 0x1b.
    EXPECT_EQ(value_at<std::int32_t>(image, text + 0x18), static_cast<std::int32_t>(data));
    EXPECT_EQ(value_at<std::int32_t>(image, text + 0x38), static_cast<std::int32_t>(strings));
    EXPECT_EQ(value_at<std::int32_t>(image, text + 0x3f), static_cast<std::int32_t>(strings + 0x1b));
    // .data+0 R_X86_64_64 __this_module (klp_patch.mod), .data+8 .data + 0xe0 (objs).
    EXPECT_EQ(value_at<std::uint64_t>(image, data), this_module);
    EXPECT_EQ(value_at<std::uint64_t>(image, data + 8), data + 0xe0);
    EXPECT_EQ(image.symbol_address("__this_module"), this_module);
    // .gnu.linkonce.this_module+0x138 init_module, +0x350 cleanup_module: both in .text here.
    EXPECT_EQ(value_at<std::uint64_t>(image, this_module + 0x138), text + 0x10);
    EXPECT_EQ(value_at<std::uint64_t>(image, this_module + 0x350), text);
    EXPECT_EQ(image.symbol_address("init_module"), text + 0x10);
    // The strings the data points to are there.
    std::uint64_t old_name = value_at<std::uint64_t>(image, data + 0x240);
    EXPECT_EQ(old_name, strings + 0x1f);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(image.bytes.data() + (old_name - image.base))),
              "cmdline_proc_show");
}

TEST_F(CmdlinePatch, KlpFuncPointsIntoTheImage) {
    ModuleImage image = link_module(module, kBase, 0, guest.facts());
    std::uint64_t funcs = image.symbol_address("cmdline_funcs");
    std::uint64_t objs = image.symbol_address("cmdline_objs");
    std::uint64_t patch = image.symbol_address("cmdline_patch");
    std::uint64_t new_func = image.symbol_address("livepatch_cmdline_proc_show");
    // klp_func { old_name; new_func; ... }, klp_object { name; funcs; ... },
    // klp_patch { mod; objs; ... } (6.1 layouts).
    EXPECT_EQ(value_at<std::uint64_t>(image, funcs + 8), new_func);
    EXPECT_EQ(value_at<std::uint64_t>(image, objs + 8), funcs);
    EXPECT_EQ(value_at<std::uint64_t>(image, patch + 8), objs);
    EXPECT_THAT(image.functions,
                Contains(std::make_tuple(std::string("livepatch_cmdline_proc_show"), new_func, new_func + 31)));
    EXPECT_LT(new_func, image.base + image.layout.text_size);
    EXPECT_GE(new_func, image.base);
}

TEST_F(CmdlinePatch, TurnsFentryCallsIntoNopsAndHandlesReturnsAndOrc) {
    guest.mitigations.rethunk = true;
    ModuleImage image = link_module(module, kBase, 0, guest.facts());
    std::uint64_t text = section_address(image, module, ".text");
    const std::vector<std::uint8_t> nop5 = {0x0f, 0x1f, 0x44, 0x00, 0x00};
    for (std::uint64_t site : {0x0, 0x10, 0x30}) EXPECT_EQ(bytes_at(image, text + site, 5), nop5) << site;
    EXPECT_THAT(image.actions, Contains(HasSubstr("__mcount_loc: 3 call site(s) turned into NOPs")));
    // .return_sites: jmp __x86_return_thunk at .text+5 and +0x4a now jump to
    // the guest's x86_return_thunk (retbleed_return_thunk here).
    for (std::uint64_t site : {0x5, 0x4a})
        EXPECT_EQ(bytes_at(image, text + site, 5), rel32(0xe9, text + site, guest.symbols["retbleed_return_thunk"]));
    // ORC: 6 entries, sorted by address.
    EXPECT_EQ(image.orc_entries, 6u);
    EXPECT_EQ(image.orc_unwind_ip, section_address(image, module, ".orc_unwind_ip"));
    EXPECT_EQ(image.orc_unwind, section_address(image, module, ".orc_unwind"));
    std::uint64_t previous = 0;
    for (std::size_t i = 0; i < image.orc_entries; ++i) {
        std::uint64_t field = image.orc_unwind_ip + 4 * i;
        std::uint64_t ip =
            field + static_cast<std::uint64_t>(static_cast<std::int64_t>(value_at<std::int32_t>(image, field)));
        EXPECT_GE(ip, previous);
        EXPECT_GE(ip, text);
        EXPECT_LE(ip, text + 0x4f);
        previous = ip;
    }
}

TEST_F(CmdlinePatch, WithoutReturnThunkReturnsBecomeRet) {
    ModuleImage image = link_module(module, kBase, 0, guest.facts());
    std::uint64_t text = section_address(image, module, ".text");
    EXPECT_EQ(bytes_at(image, text + 0x4a, 5), (std::vector<std::uint8_t>{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}));
}

TEST_F(CmdlinePatch, RefusesAnUnresolvedSymbolNamingIt) {
    guest.symbols.erase("seq_printf");
    expect_guest_error([&] { link_module(module, kBase, 0, guest.facts()); },
                       {"livepatch_cmdline.ko", "not found in the guest", "seq_printf"});
}

TEST_F(CmdlinePatch, RefusesAPc32OutOfRange) {
    guest.symbols["seq_printf"] = 0xffffffff00000000;  // ~3 GiB below the module
    expect_guest_error([&] { link_module(module, kBase, 0, guest.facts()); },
                       {"R_X86_64_PLT32 seq_printf", ".rela.text", "out of range"});
}

TEST_F(CmdlinePatch, RefusesAMisalignedBase) {
    try {
        link_module(module, kBase + 0x100, 0, guest.facts());
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Usage);
        EXPECT_THAT(e.what(), HasSubstr("not page-aligned"));
    }
}

TEST_F(CmdlinePatch, SymbolAddressOfAnAbsentSymbolIsAUsageError) {
    ModuleImage image = link_module(module, kBase, 0, guest.facts());
    try {
        image.symbol_address("no_such_symbol");
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Usage);
        EXPECT_THAT(e.what(), HasSubstr("no_such_symbol"));
    }
}

// ---- the synthetic fixture ----

class Fixture : public ::testing::Test {
protected:
    LivepatchModule module = LivepatchModule::open(data_path("module_image_fixture.ko"));
    FakeGuest guest;
    ModuleImage link() { return link_module(module, kBase, 0, guest.facts()); }
    std::uint64_t text(const ModuleImage& image) { return section_address(image, module, ".text"); }
};

TEST_F(Fixture, LayoutPutsRoAfterInitInRodataAndSkipsInitExit) {
    ModuleLayout layout = plan_module_layout(module, 0x20);
    auto offset = [&](std::string_view name) { return layout.section_offset.at(module.find_section(name)->index); };
    EXPECT_EQ(offset(".text"), 0u);
    EXPECT_EQ(offset(".altinstr_replacement"), 0x72u);  // right after .text (0x72 bytes, align 1)
    EXPECT_EQ(layout.extra_text_offset, 0x80u);
    EXPECT_EQ(layout.text_size, 4096u);
    // Read-only first, then the "RO after init" ones, all in the rodata region.
    EXPECT_EQ(offset(".altinstructions"), 4096u);
    EXPECT_GT(offset("__jump_table"), offset(".rodata.str1.1"));
    EXPECT_GT(offset(".data..ro_after_init"), offset("__jump_table"));
    EXPECT_LT(offset(".data..ro_after_init"), layout.data_offset());
    EXPECT_EQ(offset(".data"), layout.data_offset());
    EXPECT_EQ(offset(".gnu.linkonce.this_module") % 64, 0u);
    for (std::string_view name : {".init.text", ".exit.text", ".modinfo", ".klp.rela.vmlinux..text"})
        EXPECT_FALSE(layout.section_offset.contains(module.find_section(name)->index)) << name;
}

TEST_F(Fixture, AppliesOrdinaryRelocationsOfEachType) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    std::uint64_t data = section_address(image, module, ".data");
    std::uint64_t bss = section_address(image, module, ".bss");
    std::uint64_t strings = section_address(image, module, ".rodata.str1.1");
    // .text+0x27 R_X86_64_PC32 .bss - 4 (lock incl counter(%rip)).
    EXPECT_EQ(value_at<std::int32_t>(image, t + 0x27), disp32_to(t + 0x27, bss, -4));
    EXPECT_EQ(bytes_at(image, t + 0x24, 3), (std::vector<std::uint8_t>{0xf0, 0xff, 0x05}));  // lock kept
    // .text+0x2c R_X86_64_PLT32 __SCT__foo - 4: the static call stays on its trampoline.
    EXPECT_EQ(bytes_at(image, t + 0x2b, 5), rel32(0xe8, t + 0x2b, guest.symbols["__SCT__foo"]));
    // .text+0x41 R_X86_64_32 abs32, +0x48 R_X86_64_32S abs32s, +0x4f R_X86_64_32S .rodata.str1.1 + 0xa.
    EXPECT_EQ(value_at<std::uint32_t>(image, t + 0x41), 0x12345678u);
    EXPECT_EQ(value_at<std::int32_t>(image, t + 0x48), static_cast<std::int32_t>(0x80001234));
    EXPECT_EQ(value_at<std::int32_t>(image, t + 0x4f), static_cast<std::int32_t>(strings + 0xa));
    // .data+0x10 R_X86_64_64 helper + 2, .data+0x18 R_X86_64_PC64 ext_pc64.
    EXPECT_EQ(value_at<std::uint64_t>(image, data + 0x10), image.symbol_address("helper") + 2);
    EXPECT_EQ(value_at<std::uint64_t>(image, data + 0x18), guest.symbols["ext_pc64"] - (data + 0x18));
    // .data..ro_after_init R_X86_64_64 patched_func.
    EXPECT_EQ(value_at<std::uint64_t>(image, image.symbol_address("ro_after_init_value")), t);
    // struct module's init/exit point into skipped .init/.exit text: NULL.
    std::uint64_t mod = image.symbol_address("__this_module");
    EXPECT_EQ(value_at<std::uint64_t>(image, mod + 0x138), 0u);
    EXPECT_EQ(value_at<std::uint64_t>(image, mod + 0x350), 0u);
    EXPECT_THAT(image.actions, Contains(HasSubstr(".gnu.linkonce.this_module: 2 pointer(s)")));
    EXPECT_THAT(image.actions, Contains(HasSubstr(".init.text: skipped")));
    // The functions of loaded text only.
    EXPECT_THAT(image.functions, ElementsAre(std::make_tuple(std::string("patched_func"), t, t + 0x60),
                                             std::make_tuple(std::string("helper"), t + 0x60, t + 0x6b),
                                             std::make_tuple(std::string("jcc_user"), t + 0x6b, t + 0x72)));
    EXPECT_THROW(image.symbol_address("init_module"), Error);
}

TEST_F(Fixture, AppliesLivepatchRelocationsOfLoadedObjects) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    // .klp.rela.vmlinux..text: .text+0x37 R_X86_64_PC32 .klp.sym.vmlinux.secret_var,0 - 4.
    EXPECT_EQ(value_at<std::int32_t>(image, t + 0x37), disp32_to(t + 0x37, 0xffffffff82500000, -4));
    // .klp.rela.othermod..text: .text+0x3c R_X86_64_PLT32 .klp.sym.othermod.other_func,1 - 4.
    EXPECT_EQ(bytes_at(image, t + 0x3b, 5), rel32(0xe8, t + 0x3b, 0xffffffffc0400000));
    EXPECT_TRUE(image.unlinked_objects.empty());
    EXPECT_THAT(guest.resolved, Contains("othermod:other_func"));
    EXPECT_THAT(guest.resolved, Contains("vmlinux:secret_var"));
}

TEST_F(Fixture, LeavesRelocationsOfAnObjectThatIsNotLoaded) {
    guest.modules.clear();
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x3b, 5), (std::vector<std::uint8_t>{0xe8, 0, 0, 0, 0}));
    EXPECT_THAT(image.unlinked_objects, ElementsAre("othermod"));
    EXPECT_THAT(image.warnings, Contains(HasSubstr("module othermod is not loaded")));
    // vmlinux's are applied all the same.
    EXPECT_EQ(value_at<std::int32_t>(image, t + 0x37), disp32_to(t + 0x37, 0xffffffff82500000, -4));
}

TEST_F(Fixture, RefusesAnUnresolvedLivepatchSymbol) {
    guest.livepatch_symbols.erase({"vmlinux", "secret_var", 0});
    expect_guest_error([&] { link(); }, {".klp.sym.vmlinux.secret_var,0", "not found in vmlinux"});
}

TEST_F(Fixture, RefusesOverflowingAbsoluteRelocations) {
    guest.symbols["abs32"] = 0x100000000;
    expect_guest_error([&] { link(); }, {"R_X86_64_32 abs32", "does not fit 32 bits"});
    guest.symbols["abs32"] = 0x12345678;
    guest.symbols["abs32s"] = 0x80000000;
    expect_guest_error([&] { link(); }, {"R_X86_64_32S abs32s", "sign-extended"});
}

TEST_F(Fixture, RefusesAnUnknownRelocationType) {
    ModifiedCopy copy("module_image_fixture.ko");
    // Turn the R_X86_64_NONE entry of .rela.text into R_X86_64_GOTPCREL.
    const KoSection* rela = module.find_section(".rela.text");
    ASSERT_NE(rela, nullptr);
    bool changed = false;
    for (std::uint64_t off = rela->offset; off < rela->offset + rela->size; off += sizeof(Elf64_Rela)) {
        Elf64_Rela r;
        std::memcpy(&r, copy.bytes().data() + off, sizeof r);
        if (ELF64_R_TYPE(r.r_info) != R_X86_64_NONE) continue;
        r.r_info = ELF64_R_INFO(ELF64_R_SYM(r.r_info), R_X86_64_GOTPCREL);
        std::memcpy(copy.bytes().data() + off, &r, sizeof r);
        changed = true;
    }
    ASSERT_TRUE(changed);
    LivepatchModule modified = copy.open();
    expect_guest_error([&] { link_module(modified, kBase, 0, guest.facts()); },
                       {"unknown relocation type", "R_X86_64_GOTPCREL ext_none", ".rela.text"});
}

TEST_F(Fixture, RefusesARelocationOfANonzeroField) {
    ModifiedCopy copy("module_image_fixture.ko");
    copy.bytes()[module.find_section(".text")->offset + 0x41] = 1;  // the R_X86_64_32 abs32 field
    LivepatchModule modified = copy.open();
    expect_guest_error([&] { link_module(modified, kBase, 0, guest.facts()); },
                       {"R_X86_64_32 abs32", "already holds 0x1"});
}

TEST_F(Fixture, NopsMcountSitesAndSortsTheTable) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    const std::vector<std::uint8_t> nop5 = {0x0f, 0x1f, 0x44, 0x00, 0x00};
    EXPECT_EQ(bytes_at(image, t, 5), nop5);
    EXPECT_EQ(bytes_at(image, t + 0x60, 5), nop5);
    std::uint64_t table = section_address(image, module, "__mcount_loc");
    // The entry for init_module (skipped) stays 0 and sorts first.
    EXPECT_EQ(value_at<std::uint64_t>(image, table), 0u);
    EXPECT_EQ(value_at<std::uint64_t>(image, table + 8), t);
    EXPECT_EQ(value_at<std::uint64_t>(image, table + 16), t + 0x60);
}

TEST_F(Fixture, RefusesAnMcountSiteThatIsNotACallToFentry) {
    ModifiedCopy copy("module_image_fixture.ko");
    copy.bytes()[module.find_section(".text")->offset + 0x60] = static_cast<char>(0x90);  // helper's call
    LivepatchModule modified = copy.open();
    expect_guest_error([&] { link_module(modified, kBase, 0, guest.facts()); },
                       {"__mcount_loc", "helper+0x0", "not a call to __fentry__"});
}

TEST_F(Fixture, AppliesAlternativesWhoseFeatureIsPresent) {
    guest.feature(kSmap, true);
    guest.feature(kLfenceRdtsc, false);  // ALT_NOT: applied when absent
    guest.feature(kErms, true);
    ModuleImage image = link();
    std::uint64_t t = text(image);
    // Alt 1 at .text+0xb: `call slow_path` -> `call fast_path`, displacement fixed for the new place.
    EXPECT_EQ(bytes_at(image, t + 0xb, 5), rel32(0xe8, t + 0xb, guest.symbols["fast_path"]));
    // Alt 2 at .text+0x10: lfence -> three NOPs, merged into one (optimize_nops).
    EXPECT_EQ(bytes_at(image, t + 0x10, 3), (std::vector<std::uint8_t>{0x0f, 0x1f, 0x00}));
    // Alt 3 at .text+0x13: `jmp .Ltarget` (.text+0x54) recomputed as a 2-byte
    // jump (0x54 - 0x15 = 0x3f) plus a 3-byte NOP.
    EXPECT_EQ(bytes_at(image, t + 0x13, 5), (std::vector<std::uint8_t>{0xeb, 0x3f, 0x0f, 0x1f, 0x00}));
    EXPECT_THAT(image.actions, Contains(HasSubstr(".altinstructions: 3 alternative(s) applied, 0 kept")));
}

TEST_F(Fixture, KeepsAlternativesWhoseFeatureIsAbsent) {
    guest.feature(kLfenceRdtsc, true);
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0xb, 5), rel32(0xe8, t + 0xb, guest.symbols["slow_path"]));
    EXPECT_EQ(bytes_at(image, t + 0x10, 3), (std::vector<std::uint8_t>{0x0f, 0xae, 0xe8}));
    // The five single-byte NOPs of the unpatched alt 3 become one 5-byte NOP.
    EXPECT_EQ(bytes_at(image, t + 0x13, 5), (std::vector<std::uint8_t>{0x0f, 0x1f, 0x44, 0x00, 0x00}));
    EXPECT_THAT(image.actions, Contains(HasSubstr(".altinstructions: 0 alternative(s) applied, 3 kept")));
}

TEST_F(Fixture, RefusesAlternativesAndBugEntriesOfAnUnknownForm) {
    // link_format_facts() leaves a size 0 when the guest's BTF shows a
    // layout hvpatch does not know. Checked before allocation, and again by
    // the linker.
    EXPECT_NO_THROW(check_link_formats(module, guest.facts()));
    GuestLinkFacts facts = guest.facts();
    facts.alt_instr_size = 0;
    expect_guest_error([&] { check_link_formats(module, facts); }, {".altinstructions", "not a form hvpatch knows"});
    expect_guest_error([&] { link_module(module, kBase, 0, facts); }, {".altinstructions", "not a form"});
    facts = guest.facts();
    facts.bug_entry.size = 0;
    expect_guest_error([&] { check_link_formats(module, facts); }, {"__bug_table", "bug_entry is not a form"});
}

TEST_F(Fixture, RefusesAnAlternativeForAFeatureBeyondTheCapabilityWords) {
    ModifiedCopy copy("module_image_fixture.ko");
    // Entry 0's cpuid (at +8) becomes 0x7fff: beyond NCAPINTS + NBUGINTS words (the kernel BUGs).
    std::uint64_t cpuid = module.find_section(".altinstructions")->offset + 8;
    copy.bytes()[cpuid] = static_cast<char>(0xff);
    copy.bytes()[cpuid + 1] = 0x7f;
    LivepatchModule modified = copy.open();
    expect_guest_error([&] { link_module(modified, kBase, 0, guest.facts()); },
                       {".altinstructions entry 0", "1023*32+31", "beyond the 24 capability words"});
}

TEST_F(Fixture, RefusesBranchSitesWhenTheGuestsMitigationsAreNotKnown) {
    guest.mitigations.problem = "X86_FEATURE_RETPOLINE/_LFENCE read 0/0 but spectre_v2_enabled (1) implies 1/0";
    expect_guest_error([&] { link(); }, {"cannot tell how the guest patches .retpoline_sites", "spectre_v2_enabled"});
}

TEST_F(Fixture, RefusesEveryModuleUnderCallDepthTracking) {
    guest.mitigations.call_depth_tracking = true;
    expect_guest_error([&] { link(); }, {"call-depth tracking", "thunks_initialized"});
}

TEST_F(Fixture, PatchesParavirtSitesForTheGuestsPvOps) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    // .text+5: `call *pv_ops+8(%rip)` (6 bytes) -> `call native_op` + NOP1.
    auto expected = rel32(0xe8, t + 5, guest.symbols["native_op"]);
    expected.push_back(0x90);
    EXPECT_EQ(bytes_at(image, t + 5, 6), expected);
    guest.set_u64(guest.symbols["pv_ops"] + 8, guest.symbols["_paravirt_nop"]);
    image = link();
    EXPECT_EQ(bytes_at(image, t + 5, 6), (std::vector<std::uint8_t>{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}));
    guest.memory.erase(guest.symbols["pv_ops"] + 8);
    expect_guest_error([&] { link(); }, {"cannot read pv_ops[1]"});
}

TEST_F(Fixture, RetpolineSitesFollowTheGuestsSpectreV2Mode) {
    // Plain retpolines: the thunk calls stay.
    guest.mitigations.retpoline = true;
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x18, 5), rel32(0xe8, t + 0x18, guest.symbols["__x86_indirect_thunk_rax"]));
    EXPECT_EQ(bytes_at(image, t + 0x5a, 5), rel32(0xe9, t + 0x5a, guest.symbols["__x86_indirect_thunk_r11"]));
    // .text+0x6b: jne __x86_indirect_thunk_rcx (0f 85 rel32).
    auto jcc_thunk = rel32(0x85, t + 0x6c, guest.symbols["__x86_indirect_thunk_rcx"]);
    jcc_thunk.insert(jcc_thunk.begin(), 0x0f);
    EXPECT_EQ(bytes_at(image, t + 0x6b, 6), jcc_thunk);
    // No retpolines (eIBRS, spectre_v2=off): inline indirect branches.
    guest.mitigations.retpoline = false;
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x18, 5), (std::vector<std::uint8_t>{0xff, 0xd0, 0x0f, 0x1f, 0x00}));  // call *%rax
    EXPECT_EQ(bytes_at(image, t + 0x5a, 5),
              (std::vector<std::uint8_t>{0x41, 0xff, 0xe3, 0xcc, 0x90}));  // jmp *%r11; int3
    // je .+4 (the inverted condition skips); jmp *%rcx; int3; nop.
    const std::vector<std::uint8_t> jcc_inline = {0x74, 0x04, 0xff, 0xe1, 0xcc, 0x90};
    EXPECT_EQ(bytes_at(image, t + 0x6b, 6), jcc_inline);
    // RETPOLINE_LFENCE: lfence; call *%rax fits; lfence; jmp *%r11 does not.
    guest.mitigations.retpoline = true;
    guest.mitigations.retpoline_lfence = true;
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x18, 5), (std::vector<std::uint8_t>{0x0f, 0xae, 0xe8, 0xff, 0xd0}));
    EXPECT_EQ(bytes_at(image, t + 0x5a, 5), rel32(0xe9, t + 0x5a, guest.symbols["__x86_indirect_thunk_r11"]));
    EXPECT_EQ(bytes_at(image, t + 0x6b, 6), jcc_thunk);  // 3 + 6 bytes do not fit in 6
    // ITS: both branches would sit in the lower half of a cache line
    // (base+0x19, base+0x5c): they go to the static ITS-safe thunks.
    guest.mitigations.retpoline = false;
    guest.mitigations.retpoline_lfence = false;
    guest.mitigations.indirect_its_thunks = true;
    image = link();
    std::uint64_t its = guest.symbols["__x86_indirect_its_thunk_array"];
    EXPECT_EQ(bytes_at(image, t + 0x18, 5), rel32(0xe8, t + 0x18, its));
    EXPECT_EQ(bytes_at(image, t + 0x5a, 5), rel32(0xe9, t + 0x5a, its + 11 * 64));
    // The last byte of the Jcc case's indirect jmp would be at base+0x6e, upper half: inlined.
    EXPECT_EQ(bytes_at(image, t + 0x6b, 6), jcc_inline);
}

TEST_F(Fixture, ReturnSitesUseTheGuestsReturnThunk) {
    guest.mitigations.rethunk = true;
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x54, 5), rel32(0xe9, t + 0x54, guest.symbols["retbleed_return_thunk"]));
    EXPECT_THAT(image.actions, Contains(HasSubstr("1 in skipped code ignored")));
    // ITS return thunk: only for returns in the lower half of a cache line
    // (0x54 & 0x20 == 0: yes).
    guest.set_u64(guest.symbols["x86_return_thunk"], guest.symbols["its_return_thunk"]);
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x54, 5), rel32(0xe9, t + 0x54, guest.symbols["its_return_thunk"]));
    // helper's return at .text+0x65 is in the upper half (0x65 & 0x20): a plain ret.
    EXPECT_EQ(bytes_at(image, t + 0x65, 5), (std::vector<std::uint8_t>{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}));
    // No return thunk: ret.
    guest.mitigations.rethunk = false;
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x54, 5), (std::vector<std::uint8_t>{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}));
}

TEST_F(Fixture, StaticBranchesFollowTheirKeysNow) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    // .text+0x1d: key external_key (disabled), branch default false: NOP.
    EXPECT_EQ(bytes_at(image, t + 0x1d, 5), (std::vector<std::uint8_t>{0x0f, 0x1f, 0x44, 0x00, 0x00}));
    // .text+0x22: module_key (enabled = 1, the module's own data) with the
    // branch flag: 1 ^ 1 = NOP, 2 bytes.
    EXPECT_EQ(bytes_at(image, t + 0x22, 2), (std::vector<std::uint8_t>{0x66, 0x90}));
    EXPECT_THAT(image.warnings, Contains(AllOf(HasSubstr("static branches"), HasSubstr("external_key (1)"),
                                               HasSubstr("module_key (1)"))));
    // external_key enabled: jmp .Ljl1_target (.text+0x54).
    guest.memory[guest.symbols["external_key"]] = 1;
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x1d, 5), rel32(0xe9, t + 0x1d, t + 0x54));
    // Unreadable key.
    guest.memory.erase(guest.symbols["external_key"]);
    expect_guest_error([&] { link(); }, {"cannot read static key external_key"});
}

TEST_F(Fixture, SilencesWarnSitesAndKeepsBugSites) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x30, 2), (std::vector<std::uint8_t>{0x66, 0x90}));  // WARN
    EXPECT_EQ(bytes_at(image, t + 0x32, 2), (std::vector<std::uint8_t>{0x0f, 0x0b}));  // BUG
    EXPECT_THAT(image.warnings, Contains(HasSubstr("WARN at fixture.c:42 (patched_func+0x30) silenced")));
    EXPECT_THAT(image.warnings, Contains(HasSubstr("1 BUG() site(s)")));
}

TEST_F(Fixture, SortsOrcEntriesAndDropsThoseOfSkippedCode) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    ASSERT_EQ(image.orc_entries, 3u);
    auto ip = [&](std::size_t i) {
        std::uint64_t field = image.orc_unwind_ip + 4 * i;
        return field + static_cast<std::uint64_t>(static_cast<std::int64_t>(value_at<std::int32_t>(image, field)));
    };
    auto flags = [&](std::size_t i) { return value_at<std::uint16_t>(image, image.orc_unwind + 6 * i + 4); };
    EXPECT_EQ(ip(0), t);
    EXPECT_EQ(ip(1), t + 0x54);
    EXPECT_EQ(ip(2), t + 0x54);
    EXPECT_EQ(flags(1), 0u);  // the weak terminator first at one address
    EXPECT_EQ(flags(2), 5u);
    // The dropped entry is zeroed behind the kept ones.
    EXPECT_EQ(value_at<std::int32_t>(image, image.orc_unwind_ip + 12), 0);
    EXPECT_EQ(bytes_at(image, image.orc_unwind + 18, 6), std::vector<std::uint8_t>(6, 0));
}

TEST_F(Fixture, ReportsEachSpecialSection) {
    ModuleImage image = link();
    for (std::string_view s :
         {".parainstructions:", ".retpoline_sites:", ".return_sites:", ".altinstructions:", ".smp_locks:",
          ".orc_unwind/.orc_unwind_ip:", "__mcount_loc:", "__bug_table:", "__jump_table:", ".static_call_sites:",
          ".klp.rela.vmlinux..text:", ".klp.rela.othermod..text:", ".init.text: skipped", ".exit.text: skipped"})
        EXPECT_THAT(image.actions, Contains(HasSubstr(std::string(s)))) << s;
}

TEST_F(Fixture, LoadsInertTablesAndSaysWhatTheGuestWillNotDo) {
    ModuleImage image = link();
    EXPECT_THAT(image.warnings, Contains(HasSubstr("__ksymtab: exported symbols are invisible to the guest")));
    EXPECT_THAT(image.actions, Contains(HasSubstr(".BTF: loaded, unregistered")));
    for (const auto& w : image.warnings) EXPECT_THAT(w, Not(HasSubstr(".BTF")));
    // Their relocations are applied like any other: __ksymtab's value field points to helper.
    std::uint64_t ksymtab = section_address(image, module, "__ksymtab");
    EXPECT_EQ(value_at<std::int32_t>(image, ksymtab), disp32_to(ksymtab, image.symbol_address("helper")));
}

TEST_F(Fixture, LinksTheSameBytesTwice) {
    ModuleImage a = link(), b = link();
    EXPECT_EQ(a.bytes, b.bytes);
    ModuleImage c = link_module(module, kBase + 0x10000, 0, guest.facts());
    EXPECT_NE(a.bytes, c.bytes);  // position-dependent, as it must be
}

TEST(ModuleImageRefusals, RefusesPerCpuDataAndUnknownSections) {
    LivepatchModule module = LivepatchModule::open(data_path("module_image_refused.ko"));
    FakeGuest guest;
    expect_guest_error([&] { plan_module_layout(module, 0); },
                       {"section .data..percpu: per-CPU", "section .hvpatch.mystery: unknown SHF_ALLOC section"});
    expect_guest_error([&] { link_module(module, kBase, 0, guest.facts()); }, {".data..percpu", ".hvpatch.mystery"});
}


// ---- sections of 6.2+ modules ----

class NewerKernelSections : public ::testing::Test {
protected:
    LivepatchModule module = LivepatchModule::open(data_path("module_image_newer.ko"));
    FakeGuest guest;
    // The .orc_header of Debian's 6.12 image (the ORC format of 6.4-6.x).
    static constexpr OrcHeader kGuestHeader = {0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9,
                                               0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25, 0xea, 0xb3, 0xfe, 0x24};
    NewerKernelSections() {
        guest.symbols.erase("__x86_return_thunk");  // nothing asks for it here
        guest.orc_header = kGuestHeader;
    }
    ModuleImage link() { return link_module(module, kBase, 0, guest.facts()); }
};

TEST_F(NewerKernelSections, LoadsAModuleWhoseOrcFormatIsTheGuests) {
    ModuleImage image = link();
    EXPECT_THAT(image.actions, Contains(HasSubstr(".orc_header: the module's ORC format is the guest's (fe5d32bf")));
    EXPECT_THAT(image.actions, Contains(HasSubstr(".call_sites: 2 call site(s) left as built")));
    EXPECT_THAT(image.actions, Contains(HasSubstr("__patchable_function_entries: loaded, unregistered")));
    EXPECT_TRUE(image.warnings.empty());
    // The call and the padding are as assembled; the entry for the skipped
    // init code is left 0 (the table is never read).
    std::uint64_t text = section_address(image, module, ".text");
    EXPECT_EQ(bytes_at(image, text + 16, 5), rel32(0xe8, text + 16, image.symbol_address("helper")));
    std::uint64_t entries = section_address(image, module, "__patchable_function_entries");
    EXPECT_EQ(value_at<std::uint64_t>(image, entries), text);
    EXPECT_EQ(value_at<std::uint64_t>(image, entries + 8), 0u);
}

TEST_F(NewerKernelSections, RefusesAnOrcFormatThatIsNotTheGuests) {
    OrcHeader other = kGuestHeader;
    other[0] ^= 1;
    guest.orc_header = other;
    expect_guest_error([&] { link(); }, {".orc_header", "fe5d32bf", "ff5d32bf", "built for another kernel"});
    guest.orc_header.reset();
    expect_guest_error([&] { link(); }, {".orc_header", "the guest kernel has no .orc_header"});
}

TEST_F(NewerKernelSections, RefusesCallSitesUnderCallDepthTracking) {
    guest.mitigations.call_depth_tracking = true;
    expect_guest_error([&] { link(); }, {"call-depth tracking", "callthunks_patch_module_calls"});
}


// ---- 6.3+ alternatives and the 7.x bug table ----

class AltInstrFtFlags : public ::testing::Test {
protected:
    LivepatchModule module = LivepatchModule::open(data_path("module_image_ft_flags.ko"));
    FakeGuest guest;
    static constexpr unsigned kSmapBit = 9 * 32 + 20, kLfenceRdtscBit = 3 * 32 + 18;
    AltInstrFtFlags() {
        guest.symbols["fast_path"] = 0xffffffff81007000;
        guest.symbols["BUG_func"] = 0xffffffff81008000;
        guest.symbols["nop_func"] = 0xffffffff81008010;
        guest.symbols["pv_slot"] = 0xffffffff82600000;
        guest.symbols["pv_target"] = 0xffffffff81009000;
        guest.symbols["some_var"] = 0xffffffff82700000;
        guest.symbols["__SCT__WARN_trap"] = 0xffffffff81005100;
        guest.set_u64(guest.symbols["pv_slot"], guest.symbols["pv_target"]);
        guest.feature(kSmapBit, true);
        guest.feature(kLfenceRdtscBit, true);
    }
    GuestLinkFacts facts() {
        GuestLinkFacts f = guest.facts();
        f.alt_instr_size = 14;
        f.bug_entry = {.size = 16, .bug_addr = 0, .flags = 14, .file = 8, .line = 12, .has_format = true};
        f.warn_trap_with_entry = true;
        return f;
    }
    ModuleImage link() { return link_module(module, kBase, 0, facts()); }
    std::uint64_t text(const ModuleImage& image) { return section_address(image, module, ".text"); }
};

TEST_F(AltInstrFtFlags, PatchesEachSiteAsThe63PlusKernel) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    // SMAP present: `call slow_path` becomes `call fast_path`, moved from
    // .altinstr_replacement to the site.
    EXPECT_EQ(bytes_at(image, t + 0x00, 5), rel32(0xe8, t, guest.symbols["fast_path"]));
    // ERMS absent: six single-byte NOPs become one 6-byte NOP.
    EXPECT_EQ(bytes_at(image, t + 0x05, 6), (std::vector<std::uint8_t>{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}));
    // ALT_NOT(ERMS): `jmp .Ltarget` (t + 0x30) moved and shortened to a JMP.d8, INT3-padded.
    EXPECT_EQ(bytes_at(image, t + 0x0b, 5), (std::vector<std::uint8_t>{0xeb, 0x30 - 0x0d, 0xcc, 0xcc, 0xcc}));
    // Nested: both eligible, the last one (mfence) wins.
    EXPECT_EQ(bytes_at(image, t + 0x10, 3), (std::vector<std::uint8_t>{0x0f, 0xae, 0xf0}));
    // ALT_DIRECT_CALL: `call *pv_slot(%rip)` becomes a direct call of the
    // pointer's value, its sixth byte a NOP.
    auto direct = rel32(0xe8, t + 0x13, guest.symbols["pv_target"]);
    direct.push_back(0x90);
    EXPECT_EQ(bytes_at(image, t + 0x13, 6), direct);
    // A RIP-relative operand of the replacement is moved with it.
    auto disp = static_cast<std::int32_t>(static_cast<std::int64_t>(guest.symbols["some_var"] - (t + 0x19 + 7)));
    std::vector<std::uint8_t> mov = {0x48, 0x8b, 0x05, 0, 0, 0, 0};
    std::memcpy(&mov[3], &disp, 4);
    EXPECT_EQ(bytes_at(image, t + 0x19, 7), mov);
    EXPECT_THAT(image.actions, Contains(HasSubstr(".altinstructions: 6 site(s): 5 alternative(s) applied, 1 kept")));
}

TEST_F(AltInstrFtFlags, KeepsSitesWhoseFeatureIsAbsent) {
    guest.feature(kSmapBit, false);
    guest.feature(kLfenceRdtscBit, false);
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x00, 5), rel32(0xe8, t, guest.symbols["slow_path"]));
    EXPECT_EQ(bytes_at(image, t + 0x10, 3), (std::vector<std::uint8_t>{0x0f, 0x1f, 0x00}));  // three NOPs, one NOPL
    EXPECT_EQ(bytes_at(image, t + 0x19, 7), (std::vector<std::uint8_t>{0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00}));
    // ALT_NOT(ERMS) still applies.
    EXPECT_EQ(bytes_at(image, t + 0x0b, 2), (std::vector<std::uint8_t>{0xeb, 0x30 - 0x0d}));
}

TEST_F(AltInstrFtFlags, DirectCallsOfNullAndNopFunc) {
    guest.set_u64(guest.symbols["pv_slot"], 0);
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x13, 5), rel32(0xe8, t + 0x13, guest.symbols["BUG_func"]));
    guest.set_u64(guest.symbols["pv_slot"], guest.symbols["nop_func"]);
    image = link();
    EXPECT_EQ(bytes_at(image, t + 0x13, 6), (std::vector<std::uint8_t>{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}));
}

TEST_F(AltInstrFtFlags, RefusesUnknownAlternativeFlags) {
    ModifiedCopy copy("module_image_ft_flags.ko");
    // Entry 0's flags (ft_flags bits 16-31, at +10) get an unknown bit.
    copy.bytes()[module.find_section(".altinstructions")->offset + 10] = 0x08;
    LivepatchModule modified = copy.open();
    expect_guest_error([&] { link_module(modified, kBase, 0, facts()); },
                       {".altinstructions entry 0", "unknown alternative flags 0x8"});
}

TEST_F(AltInstrFtFlags, BugTableOf7x) {
    ModuleImage image = link();
    std::uint64_t t = text(image);
    EXPECT_EQ(bytes_at(image, t + 0x20, 2), (std::vector<std::uint8_t>{0x66, 0x90}));  // WARN: NOP
    EXPECT_EQ(bytes_at(image, t + 0x22, 2), (std::vector<std::uint8_t>{0x0f, 0x0b}));  // BUG: kept
    EXPECT_THAT(image.warnings, Contains(HasSubstr("WARN at ft_flags.c:10")));
    EXPECT_THAT(image.actions, Contains(HasSubstr("1 WARN() with arguments left as built")));
    EXPECT_THAT(image.actions, Contains(HasSubstr("__bug_table: 1 WARN site(s) turned into NOPs, 1 BUG site(s) kept")));
    // Without __WARN_trap in the guest, the argument form is not understood.
    GuestLinkFacts f = facts();
    f.warn_trap_with_entry = false;
    expect_guest_error([&] { link_module(module, kBase, 0, f); }, {"WARN site at ft_flags.c:12", "not ud2"});
}

}  // namespace
}  // namespace hvpatch::test
