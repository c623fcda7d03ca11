#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <random>
#include <vector>

#include "hvpatch/error.h"
#include "hvpatch/memory.h"
#include "introspect/page_walk.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t P = 1ull << 0;
constexpr std::uint64_t RW = 1ull << 1;
constexpr std::uint64_t US = 1ull << 2;
constexpr std::uint64_t PS = 1ull << 7;
constexpr std::uint64_t NX = 1ull << 63;
constexpr std::uint64_t kTable = P | RW | US;

constexpr std::uint64_t k4K = 1ull << 12;
constexpr std::uint64_t k2M = 1ull << 21;
constexpr std::uint64_t k1G = 1ull << 30;

// A RAM image starting at guest-physical 0. Reads beyond it throw
// Error(Guest) like a real reader; every read is counted.
class FakeRam : public PhysicalMemoryReader {
public:
    explicit FakeRam(std::size_t size) : ram_(size) {}

    void read_physical(GuestPhysAddr addr, std::span<std::byte> out) override {
        ++reads;
        if (addr.value > ram_.size() || out.size() > ram_.size() - addr.value)
            throw Error(ErrorKind::Guest, "physical " + hex(addr.value) + " is outside guest RAM");
        std::memcpy(out.data(), ram_.data() + addr.value, out.size());
    }

    void write64(std::uint64_t addr, std::uint64_t value) {
        for (int i = 0; i < 8; ++i) ram_.at(addr + i) = static_cast<std::byte>(value >> (8 * i));
    }
    std::uint64_t read64(std::uint64_t addr) const {
        std::uint64_t v = 0;
        for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(ram_.at(addr + i));
        return v;
    }
    void fill(std::uint64_t addr, std::size_t n, std::byte b) { std::memset(ram_.data() + addr, int(b), n); }
    std::byte* bytes(std::uint64_t addr) { return ram_.data() + addr; }
    std::size_t size() const { return ram_.size(); }

    // Hands out zeroed 4 KiB frames for page tables.
    std::uint64_t alloc_table() {
        std::uint64_t t = next_table_;
        next_table_ += k4K;
        if (next_table_ > ram_.size()) throw std::runtime_error("FakeRam: out of table frames");
        return t;
    }

    int reads = 0;

private:
    std::vector<std::byte> ram_;
    std::uint64_t next_table_ = 0x1000;
};

// Builds page tables in a FakeRam.
class Tables {
public:
    Tables(FakeRam& ram, int levels) : ram_(ram), levels_(levels), root_(ram.alloc_table()) {}

    std::uint64_t root() const { return root_; }

    // Maps `va` to `pa` with a leaf of `size` (4K, 2M or 1G) and `leaf_flags`
    // (P is added). Intermediate entries get `table_flags`.
    void map(std::uint64_t va, std::uint64_t pa, std::uint64_t size, std::uint64_t leaf_flags,
             std::uint64_t table_flags = kTable) {
        const int leaf_level = size == k1G ? 3 : size == k2M ? 2 : 1;
        std::uint64_t table = root_;
        for (int level = levels_; level > leaf_level; --level) {
            std::uint64_t slot = entry_address(table, va, level);
            std::uint64_t e = ram_.read64(slot);
            if (!(e & P)) {
                e = ram_.alloc_table() | table_flags;
                ram_.write64(slot, e);
            }
            table = e & 0x000ffffffffff000ull;
        }
        std::uint64_t leaf = pa | leaf_flags | P | (leaf_level > 1 ? PS : 0);
        ram_.write64(entry_address(table, va, leaf_level), leaf);
    }

    // Physical address of the entry for `va` at `level` (tables must exist).
    std::uint64_t slot(std::uint64_t va, int level) const {
        std::uint64_t table = root_;
        for (int l = levels_; l > level; --l) table = ram_.read64(entry_address(table, va, l)) & 0x000ffffffffff000ull;
        return entry_address(table, va, level);
    }

