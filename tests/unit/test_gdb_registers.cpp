#include <gtest/gtest.h>

#include "hvpatch/error.h"
#include "test_data.h"
#include "vmm/qemu/gdb_packet.h"
#include "vmm/qemu/gdb_registers.h"

namespace hvpatch {
namespace {

using test::read_test_data;

GdbRegisterMap qemu_map() {
    return GdbRegisterMap::parse(read_test_data("qemu-7.2-target.xml"), [](const std::string& annex) {
        if (annex != "i386-64bit.xml") throw Error(ErrorKind::Protocol, "unexpected annex " + annex);
        return read_test_data("qemu-7.2-i386-64bit.xml");
    });
}

// Little-endian bytes of `v` into `g` at `offset`.
void put(std::vector<std::byte>& g, std::size_t offset, std::uint64_t v, int size) {
    for (int i = 0; i < size; ++i) g[offset + static_cast<std::size_t>(i)] = static_cast<std::byte>(v >> (8 * i));
}

TEST(GdbRegisterMapTest, QemuLayoutMatchesThe608BytePacket) {
    GdbRegisterMap map = qemu_map();
    // Measured: QEMU 7.2's `g` reply is 608 bytes for x86-64.
    EXPECT_EQ(map.g_packet_size(), 608u);
    EXPECT_EQ(map.find("rax")->regnum, 0);
    EXPECT_EQ(map.find("rip")->regnum, 16);
    EXPECT_EQ(map.find("eflags")->bitsize, 32);
    EXPECT_EQ(map.find("cs")->offset, 16 * 8 + 8 + 4u);
    EXPECT_EQ(map.find("fs_base")->regnum, 24);
    EXPECT_EQ(map.find("k_gs_base")->regnum, 26);
    EXPECT_EQ(map.find("cr0")->regnum, 27);
    // Measured: `p20` reads EFER alone.
    EXPECT_EQ(map.find("efer")->regnum, 0x20);
}

TEST(GdbRegisterMapTest, CommentedOutRegistersAreNotCounted) {
    GdbRegisterMap map = qemu_map();
    EXPECT_FALSE(map.find("cs_base"));
    EXPECT_FALSE(map.find("ss_base"));
    EXPECT_FALSE(map.find("es_base"));
}

TEST(GdbRegisterMapTest, DecodesEveryFieldFromItsOffset) {
    GdbRegisterMap map = qemu_map();
    std::vector<std::byte> g(map.g_packet_size());
    put(g, map.find("rax")->offset, 0x1122334455667788ULL, 8);
    put(g, map.find("r15")->offset, 0xf15, 8);
    put(g, map.find("rip")->offset, 0xffffffff81000000ULL, 8);
    put(g, map.find("eflags")->offset, 0x246, 4);
    put(g, map.find("cs")->offset, 0x10, 4);
    put(g, map.find("gs")->offset, 0x2b, 4);
    put(g, map.find("k_gs_base")->offset, 0xffff88801f000000ULL, 8);
    put(g, map.find("cr3")->offset, 0x1234000 | 0x5, 8);
    put(g, map.find("efer")->offset, 0xd01, 8);
    VcpuRegisters r = map.decode(gdb::to_hex(g));
    EXPECT_EQ(r.rax, 0x1122334455667788ULL);
    EXPECT_EQ(r.r15, 0xf15u);
    EXPECT_EQ(r.rip, 0xffffffff81000000ULL);
    EXPECT_EQ(r.rflags, 0x246u);
    EXPECT_EQ(r.cs, 0x10);
    EXPECT_EQ(r.cpl(), 0);
    EXPECT_EQ(r.gs, 0x2b);
    EXPECT_EQ(r.kernel_gs_base, 0xffff88801f000000ULL);
    EXPECT_EQ(r.cr3, 0x1234005u);
    EXPECT_EQ(r.efer, 0xd01u);
}

TEST(GdbRegisterMapTest, ShortPacketIsAProtocolError) {
    GdbRegisterMap map = qemu_map();
    std::vector<std::byte> g(100);
    try {
        map.decode(gdb::to_hex(g));
        FAIL() << "decode accepted a 100-byte packet";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Protocol);
        EXPECT_NE(std::string(e.what()).find("100 bytes"), std::string::npos) << e.what();
    }
}

TEST(GdbRegisterMapTest, EncodesOnlyChangedRegistersLittleEndian) {
    GdbRegisterMap map = qemu_map();
    VcpuRegisters from, to;
    to.rip = 0xffffffff81000010ULL;
    to.cs = 0x33;
    auto writes = map.encode_changes(from, to);
    ASSERT_EQ(writes.size(), 2u);
    EXPECT_EQ(writes[0].first, 16);
    EXPECT_EQ(writes[0].second, "10000081ffffffff");
    EXPECT_EQ(writes[1].first, 18);
    EXPECT_EQ(writes[1].second, "33000000");
}

TEST(GdbRegisterMapTest, ExplicitRegnumRestartsTheCount) {
    std::string xml =
        "<target><feature name='x'>"
        "<reg name='a' bitsize='64' regnum='0'/><reg name='b' bitsize='32' regnum='10'/>"
        "<reg name='c' bitsize='64'/></feature></target>";
    EXPECT_THROW(GdbRegisterMap::parse(xml, [](const std::string&) { return std::string(); }), Error)
        << "a description without rax..efer must be refused";
}

TEST(GdbRegisterMapTest, MalformedAndRecursiveDescriptionsAreRefused) {
    auto none = [](const std::string&) -> std::string { throw Error(ErrorKind::Protocol, "no includes"); };
    EXPECT_THROW(GdbRegisterMap::parse("<target><reg name='rax'", none), Error);
    auto self = [](const std::string&) { return std::string("<target><xi:include href='t.xml'/></target>"); };
    try {
        GdbRegisterMap::parse("<target><xi:include href='t.xml'/></target>", self);
        FAIL() << "recursive include accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("too deep"), std::string::npos) << e.what();
    }
}

}  // namespace
}  // namespace hvpatch
