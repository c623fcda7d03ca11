// Where hvpatch keeps its record of a VM (applied_state.h): one place per
// VM, chosen once, so that the patcher reads and writes it without caring
// which.
//
//  - The VMM's record store (Machine::record_store(): libvirt's domain
//    <metadata>) when the Machine offers one. That record travels with the
//    domain: `virsh dumpxml` shows it, and another host, or an hvpatch with
//    an empty state directory, reads it back. It is the only copy: two
//    copies could disagree after a crash between their writes, and the
//    file one would be wrong on the host the domain migrates to.
//  - Otherwise the state directory's file (<state_dir>/<vm key>.json).
//
// A state file left from before the VM had a record store (same VM key)
// is read when the record store holds nothing, and removed once the state
// is written to the record store: it moves there on the next write.
//
// Writes are write-ahead (before the guest change they describe); a state
// with no patch left removes the record (file or element) rather than
// keep an empty one: "nothing applied" then looks the same everywhere.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "hvpatch/machine.h"
#include "patch/applied_state.h"

namespace hvpatch {

class VmStateStore {
public:
    virtual ~VmStateStore() = default;
    // For messages and audit records: "/var/lib/hvpatch/uuid-....json" or
    // the record store's location().
    virtual std::string location() const = 0;
    // nullopt when nothing is recorded. Throws Error(Internal) naming the
    // location for a record that cannot be read or is malformed.
    virtual std::optional<VmState> load() = 0;
    // Replaces the record; removes it when `state` has no patch.
    virtual void save(const VmState& state) = 0;
};

class FileVmStateStore : public VmStateStore {
public:
    FileVmStateStore(std::string state_dir, std::string vm_key);
    std::string location() const override;
    std::optional<VmState> load() override;
    void save(const VmState& state) override;

private:
    std::string state_dir_, vm_key_;
};

class RecordVmStateStore : public VmStateStore {
public:
    // `legacy`: the state directory's store for the same VM, read while the
    // record store holds nothing and removed after the first save.
    RecordVmStateStore(VmRecordStore& records, std::unique_ptr<VmStateStore> legacy);
    std::string location() const override;
    std::optional<VmState> load() override;
    void save(const VmState& state) override;

private:
    VmRecordStore& records_;
    std::unique_ptr<VmStateStore> legacy_;
    bool read_from_legacy_ = false;  // the last load found only the state file
};

// The store for `machine` (its record store if it has one, else the file
// in `state_dir`, "" = default_state_dir()); `vm_key` is its identity's key().
std::unique_ptr<VmStateStore> open_vm_state_store(Machine& machine, const std::string& state_dir,
                                                  const std::string& vm_key);

}  // namespace hvpatch