    static std::uint64_t entry_address(std::uint64_t table, std::uint64_t va, int level) {
        return table + ((va >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
    }

private:
    FakeRam& ram_;
    int levels_;
    std::uint64_t root_;
};

constexpr std::uint64_t kKernelText = 0xffffffff81000000ull;

TEST(PageWalkTest, PagingLevelsFromCr4) {
    EXPECT_EQ(paging_levels_from_cr4(0x3506f0), PagingLevels::Four);
    EXPECT_EQ(paging_levels_from_cr4(0x3506f0 | (1ull << 12)), PagingLevels::Five);
}

TEST(PageWalkTest, FourLevel4KiB) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(kKernelText, 0x80000, k4K, RW);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    ram.reads = 0;
    WalkResult r = w.walk(GuestVirtAddr{kKernelText + 0x123});
    ASSERT_TRUE(r.ok());
    EXPECT_FALSE(r.failure.has_value());
    EXPECT_EQ(r.translation->phys.value, 0x80123u);
    EXPECT_EQ(r.translation->page_size, k4K);
    EXPECT_TRUE(r.translation->writable);
    EXPECT_FALSE(r.translation->user);
    EXPECT_FALSE(r.translation->no_execute);
    EXPECT_EQ(ram.reads, 4);
    EXPECT_EQ(w.translate(GuestVirtAddr{kKernelText + 0xfff}).value, 0x80fffu);
}

TEST(PageWalkTest, FourLevel2MiB) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(0xffff888000200000ull, 0x40000000ull, k2M, RW | NX);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    ram.reads = 0;
    WalkResult r = w.walk(GuestVirtAddr{0xffff888000200000ull + 0x1abcde});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.translation->phys.value, 0x40000000ull + 0x1abcde);
    EXPECT_EQ(r.translation->page_size, k2M);
    EXPECT_TRUE(r.translation->no_execute);
    EXPECT_EQ(ram.reads, 3);
}

TEST(PageWalkTest, FourLevel2MiBWithPatBitIsNotReserved) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(0xffff888000200000ull, 0x40000000ull | (1ull << 12), k2M, RW);  // bit 12 = PAT
    PageWalker w(ram, t.root(), PagingLevels::Four);
    WalkResult r = w.walk(GuestVirtAddr{0xffff888000200010ull});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.translation->phys.value, 0x40000010ull);
}

TEST(PageWalkTest, FourLevel1GiB) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(0xffff888040000000ull, 0x1c0000000ull, k1G, RW);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    ram.reads = 0;
    WalkResult r = w.walk(GuestVirtAddr{0xffff888040000000ull + 0x3456789});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.translation->phys.value, 0x1c0000000ull + 0x3456789);
    EXPECT_EQ(r.translation->page_size, k1G);
    EXPECT_EQ(ram.reads, 2);
}

TEST(PageWalkTest, FiveLevel) {
    FakeRam ram(1 << 20);
    Tables t(ram, 5);
    const std::uint64_t va = 0xff11'2233'4455'6000ull;  // canonical only with 57 bits
    t.map(va, 0x9000, k4K, RW | US);
    PageWalker w(ram, t.root(), PagingLevels::Five);
    EXPECT_EQ(w.levels(), PagingLevels::Five);
    ram.reads = 0;
    WalkResult r = w.walk(GuestVirtAddr{va + 0x10});
    ASSERT_TRUE(r.ok()) << r.failure->describe(GuestVirtAddr{va + 0x10});
    EXPECT_EQ(r.translation->phys.value, 0x9010u);
    EXPECT_TRUE(r.translation->user);
    EXPECT_EQ(ram.reads, 5);

    // The same address is not canonical for 4-level paging.
    PageWalker w4(ram, t.root(), PagingLevels::Four);
    WalkResult r4 = w4.walk(GuestVirtAddr{va});
    ASSERT_FALSE(r4.ok());
    EXPECT_EQ(r4.failure->reason, TranslationFailure::Reason::NonCanonical);
}

