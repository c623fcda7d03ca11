// QemuMonitor over a QMP socket hvpatch holds itself (target "qmp:PATH").
#pragma once

#include "vmm/qemu/qemu_monitor.h"
#include "vmm/qemu/qmp_client.h"

namespace hvpatch {

class QmpSocketMonitor final : public QemuMonitor {
public:
    explicit QmpSocketMonitor(QmpClient qmp) : qmp_(std::move(qmp)) {}
    nlohmann::json execute(const std::string& command, const nlohmann::json& arguments) override {
        return qmp_.execute(command, arguments);
    }
    std::string hmp(const std::string& command_line) override { return qmp_.hmp(command_line); }
    void stop() override { qmp_.execute("stop"); }
    void cont() override { qmp_.execute("cont"); }
    bool qemu_on_this_host() const override { return true; }
    std::optional<pid_t> qemu_process_hint() const override { return qmp_.peer_process(); }

private:
    QmpClient qmp_;
};

}  // namespace hvpatch
