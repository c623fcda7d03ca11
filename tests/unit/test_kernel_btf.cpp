#include <gtest/gtest.h>

#include <bpf/btf.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/kernel_btf.h"

namespace hvpatch {
namespace {

// Builds synthetic BTF with libbpf's writer and hands out its raw bytes.
class BtfWriter {
public:
    BtfWriter() : b_(btf__new_empty()) {
        if (!b_) throw std::runtime_error("btf__new_empty failed");
    }
    ~BtfWriter() { btf__free(b_); }
    BtfWriter(const BtfWriter&) = delete;
    BtfWriter& operator=(const BtfWriter&) = delete;

    struct btf* get() { return b_; }
    int check(int id) {
        if (id < 0) throw std::runtime_error("libbpf writer: " + std::string(std::strerror(-id)));
        return id;
    }
    std::vector<std::byte> bytes() {
        std::uint32_t size = 0;
        const void* data = btf__raw_data(b_, &size);
        if (!data) throw std::runtime_error("btf__raw_data failed");
        auto* p = static_cast<const std::byte*>(data);
        return {p, p + size};
    }

private:
    struct btf* b_;
};

template <typename F>
void expect_error(ErrorKind kind, F&& f, const std::string& needle = "") {
    try {
        f();
        ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), kind) << e.what();
        if (!needle.empty()) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    }
}

// struct inner { int x; int y; };                                   8 bytes
// typedef struct inner inner_t;
// struct outer {
//     int a;                                                     @0
//     struct inner in;                                           @8
//     union {                                                    @16
//         long unsigned int u;
//         struct { int lo; int hi; };
//     };
//     unsigned int f1:3, f2:5;                                   @24, bits 0 and 3
//     unsigned int wide:20, straddle:16;  (straddle at bit 244: packed)
//     char name[16];                                             @32
//     struct inner arr[4];                                       @48
//     inner_t td;                                                @80
//     const volatile inner_t cv;                                 @88
//     struct inner *ptr;                                         @96
//     int grid[2][3];                                            @104
// };                                                             128 bytes
// typedef struct outer outer_t;
// typedef struct { int v; } anon_t;
// union top { int i; long unsigned int l; };
// enum e { E_ONE = 1, E_NEG = -1 } (signed); enum big { E_BIG = 1 << 40 };
// enum uns { E_HIGH = 0x80000000 } (unsigned)
struct Synthetic {
    std::vector<std::byte> raw;
    KernelBtf btf;
};

Synthetic make_synthetic() {
    BtfWriter w;
    struct btf* b = w.get();
    int i32 = w.check(btf__add_int(b, "int", 4, BTF_INT_SIGNED));
    int u32 = w.check(btf__add_int(b, "unsigned int", 4, 0));
    int u64 = w.check(btf__add_int(b, "long unsigned int", 8, 0));
    int chr = w.check(btf__add_int(b, "char", 1, BTF_INT_CHAR));

    int inner = w.check(btf__add_struct(b, "inner", 8));
    w.check(btf__add_field(b, "x", i32, 0, 0));
    w.check(btf__add_field(b, "y", i32, 32, 0));
    int inner_t = w.check(btf__add_typedef(b, "inner_t", inner));

    int anon_s = w.check(btf__add_struct(b, nullptr, 8));
    w.check(btf__add_field(b, "lo", i32, 0, 0));
    w.check(btf__add_field(b, "hi", i32, 32, 0));
    int anon_u = w.check(btf__add_union(b, nullptr, 8));
    w.check(btf__add_field(b, "u", u64, 0, 0));
    w.check(btf__add_field(b, nullptr, anon_s, 0, 0));

    int name_arr = w.check(btf__add_array(b, u32, chr, 16));
    int inner_arr = w.check(btf__add_array(b, u32, inner, 4));
    int row = w.check(btf__add_array(b, u32, i32, 3));
    int grid = w.check(btf__add_array(b, u32, row, 2));
    int cv = w.check(btf__add_volatile(b, w.check(btf__add_const(b, inner_t))));
    int ptr = w.check(btf__add_ptr(b, inner));

    int outer = w.check(btf__add_struct(b, "outer", 128));
    w.check(btf__add_field(b, "a", i32, 0, 0));
    w.check(btf__add_field(b, "in", inner, 64, 0));
    w.check(btf__add_field(b, nullptr, anon_u, 128, 0));
    w.check(btf__add_field(b, "f1", u32, 192, 3));
    w.check(btf__add_field(b, "f2", u32, 195, 5));
    w.check(btf__add_field(b, "wide", u32, 224, 20));
    w.check(btf__add_field(b, "straddle", u32, 244, 16));
    w.check(btf__add_field(b, "name", name_arr, 256, 0));
    w.check(btf__add_field(b, "arr", inner_arr, 384, 0));
    w.check(btf__add_field(b, "td", inner_t, 640, 0));
    w.check(btf__add_field(b, "cv", cv, 704, 0));
    w.check(btf__add_field(b, "ptr", ptr, 768, 0));
    w.check(btf__add_field(b, "grid", grid, 832, 0));
    w.check(btf__add_typedef(b, "outer_t", outer));

    int anon_v = w.check(btf__add_struct(b, nullptr, 4));
    w.check(btf__add_field(b, "v", i32, 0, 0));
    w.check(btf__add_typedef(b, "anon_t", anon_v));

    w.check(btf__add_union(b, "top", 8));
    w.check(btf__add_field(b, "i", i32, 0, 0));
    w.check(btf__add_field(b, "l", u64, 0, 0));

    w.check(btf__add_enum(b, "e", 4));
    w.check(btf__add_enum_value(b, "E_ONE", 1));
    w.check(btf__add_enum_value(b, "E_NEG", -1));
    w.check(btf__add_enum(b, "uns", 4));
    w.check(btf__add_enum_value(b, "E_HIGH", 0x80000000ll));
    w.check(btf__add_enum64(b, "big", 8, false));
    w.check(btf__add_enum64_value(b, "E_BIG", 1ull << 40));

    auto raw = w.bytes();
    KernelBtf k = KernelBtf::parse(raw);
    return {std::move(raw), std::move(k)};
}

