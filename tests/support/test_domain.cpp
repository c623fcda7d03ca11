#include "support/test_domain.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <libvirt/libvirt.h>

#include "hvpatch/error.h"
#include "support/test_guest.h"
#include "vmm/launcher.h"
#include "vmm/libvirt/libvirt_connection.h"

namespace hvpatch::test {
namespace {

std::string xml_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '\'': out += "&apos;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string domain_xml(const TestDomainOptions& o, const std::string& name, const std::string& guest_dir,
                       const std::string& workdir) {
    std::ostringstream x;
    x << "<domain type='qemu'>\n"
      << "  <name>" << xml_escape(name) << "</name>\n"
      << "  <memory unit='MiB'>" << o.memory_mib << "</memory>\n"
      << "  <vcpu>" << o.vcpus << "</vcpu>\n";
    if (o.shared_ram) x << "  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>\n";
    x << "  <os>\n"
      << "    <type arch='x86_64' machine='q35'>hvm</type>\n"
      << "    <kernel>" << xml_escape(guest_dir + "/vmlinuz") << "</kernel>\n"
      << "    <initrd>" << xml_escape(guest_dir + "/initramfs.cpio.gz") << "</initrd>\n"
      << "    <cmdline>" << xml_escape(std::string(kGuestKernelCmdline)) << "</cmdline>\n"
      << "  </os>\n"
      << "  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\n"
      << "  <devices>\n"
      << "    <serial type='file'><source path='" << xml_escape(workdir + "/console.log")
      << "'/><target port='0'/></serial>\n"
      << "    <serial type='unix'><source mode='bind' path='" << xml_escape(workdir + "/cmd.sock")
      << "'/><target port='1'/></serial>\n"
      << "    <memballoon model='none'/>\n"
      << "  </devices>\n"
      << "</domain>\n";
    return x.str();
}

}  // namespace

std::string test_domain_name(const std::string& helper, const std::string& suffix) {
    return "hvpt-" + helper + "-" + std::to_string(::getpid()) + "-" + suffix;
}

struct TestDomain::Handles {
    std::shared_ptr<LibvirtConnection> conn;
    virDomainPtr dom = nullptr;
};

std::unique_ptr<TestDomain> TestDomain::boot(const TestDomainOptions& options) {
    static std::atomic<int> counter{0};
    std::unique_ptr<TestDomain> d(new TestDomain());
    const std::string guest_dir = test_guest_dir();
    d->release_ = guest_release(guest_dir);
    d->name_ = options.name.empty() ? test_domain_name("test", std::to_string(++counter)) : options.name;
    d->uri_ = options.uri;
    d->persistent_ = options.persistent;
    char tmpl[] = "/tmp/hvpt-domain.XXXXXX";
    if (!mkdtemp(tmpl)) throw Error(ErrorKind::Internal, "cannot create a work directory for " + d->name_);
    d->workdir_ = tmpl;
    d->xml_ = domain_xml(options, d->name_, guest_dir, d->workdir_);

    d->handles_ = std::make_unique<Handles>();
    d->handles_->conn = LibvirtConnection::open(options.uri);
    virConnectPtr conn = d->handles_->conn->get();
    const std::string who = "test domain " + d->name_ + " (" + d->uri_ + ")";
    auto started = std::chrono::steady_clock::now();
    Deadline deadline(options.boot_timeout);
    if (options.persistent) {
        d->handles_->dom = virDomainDefineXML(conn, d->xml_.c_str());
        if (!d->handles_->dom) throw Error(ErrorKind::Unreachable, libvirt_error_text("defining " + who));
        if (virDomainCreate(d->handles_->dom) < 0)
            throw Error(ErrorKind::Unreachable, libvirt_error_text("starting " + who));
    } else {
        d->handles_->dom = virDomainCreateXML(conn, d->xml_.c_str(), 0);
        if (!d->handles_->dom) throw Error(ErrorKind::Unreachable, libvirt_error_text("creating " + who));
    }
    char uuid[VIR_UUID_STRING_BUFLEN] = {};
    if (virDomainGetUUIDString(d->handles_->dom, uuid) == 0) d->uuid_ = uuid;

    TestDomain* self = d.get();
    auto alive = [self] {
        if (virDomainIsActive(self->handles_->dom) != 1)
            throw Error(ErrorKind::Unreachable, "the test domain died while booting; " + self->post_mortem());
    };
    d->wait_until_ready(deadline, alive);
    d->connect_command_channel(d->workdir_ + "/cmd.sock", deadline, alive);
    d->boot_time_ =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
    return d;
}

TestDomain::~TestDomain() {
    close_command_channel();
    if (handles_ && handles_->dom) {
        if (virDomainIsActive(handles_->dom) == 1) virDomainDestroy(handles_->dom);
        if (persistent_) virDomainUndefineFlags(handles_->dom, 0);
        virDomainFree(handles_->dom);
    }
    std::error_code ec;
    if (!workdir_.empty()) std::filesystem::remove_all(workdir_, ec);
}

std::string TestDomain::console_log() const {
    std::ifstream in(workdir_ + "/console.log", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string TestDomain::post_mortem() {
    int state = -1, reason = -1;
    if (handles_ && handles_->dom) virDomainGetState(handles_->dom, &state, &reason, 0);
    return "domain " + name_ + " state " + std::to_string(state) + " reason " + std::to_string(reason) +
           "; console tail:\n" + console_tail(console_log());
}

CommandResult run_virsh(const std::string& uri, const std::vector<std::string>& args) {
    std::vector<std::string> argv{"virsh", "-c", uri};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, std::chrono::seconds(60));
}

std::string virsh_domstate(const std::string& uri, const std::string& domain) {
    CommandResult r = run_virsh(uri, {"domstate", "--reason", domain});
    if (r.exit_code != 0) throw std::runtime_error("virsh domstate " + domain + ": " + r.describe());
    return r.out.substr(0, r.out.find('\n'));
}

}  // namespace hvpatch::test