TEST(PageWalkTest, FiveLevelLargePages) {
    FakeRam ram(1 << 20);
    Tables t(ram, 5);
    t.map(0x0001'0000'4000'0000ull, 0x80000000ull, k1G, RW);
    t.map(0x0001'0000'0020'0000ull, 0x00600000ull, k2M, RW);
    PageWalker w(ram, t.root(), PagingLevels::Five);
    EXPECT_EQ(w.translate(GuestVirtAddr{0x0001'0000'4000'0123ull}).value, 0x80000123ull);
    EXPECT_EQ(w.translate(GuestVirtAddr{0x0001'0000'0020'0123ull}).value, 0x00600123ull);
}

TEST(PageWalkTest, Cr3PcidAndNoFlushBitsAreIgnored) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(kKernelText, 0x80000, k4K, RW);
    const std::uint64_t cr3 = t.root() | 0x7ab | (1ull << 63);
    PageWalker w(ram, cr3, PagingLevels::Four);
    EXPECT_EQ(w.cr3(), cr3);
    EXPECT_EQ(w.translate(GuestVirtAddr{kKernelText + 8}).value, 0x80008u);
}

TEST(PageWalkTest, NotPresentAtEachLevel) {
    const std::uint64_t va = 0x00aa'bbcc'dd00'0000ull;  // canonical for 5-level
    const char* names[] = {"", "PT", "PD", "PDPT", "PML4", "PML5"};
    for (int level = 5; level >= 1; --level) {
        FakeRam ram(1 << 20);
        Tables t(ram, 5);
        t.map(va, 0x5000, k4K, RW);
        const std::uint64_t slot = t.slot(va, level);
        const std::uint64_t value = ram.read64(slot) & ~P;  // keep the other bits: a swap entry, say
        ram.write64(slot, value);
        PageWalker w(ram, t.root(), PagingLevels::Five);
        ram.reads = 0;
        WalkResult r = w.walk(GuestVirtAddr{va});
        ASSERT_FALSE(r.ok()) << "level " << level;
        EXPECT_FALSE(r.translation.has_value());
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::NotPresent);
        EXPECT_EQ(r.failure->level, level);
        EXPECT_EQ(r.failure->entry_address.value, slot);
        EXPECT_EQ(r.failure->entry, value);
        EXPECT_EQ(ram.reads, 6 - level);
        std::string text = r.failure->describe(GuestVirtAddr{va});
        EXPECT_EQ(text, hex(va) + " not mapped: " + names[level] + " entry at " + hex(slot) +
                            " is not present (" + hex_short(value) + ")");
        try {
            w.translate(GuestVirtAddr{va});
            ADD_FAILURE() << "translate did not throw";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Guest);
            EXPECT_EQ(std::string(e.what()), text);
        }
    }
}

TEST(PageWalkTest, EmptyRootIsNotPresentAtTopLevel) {
    FakeRam ram(1 << 16);
    PageWalker w(ram, 0x1000, PagingLevels::Four);
    WalkResult r = w.walk(GuestVirtAddr{0});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.failure->level, 4);
    EXPECT_EQ(r.failure->entry_address.value, 0x1000u);
    EXPECT_EQ(r.failure->describe(GuestVirtAddr{0}),
              "0x0000000000000000 not mapped: PML4 entry at 0x0000000000001000 is not present (0x0)");
}

TEST(PageWalkTest, NonCanonicalAddresses) {
    FakeRam ram(1 << 16);
    PageWalker w4(ram, 0x1000, PagingLevels::Four);
    PageWalker w5(ram, 0x1000, PagingLevels::Five);
    for (std::uint64_t va : {0x0000800000000000ull, 0xffff7fffffffffffull, 0x8000000000000000ull,
                             0x7fffffffffffffffull, 0x0001000000000000ull}) {
        ram.reads = 0;
        WalkResult r = w4.walk(GuestVirtAddr{va});
        ASSERT_FALSE(r.ok()) << hex(va);
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::NonCanonical) << hex(va);
        EXPECT_EQ(ram.reads, 0);
        EXPECT_NE(r.failure->describe(GuestVirtAddr{va}).find("not canonical for 4-level paging"),
                  std::string::npos);
    }
    for (std::uint64_t va : {0x0100000000000000ull, 0xfeffffffffffffffull, 0x8000000000000000ull}) {
        WalkResult r = w5.walk(GuestVirtAddr{va});
        ASSERT_FALSE(r.ok()) << hex(va);
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::NonCanonical) << hex(va);
        EXPECT_NE(r.failure->describe(GuestVirtAddr{va}).find("bits 63..56"), std::string::npos);
    }
    // Boundary addresses that are canonical reach the tables (and are not present).
    for (std::uint64_t va : {0x00007fffffffffffull, 0xffff800000000000ull, 0ull, ~0ull}) {
        WalkResult r = w4.walk(GuestVirtAddr{va});
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::NotPresent) << hex(va);
    }
    for (std::uint64_t va : {0x00ffffffffffffffull, 0xff00000000000000ull, 0x0000800000000000ull}) {
        WalkResult r = w5.walk(GuestVirtAddr{va});
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::NotPresent) << hex(va);
    }
}

