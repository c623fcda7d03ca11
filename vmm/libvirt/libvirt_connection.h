// A libvirt connection and a domain looked up on it, as RAII handles.
//
// The URI is chosen as virsh chooses it: an explicit one (-c URI), else
// $LIBVIRT_DEFAULT_URI, else qemu:///system. libvirt never prints: its
// errors become hvpatch::Error naming the URI and the domain.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <libvirt/libvirt.h>

namespace hvpatch {

// `explicit_uri` if not empty, else $LIBVIRT_DEFAULT_URI, else qemu:///system.
std::string choose_libvirt_uri(const std::string& explicit_uri);

// Whether a libvirt URI reaches a daemon on this host: no host part
// ("qemu:///system", "qemu+unix:///session?socket=..."). Any named host,
// "localhost" too, counts as remote: hvpatch then cannot be sure the QEMU
// process it would read is the domain's.
bool libvirt_uri_is_local(const std::string& uri);

// libvirt's last error on this thread as "what: libvirt's message", or
// `what` alone when libvirt recorded none.
std::string libvirt_error_text(const std::string& what);
// The code of libvirt's last error on this thread (VIR_ERR_OK if none).
int libvirt_last_error_code();

class LibvirtConnection {
public:
    // Opens `choose_libvirt_uri(uri)` read-write. Error(Unreachable) naming
    // the URI when libvirt cannot be reached there.
    static std::shared_ptr<LibvirtConnection> open(const std::string& uri);
    ~LibvirtConnection();
    LibvirtConnection(const LibvirtConnection&) = delete;
    LibvirtConnection& operator=(const LibvirtConnection&) = delete;

    virConnectPtr get() const { return conn_; }
    // The URI actually used (as given or chosen, e.g. "qemu:///system").
    const std::string& uri() const { return uri_; }
    // Names of the active (running or paused) domains.
    std::vector<std::string> active_domain_names();

private:
    LibvirtConnection(virConnectPtr conn, std::string uri) : conn_(conn), uri_(std::move(uri)) {}
    virConnectPtr conn_;
    std::string uri_;
};

class LibvirtDomain {
public:
    // Looks a domain up by UUID (when `name_or_uuid` parses as one) or by
    // name. Error(Unreachable) naming the domain and the URI when there is
    // none or when it is not active (shut off).
    static std::shared_ptr<LibvirtDomain> lookup(std::shared_ptr<LibvirtConnection> conn,
                                                 const std::string& name_or_uuid);
    ~LibvirtDomain();
    LibvirtDomain(const LibvirtDomain&) = delete;
    LibvirtDomain& operator=(const LibvirtDomain&) = delete;

    virDomainPtr get() const { return dom_; }
    LibvirtConnection& connection() const { return *conn_; }
    const std::string& name() const { return name_; }
    const std::string& uuid() const { return uuid_; }
    // "domain web-01 (qemu:///system)", for messages.
    std::string describe() const;
    // The live definition (virDomainGetXMLDesc, flags 0).
    std::string live_xml();
    bool persistent();

private:
    LibvirtDomain(std::shared_ptr<LibvirtConnection> conn, virDomainPtr dom);
    std::shared_ptr<LibvirtConnection> conn_;
    virDomainPtr dom_;
    std::string name_, uuid_;
};

}  // namespace hvpatch
