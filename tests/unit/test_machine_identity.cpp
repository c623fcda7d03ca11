#include <gtest/gtest.h>

#include "hvpatch/machine.h"

namespace hvpatch {
namespace {

TEST(MachineIdentity, KeyIsTheUuidWhenThereIsOne) {
    MachineIdentity id{"1b4e28ba-2fa1-41d2-883f-0016d3cca427", "web-01", "qmp:/run/vm.sock", ""};
    EXPECT_EQ(id.key(), "uuid-1b4e28ba-2fa1-41d2-883f-0016d3cca427");
}

TEST(MachineIdentity, AllZeroUuidFallsBackToASanitisedTarget) {
    // QEMU reports this UUID when it was started without -uuid.
    MachineIdentity id{"00000000-0000-0000-0000-000000000000", "", "qmp:/tmp/a b/qmp.sock", ""};
    EXPECT_EQ(id.key(), "target-qmp__tmp_a_b_qmp.sock");
    EXPECT_EQ(MachineIdentity({"", "", "qmp:x", ""}).key(), "target-qmp_x");
}

TEST(MachineIdentity, KeyCannotEscapeTheStateDirectory) {
    MachineIdentity id{"../../etc/passwd", "", "", ""};
    EXPECT_EQ(id.key().find('/'), std::string::npos);
}

}  // namespace
}  // namespace hvpatch
