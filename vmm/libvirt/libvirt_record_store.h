// VmRecordStore in a libvirt domain's <metadata>: one element in hvpatch's
// namespace (kVmRecordNamespace, prefix kVmRecordPrefix), written to the
// live domain and, when the domain is persistent, to its definition too.
#pragma once

#include <memory>

#include "hvpatch/machine.h"
#include "vmm/libvirt/libvirt_connection.h"

namespace hvpatch {

class LibvirtRecordStore final : public VmRecordStore {
public:
    explicit LibvirtRecordStore(std::shared_ptr<LibvirtDomain> domain) : domain_(std::move(domain)) {}
    std::string location() const override;
    std::optional<std::string> read() override;
    void write(const std::string& element_xml) override;
    void remove() override;

private:
    unsigned int write_flags();
    std::shared_ptr<LibvirtDomain> domain_;
};

}  // namespace hvpatch
