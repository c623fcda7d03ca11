// Machine backend for a libvirt domain: QemuMachine driven through
// libvirt's monitor pass-through (LibvirtMonitor), named and identified as
// libvirt knows the domain, with its <metadata> as the VM's record store.
#pragma once

#include <memory>
#include <string>

#include "vmm/libvirt/libvirt_connection.h"
#include "vmm/libvirt/libvirt_record_store.h"
#include "vmm/qemu/qemu_machine.h"

namespace hvpatch {

class LibvirtMachine final : public QemuMachine {
public:
    // Looks up `name_or_uuid` on `uri` ("" = as virsh chooses) and opens it.
    // `memory_path` as QemuMachineOptions::memory_path.
    static std::unique_ptr<LibvirtMachine> open(const std::string& name_or_uuid, const std::string& uri,
                                                std::optional<MemoryAccessInfo::Path> memory_path = std::nullopt);

    MachineIdentity identity() override;
    VmRecordStore* record_store() override { return &records_; }

private:
    // The monitor QemuMachine owns holds the domain (and its connection)
    // too: QemuMachine's destructor, which restores the run state through
    // it, runs after this class's members are gone.
    LibvirtMachine(std::shared_ptr<LibvirtDomain> domain, QemuMachineOptions options);
    std::shared_ptr<LibvirtDomain> domain_;
    LibvirtRecordStore records_;
};

}  // namespace hvpatch
