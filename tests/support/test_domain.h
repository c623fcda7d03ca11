// The test guest booted as a libvirt domain, for tests of libvirt targets.
//
//   TestDomainOptions o;
//   o.name = test_domain_name("libvirt", "a");   // "hvpt-libvirt-<pid>-a"
//   auto dom = TestDomain::boot(o);               // returns once the guest is ready
//   dom->run_ok("cat /proc/cmdline");             // the guest's command loop (GuestShell)
//   run hvpatch on dom->name() or dom->uuid() with -c dom->uri()
//   // the destructor destroys the domain (and undefines it if persistent)
//
// The domain is <domain type='qemu'> (TCG) with direct kernel boot of
// scripts/build-test-guest's kernel and initramfs (kGuestKernelCmdline),
// its console (ttyS0) in a file and the command loop (ttyS1) on a UNIX
// socket, both in a private work directory. Needs a running libvirtd
// (scripts/libvirt-daemon start) whose QEMU runs as root (that script's
// set-up: the work directory is root's).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "support/guest_shell.h"
#include "support/run_command.h"

namespace hvpatch::test {

struct TestDomainOptions {
    std::string name;           // the domain's name; "" = test_domain_name("test", <counter>)
    std::string uri = "qemu:///system";
    int vcpus = 2;
    int memory_mib = 512;
    // <memoryBacking> with a shared file: hvpatch reads RAM from the file
    // (fast path); false: plain RAM, read through QEMU's gdbstub (slow path).
    bool shared_ram = true;
    // Defined (virDomainDefineXML) and started, so that it has a persistent
    // configuration (virsh dumpxml --inactive); else transient
    // (virDomainCreateXML).
    bool persistent = false;
    std::chrono::milliseconds boot_timeout{90000};  // create to a working command channel
};

// "hvpt-<helper>-<pid>-<suffix>": names the creator so parallel helpers'
// domains never clash and a leftover domain says whose it is.
std::string test_domain_name(const std::string& helper, const std::string& suffix);

// virsh -c URI ARGS... (60 s timeout), as an operator would run it.
CommandResult run_virsh(const std::string& uri, const std::vector<std::string>& args);
// The first line of `virsh domstate --reason DOMAIN`: "running (unpaused)",
// "paused (user)", ... Throws std::runtime_error with virsh's output if it fails.
std::string virsh_domstate(const std::string& uri, const std::string& domain);

class TestDomain : public GuestShell {
public:
    // Builds (or finds) the test guest, creates the domain and returns once
    // the guest printed HVPATCH-GUEST-READY and its command loop answers.
    // Throws hvpatch::Error (with the console tail) otherwise; a domain it
    // created is destroyed again.
    static std::unique_ptr<TestDomain> boot(const TestDomainOptions& options = {});
    // Destroys the domain (undefines it if persistent) and removes the work
    // directory. Never throws.
    ~TestDomain() override;
    TestDomain(const TestDomain&) = delete;
    TestDomain& operator=(const TestDomain&) = delete;

    const std::string& name() const { return name_; }
    const std::string& uuid() const { return uuid_; }
    const std::string& uri() const { return uri_; }
    // The XML the domain was created from.
    const std::string& definition() const { return xml_; }
    // Wall time from create to a working command channel.
    std::chrono::milliseconds boot_time() const { return boot_time_; }
    std::string console_log() const override;

private:
    TestDomain() = default;
    std::string post_mortem() override;
    struct Handles;
    std::unique_ptr<Handles> handles_;
    std::string name_, uuid_, uri_, xml_, workdir_;
    bool persistent_ = false;
    std::chrono::milliseconds boot_time_{0};
};

}  // namespace hvpatch::test