TEST(PageWalkTest, TablePointerOutsideRam) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(kKernelText, 0x80000, k4K, RW);
    const std::uint64_t pml4e = t.slot(kKernelText, 4);
    const std::uint64_t bad_table = 0x7fff00000000ull;
    ram.write64(pml4e, bad_table | kTable);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    WalkResult r = w.walk(GuestVirtAddr{kKernelText});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::TableUnreadable);
    EXPECT_EQ(r.failure->level, 3);
    EXPECT_EQ(r.failure->entry_address.value, Tables::entry_address(bad_table, kKernelText, 3));
    EXPECT_EQ(r.failure->entry, 0u);
    std::string text = r.failure->describe(GuestVirtAddr{kKernelText});
    EXPECT_NE(text.find("PDPT entry at " + hex(Tables::entry_address(bad_table, kKernelText, 3))),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("cannot be read"), std::string::npos) << text;

    // CR3 itself outside RAM.
    PageWalker w2(ram, 0x40000000, PagingLevels::Four);
    WalkResult r2 = w2.walk(GuestVirtAddr{kKernelText});
    ASSERT_FALSE(r2.ok());
    EXPECT_EQ(r2.failure->reason, TranslationFailure::Reason::TableUnreadable);
    EXPECT_EQ(r2.failure->level, 4);
}

// Only Error(Guest) means "outside RAM"; anything else (a dead VM, an
// interrupt) must reach the caller.
TEST(PageWalkTest, NonGuestReaderErrorsPropagate) {
    struct DeadReader : PhysicalMemoryReader {
        void read_physical(GuestPhysAddr, std::span<std::byte>) override {
            throw Error(ErrorKind::Unreachable, "gdb:/tmp/x closed the connection");
        }
    } dead;
    PageWalker w(dead, 0x1000, PagingLevels::Four);
    try {
        w.walk(GuestVirtAddr{kKernelText});
        ADD_FAILURE() << "walk did not throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
    }
}

