#include "vmm/libvirt/libvirt_monitor.h"

#include <cstdlib>

#include <libvirt/libvirt-qemu.h>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::size_t kQuoteBytes = 200;

std::string quote(const std::string& text) {
    return text.size() > kQuoteBytes ? text.substr(0, kQuoteBytes) + "..." : text;
}

}  // namespace

nlohmann::json qmp_return_value(const std::string& reply, const std::string& who, const std::string& command) {
    nlohmann::json msg = nlohmann::json::parse(reply, nullptr, /*allow_exceptions=*/false);
    if (msg.is_discarded() || !msg.is_object())
        throw Error(ErrorKind::Protocol, who + ": QMP '" + command + "' answered '" + quote(reply) + "'");
    if (auto err = msg.find("error"); err != msg.end()) {
        std::string cls = "GenericError", desc = quote(err->dump());
        if (err->is_object()) {
            if (auto c = err->find("class"); c != err->end() && c->is_string()) cls = c->get<std::string>();
            if (auto d = err->find("desc"); d != err->end() && d->is_string()) desc = d->get<std::string>();
        }
        throw Error(ErrorKind::Guest, who + ": QMP '" + command + "' failed: " + cls + ": " + desc);
    }
    auto ret = msg.find("return");
    if (ret == msg.end())
        throw Error(ErrorKind::Protocol, who + ": QMP '" + command + "' answered '" + quote(reply) + "'");
    return *ret;
}

LibvirtMonitor::LibvirtMonitor(std::shared_ptr<LibvirtDomain> domain)
    : domain_(std::move(domain)), found_state_(libvirt_state()) {}

std::pair<int, int> LibvirtMonitor::libvirt_state() {
    int state = -1, reason = -1;
    if (virDomainGetState(domain_->get(), &state, &reason, 0) < 0) return {-1, -1};
    return {state, reason};
}

bool LibvirtMonitor::qemu_on_this_host() const { return libvirt_uri_is_local(domain_->connection().uri()); }

void LibvirtMonitor::paused_again_after_running() {
    const std::pair<int, int> user_paused{VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER};
    auto now = libvirt_state();
    if (found_state_ != user_paused || now.first != VIR_DOMAIN_PAUSED || now == user_paused) return;
    cont();
    stop();
}

std::string LibvirtMonitor::send(const std::string& text, unsigned int flags, const std::string& what) {
    char* reply = nullptr;
    if (virDomainQemuMonitorCommand(domain_->get(), text.c_str(), &reply, flags) < 0 || !reply)
        throw Error(ErrorKind::Unreachable, libvirt_error_text(domain_->describe() + ": " + what));
    std::string out(reply);
    std::free(reply);
    return out;
}

nlohmann::json LibvirtMonitor::execute(const std::string& command, const nlohmann::json& arguments) {
    nlohmann::json request = {{"execute", command}};
    if (!arguments.is_null() && !(arguments.is_object() && arguments.empty())) request["arguments"] = arguments;
    std::string reply = send(request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 0,
                             "QMP '" + command + "' through libvirt");
    return qmp_return_value(reply, domain_->describe(), command);
}

std::string LibvirtMonitor::hmp(const std::string& command_line) {
    return send(command_line, VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP, "HMP '" + command_line + "' through libvirt");
}

void LibvirtMonitor::stop() {
    if (virDomainSuspend(domain_->get()) < 0)
        throw Error(ErrorKind::Unreachable, libvirt_error_text(domain_->describe() + ": suspending"));
}

void LibvirtMonitor::cont() {
    if (virDomainResume(domain_->get()) < 0)
        throw Error(ErrorKind::Unreachable, libvirt_error_text(domain_->describe() + ": resuming"));
}

}  // namespace hvpatch
