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
    auto above = split_ram_access(ranges, GuestPhysAddr{(4ULL << 30) + 0x1000}, 16);
    ASSERT_TRUE(above);
    ASSERT_EQ(above->size(), 1u);
    EXPECT_EQ((*above)[0].range, 1u);
    EXPECT_EQ(ranges[1].ram_offset + (*above)[0].offset_in_range, (2ULL << 30) + 0x1000);
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{3ULL << 30}, 1)) << "the PCI hole is not RAM";
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{(2ULL << 30) - 8}, 16))
        << "a read that runs from RAM into the PCI hole";
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{5ULL << 30}, 1)) << "past the end of RAM";
}

TEST(RamLayoutTest, WithoutAliasesRamIsOneRange) {
    auto ranges = parse_ram_layout("address-space: memory\n  0000-ffff (prio 0, i/o): io\n", 4096);
    ASSERT_EQ(ranges.size(), 1u);
    EXPECT_EQ(ranges[0].size, 4096u);
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{4090}, 8));
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{~0ULL}, 2)) << "no wrap-around";
    auto empty = split_ram_access(ranges, GuestPhysAddr{4096}, 0);
    ASSERT_TRUE(empty);
    EXPECT_TRUE(empty->empty());
}

// Guest-physical ranges that touch (memory hot-plugged right after boot
// RAM, say) are read across the seam, each piece from its own range.
TEST(RamLayoutTest, AnAccessAcrossAdjacentRangesIsSplitAtTheSeam) {
    std::vector<MemoryAccessInfo::Range> ranges = {{GuestPhysAddr{0}, 0x10000, 0},
                                                   {GuestPhysAddr{0x10000}, 0x10000, 0x40000}};
    auto pieces = split_ram_access(ranges, GuestPhysAddr{0xfff0}, 0x20);
    ASSERT_TRUE(pieces);
    ASSERT_EQ(pieces->size(), 2u);
    EXPECT_EQ((*pieces)[0].range, 0u);
    EXPECT_EQ((*pieces)[0].offset_in_range, 0xfff0u);
    EXPECT_EQ((*pieces)[0].length, 0x10u);
    EXPECT_EQ((*pieces)[0].buffer_offset, 0u);
    EXPECT_EQ((*pieces)[1].range, 1u);
    EXPECT_EQ((*pieces)[1].offset_in_range, 0u);
    EXPECT_EQ((*pieces)[1].length, 0x10u);
    EXPECT_EQ((*pieces)[1].buffer_offset, 0x10u);
    EXPECT_FALSE(split_ram_access(ranges, GuestPhysAddr{0x1fff0}, 0x20)) << "runs past the second range";
}

TEST(RamLayoutTest, AliasBeyondTheRamBlockIsRefused) {
    std::string text = "    0000000000000000-000000007fffffff (prio 0, ram): alias ram-below-4g @ram0 "
                       "0000000000000000-000000007fffffff\n";
    EXPECT_THROW(parse_ram_layout(text, 512ULL << 20), Error);
}

}  // namespace
}  // namespace hvpatch