TEST(KernelBtf, PlainAndNestedMembers) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    EXPECT_EQ(k.size_of("outer"), 128u);
    EXPECT_EQ(k.size_of("inner"), 8u);
    auto a = k.member("outer", "a");
    EXPECT_EQ(a.offset, 0u);
    EXPECT_EQ(a.size, 4u);
    EXPECT_FALSE(a.is_bitfield());
    EXPECT_EQ(k.offset_of("outer", "in"), 8u);
    EXPECT_EQ(k.member("outer", "in").size, 8u);
    EXPECT_EQ(k.offset_of("outer", "in.y"), 12u);
    EXPECT_EQ(k.offset_of("outer", "td.y"), 84u);  // through a typedef
    EXPECT_EQ(k.offset_of("outer", "cv.y"), 92u);  // through const volatile typedef
    EXPECT_EQ(k.member("outer", "cv").size, 8u);
    EXPECT_EQ(k.member("outer", "ptr").size, 8u);
}

TEST(KernelBtf, AnonymousUnionsAndStructs) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    EXPECT_EQ(k.offset_of("outer", "u"), 16u);
    EXPECT_EQ(k.member("outer", "u").size, 8u);
    EXPECT_EQ(k.offset_of("outer", "lo"), 16u);
    EXPECT_EQ(k.offset_of("outer", "hi"), 20u);
    EXPECT_EQ(k.member("outer", "hi").size, 4u);
}

TEST(KernelBtf, Bitfields) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    auto f1 = k.member("outer", "f1");
    EXPECT_EQ(f1.offset, 24u);
    EXPECT_EQ(f1.size, 4u);
    EXPECT_EQ(f1.bit_offset, 0u);
    EXPECT_EQ(f1.bit_size, 3u);
    EXPECT_TRUE(f1.is_bitfield());
    auto f2 = k.member("outer", "f2");
    EXPECT_EQ(f2.offset, 24u);
    EXPECT_EQ(f2.bit_offset, 3u);
    EXPECT_EQ(f2.bit_size, 5u);
    auto wide = k.member("outer", "wide");
    EXPECT_EQ(wide.offset, 28u);
    EXPECT_EQ(wide.size, 4u);
    EXPECT_EQ(wide.bit_offset, 0u);
    EXPECT_EQ(wide.bit_size, 20u);
    // bits 244..259 cross the 4-byte unit at 28: reported from its first byte
    auto st = k.member("outer", "straddle");
    EXPECT_EQ(st.offset, 30u);
    EXPECT_EQ(st.bit_offset, 4u);
    EXPECT_EQ(st.size, 3u);
    EXPECT_EQ(st.bit_size, 16u);
    EXPECT_FALSE(k.find_member("outer", "f1.x"));
    EXPECT_FALSE(k.find_member("outer", "f1[0]"));
}

