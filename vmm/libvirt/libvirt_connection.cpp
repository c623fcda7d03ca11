#include "vmm/libvirt/libvirt_connection.h"

#include <cctype>
#include <cstdlib>
#include <mutex>

#include <libvirt/virterror.h>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

// libvirt's default error handler prints every error to stderr; hvpatch
// reports errors itself, with context, from virGetLastError.
void ignore_libvirt_error(void*, virErrorPtr) {}

void quiet_libvirt_once() {
    static std::once_flag once;
    std::call_once(once, [] { virSetErrorFunc(nullptr, ignore_libvirt_error); });
}

bool looks_like_uuid(const std::string& text) {
    if (text.size() != 36) return false;
    for (std::size_t i = 0; i < text.size(); ++i) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? text[i] != '-' : !std::isxdigit(static_cast<unsigned char>(text[i]))) return false;
    }
    return true;
}

}  // namespace

std::string choose_libvirt_uri(const std::string& explicit_uri) {
    if (!explicit_uri.empty()) return explicit_uri;
    if (const char* env = std::getenv("LIBVIRT_DEFAULT_URI"); env && *env) return env;
    return "qemu:///system";
}

bool libvirt_uri_is_local(const std::string& uri) {
    auto scheme_end = uri.find("://");
    if (scheme_end == std::string::npos) return false;  // an alias or garbage: not provably local
    std::string scheme = uri.substr(0, scheme_end);
    if (auto plus = scheme.find('+'); plus != std::string::npos) {
        std::string transport = scheme.substr(plus + 1);
        if (transport != "unix") return false;
    }
    std::string rest = uri.substr(scheme_end + 3);
    return !rest.empty() && rest.front() == '/';  // no authority: this host
}

std::string libvirt_error_text(const std::string& what) {
    virErrorPtr err = virGetLastError();
    if (!err || !err->message) return what;
    return what + ": " + err->message;
}

int libvirt_last_error_code() {
    virErrorPtr err = virGetLastError();
    return err ? err->code : VIR_ERR_OK;
}

std::shared_ptr<LibvirtConnection> LibvirtConnection::open(const std::string& uri) {
    quiet_libvirt_once();
    std::string chosen = choose_libvirt_uri(uri);
    virConnectPtr conn = virConnectOpen(chosen.c_str());
    if (!conn) throw Error(ErrorKind::Unreachable, libvirt_error_text("cannot connect to libvirt at " + chosen));
    virConnSetErrorFunc(conn, nullptr, ignore_libvirt_error);
    return std::shared_ptr<LibvirtConnection>(new LibvirtConnection(conn, chosen));
}

LibvirtConnection::~LibvirtConnection() { virConnectClose(conn_); }

std::vector<std::string> LibvirtConnection::active_domain_names() {
    virDomainPtr* domains = nullptr;
    int n = virConnectListAllDomains(conn_, &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) throw Error(ErrorKind::Unreachable, libvirt_error_text("listing the domains of " + uri_));
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) {
        if (const char* name = virDomainGetName(domains[i])) names.emplace_back(name);
        virDomainFree(domains[i]);
    }
    std::free(domains);
    return names;
}

std::shared_ptr<LibvirtDomain> LibvirtDomain::lookup(std::shared_ptr<LibvirtConnection> conn,
                                                     const std::string& name_or_uuid) {
    if (name_or_uuid.empty()) throw Error(ErrorKind::Usage, "an empty domain name");
    virDomainPtr dom = nullptr;
    if (looks_like_uuid(name_or_uuid)) dom = virDomainLookupByUUIDString(conn->get(), name_or_uuid.c_str());
    if (!dom) dom = virDomainLookupByName(conn->get(), name_or_uuid.c_str());
    if (!dom)
        throw Error(ErrorKind::Unreachable,
                    libvirt_error_text("no domain '" + name_or_uuid + "' on " + conn->uri()));
    std::shared_ptr<LibvirtDomain> domain(new LibvirtDomain(std::move(conn), dom));
    int active = virDomainIsActive(dom);
    if (active < 0)
        throw Error(ErrorKind::Unreachable, libvirt_error_text(domain->describe() + ": cannot get its state"));
    if (active == 0)
        throw Error(ErrorKind::Unreachable, domain->describe() + " is shut off; hvpatch patches running domains");
    return domain;
}

LibvirtDomain::LibvirtDomain(std::shared_ptr<LibvirtConnection> conn, virDomainPtr dom)
    : conn_(std::move(conn)), dom_(dom) {
    if (const char* name = virDomainGetName(dom_)) name_ = name;
    char uuid[VIR_UUID_STRING_BUFLEN] = {};
    if (virDomainGetUUIDString(dom_, uuid) == 0) uuid_ = uuid;
}

LibvirtDomain::~LibvirtDomain() { virDomainFree(dom_); }

std::string LibvirtDomain::describe() const { return "domain " + name_ + " (" + conn_->uri() + ")"; }

std::string LibvirtDomain::live_xml() {
    char* xml = virDomainGetXMLDesc(dom_, 0);
    if (!xml) throw Error(ErrorKind::Unreachable, libvirt_error_text(describe() + ": cannot read its definition"));
    std::string text(xml);
    std::free(xml);
    return text;
}

bool LibvirtDomain::persistent() {
    int p = virDomainIsPersistent(dom_);
    if (p < 0) throw Error(ErrorKind::Unreachable, libvirt_error_text(describe() + ": cannot tell if it is persistent"));
    return p == 1;
}

}  // namespace hvpatch
