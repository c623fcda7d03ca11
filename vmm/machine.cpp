#include "hvpatch/machine.h"

#include <cctype>

#include "hvpatch/error.h"
#include "vmm/libvirt/libvirt_connection.h"
#include "vmm/libvirt/libvirt_machine.h"
#include "vmm/qemu/qemu_machine.h"
#include "vmm/qemu/qmp_socket_monitor.h"

namespace hvpatch {

std::unique_ptr<Machine> open_machine(const std::string& target, const std::string& connection,
                                      std::optional<MemoryAccessInfo::Path> memory_path) {
    const std::string qmp_prefix = "qmp:";
    if (target.rfind(qmp_prefix, 0) == 0) {
        std::string path = target.substr(qmp_prefix.size());
        if (path.empty()) throw Error(ErrorKind::Usage, "target 'qmp:' needs a socket path: qmp:PATH");
        // QmpClient's errors already name the socket ("qmp:PATH ...").
        QemuMachineOptions options;
        options.memory_path = memory_path;
        return std::make_unique<QemuMachine>(std::make_unique<QmpSocketMonitor>(QmpClient::connect(path)), target,
                                             options);
    }
    if (target.empty()) throw Error(ErrorKind::Usage, "an empty target: expected a libvirt domain or qmp:PATH");
    // libvirt refuses '/' in domain names, so such a target was meant as a
    // path (or a URI): say how to write it instead of looking it up.
    if (target.find('/') != std::string::npos)
        throw Error(ErrorKind::Usage, "target '" + target +
                                          "' is neither qmp:PATH nor a libvirt domain name or UUID (domain names cannot "
                                          "contain '/'); a QMP socket is written qmp:" + target +
                                          ", a libvirt connection is given with -c URI");
    return LibvirtMachine::open(target, connection, memory_path);
}

std::vector<std::string> list_running_domains(const std::string& connection) {
    return LibvirtConnection::open(connection)->active_domain_names();
}

const char* memory_path_name(MemoryAccessInfo::Path path) {
    switch (path) {
        case MemoryAccessInfo::Path::MappedFile: return "mapped-file";
        case MemoryAccessInfo::Path::ProcessMemory: return "process-memory";
        case MemoryAccessInfo::Path::GdbStub: return "gdbstub";
    }
    return "unknown";
}

std::optional<MemoryAccessInfo::Path> memory_path_from_name(const std::string& name) {
    if (name.empty() || name == "auto") return std::nullopt;
    for (auto path : {MemoryAccessInfo::Path::MappedFile, MemoryAccessInfo::Path::ProcessMemory,
                      MemoryAccessInfo::Path::GdbStub})
        if (name == memory_path_name(path)) return path;
    throw Error(ErrorKind::Usage,
                "memory path '" + name + "': expected auto, mapped-file, process-memory or gdbstub");
}

bool is_real_uuid(const std::string& uuid) {
    return !uuid.empty() && uuid.find_first_not_of("0-") != std::string::npos;
}

std::string MachineIdentity::key() const {
    auto safe = [](std::string text) {
        for (char& c : text)
            if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
        return text;
    };
    if (is_real_uuid(uuid)) return "uuid-" + safe(uuid);
    return "target-" + safe(target);
}

PauseGuard::PauseGuard(Machine& machine) : machine_(machine), start_(std::chrono::steady_clock::now()) {
    if (machine_.run_state() == RunState::Running) {
        machine_.pause();
        paused_by_us_ = true;
        start_ = std::chrono::steady_clock::now();
    }
}

PauseGuard::~PauseGuard() {
    if (!paused_by_us_) return;
    try {
        machine_.resume();
    } catch (...) {
        // The Machine's own destructor restores the run state it found;
        // nothing more can be done here without throwing from a destructor.
    }
}

std::chrono::nanoseconds PauseGuard::paused_for() const {
    return std::chrono::steady_clock::now() - start_;
}

}  // namespace hvpatch