TEST(KernelBtf, Arrays) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    auto name = k.member("outer", "name");
    EXPECT_EQ(name.offset, 32u);
    EXPECT_EQ(name.size, 16u);
    EXPECT_EQ(k.offset_of("outer", "name[15]"), 47u);
    EXPECT_EQ(k.member("outer", "name[15]").size, 1u);
    EXPECT_FALSE(k.find_member("outer", "name[16]"));
    EXPECT_EQ(k.member("outer", "arr").size, 32u);
    EXPECT_EQ(k.offset_of("outer", "arr[0]"), 48u);
    EXPECT_EQ(k.offset_of("outer", "arr[3].y"), 48u + 24u + 4u);
    EXPECT_FALSE(k.find_member("outer", "arr[4].y"));
    EXPECT_EQ(k.member("outer", "grid").size, 24u);
    EXPECT_EQ(k.member("outer", "grid[1]").size, 12u);
    EXPECT_EQ(k.offset_of("outer", "grid[1][2]"), 104u + 12u + 8u);
    EXPECT_FALSE(k.find_member("outer", "grid[1][3]"));
    EXPECT_FALSE(k.find_member("outer", "grid[1][2][0]"));
    EXPECT_FALSE(k.find_member("outer", "a[0]"));
    expect_error(ErrorKind::Guest, [&] { k.member("outer", "arr[9]"); },
                 "guest BTF: struct outer has no member 'arr[9]' (index 9 out of bounds, 'arr' has 4 elements)");
}

TEST(KernelBtf, TypedefAndUnionRoots) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    EXPECT_EQ(k.offset_of("outer_t", "in.y"), 12u);
    EXPECT_EQ(k.offset_of("inner_t", "y"), 4u);
    EXPECT_EQ(k.offset_of("anon_t", "v"), 0u);  // like atomic_t
    EXPECT_EQ(k.member("top", "l").size, 8u);
    EXPECT_EQ(k.offset_of("top", "i"), 0u);
    EXPECT_EQ(k.size_of("top"), 8u);
    EXPECT_EQ(k.size_of("anon_t"), 4u);
    EXPECT_EQ(k.size_of("outer_t"), 128u);
    EXPECT_EQ(k.size_of("long unsigned int"), 8u);
    EXPECT_EQ(k.size_of("e"), 4u);
    EXPECT_TRUE(k.has_type("outer"));
    EXPECT_TRUE(k.has_type("top"));
    EXPECT_TRUE(k.has_type("anon_t"));
    EXPECT_TRUE(k.has_type("char"));
    EXPECT_FALSE(k.has_type("nope"));
    EXPECT_FALSE(k.find_member("char", "x"));  // not a struct
}

TEST(KernelBtf, MissingMembersAndTypes) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    EXPECT_FALSE(k.find_member("outer", "foo"));
    EXPECT_FALSE(k.find_member("outer", "in.z"));
    EXPECT_FALSE(k.find_member("outer", "ptr.x"));  // no walking through pointers
    EXPECT_FALSE(k.find_member("nope", "a"));
    expect_error(ErrorKind::Guest, [&] { k.member("outer", "foo"); }, "guest BTF: struct outer has no member 'foo'");
    expect_error(ErrorKind::Guest, [&] { k.member("top", "foo"); }, "guest BTF: union top has no member 'foo'");
    expect_error(ErrorKind::Guest, [&] { k.member("outer", "in.z"); },
                 "struct outer has no member 'in.z' (no 'z' in 'in')");
    expect_error(ErrorKind::Guest, [&] { k.member("outer", "ptr.x"); }, "('ptr' is not a struct or union)");
    expect_error(ErrorKind::Guest, [&] { k.member("nope", "a"); }, "guest BTF: no struct or union nope");
    expect_error(ErrorKind::Guest, [&] { k.size_of("nope"); }, "guest BTF: no type 'nope'");
}

TEST(KernelBtf, BadPathSyntax) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    for (const char* p : {"", ".a", "a.", "a..b", "a[", "a[]", "a[x]", "a[1", "1a", "a b", "a[99999999999999999999]"})
        expect_error(ErrorKind::Usage, [&] { k.find_member("outer", p); }, "bad member path");
}