TEST(PageWalkTest, ReservedBits) {
    {
        // PS in a PML4 entry.
        FakeRam ram(1 << 20);
        Tables t(ram, 4);
        t.map(kKernelText, 0x80000, k4K, RW);
        const std::uint64_t slot = t.slot(kKernelText, 4);
        ram.write64(slot, ram.read64(slot) | PS);
        WalkResult r = PageWalker(ram, t.root(), PagingLevels::Four).walk(GuestVirtAddr{kKernelText});
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::ReservedBits);
        EXPECT_EQ(r.failure->level, 4);
        EXPECT_EQ(r.failure->entry_address.value, slot);
        EXPECT_NE(r.failure->describe(GuestVirtAddr{kKernelText}).find("PML4 entry at " + hex(slot) +
                                                                        " has reserved bits 0x80 set"),
                  std::string::npos)
            << r.failure->describe(GuestVirtAddr{kKernelText});
    }
    {
        // PS in a PML5 entry.
        FakeRam ram(1 << 20);
        Tables t(ram, 5);
        t.map(kKernelText, 0x80000, k4K, RW);
        const std::uint64_t slot = t.slot(kKernelText, 5);
        ram.write64(slot, ram.read64(slot) | PS);
        WalkResult r = PageWalker(ram, t.root(), PagingLevels::Five).walk(GuestVirtAddr{kKernelText});
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.failure->reason, TranslationFailure::Reason::ReservedBits);
        EXPECT_EQ(r.failure->level, 5);
    }
    {
        // Bit 13 of a 2 MiB PDE and bit 29 of a 1 GiB PDPTE.
        FakeRam ram(1 << 20);
        Tables t(ram, 4);
        t.map(0xffff888000200000ull, 0x40000000ull | (1ull << 13), k2M, RW);
        t.map(0xffff888040000000ull, 0x80000000ull | (1ull << 29), k1G, RW);
        PageWalker w(ram, t.root(), PagingLevels::Four);
        WalkResult r2 = w.walk(GuestVirtAddr{0xffff888000200000ull});
        ASSERT_FALSE(r2.ok());
        EXPECT_EQ(r2.failure->reason, TranslationFailure::Reason::ReservedBits);
        EXPECT_EQ(r2.failure->level, 2);
        WalkResult r1 = w.walk(GuestVirtAddr{0xffff888040000000ull});
        ASSERT_FALSE(r1.ok());
        EXPECT_EQ(r1.failure->reason, TranslationFailure::Reason::ReservedBits);
        EXPECT_EQ(r1.failure->level, 3);
    }
    {
        // Bits 52..62 (software / protection keys) are not reserved, and
        // physical bits above 51 are masked away.
        FakeRam ram(1 << 20);
        Tables t(ram, 4);
        t.map(kKernelText, 0x80000 | (0x7ffull << 52), k4K, RW);
        EXPECT_EQ(PageWalker(ram, t.root(), PagingLevels::Four).translate(GuestVirtAddr{kKernelText}).value,
                  0x80000u);
    }
}

TEST(PageWalkTest, PermissionsAccumulateAcrossLevels) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    const std::uint64_t va = 0x00007f0000001000ull;
    t.map(va, 0x80000, k4K, RW | US);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    {
        Translation tr = *w.walk(GuestVirtAddr{va}).translation;
        EXPECT_TRUE(tr.writable);
        EXPECT_TRUE(tr.user);
        EXPECT_FALSE(tr.no_execute);
    }
    // Read-only PD entry: the page is not writable although its PTE is RW.
    const std::uint64_t pde = t.slot(va, 2);
    ram.write64(pde, ram.read64(pde) & ~RW);
    // Supervisor-only PDPT entry: not user.
    const std::uint64_t pdpte = t.slot(va, 3);
    ram.write64(pdpte, ram.read64(pdpte) & ~US);
    // NX only in the PML4 entry: no-execute.
    const std::uint64_t pml4e = t.slot(va, 4);
    ram.write64(pml4e, ram.read64(pml4e) | NX);
    Translation tr = *w.walk(GuestVirtAddr{va}).translation;
    EXPECT_FALSE(tr.writable);
    EXPECT_FALSE(tr.user);
    EXPECT_TRUE(tr.no_execute);
    EXPECT_EQ(tr.phys.value, 0x80000u);
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 7 + seed) & 0xff);
    return v;
}

