#include "patch/supported_kernels.h"

#include <charconv>

namespace hvpatch {
namespace {

constexpr int kOldestMajor = 5, kOldestMinor = 10;
constexpr int kNewestMajor = 7;  // every 7.x; 8.0 is refused until tested

std::optional<int> number(std::string_view& s) {
    int v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end == s.data()) return std::nullopt;
    s.remove_prefix(static_cast<std::size_t>(end - s.data()));
    return v;
}

}  // namespace

std::optional<std::string> unsupported_kernel_reason(std::string_view release) {
    std::string_view rest = release;
    auto major = number(rest);
    std::optional<int> minor;
    if (major && !rest.empty() && rest.front() == '.') {
        rest.remove_prefix(1);
        minor = number(rest);
    }
    const std::string range = "hvpatch patches Linux " + std::to_string(kOldestMajor) + "." +
                              std::to_string(kOldestMinor) + " to " + std::to_string(kNewestMajor) + ".x";
    if (!major || !minor) return range + "; cannot tell the version of the guest's release '" + std::string(release) + "'";
    if (*major < kOldestMajor || (*major == kOldestMajor && *minor < kOldestMinor) || *major > kNewestMajor)
        return range + "; the guest runs " + std::string(release) + ", outside that range";
    return std::nullopt;
}

}  // namespace hvpatch