TEST(KernelBtf, Enums) {
    auto s = make_synthetic();
    const KernelBtf& k = s.btf;
    EXPECT_EQ(k.enum_value("E_ONE"), 1);
    EXPECT_EQ(k.enum_value("E_HIGH"), 0x80000000ll);
    EXPECT_EQ(k.enum_value("E_BIG"), 1ll << 40);
    EXPECT_FALSE(k.enum_value("E_NONE"));
    // btf__add_enum_value marks the enum signed when a value is negative.
    EXPECT_EQ(k.enum_value("E_NEG"), -1);
}

TEST(KernelBtf, TypeCountAndMove) {
    auto s = make_synthetic();
    std::size_t n = s.btf.type_count();
    EXPECT_GT(n, 20u);
    KernelBtf moved = std::move(s.btf);
    EXPECT_EQ(moved.type_count(), n);
    KernelBtf other = make_synthetic().btf;
    other = std::move(moved);
    EXPECT_EQ(other.offset_of("outer", "hi"), 20u);
}

// A struct without kind_flag whose bitfield is described by its int type
// (BTF_INT_OFFSET/BTF_INT_BITS), as old pahole wrote them.
TEST(KernelBtf, LegacyIntBitfield) {
    BtfWriter w;
    struct btf* b = w.get();
    int bits = w.check(btf__add_int(b, "unsigned int", 4, 0));  // id 1, patched below
    int full = w.check(btf__add_int(b, "int", 4, BTF_INT_SIGNED));
    w.check(btf__add_struct(b, "legacy", 8));
    w.check(btf__add_field(b, "plain", full, 0, 0));
    w.check(btf__add_field(b, "flag", bits, 40, 0));
    auto raw = w.bytes();
    ASSERT_EQ(bits, 1);
    btf_header hdr;
    std::memcpy(&hdr, raw.data(), sizeof hdr);
    std::size_t enc_at = hdr.hdr_len + hdr.type_off + sizeof(btf_type);
    std::uint32_t enc = (2u << 16) | 3u;  // offset 2, 3 bits
    std::memcpy(raw.data() + enc_at, &enc, sizeof enc);
    KernelBtf k = KernelBtf::parse(raw);
    auto f = k.member("legacy", "flag");
    EXPECT_EQ(f.offset, 4u);
    EXPECT_EQ(f.size, 4u);
    EXPECT_EQ(f.bit_offset, 10u);
    EXPECT_EQ(f.bit_size, 3u);
    EXPECT_FALSE(k.member("legacy", "plain").is_bitfield());
}

// struct __attribute__((packed)) orc_like { s16 a; s16 b; unsigned sp_reg:4,
// bp_reg:4, type:2, end:1; };  6 bytes: 4-byte units would run past the end.
TEST(KernelBtf, PackedBitfieldsStayInsideTheStruct) {
    BtfWriter w;
    struct btf* b = w.get();
    int s16 = w.check(btf__add_int(b, "short int", 2, BTF_INT_SIGNED));
    int u32 = w.check(btf__add_int(b, "unsigned int", 4, 0));
    w.check(btf__add_struct(b, "orc_like", 6));
    w.check(btf__add_field(b, "a", s16, 0, 0));
    w.check(btf__add_field(b, "b", s16, 16, 0));
    w.check(btf__add_field(b, "sp_reg", u32, 32, 4));
    w.check(btf__add_field(b, "bp_reg", u32, 36, 4));
    w.check(btf__add_field(b, "type", u32, 40, 2));
    w.check(btf__add_field(b, "end", u32, 42, 1));
    KernelBtf k = KernelBtf::parse(w.bytes());
    auto bp = k.member("orc_like", "bp_reg");
    EXPECT_EQ(bp.offset, 4u);
    EXPECT_EQ(bp.size, 1u);
    EXPECT_EQ(bp.bit_offset, 4u);
    EXPECT_EQ(bp.bit_size, 4u);
    auto end = k.member("orc_like", "end");
    EXPECT_EQ(end.offset, 5u);
    EXPECT_EQ(end.size, 1u);
    EXPECT_EQ(end.bit_offset, 2u);
    EXPECT_EQ(end.bit_size, 1u);
}

