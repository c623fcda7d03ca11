// One hvpatch operation per VM at a time.
//
// Two hvpatch processes patching the same guest at once would interleave
// their pauses, memory writes and state files. Each operation that changes
// a VM (apply, revert, ...) first takes the VM's lock: an flock(LOCK_EX) on
// <lock_dir>/<vm_key>.lock. The lock directory is host-wide and separate
// from the state directory (default_lock_dir()): the state of a libvirt
// domain lives in its own XML, and two operators with different
// --state-dir must still exclude each other on one VM. The holder writes a description of itself
// (pid, user, host, operation, start time) into the file so that a refused
// operator learns who is in the way.
//
// flock belongs to the open file, so the kernel releases it when the
// holder exits in any way, SIGKILL and crashes included: a dead hvpatch
// never leaves a VM locked, and there is nothing to clean up by hand. The
// lock file itself is never deleted (deleting a lock file lets a process
// that opened the old inode and one that creates a new one both "hold"
// it); a released lock file is left empty.
//
// The lock is held per open file description: it also excludes another
// OperationLock in the same process, and a child forked while it is held
// shares it (the fd is O_CLOEXEC, so an exec'd program does not).
//
// A holder that releases the lock empties the file; one that was killed
// cannot, so a description found in a lock file that is free again is the
// mark of an operation that never finished. The next holder gets it
// (previous_holder()) and can repair what the dead one left (a VM it had
// paused); `hvpatch status` reads it without locking (unfinished_operation()).
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

namespace hvpatch {

// $HVPATCH_STATE_DIR if set and non-empty, else /var/lib/hvpatch; created
// (with missing parents, mode 0700) if missing. Throws Error(Internal) if
// it cannot be created.
std::string default_state_dir();

// $HVPATCH_LOCK_DIR if set and non-empty, else /run/hvpatch/locks (runtime
// data: a lock only matters while the VMs of this boot of the host run);
// created like default_state_dir(). Throws Error(Internal) naming the
// directory and HVPATCH_LOCK_DIR if it cannot be created.
std::string default_lock_dir();

// A lock key for a VM identity that may contain any characters (a QMP
// socket path, a libvirt URI + domain name): characters other than
// [A-Za-z0-9._-] become '_', and when anything had to change (or the name
// is longer than 100 bytes) a '-' and 12 hex digits of the identity's
// SHA-256 are appended so distinct identities keep distinct keys.
// "vm1" -> "vm1"; "qmp:/run/vm1.sock" -> "qmp__run_vm1.sock-1a2b3c4d5e6f".
std::string vm_lock_key(std::string_view vm_identity);

class OperationLock {
public:
    // Opens/creates <lock_dir>/<vm_key>.lock (mode 0600) and takes it
    // without waiting. Throws Error(Busy) when another process holds it:
    // "VM <key> is busy: hvpatch pid 1234 (user root) on host h has been
    // running 'apply' since 2026-11-27T05:40:12.345Z (12 s) [lock file
    // PATH]". Throws Error(Usage) for a vm_key that is not a plain file
    // name ([A-Za-z0-9._-], not starting with '.', at most 200 characters:
    // MachineIdentity::key() and vm_lock_key() give such keys),
    // Error(Internal) when the file cannot be opened or locked.
    [[nodiscard]] static OperationLock acquire(const std::string& lock_dir, const std::string& vm_key,
                                 std::string_view operation);

    OperationLock(OperationLock&& other) noexcept;
    OperationLock& operator=(OperationLock&& other) noexcept;
    OperationLock(const OperationLock&) = delete;
    OperationLock& operator=(const OperationLock&) = delete;
    ~OperationLock();

    // The description an earlier holder left in the lock file because it
    // ended without releasing the lock (SIGKILL, crash): JSON text as that
    // holder wrote it; "" when the lock had been released normally.
    const std::string& previous_holder() const { return previous_holder_; }
    // Adds `key` to this holder's description in the lock file (what a
    // successor must know if this process dies, e.g. whether it found the
    // VM running). Throws Error(Internal) if the file cannot be written.
    void describe(const std::string& key, const nlohmann::json& value);

    // Empties the holder description and releases the lock (idempotent).
    void release() noexcept;
    bool held() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }
    const std::string& vm_key() const { return vm_key_; }

private:
    OperationLock(int fd, std::string path, std::string vm_key) : fd_(fd), path_(std::move(path)), vm_key_(std::move(vm_key)) {}
    void write_description();

    int fd_ = -1;
    std::string path_;
    std::string vm_key_;
    nlohmann::json description_;
    std::string previous_holder_;
};

// Without taking the lock: the description a holder of <lock_dir>/<vm_key>.lock
// left behind when it ended without releasing it (JSON text), "" if there
// is none or the lock is held right now (the operation is still running).
std::string unfinished_operation(const std::string& lock_dir, const std::string& vm_key);
// "'apply' by hvpatch pid 1234 (user root), started T, did not finish"
// for such a description (or for previous_holder()).
std::string describe_unfinished_operation(const std::string& description);

}  // namespace hvpatch