TEST(PageWalkTest, ReadVirtualAcrossNonContiguousPages) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    const std::uint64_t va = 0xffffc90000010000ull;
    t.map(va, 0x50000, k4K, RW);
    t.map(va + k4K, 0x30000, k4K, RW);  // lower physical page: not contiguous
    auto first = pattern(k4K, 1), second = pattern(k4K, 99);
    std::memcpy(ram.bytes(0x50000), first.data(), k4K);
    std::memcpy(ram.bytes(0x30000), second.data(), k4K);
    PageWalker w(ram, t.root(), PagingLevels::Four);

    std::array<std::byte, 32> out{};
    ram.reads = 0;
    w.read_virtual(GuestVirtAddr{va + k4K - 16}, out);
    EXPECT_EQ(ram.reads, 2 * 4 + 2);  // one walk and one data read per page
    EXPECT_EQ(std::memcmp(out.data(), first.data() + k4K - 16, 16), 0);
    EXPECT_EQ(std::memcmp(out.data() + 16, second.data(), 16), 0);

    // Three pages' worth, starting mid-page: each page translated once.
    t.map(va + 2 * k4K, 0x70000, k4K, RW);
    std::vector<std::byte> big(2 * k4K + 100);
    ram.reads = 0;
    w.read_virtual(GuestVirtAddr{va + 50}, big);
    EXPECT_EQ(ram.reads, 3 * 4 + 3);
    EXPECT_EQ(std::memcmp(big.data(), first.data() + 50, k4K - 50), 0);

    // Empty read: nothing touched.
    ram.reads = 0;
    w.read_virtual(GuestVirtAddr{0x8000000000000000ull}, std::span<std::byte>{});
    EXPECT_EQ(ram.reads, 0);
}

TEST(PageWalkTest, ReadVirtualInsideLargePageTranslatesOnce) {
    FakeRam ram(8 << 20);
    Tables t(ram, 4);
    const std::uint64_t va = 0xffff888000200000ull;
    t.map(va, 0x400000, k2M, RW);
    auto data = pattern(3 * k4K, 5);
    std::memcpy(ram.bytes(0x400000 + k4K), data.data(), data.size());
    PageWalker w(ram, t.root(), PagingLevels::Four);
    std::vector<std::byte> out(3 * k4K);
    ram.reads = 0;
    w.read_virtual(GuestVirtAddr{va + k4K}, out);
    EXPECT_EQ(ram.reads, 3 + 1);
    EXPECT_EQ(out, data);
}

TEST(PageWalkTest, ReadVirtualFailsOnSecondPageNamingIt) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    const std::uint64_t va = 0xffffc90000010000ull;
    t.map(va, 0x50000, k4K, RW);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    std::array<std::byte, 32> out{};
    try {
        w.read_virtual(GuestVirtAddr{va + k4K - 16}, out);
        ADD_FAILURE() << "read_virtual did not throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        std::string msg = e.what();
        EXPECT_NE(msg.find(hex(va + k4K) + " not mapped: PT entry at"), std::string::npos) << msg;
        EXPECT_NE(msg.find("at " + hex(va + k4K - 16)), std::string::npos) << msg;
    }

    // Second page mapped, but to a physical page outside RAM.
    t.map(va + k4K, 0x7000000000ull, k4K, RW);
    try {
        w.read_virtual(GuestVirtAddr{va + k4K - 16}, out);
        ADD_FAILURE() << "read_virtual did not throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        std::string msg = e.what();
        EXPECT_NE(msg.find(hex(va + k4K) + " maps to physical " + hex(0x7000000000ull)), std::string::npos)
            << msg;
    }
}

TEST(PageWalkTest, ReadVirtualNamesFirstUnreadableAddressInsideLargePage) {
    // A 2 MiB page whose second half lies beyond the end of RAM.
    FakeRam ram(0x300000);
    Tables t(ram, 4);
    const std::uint64_t va = 0xffff888000200000ull;
    t.map(va, 0x200000, k2M, RW);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    std::vector<std::byte> out(k2M);
    try {
        w.read_virtual(GuestVirtAddr{va}, out);
        ADD_FAILURE() << "read_virtual did not throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_NE(std::string(e.what()).find(hex(va + 0x100000) + " maps to physical " + hex(0x300000)),
                  std::string::npos)
            << e.what();
    }
}

