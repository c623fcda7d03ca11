// QemuMonitor through libvirt: QMP and HMP commands go to the domain's QEMU
// by virDomainQemuMonitorCommand (libvirt-qemu), stop/cont are
// virDomainSuspend/virDomainResume so that libvirt's recorded state stays
// true. libvirt marks a domain that received monitor commands with the
// "custom-monitor" taint (in its log).
#pragma once

#include <memory>
#include <utility>

#include "vmm/libvirt/libvirt_connection.h"
#include "vmm/qemu/qemu_monitor.h"

namespace hvpatch {

class LibvirtMonitor final : public QemuMonitor {
public:
    // Records libvirt's state and reason of the domain as found.
    explicit LibvirtMonitor(std::shared_ptr<LibvirtDomain> domain);
    nlohmann::json execute(const std::string& command, const nlohmann::json& arguments) override;
    std::string hmp(const std::string& command_line) override;
    void stop() override;
    void cont() override;
    // A domain found "paused (user)" that libvirt now calls "paused
    // (unknown)" (it saw the gdbstub's stop as a QEMU event) is resumed and
    // suspended again through libvirt, so virsh shows what the operator set.
    // The guest then runs a few more milliseconds, as it did for the guest calls.
    void paused_again_after_running() override;
    bool qemu_on_this_host() const override;

private:
    std::string send(const std::string& text, unsigned int flags, const std::string& what);
    // virDomainGetState of the domain: {state, reason}; {-1, -1} if libvirt cannot tell.
    std::pair<int, int> libvirt_state();
    std::shared_ptr<LibvirtDomain> domain_;
    std::pair<int, int> found_state_;
};

// The "return" value of a QMP reply text as libvirt passes it through;
// Error(Guest) for an error reply, Error(Protocol) for anything that is not
// a QMP reply. `who` and `command` name the domain and command in messages.
nlohmann::json qmp_return_value(const std::string& reply, const std::string& who, const std::string& command);

}  // namespace hvpatch
