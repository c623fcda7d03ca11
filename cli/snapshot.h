// One consistent view of a guest for a CLI verb: the machine, a pause that
// lasts as long as the snapshot, and the guest kernel decoded from that one
// freeze. Everything a verb reports comes from one Snapshot; the verb
// reports how long the guest was paused.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "cli/commands.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"

namespace hvpatch::cli {

class Snapshot {
public:
    // Opens the target, pauses it (if running) and decodes its kernel.
    // `global`: -c and --memory-path, as every verb opens its target.
    Snapshot(const std::string& target, const GlobalOptions& global);
    // Resumes (if it paused) — call before printing so the guest is paused
    // no longer than needed. Idempotent; the destructor calls it too.
    void release();
    ~Snapshot();

    Machine& machine() { return *machine_; }
    GuestKernel& kernel() { return *kernel_; }
    bool was_running() const { return was_running_; }
    // How long hvpatch kept the guest paused (so far, or until release()).
    std::chrono::nanoseconds paused_for() const;

private:
    std::unique_ptr<Machine> machine_;
    std::optional<PauseGuard> pause_;
    std::unique_ptr<GuestKernel> kernel_;
    bool was_running_ = false;
    std::optional<std::chrono::nanoseconds> paused_;
};

}  // namespace hvpatch::cli