TEST(KernelBtf, DeepButLegalAnonymousNesting) {
    BtfWriter w;
    struct btf* b = w.get();
    int i32 = w.check(btf__add_int(b, "int", 4, BTF_INT_SIGNED));
    int inner = w.check(btf__add_struct(b, nullptr, 8));
    w.check(btf__add_field(b, "deep", i32, 32, 0));
    for (int level = 0; level < 10; ++level) {
        int next = w.check(btf__add_union(b, nullptr, 8));
        w.check(btf__add_field(b, nullptr, inner, 0, 0));
        inner = next;
    }
    w.check(btf__add_struct(b, "top", 16));
    w.check(btf__add_field(b, "x", i32, 0, 0));
    w.check(btf__add_field(b, nullptr, inner, 64, 0));
    KernelBtf k = KernelBtf::parse(w.bytes());
    EXPECT_EQ(k.offset_of("top", "deep"), 12u);
}

// ---- untrusted bytes ----------------------------------------------------

TEST(KernelBtf, GarbageBytesAreAGuestError) {
    expect_error(ErrorKind::Guest, [] { KernelBtf::parse({}); }, "guest BTF");
    std::mt19937 rng(42);
    for (int round = 0; round < 200; ++round) {
        std::vector<std::byte> junk(rng() % 512);
        for (auto& x : junk) x = static_cast<std::byte>(rng());
        expect_error(ErrorKind::Guest, [&] { KernelBtf::parse(junk); }, "guest BTF");
    }
}

TEST(KernelBtf, RejectionSaysWhy) {
    auto raw = make_synthetic().raw;
    raw[0] = std::byte{0};  // magic
    expect_error(ErrorKind::Guest, [&] { KernelBtf::parse(raw); }, "guest BTF: not valid BTF (");
    try {
        KernelBtf::parse(raw);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("magic"), std::string::npos) << e.what();
    }
}

TEST(KernelBtf, TruncatedBtfIsAGuestError) {
    auto raw = make_synthetic().raw;
    for (std::size_t cut : {std::size_t{1}, std::size_t{8}, std::size_t{24}, raw.size() / 2, raw.size() - 1})
        expect_error(ErrorKind::Guest, [&] { KernelBtf::parse(std::span(raw).first(cut)); }, "guest BTF");
}

// Flipping bytes of valid BTF must never crash: each parse/lookup either
// works or throws Error(Guest).
TEST(KernelBtf, CorruptedBtfNeverCrashes) {
    auto good = make_synthetic().raw;
    std::mt19937 rng(7);
    int parsed = 0;
    for (int round = 0; round < 2000; ++round) {
        auto raw = good;
        for (int flips = 1 + rng() % 4; flips > 0; --flips)
            raw[24 + rng() % (raw.size() - 24)] = static_cast<std::byte>(rng());
        try {
            KernelBtf k = KernelBtf::parse(raw);
            ++parsed;
            for (const char* p : {"a", "in.y", "hi", "f2", "arr[3].y", "grid[1][2]", "cv.y", "name[3]"}) {
                try {
                    (void)k.find_member("outer", p);
                } catch (const Error& e) {
                    EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
                }
            }
            try {
                (void)k.size_of("outer");
            } catch (const Error& e) {
                EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
            }
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        }
    }
    EXPECT_GT(parsed, 0);
}

TEST(KernelBtf, TypeChainCycleIsBounded) {
    BtfWriter w;
    struct btf* b = w.get();
    int i32 = w.check(btf__add_int(b, "int", 4, BTF_INT_SIGNED));
    // typedef loop_a -> loop_b -> loop_a (ids 2 and 3)
    int a = w.check(btf__add_typedef(b, "loop_a", 3));
    w.check(btf__add_typedef(b, "loop_b", a));
    w.check(btf__add_struct(b, "holder", 8));
    w.check(btf__add_field(b, "x", i32, 0, 0));
    w.check(btf__add_field(b, "loop", a, 32, 0));
    w.check(btf__add_field(b, "dangling", 9999, 32, 0));
    w.check(btf__add_field(b, nullptr, a, 32, 0));
    auto raw = w.bytes();
    try {
        KernelBtf k = KernelBtf::parse(raw);  // a stricter libbpf may already refuse it
        expect_error(ErrorKind::Guest, [&] { k.find_member("loop_a", "x"); }, "guest BTF: malformed");
        expect_error(ErrorKind::Guest, [&] { k.find_member("holder", "nothere"); }, "longer than 32");
        expect_error(ErrorKind::Guest, [&] { k.find_member("holder", "loop.x"); }, "guest BTF: malformed");
        expect_error(ErrorKind::Guest, [&] { k.find_member("holder", "dangling"); }, "out of range");
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
    }
}

