#include "vmm/libvirt/libvirt_machine.h"

#include "vmm/libvirt/dac_label.h"
#include "vmm/libvirt/libvirt_monitor.h"

namespace hvpatch {

std::unique_ptr<LibvirtMachine> LibvirtMachine::open(const std::string& name_or_uuid, const std::string& uri,
                                                     std::optional<MemoryAccessInfo::Path> memory_path) {
    auto domain = LibvirtDomain::lookup(LibvirtConnection::open(uri), name_or_uuid);
    QemuMachineOptions options;
    options.memory_path = memory_path;
    // The live definition carries the label libvirt gave this QEMU process.
    options.gdb_socket_owner = dac_label_owner(domain->live_xml(), domain->describe());
    return std::unique_ptr<LibvirtMachine>(new LibvirtMachine(std::move(domain), std::move(options)));
}

LibvirtMachine::LibvirtMachine(std::shared_ptr<LibvirtDomain> domain, QemuMachineOptions options)
    : QemuMachine(std::make_unique<LibvirtMonitor>(domain), domain->describe(), std::move(options)),
      domain_(domain),
      records_(domain) {}

MachineIdentity LibvirtMachine::identity() {
    MachineIdentity id;
    id.target = name();
    id.uuid = domain_->uuid();
    id.name = domain_->name();
    id.connection = domain_->connection().uri();
    return id;
}

}  // namespace hvpatch
