// Reads a file from tests/unit/data (recorded from real QEMU 7.2).
#pragma once

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace hvpatch::test {

inline std::string read_test_data(const std::string& name) {
    std::ifstream in(std::string(HVPATCH_TEST_DATA) + "/" + name, std::ios::binary);
    if (!in) throw std::runtime_error("missing test data " + name);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace hvpatch::test
