#include <gtest/gtest.h>

#include <bpf/btf.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <set>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/guest_layouts.h"

namespace hvpatch {
namespace {

// A synthetic kernel described as data: struct name -> members (name, type
// name), laid out in order with natural alignment, then written as BTF.
// Type names: "u8" "u16" "u32" "u64" "ptr" "list_head" "char[16]" "char[56]",
// or any struct defined earlier.
struct FakeKernel {
    std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::string>>>> structs;
    std::map<std::string, std::vector<std::pair<std::string, long long>>> enums;

    std::vector<std::pair<std::string, std::string>>& at(const std::string& name) {
        for (auto& [n, members] : structs)
            if (n == name) return members;
        throw std::runtime_error("no struct " + name);
    }
    void drop(const std::string& type, const std::string& member) {
        auto& ms = at(type);
        std::erase_if(ms, [&](const auto& m) { return m.first == member; });
    }
    void rename(const std::string& type, const std::string& from, const std::string& to) {
        for (auto& m : at(type))
            if (m.first == from) m.first = to;
    }
    void drop_struct(const std::string& name) {
        std::erase_if(structs, [&](const auto& s) { return s.first == name; });
    }

    std::vector<std::byte> btf() const {
        struct btf* b = btf__new_empty();
        auto ok = [&](int id) {
            if (id < 0) throw std::runtime_error("libbpf writer failed");
            return id;
        };
        struct Type {
            int id;
            std::uint32_t size, align;
        };
        std::map<std::string, Type> types;
        types["u8"] = {ok(btf__add_int(b, "unsigned char", 1, 0)), 1, 1};
        types["u16"] = {ok(btf__add_int(b, "short unsigned int", 2, 0)), 2, 2};
        types["u32"] = {ok(btf__add_int(b, "unsigned int", 4, 0)), 4, 4};
        types["u64"] = {ok(btf__add_int(b, "long unsigned int", 8, 0)), 8, 8};
        int chr = ok(btf__add_int(b, "char", 1, BTF_INT_CHAR));
        types["ptr"] = {ok(btf__add_ptr(b, 0)), 8, 8};
        types["char[16]"] = {ok(btf__add_array(b, types["u32"].id, chr, 16)), 16, 1};
        types["char[56]"] = {ok(btf__add_array(b, types["u32"].id, chr, 56)), 56, 1};
        for (const auto& [name, values] : enums) {
            ok(btf__add_enum(b, name.c_str(), 4));
            for (const auto& [n, v] : values) ok(btf__add_enum_value(b, n.c_str(), v));
        }
        for (const auto& [name, members] : structs) {
            std::uint32_t off = 0, align = 1;
            std::vector<std::pair<std::uint32_t, Type>> placed;
            for (const auto& [mname, tname] : members) {
                std::string base = tname;
                std::uint32_t count = 1;
                if (auto br = tname.find('['); br != std::string::npos && !types.count(tname)) {
                    base = tname.substr(0, br);
                    count = static_cast<std::uint32_t>(std::stoul(tname.substr(br + 1)));
                }
                Type t = types.at(base);
                if (count != 1 || base != tname)
                    t = {ok(btf__add_array(b, types["u32"].id, t.id, count)), t.size * count, t.align};
                off = (off + t.align - 1) / t.align * t.align;
                placed.push_back({off, t});
                off += t.size;
                align = std::max(align, t.align);
            }
            std::uint32_t size = (off + align - 1) / align * align;
            int id = ok(btf__add_struct(b, name.c_str(), size));
            for (std::size_t i = 0; i < members.size(); ++i)
                ok(btf__add_field(b, members[i].first.c_str(), placed[i].second.id, placed[i].first * 8, 0));
            types[name] = {id, size, align};
        }
        std::uint32_t size = 0;
        auto* data = static_cast<const std::byte*>(btf__raw_data(b, &size));
        std::vector<std::byte> out(data, data + size);
        btf__free(b);
        return out;
    }
};

// Linux 6.1 x86-64 as far as hvpatch looks (member order as in 6.1).
FakeKernel linux_6_1() {
    FakeKernel k;
    k.structs = {
        {"list_head", {{"next", "ptr"}, {"prev", "ptr"}}},
        {"thread_info", {{"flags", "u64"}, {"syscall_work", "u64"}, {"status", "u32"}, {"cpu", "u32"}}},
        {"thread_struct", {{"tls_array", "u64[3]"}, {"sp", "u64"}, {"es", "u16"}}},
        {"task_struct",
         {{"thread_info", "thread_info"}, {"__state", "u32"}, {"stack", "ptr"}, {"usage", "u32"},
          {"flags", "u32"}, {"ptrace", "u32"}, {"on_cpu", "u32"}, {"tasks", "list_head"}, {"mm", "ptr"},
          {"active_mm", "ptr"}, {"exit_state", "u32"}, {"pid", "u32"}, {"tgid", "u32"},
          {"real_parent", "ptr"}, {"parent", "ptr"}, {"group_leader", "ptr"}, {"thread_group", "list_head"},
          {"thread_node", "list_head"}, {"comm", "char[16]"}, {"signal", "ptr"}, {"patch_state", "u32"},
          {"thread", "thread_struct"}}},
        {"inactive_task_frame",
         {{"r15", "u64"}, {"r14", "u64"}, {"r13", "u64"}, {"r12", "u64"}, {"bx", "u64"}, {"bp", "u64"},
          {"ret_addr", "u64"}}},
        {"pt_regs",
         {{"r15", "u64"}, {"r14", "u64"}, {"r13", "u64"}, {"r12", "u64"}, {"bp", "u64"}, {"bx", "u64"},
          {"r11", "u64"}, {"r10", "u64"}, {"r9", "u64"}, {"r8", "u64"}, {"ax", "u64"}, {"cx", "u64"},
          {"dx", "u64"}, {"si", "u64"}, {"di", "u64"}, {"orig_ax", "u64"}, {"ip", "u64"}, {"cs", "u64"},
          {"flags", "u64"}, {"sp", "u64"}, {"ss", "u64"}}},
        {"signal_struct", {{"sigcnt", "u32"}, {"live", "u32"}, {"nr_threads", "u32"}, {"thread_head", "list_head"}}},
        {"mm_struct", {{"mmap_base", "u64"}, {"pgd", "ptr"}}},
        {"module_layout",
         {{"base", "ptr"}, {"size", "u32"}, {"text_size", "u32"}, {"ro_size", "u32"}, {"ro_after_init_size", "u32"}}},
        {"mod_arch_specific", {{"num_orcs", "u32"}, {"orc_unwind_ip", "ptr"}, {"orc_unwind", "ptr"}}},
        {"mod_kallsyms", {{"symtab", "ptr"}, {"num_symtab", "u32"}, {"strtab", "ptr"}, {"typetab", "ptr"}}},
        {"module",
         {{"state", "u32"}, {"list", "list_head"}, {"name", "char[56]"}, {"core_layout", "module_layout"},
          {"init_layout", "module_layout"}, {"arch", "mod_arch_specific"}, {"kallsyms", "ptr"},
          {"core_kallsyms", "mod_kallsyms"}, {"klp", "u8"}}},
        {"klp_patch",
         {{"mod", "ptr"}, {"objs", "ptr"}, {"states", "ptr"}, {"replace", "u8"}, {"list", "list_head"},
          {"kobj", "u64[8]"}, {"obj_list", "list_head"}, {"enabled", "u8"}, {"forced", "u8"}}},
        {"klp_object",
         {{"name", "ptr"}, {"funcs", "ptr"}, {"callbacks", "u64[5]"}, {"kobj", "u64[8]"}, {"func_list", "list_head"},
          {"node", "list_head"}, {"mod", "ptr"}, {"dynamic", "u8"}, {"patched", "u8"}}},
        {"klp_func",
         {{"old_name", "ptr"}, {"new_func", "ptr"}, {"old_sympos", "u64"}, {"old_func", "ptr"}, {"kobj", "u64[8]"},
          {"node", "list_head"}, {"stack_node", "list_head"}, {"old_size", "u64"}, {"new_size", "u64"},
          {"nop", "u8"}, {"patched", "u8"}, {"transition", "u8"}}},
        {"klp_state", {{"id", "u64"}, {"version", "u32"}, {"data", "ptr"}}},
    };
    k.enums["module_state"] = {
        {"MODULE_STATE_LIVE", 0}, {"MODULE_STATE_COMING", 1}, {"MODULE_STATE_GOING", 2}, {"MODULE_STATE_UNFORMED", 3}};
    return k;
}

GuestLayouts layouts_of(const FakeKernel& k) { return GuestLayouts::from_btf(KernelBtf::parse(k.btf())); }

template <typename F>
void expect_guest_error(F&& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no exception, expected: " << needle;
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

// The line of `text` starting with `start`, "" if none.
std::string line_of(const std::string& text, const std::string& start) {
    std::size_t at = text.starts_with(start) ? 0 : text.find("\n" + start);
    if (at == std::string::npos) return "";
    if (at > 0 || !text.starts_with(start)) ++at;
    return text.substr(at, text.find('\n', at) - at);
}

TEST(GuestLayouts, Linux61Shape) {
    GuestLayouts g = layouts_of(linux_6_1());
    EXPECT_EQ(g.list_head.size, 16u);
    EXPECT_EQ(g.list_head.prev.offset, 8u);
    EXPECT_EQ(g.task.thread_info.offset, 0u);
    EXPECT_EQ(g.task.thread_info.size, 24u);
    EXPECT_EQ(g.task.thread_info_flags.offset, 0u);
    EXPECT_EQ(g.task.thread_info_flags.size, 8u);
    EXPECT_EQ(g.task.state.offset, 24u);
    EXPECT_EQ(g.task.state.size, 4u);
    EXPECT_EQ(g.task.state.path, "__state");
    EXPECT_EQ(g.task.stack.offset, 32u);
    ASSERT_TRUE(g.task.cpu);
    EXPECT_EQ(g.task.cpu->path, "thread_info.cpu");
    EXPECT_EQ(g.task.cpu->offset, 20u);
    ASSERT_TRUE(g.task.on_cpu);
    EXPECT_EQ(g.task.tasks.size, 16u);
    EXPECT_EQ(g.task.comm.size, 16u);
    EXPECT_TRUE(g.task.thread_group);
    EXPECT_TRUE(g.task.patch_state);
    EXPECT_EQ(g.task.thread_sp.offset - g.task.thread_sp.offset % 8, g.task.thread_sp.offset);
    EXPECT_EQ(g.task.thread_sp.path, "thread.sp");
    EXPECT_EQ(g.frame.size, 56u);
    EXPECT_EQ(g.frame.bp.offset, 40u);
    EXPECT_EQ(g.frame.ret_addr.offset, 48u);
    EXPECT_EQ(g.regs.size, 168u);
    EXPECT_EQ(g.regs.ip.offset, 128u);
    EXPECT_EQ(g.regs.sp.offset, 152u);
    EXPECT_EQ(g.regs.orig_ax.offset, 120u);
    EXPECT_EQ(g.regs.ss.offset, 160u);
    EXPECT_EQ(g.signal.thread_head.offset, 16u);
    EXPECT_EQ(g.mm.pgd.offset, 8u);
    EXPECT_EQ(g.module.state.offset, 0u);
    EXPECT_EQ(g.module.list.offset, 8u);
    EXPECT_EQ(g.module.name.offset, 24u);
    EXPECT_EQ(g.module.name.size, 56u);
    EXPECT_EQ(g.module.core.base.offset, 80u);
    EXPECT_EQ(g.module.core.base.path, "core_layout.base");
    EXPECT_EQ(g.module.core.size.offset, 88u);
    EXPECT_EQ(g.module.core.text_size.offset, 92u);
    EXPECT_EQ(g.module.init.base.offset, 104u);
    ASSERT_TRUE(g.module.orc);
    EXPECT_EQ(g.module.orc->num_orcs.offset, 128u);
    EXPECT_EQ(g.module.orc->orc_unwind.offset, 144u);
    EXPECT_EQ(g.module.state_unformed, 3);
    EXPECT_TRUE(g.module.klp);
    EXPECT_TRUE(g.mod_kallsyms.typetab);
    EXPECT_EQ(g.mod_kallsyms.strtab.offset, 16u);
    ASSERT_TRUE(g.livepatch);
    EXPECT_EQ(g.livepatch->func.old_sympos.offset, 16u);
    EXPECT_EQ(g.livepatch->object.callbacks.size, 40u);
    EXPECT_EQ(g.livepatch->patch.list.offset, 32u);
}

TEST(GuestLayouts, DescribeListsEverything) {
    GuestLayouts g = layouts_of(linux_6_1());
    std::string d = g.describe();
    for (const char* needle :
         {"struct task_struct", "  __state", "@24    (0x18)     4 bytes", "  thread.sp", "struct pt_regs", "168 bytes",
          "  core_layout.base", "  arch.orc_unwind_ip", "  MODULE_STATE_LIVE", "= 0", "struct klp_func",
          "  transition", "  patch_state", "(optional: CONFIG_LIVEPATCH)", "struct mod_kallsyms"})
        EXPECT_NE(d.find(needle), std::string::npos) << needle << "\n" << d;
    EXPECT_EQ(d.find("absent"), std::string::npos) << d;
}

// 4.x-5.13 spelling, no SMP fields in thread_info, no livepatch, no ORC.
TEST(GuestLayouts, OlderKernelWithoutOptionalParts) {
    FakeKernel k = linux_6_1();
    k.rename("task_struct", "__state", "state");
    k.at("task_struct")[1].second = "u64";  // volatile long state
    k.drop("thread_info", "cpu");
    k.drop("task_struct", "patch_state");
    k.drop("task_struct", "thread_group");
    k.drop("module", "klp");
    k.drop("mod_kallsyms", "typetab");
    k.drop("mod_arch_specific", "num_orcs");
    k.drop_struct("klp_patch");
    GuestLayouts g = layouts_of(k);
    EXPECT_EQ(g.task.state.path, "state");
    EXPECT_FALSE(g.task.cpu);
    EXPECT_FALSE(g.task.patch_state);
    EXPECT_FALSE(g.task.thread_group);
    EXPECT_FALSE(g.module.klp);
    EXPECT_FALSE(g.module.orc);
    EXPECT_FALSE(g.mod_kallsyms.typetab);
    EXPECT_FALSE(g.livepatch);
    std::string d = g.describe();
    EXPECT_NE(line_of(d, "  state ").find("@24    (0x18)     8 bytes"), std::string::npos) << d;
    EXPECT_NE(line_of(d, "  patch_state ").find("absent (optional: CONFIG_LIVEPATCH)"), std::string::npos) << d;
    EXPECT_NE(line_of(d, "  arch.num_orcs ").find("absent (optional: CONFIG_UNWINDER_ORC)"), std::string::npos) << d;
    EXPECT_NE(line_of(d, "struct klp_patch ").find("absent (optional: CONFIG_LIVEPATCH)"), std::string::npos) << d;
}

TEST(GuestLayouts, TaskCpuOutsideThreadInfo) {
    FakeKernel k = linux_6_1();
    k.drop("thread_info", "cpu");
    k.at("task_struct").push_back({"cpu", "u32"});
    GuestLayouts g = layouts_of(k);
    ASSERT_TRUE(g.task.cpu);
    EXPECT_EQ(g.task.cpu->path, "cpu");
}

// 6.4+: struct module_memory mem[MOD_MEM_NUM_TYPES] replaces the layouts.
TEST(GuestLayouts, ModuleMemoryArray) {
    FakeKernel k = linux_6_1();
    k.enums["mod_mem_type"] = {{"MOD_TEXT", 0},       {"MOD_DATA", 1},        {"MOD_RODATA", 2},
                               {"MOD_RO_AFTER_INIT", 3}, {"MOD_INIT_TEXT", 4}, {"MOD_INIT_DATA", 5},
                               {"MOD_INIT_RODATA", 6}};
    k.drop_struct("module_layout");
    k.structs.insert(k.structs.begin() + 1, {"module_memory", {{"base", "ptr"}, {"is_rox", "u8"}, {"size", "u32"}}});
    auto& m = k.at("module");
    m.erase(m.begin() + 3, m.begin() + 5);
    m.insert(m.begin() + 3, {"mem", "module_memory[7]"});
    GuestLayouts g = layouts_of(k);
    EXPECT_EQ(g.module.core.base.path, "mem[MOD_TEXT].base");
    EXPECT_EQ(g.module.core.base.offset, 80u);
    EXPECT_EQ(g.module.core.size.offset, 92u);
    EXPECT_EQ(g.module.core.text_size.offset, 92u);
    EXPECT_EQ(g.module.init.base.path, "mem[MOD_INIT_TEXT].base");
    EXPECT_EQ(g.module.init.base.offset, 80u + 4 * 16);
    EXPECT_EQ(g.module.init.size.offset, 80u + 4 * 16 + 12);
}

TEST(GuestLayouts, MissingRequiredMemberIsNamed) {
    FakeKernel k = linux_6_1();
    k.drop("task_struct", "tgid");
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct task_struct has no member 'tgid'");

    k = linux_6_1();
    k.drop("task_struct", "__state");
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct task_struct has no member '__state' or 'state'");

    k = linux_6_1();
    k.drop("thread_struct", "sp");
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct task_struct has no member 'thread.sp'");

    k = linux_6_1();
    k.drop("mm_struct", "pgd");
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct mm_struct has no member 'pgd'");

    k = linux_6_1();
    k.drop_struct("inactive_task_frame");
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: no struct inactive_task_frame");

    k = linux_6_1();
    k.drop("klp_func", "stack_node");  // livepatch present: all of it is needed
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct klp_func has no member 'stack_node'");

    k = linux_6_1();
    k.drop("mod_arch_specific", "orc_unwind");  // ORC present: all three
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: struct module has no member 'arch.orc_unwind'");

    k = linux_6_1();
    k.enums.clear();
    expect_guest_error([&] { layouts_of(k); }, "guest BTF: no enumerator MODULE_STATE_LIVE");

    k = linux_6_1();
    auto& m = k.at("module");
    m.erase(m.begin() + 3, m.begin() + 5);  // neither core_layout nor mem[]
    expect_guest_error([&] { layouts_of(k); },
                       "guest BTF: struct module has no member 'core_layout.base' or 'mem[MOD_TEXT].base'");
}

TEST(GuestLayouts, ThreadInfoMustComeFirst) {
    FakeKernel k = linux_6_1();
    auto& t = k.at("task_struct");
    std::swap(t[0], t[1]);
    expect_guest_error([&] { layouts_of(k); }, "task_struct.thread_info is at offset 8, not first");
}

// ---- real kernels -------------------------------------------------------

std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

// Relations every x86-64 kernel hvpatch supports satisfies.
void expect_x86_64_shape(const GuestLayouts& g) {
    EXPECT_EQ(g.list_head.size, 16u);
    EXPECT_EQ(g.task.thread_info.offset, 0u);
    EXPECT_EQ(g.task.thread_info_flags.size, 8u);
    EXPECT_EQ(g.task.tasks.size, 16u);
    EXPECT_EQ(g.task.thread_node.size, 16u);
    EXPECT_EQ(g.task.comm.size, 16u);
    EXPECT_EQ(g.task.pid.size, 4u);
    EXPECT_EQ(g.task.tgid.offset, g.task.pid.offset + 4);
    EXPECT_EQ(g.task.stack.size, 8u);
    EXPECT_EQ(g.task.thread_sp.size, 8u);
    EXPECT_EQ(g.frame.ret_addr.offset, g.frame.size - 8);
    EXPECT_EQ(g.regs.size, 21u * 8);
    EXPECT_EQ(g.regs.r15.offset, 0u);
    EXPECT_EQ(g.regs.ip.offset, 16u * 8);
    EXPECT_EQ(g.regs.sp.offset, 19u * 8);
    EXPECT_EQ(g.module.name.size, 64u - 8u);  // MODULE_NAME_LEN
    EXPECT_EQ(g.module.core.base.size, 8u);
    EXPECT_EQ(g.mm.pgd.size, 8u);
    EXPECT_EQ(g.module.state_live, 0);
}

// The test guest's own BTF: the .BTF section of its vmlinux, e.g.
//   /usr/src/linux-source-6.1/scripts/extract-vmlinux vmlinuz > vmlinux
//   objcopy -O binary --only-section=.BTF vmlinux guest.btf
//   HVPATCH_GUEST_BTF=$PWD/guest.btf unit_tests
TEST(GuestLayouts, RealGuestBtf) {
    const char* path = std::getenv("HVPATCH_GUEST_BTF");
    if (!path || !*path) GTEST_SKIP() << "HVPATCH_GUEST_BTF not set (path to the guest vmlinux's .BTF section)";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << "HVPATCH_GUEST_BTF=" << path << " does not exist";
    GuestLayouts g = GuestLayouts::from_btf(KernelBtf::parse(read_file(path)));
    expect_x86_64_shape(g);
    // The Debian 6.1 guest: LIVEPATCH, ORC and SMP are on.
    EXPECT_EQ(g.task.state.path, "__state");
    EXPECT_EQ(g.task.state.size, 4u);
    ASSERT_TRUE(g.task.cpu);
    EXPECT_EQ(g.task.cpu->path, "thread_info.cpu");
    EXPECT_TRUE(g.task.on_cpu);
    EXPECT_TRUE(g.task.patch_state);
    EXPECT_TRUE(g.task.thread_group);
    EXPECT_EQ(g.module.core.base.path, "core_layout.base");
    EXPECT_TRUE(g.module.orc);
    EXPECT_TRUE(g.module.klp);
    EXPECT_TRUE(g.mod_kallsyms.typetab);
    EXPECT_TRUE(g.livepatch);
    std::cout << g.describe();
}

// The host kernel's BTF (a newer kernel): the alternatives for 6.4+ and 6.7+.
TEST(GuestLayouts, HostVmlinux) {
    const std::string path = "/sys/kernel/btf/vmlinux";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " does not exist (host kernel without BTF)";
    GuestLayouts g = GuestLayouts::from_btf(KernelBtf::parse(read_file(path)));
    expect_x86_64_shape(g);
    EXPECT_FALSE(g.describe().empty());
}

}  // namespace
}  // namespace hvpatch
