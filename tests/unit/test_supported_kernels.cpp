// Which guest releases apply accepts: Linux 5.10 to 7.x, any vendor suffix.
#include "patch/supported_kernels.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hvpatch::test {
namespace {

using ::testing::HasSubstr;

TEST(SupportedKernels, TheRangeAndVendorReleases) {
    for (const char* ok : {"5.10.0-32-amd64", "5.14.0-284.11.1.el9_2.x86_64", "5.15.0-91-generic", "6.1.0-57-rt-amd64",
                           "6.8.0-45-generic", "6.12.95+deb12-amd64", "7.2.12+deb14-amd64", "7.19"})
        EXPECT_EQ(unsupported_kernel_reason(ok), std::nullopt) << ok;
}

TEST(SupportedKernels, OutsideTheRangeIsRefusedNamingIt) {
    for (const char* old : {"4.19.0-27-amd64", "5.4.0-200-generic", "5.9.16"})
        EXPECT_THAT(unsupported_kernel_reason(old).value_or(""), HasSubstr("outside that range")) << old;
    EXPECT_THAT(unsupported_kernel_reason("8.0.1").value_or(""), HasSubstr("Linux 5.10 to 7.x; the guest runs 8.0.1"));
}

TEST(SupportedKernels, AnUnreadableReleaseIsRefused) {
    for (const char* bad : {"", "linux", "6", "6.x", "v6.1"})
        EXPECT_THAT(unsupported_kernel_reason(bad).value_or(""), HasSubstr("cannot tell the version")) << bad;
}

}  // namespace
}  // namespace hvpatch::test
