#include "patch/vm_state_store.h"

#include <filesystem>

#include "hvpatch/error.h"
#include "patch/operation_lock.h"
#include "patch/state_file.h"
#include "patch/vm_state_xml.h"

namespace hvpatch {

FileVmStateStore::FileVmStateStore(std::string state_dir, std::string vm_key)
    : state_dir_(std::move(state_dir)), vm_key_(std::move(vm_key)) {}

std::string FileVmStateStore::location() const { return vm_state_path(state_dir_, vm_key_); }

std::optional<VmState> FileVmStateStore::load() { return load_vm_state(state_dir_, vm_key_); }

void FileVmStateStore::save(const VmState& state) {
    const std::string path = location();
    if (state.patches.empty()) {
        std::error_code ec;
        std::filesystem::remove(path, ec);
        if (ec) throw Error(ErrorKind::Internal, path + ": cannot remove: " + ec.message());
        return;
    }
    write_json_atomically(path, to_json(state));
}

RecordVmStateStore::RecordVmStateStore(VmRecordStore& records, std::unique_ptr<VmStateStore> legacy)
    : records_(records), legacy_(std::move(legacy)) {}

std::string RecordVmStateStore::location() const {
    if (read_from_legacy_ && legacy_)
        return legacy_->location() + " (moves to the " + records_.location() + " on the next write)";
    return records_.location();
}

std::optional<VmState> RecordVmStateStore::load() {
    std::optional<std::string> element = records_.read();
    if (!element) {
        if (!legacy_) return std::nullopt;
        auto state = legacy_->load();
        read_from_legacy_ = state.has_value();
        return state;
    }
    try {
        return vm_state_from_xml(*element, records_.location());
    } catch (const Error& e) {
        throw Error(e.kind(), std::string(e.what()) + " (`virsh metadata DOMAIN --uri " + kVmRecordNamespace +
                                  "` shows it; hvpatch does not act on a record it cannot read)");
    }
}

void RecordVmStateStore::save(const VmState& state) {
    if (state.patches.empty()) records_.remove();
    else records_.write(vm_state_to_xml(state));
    // The state lives in the record store now: an older state file for
    // this VM would only mislead a later reader.
    if (legacy_) {
        legacy_->save(VmState{});
        legacy_.reset();
    }
}

std::unique_ptr<VmStateStore> open_vm_state_store(Machine& machine, const std::string& state_dir,
                                                  const std::string& vm_key) {
    auto file = std::make_unique<FileVmStateStore>(state_dir.empty() ? default_state_dir() : state_dir, vm_key);
    if (VmRecordStore* records = machine.record_store())
        return std::make_unique<RecordVmStateStore>(*records, std::move(file));
    return file;
}

}  // namespace hvpatch
