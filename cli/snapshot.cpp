#include "cli/snapshot.h"

namespace hvpatch::cli {

Snapshot::Snapshot(const std::string& target, const GlobalOptions& global) : machine_(open_target(target, global)) {
    was_running_ = machine_->run_state() == RunState::Running;
    pause_.emplace(*machine_);
    kernel_ = GuestKernel::open(*machine_);
}

void Snapshot::release() {
    if (!pause_) return;
    paused_ = pause_->paused_for();
    pause_.reset();
}

Snapshot::~Snapshot() { release(); }

std::chrono::nanoseconds Snapshot::paused_for() const {
    if (paused_) return *paused_;
    return pause_ ? pause_->paused_for() : std::chrono::nanoseconds{0};
}

}  // namespace hvpatch::cli
