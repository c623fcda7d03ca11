#include "patch/host_identity.h"

#include <pwd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <vector>

namespace hvpatch {

std::string format_utc_time(std::chrono::system_clock::time_point t) {
    using namespace std::chrono;
    auto ms_total = duration_cast<milliseconds>(t.time_since_epoch()).count();
    auto seconds = static_cast<std::time_t>(ms_total / 1000);
    auto ms = ms_total % 1000;
    if (ms < 0) {  // before 1970: floor, not truncate
        ms += 1000;
        seconds -= 1;
    }
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[80];  // room for any int the compiler can imagine
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

std::string utc_time_now() { return format_utc_time(std::chrono::system_clock::now()); }

HostUser current_user() {
    HostUser user;
    user.uid = ::getuid();
    long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
    std::vector<char> buf(size > 0 ? static_cast<std::size_t>(size) : 16384);
    struct passwd pw {};
    struct passwd* found = nullptr;
    if (::getpwuid_r(user.uid, &pw, buf.data(), buf.size(), &found) == 0 && found) user.name = found->pw_name;
    if (user.uid == 0) {
        const char* sudo = std::getenv("SUDO_USER");
        if (sudo && *sudo) user.sudo_user = sudo;
    }
    return user;
}

std::string describe_user(const HostUser& user) {
    std::string text = user.name ? *user.name : "uid " + std::to_string(user.uid);
    if (user.sudo_user) text += " via sudo from " + *user.sudo_user;
    return text;
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
    return buf;
}

}  // namespace hvpatch
