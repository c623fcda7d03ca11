#include "support/test_modules.h"

#include <chrono>
#include <fstream>
#include <iterator>

#include "hvpatch/error.h"
#include "support/test_guest.h"

namespace hvpatch::test {

std::string read_host_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(ErrorKind::Internal, "cannot read " + path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string test_guest_release() {
    std::string release = read_host_file(test_guest_dir() + "/release");
    while (!release.empty() && (release.back() == '\n' || release.back() == ' ')) release.pop_back();
    return release;
}

std::unique_ptr<RunningCommand> start_kbuild(const std::string& subdir, const std::string& out,
                                             const std::string& release, bool strip) {
    CommandOptions options;
    options.timeout = std::chrono::seconds(300);
    return std::make_unique<RunningCommand>(
        std::vector<std::string>{"sh", "-c",
                                 "cp -r \"$0\"/. \"$1\"/ && make -s -C /usr/src/linux-headers-\"$2\" M=\"$1\" "
                                 "KBUILD_MODPOST_WARN=1 modules && if [ \"$3\" = strip ]; then "
                                 "for ko in \"$1\"/*.ko; do strip --strip-debug \"$ko\" || exit 1; done; fi",
                                 source_dir() + "/tests/integration/patches/" + subdir, out, release,
                                 strip ? "strip" : "keep"},
        options);
}

}  // namespace hvpatch::test
