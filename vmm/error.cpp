#include "hvpatch/error.h"

#include <cstdio>

#include "hvpatch/address.h"

namespace hvpatch {

const char* to_string(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::Usage: return "usage";
        case ErrorKind::Unreachable: return "unreachable";
        case ErrorKind::Busy: return "busy";
        case ErrorKind::Guest: return "guest";
        case ErrorKind::Timeout: return "timeout";
        case ErrorKind::Interrupted: return "interrupted";
        case ErrorKind::Protocol: return "protocol";
        case ErrorKind::Internal: return "internal";
    }
    return "unknown";
}

int exit_code_for(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::Usage: return 2;
        case ErrorKind::Unreachable: return 3;
        case ErrorKind::Busy: return 3;      // the target cannot be used now
        case ErrorKind::Timeout: return 3;   // the target stopped answering
        case ErrorKind::Protocol: return 3;  // the target is not what we expected
        case ErrorKind::Guest: return 4;
        case ErrorKind::Interrupted: return 130;
        case ErrorKind::Internal: return 1;
    }
    return 1;
}

std::string hex(std::uint64_t value) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(value));
    return buf;
}

std::string hex_short(std::uint64_t value) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
    return buf;
}

}  // namespace hvpatch
