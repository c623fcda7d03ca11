#include <gtest/gtest.h>

#include "hvpatch/address.h"
#include "hvpatch/error.h"

namespace hvpatch {
namespace {

TEST(ErrorTest, ExitCodesDistinguishUsageUnreachableAndGuest) {
    EXPECT_EQ(exit_code_for(ErrorKind::Usage), 2);
    EXPECT_EQ(exit_code_for(ErrorKind::Unreachable), 3);
    EXPECT_EQ(exit_code_for(ErrorKind::Guest), 4);
    EXPECT_NE(exit_code_for(ErrorKind::Internal), 0);
}

TEST(ErrorTest, HexFormatsFixedAndShort) {
    EXPECT_EQ(hex(0xffffffff81000000ULL), "0xffffffff81000000");
    EXPECT_EQ(hex(0x10), "0x0000000000000010");
    EXPECT_EQ(hex_short(0x10), "0x10");
}

}  // namespace
}  // namespace hvpatch
