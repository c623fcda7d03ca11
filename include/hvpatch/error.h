// hvpatch's one error style: exceptions derived from hvpatch::Error.
//
// Every error carries a kind (which decides the CLI exit code) and a message
// that names the target, the address or the symbol involved. Code that must
// undo something (resume a VM, detach a stub) does it with RAII, so unwinding
// through any layer leaves the guest as it was found.
#pragma once

#include <stdexcept>
#include <string>

namespace hvpatch {

enum class ErrorKind {
    Usage,        // bad command line or argument value
    Unreachable,  // the target cannot be reached: no socket, not QEMU, gone
    Busy,         // the target is held by someone else (another gdb client)
    Guest,        // the guest's state or memory does not allow the operation
    Timeout,      // the target did not answer in time
    Interrupted,  // SIGINT/SIGTERM arrived; the operation was abandoned
    Protocol,     // the peer broke its protocol (malformed packet, bad checksum)
    Internal,     // a bug or host-side failure in hvpatch itself
};

const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
public:
    Error(ErrorKind kind, const std::string& message)
        : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

// Exit codes scripts can rely on (documented in docs/operator-guide.md).
int exit_code_for(ErrorKind kind);

}  // namespace hvpatch
