#include <gtest/gtest.h>

#include "hvpatch/error.h"
#include "test_data.h"
#include "vmm/qemu/ram_layout.h"

namespace hvpatch {
namespace {

TEST(RamLayoutTest, Q35With512MiBIsOneRangeAtZero) {
    auto ranges = parse_ram_layout(test::read_test_data("qemu-7.2-q35-512M-mtree.txt"), 512ULL << 20);
    ASSERT_EQ(ranges.size(), 1u);
    EXPECT_EQ(ranges[0].start.value, 0u);
    EXPECT_EQ(ranges[0].size, 512ULL << 20);
    EXPECT_EQ(ranges[0].ram_offset, 0u);
}

TEST(RamLayoutTest, Q35With3GiBSplitsAt2GiBAndContinuesAt4GiB) {
    auto ranges = parse_ram_layout(test::read_test_data("qemu-7.2-q35-3G-mtree.txt"), 3ULL << 30);
    ASSERT_EQ(ranges.size(), 2u);
    EXPECT_EQ(ranges[0].size, 2ULL << 30);
    EXPECT_EQ(ranges[1].start.value, 4ULL << 30);
    EXPECT_EQ(ranges[1].size, 1ULL << 30);
    EXPECT_EQ(ranges[1].ram_offset, 2ULL << 30);
    EXPECT_EQ(ram_offset_of(ranges, GuestPhysAddr{(4ULL << 30) + 0x1000}, 16), (2ULL << 30) + 0x1000);
    EXPECT_FALSE(ram_offset_of(ranges, GuestPhysAddr{3ULL << 30}, 1)) << "the PCI hole is not RAM";
    EXPECT_FALSE(ram_offset_of(ranges, GuestPhysAddr{(2ULL << 30) - 8}, 16)) << "a read may not cross the split";
    EXPECT_FALSE(ram_offset_of(ranges, GuestPhysAddr{5ULL << 30}, 1)) << "past the end of RAM";
}

TEST(RamLayoutTest, WithoutAliasesRamIsOneRange) {
    auto ranges = parse_ram_layout("address-space: memory\n  0000-ffff (prio 0, i/o): io\n", 4096);
    ASSERT_EQ(ranges.size(), 1u);
    EXPECT_EQ(ranges[0].size, 4096u);
    EXPECT_FALSE(ram_offset_of(ranges, GuestPhysAddr{4090}, 8));
    EXPECT_FALSE(ram_offset_of(ranges, GuestPhysAddr{~0ULL}, 2)) << "no wrap-around";
}

TEST(RamLayoutTest, AliasBeyondTheRamBlockIsRefused) {
    std::string text = "    0000000000000000-000000007fffffff (prio 0, ram): alias ram-below-4g @ram0 "
                       "0000000000000000-000000007fffffff\n";
    EXPECT_THROW(parse_ram_layout(text, 512ULL << 20), Error);
}

}  // namespace
}  // namespace hvpatch
