// Where an apply or revert is, and how it ended, as types: what a caller
// that shows progress or must tell a refusal from a failure (fleet) reads.
#pragma once

#include <optional>
#include <string_view>

namespace hvpatch {

enum class OperationStage {
    Checking,        // the guest's kernel is open; nothing changed yet
    AlreadyApplied,  // verdict: apply of a patch that is applied (a refusal follows)
    NotApplied,      // verdict: revert of a name not recorded for this boot (a refusal follows)
    Loading,         // apply: allocating and writing module memory (changes the guest)
    Transition,      // entries go to the trampolines, callbacks run (changes the guest)
    Freeing,         // revert of a patch left loading/freeing (changes the guest)
};
// "checking", "already-applied", "not-applied", "loading", "transition", "freeing".
std::string_view to_string(OperationStage stage);
std::optional<OperationStage> operation_stage_from_string(std::string_view text);
// Whether the guest may have been changed once this stage was reached.
bool changes_guest(OperationStage stage);
bool is_verdict(OperationStage stage);

enum class OperationOutcome {
    Applied,
    Reverted,
    RolledBack,  // apply timed out and was undone (reported as an error)
    Forced,      // --force switched blocked tasks
};
// "applied", "reverted", "rolled-back", "forced".
std::string_view to_string(OperationOutcome outcome);

}  // namespace hvpatch
