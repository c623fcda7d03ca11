#include "vmm/libvirt/libvirt_record_store.h"

#include <cstdlib>

#include <libvirt/virterror.h>

#include "hvpatch/error.h"

namespace hvpatch {

std::string LibvirtRecordStore::location() const { return "<metadata> of " + domain_->describe(); }

std::optional<std::string> LibvirtRecordStore::read() {
    char* xml = virDomainGetMetadata(domain_->get(), VIR_DOMAIN_METADATA_ELEMENT, kVmRecordNamespace,
                                     VIR_DOMAIN_AFFECT_LIVE);
    if (!xml) {
        if (libvirt_last_error_code() == VIR_ERR_NO_DOMAIN_METADATA) return std::nullopt;
        throw Error(ErrorKind::Unreachable, libvirt_error_text("reading hvpatch's record in the " + location()));
    }
    std::string text(xml);
    std::free(xml);
    return text;
}

unsigned int LibvirtRecordStore::write_flags() {
    unsigned int flags = VIR_DOMAIN_AFFECT_LIVE;
    if (domain_->persistent()) flags |= VIR_DOMAIN_AFFECT_CONFIG;
    return flags;
}

void LibvirtRecordStore::write(const std::string& element_xml) {
    if (virDomainSetMetadata(domain_->get(), VIR_DOMAIN_METADATA_ELEMENT, element_xml.c_str(), kVmRecordPrefix,
                             kVmRecordNamespace, write_flags()) < 0)
        throw Error(ErrorKind::Unreachable, libvirt_error_text("writing hvpatch's record in the " + location()));
}

void LibvirtRecordStore::remove() {
    // libvirt removes the element in this namespace, present or not.
    if (virDomainSetMetadata(domain_->get(), VIR_DOMAIN_METADATA_ELEMENT, nullptr, nullptr, kVmRecordNamespace,
                             write_flags()) < 0)
        throw Error(ErrorKind::Unreachable, libvirt_error_text("removing hvpatch's record from the " + location()));
}

}  // namespace hvpatch
