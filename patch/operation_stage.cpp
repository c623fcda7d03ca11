#include "patch/operation_stage.h"

#include <array>
#include <utility>

namespace hvpatch {

namespace {
constexpr std::array<std::pair<OperationStage, std::string_view>, 6> kStages = {{
    {OperationStage::Checking, "checking"},
    {OperationStage::AlreadyApplied, "already-applied"},
    {OperationStage::NotApplied, "not-applied"},
    {OperationStage::Loading, "loading"},
    {OperationStage::Transition, "transition"},
    {OperationStage::Freeing, "freeing"},
}};
}  // namespace

std::string_view to_string(OperationStage stage) {
    for (const auto& [s, name] : kStages)
        if (s == stage) return name;
    return "?";
}

std::optional<OperationStage> operation_stage_from_string(std::string_view text) {
    for (const auto& [s, name] : kStages)
        if (name == text) return s;
    return std::nullopt;
}

bool changes_guest(OperationStage stage) {
    return stage == OperationStage::Loading || stage == OperationStage::Transition || stage == OperationStage::Freeing;
}

bool is_verdict(OperationStage stage) {
    return stage == OperationStage::AlreadyApplied || stage == OperationStage::NotApplied;
}

std::string_view to_string(OperationOutcome outcome) {
    switch (outcome) {
        case OperationOutcome::Applied: return "applied";
        case OperationOutcome::Reverted: return "reverted";
        case OperationOutcome::RolledBack: return "rolled-back";
        case OperationOutcome::Forced: return "forced";
    }
    return "?";
}

}  // namespace hvpatch