TEST(PageWalkTest, ReadVirtualWrappingPastTopIsRefused) {
    FakeRam ram(1 << 20);
    Tables t(ram, 4);
    t.map(0xfffffffffffff000ull, 0x50000, k4K, RW);
    t.map(0, 0x60000, k4K, RW);
    PageWalker w(ram, t.root(), PagingLevels::Four);
    std::array<std::byte, 16> out{};
    EXPECT_THROW(w.read_virtual(GuestVirtAddr{0xfffffffffffffff8ull}, out), Error);
    std::array<std::byte, 8> last{};
    EXPECT_NO_THROW(w.read_virtual(GuestVirtAddr{0xfffffffffffffff8ull}, last));
}

// Garbage tables must never crash the walker, and a walk is at most five
// reads whatever the guest wrote.
TEST(PageWalkTest, RandomGarbageTablesNeverCrash) {
    constexpr std::size_t kRam = 256 * 1024;
    std::mt19937_64 rng(0x5eed1234);
    int ok = 0, failures[4] = {};
    for (int round = 0; round < 50; ++round) {
        FakeRam ram(kRam);
        // Entries: mostly present and pointing inside RAM (so walks go
        // deep), some wild, with random flag bits.
        for (std::uint64_t a = 0; a < kRam; a += 8) {
            std::uint64_t e = rng();
            switch (rng() % 4) {
                case 0: break;  // pure garbage
                case 1:
                case 2: e = (e & ~0x000ffffffffff000ull) | ((rng() % (kRam / k4K)) << 12) | P; break;
                case 3: e &= ~P; break;
            }
            ram.write64(a, e);
        }
        for (int i = 0; i < 400; ++i) {
            const std::uint64_t cr3 = (rng() % 8 == 0) ? rng() : (((rng() % (kRam / k4K)) << 12) | (rng() & 0xfff));
            const PagingLevels levels = (rng() & 1) ? PagingLevels::Five : PagingLevels::Four;
            std::uint64_t va = rng();
            if (rng() % 4 != 0) {
                // Mostly canonical addresses.
                const int width = levels == PagingLevels::Five ? 57 : 48;
                va = static_cast<std::uint64_t>(static_cast<std::int64_t>(va << (64 - width)) >> (64 - width));
            }
            PageWalker w(ram, cr3, levels);
            ram.reads = 0;
            WalkResult r = w.walk(GuestVirtAddr{va});
            ASSERT_LE(ram.reads, 5);
            ASSERT_NE(r.translation.has_value(), r.failure.has_value());
            if (r.ok()) {
                ++ok;
                const std::uint64_t ps = r.translation->page_size;
                ASSERT_TRUE(ps == k4K || ps == k2M || ps == k1G);
                ASSERT_EQ(r.translation->phys.value & (ps - 1), va & (ps - 1));
                ASSERT_LT(r.translation->phys.value, 1ull << 52);
            } else {
                ++failures[static_cast<int>(r.failure->reason)];
                ASSERT_GE(r.failure->level, 1);
                ASSERT_LE(r.failure->level, 5);
                ASSERT_FALSE(r.failure->describe(GuestVirtAddr{va}).empty());
            }
            // read_virtual either succeeds or throws Error(Guest).
            std::array<std::byte, 64> out{};
            try {
                w.read_virtual(GuestVirtAddr{va - 20}, out);
            } catch (const Error& e) {
                ASSERT_EQ(e.kind(), ErrorKind::Guest) << e.what();
            }
        }
    }
    // The garbage exercised every outcome.
    EXPECT_GT(ok, 0);
    for (int n : failures) EXPECT_GT(n, 0);
}

}  // namespace
}  // namespace hvpatch
