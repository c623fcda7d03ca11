// Test livepatch modules built from source while a test guest boots: the
// directories of tests/integration/patches, built with kbuild against the
// test guest's headers.
#pragma once

#include <memory>
#include <string>

#include "support/run_command.h"

namespace hvpatch::test {

// The whole file; Error(Internal) naming it if it cannot be read.
std::string read_host_file(const std::string& path);
// The kernel release of the default test guest (its guest dir's `release`).
std::string test_guest_release();
// Starts `make -C /usr/src/linux-headers-RELEASE M=OUT modules` on a copy of
// tests/integration/patches/SUBDIR in OUT (which must exist), debug info
// stripped from the modules afterwards when `strip` (for copies into the
// guest). wait() on the result.
std::unique_ptr<RunningCommand> start_kbuild(const std::string& subdir, const std::string& out,
                                             const std::string& release, bool strip = false);

}  // namespace hvpatch::test
