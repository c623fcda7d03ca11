// What QemuMachine needs from QEMU's monitor, whoever carries it: a QMP
// socket hvpatch connects to itself (QmpSocketMonitor), or libvirt's
// pass-through of monitor commands to a domain it manages (LibvirtMonitor).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace hvpatch {

class QemuMonitor {
public:
    virtual ~QemuMonitor() = default;
    // Runs a QMP command; returns its "return" value. A QMP error reply
    // throws Error(Guest) naming the command, error class and description.
    virtual nlohmann::json execute(const std::string& command,
                                   const nlohmann::json& arguments = nlohmann::json::object()) = 0;
    // Runs an HMP command line; returns its text output.
    virtual std::string hmp(const std::string& command_line) = 0;
    // Stops / continues every vCPU the way the monitor's owner wants it done
    // (libvirt: virDomainSuspend/virDomainResume, so that libvirt records the
    // pause as its own instead of learning of it from a QEMU event).
    virtual void stop() = 0;
    virtual void cont() = 0;
    // Called once at the end when the VM was found paused, hvpatch had to
    // let it run meanwhile (guest calls) and left it paused again by
    // stopping it through the gdbstub. An owner that records why a VM is
    // paused (libvirt: "paused (user)") learned of that stop only as a QEMU
    // event; this is its chance to put its record back as it was.
    virtual void paused_again_after_running() {}
    // Whether the QEMU behind this monitor runs on this host, so that its
    // process can be read directly (a UNIX socket: yes; libvirt: when the
    // connection URI names no remote host).
    virtual bool qemu_on_this_host() const = 0;
    // The QEMU process, when the monitor's transport tells it (the peer of
    // a UNIX socket); nullopt otherwise. Only a hint: QemuMachine checks it
    // against the vCPU threads QEMU reports.
    virtual std::optional<pid_t> qemu_process_hint() const { return std::nullopt; }
};

}  // namespace hvpatch