TEST(KernelBtf, AnonymousSelfContainmentIsBounded) {
    BtfWriter w;
    struct btf* b = w.get();
    int i32 = w.check(btf__add_int(b, "int", 4, BTF_INT_SIGNED));
    // struct self { int x; struct self; };  (impossible in C)
    int self = w.check(btf__add_struct(b, "self", 8));
    w.check(btf__add_field(b, "x", i32, 0, 0));
    w.check(btf__add_field(b, nullptr, self, 0, 0));
    // 40 anonymous levels: deeper than kMaxAnonDepth
    int inner = w.check(btf__add_struct(b, nullptr, 4));
    w.check(btf__add_field(b, "deep", i32, 0, 0));
    for (int level = 0; level < 40; ++level) {
        int next = w.check(btf__add_struct(b, nullptr, 4));
        w.check(btf__add_field(b, nullptr, inner, 0, 0));
        inner = next;
    }
    w.check(btf__add_struct(b, "deep_top", 4));
    w.check(btf__add_field(b, nullptr, inner, 0, 0));
    // Wide fan-out of the same anonymous struct: each searched once.
    int fan = w.check(btf__add_struct(b, nullptr, 4));
    w.check(btf__add_field(b, "leaf", i32, 0, 0));
    for (int level = 0; level < 30; ++level) {
        int next = w.check(btf__add_struct(b, nullptr, 4));
        for (int j = 0; j < 8; ++j) w.check(btf__add_field(b, nullptr, fan, 0, 0));
        fan = next;
    }
    w.check(btf__add_struct(b, "fan_top", 4));
    w.check(btf__add_field(b, nullptr, fan, 0, 0));
    auto raw = w.bytes();
    try {
        KernelBtf k = KernelBtf::parse(raw);
        EXPECT_EQ(k.offset_of("self", "x"), 0u);
        EXPECT_FALSE(k.find_member("self", "y"));
        expect_error(ErrorKind::Guest, [&] { k.find_member("deep_top", "deep"); }, "nested deeper than 32");
        EXPECT_FALSE(k.find_member("fan_top", "nothere"));  // 8^30 paths if not deduplicated
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
    }
}

// ---- a real kernel's BTF ------------------------------------------------

std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    std::memcpy(out.data(), chars.data(), chars.size());
    return out;
}

TEST(KernelBtf, HostVmlinuxShape) {
    const std::string path = "/sys/kernel/btf/vmlinux";
    if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " does not exist (host kernel without BTF)";
    KernelBtf k = KernelBtf::parse(read_file(path));
    EXPECT_GT(k.type_count(), 10000u);
    std::uint64_t task_size = k.size_of("task_struct");
    for (const char* m : {"tasks", "pid", "comm", "thread.sp", "mm"}) {
        auto info = k.find_member("task_struct", m);
        ASSERT_TRUE(info) << m;
        EXPECT_LT(info->offset + info->size, task_size + 1) << m;
    }
    EXPECT_EQ(k.member("task_struct", "comm").size, 16u);
    EXPECT_EQ(k.member("task_struct", "pid").size, 4u);
    EXPECT_EQ(k.member("task_struct", "tasks").size, 16u);
    EXPECT_EQ(k.offset_of("task_struct", "tasks.prev"), k.offset_of("task_struct", "tasks") + 8);
    EXPECT_EQ(k.member("task_struct", "thread.sp").size, 8u);
    EXPECT_EQ(k.offset_of("task_struct", "comm[15]"), k.offset_of("task_struct", "comm") + 15);
    if (auto ti = k.find_member("task_struct", "thread_info")) {
        EXPECT_EQ(ti->offset, 0u);
    }
    EXPECT_EQ(k.size_of("list_head"), 16u);
    EXPECT_EQ(k.enum_value("TASK_COMM_LEN"), 16);
    expect_error(ErrorKind::Guest, [&] { k.member("task_struct", "foo"); },
                 "guest BTF: struct task_struct has no member 'foo'");
}

}  // namespace
}  // namespace hvpatch
