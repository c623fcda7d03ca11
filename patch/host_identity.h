// Who and where hvpatch runs, and when: the identity recorded in audit
// records and in operation-lock holder descriptions.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>

namespace hvpatch {

// UTC ISO-8601 with milliseconds: "2026-11-27T05:40:12.345Z". Fixed width
// (years 0000-9999), so these strings sort as the times do.
std::string format_utc_time(std::chrono::system_clock::time_point t);
std::string utc_time_now();

struct HostUser {
    uid_t uid = 0;                    // the real uid
    std::optional<std::string> name;  // from the password database; none if it has no entry
    // $SUDO_USER when hvpatch runs as root under sudo: the person behind
    // the root uid. Taken from the environment, so it is a hint, not proof.
    std::optional<std::string> sudo_user;
};
HostUser current_user();
// "root", or "uid 1234" when the uid has no name.
std::string describe_user(const HostUser& user);

// gethostname(); "unknown" if that fails.
std::string host_name();

}  // namespace hvpatch
