#include "support/test_guest.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <thread>
#include <tuple>

#include "hvpatch/error.h"
#include "patch/livepatch_module.h"
#include "support/run_command.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    return text;
}

}  // namespace

std::string test_guest_dir(const std::string& flavour, const std::string& version, const std::string& suite) {
    // The script is cheap when cached, but asks apt each time (~0.5 s):
    // once per process is enough.
    static std::mutex mutex;
    static std::map<std::tuple<std::string, std::string, std::string>, std::string> known;
    std::lock_guard lock(mutex);
    if (auto it = known.find({flavour, version, suite}); it != known.end()) return it->second;

    std::vector<std::string> argv = {source_dir() + "/scripts/build-test-guest", "--print-dir"};
    if (!flavour.empty()) argv.insert(argv.end(), {"--flavour", flavour});
    if (!version.empty()) argv.insert(argv.end(), {"--version", version});
    if (!suite.empty()) argv.insert(argv.end(), {"--suite", suite});
    // Cold, this downloads a ~70 MB kernel package.
    CommandResult result = run_command(argv, 15min);
    std::string dir = trim(result.out);
    if (result.exit_code != 0 || dir.empty())
        throw std::runtime_error("scripts/build-test-guest failed: " + result.describe());
    known[{flavour, version, suite}] = dir;
    return dir;
}

std::unique_ptr<TestGuest> TestGuest::boot(const TestGuestOptions& options) {
    std::unique_ptr<TestGuest> guest(new TestGuest());
    guest->guest_dir_ = test_guest_dir(options.flavour, options.version, options.suite);
    guest->release_ = guest_release(guest->guest_dir_);

    LaunchOptions launch = guest_launch_options(guest->guest_dir_);
    launch.vcpus = options.vcpus;
    launch.memory_mib = options.memory_mib;
    launch.cpu_model = options.cpu_model;
    launch.shared_ram = options.shared_ram;
    launch.extra_args = options.extra_args;
    launch.uuid = options.uuid;
    if (!options.extra_append.empty()) launch.append += " " + options.extra_append;
    launch.command_port = true;

    auto started = Clock::now();
    Deadline deadline(options.boot_timeout);
    guest->vm_ = launch_vm(launch);
    TestGuest* self = guest.get();
    auto alive = [self] {
        if (!self->vm_->running())
            throw Error(ErrorKind::Unreachable, "the test guest died while booting; " + self->post_mortem());
    };
    guest->wait_until_ready(deadline, alive);
    guest->connect_command_channel(guest->vm_->command_socket_path(), deadline, alive);
    guest->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    return guest;
}

TestGuest::~TestGuest() {
    close_command_channel();
    if (vm_) vm_->stop();
}

std::string TestGuest::target() const { return "qmp:" + vm_->qmp_socket_path(); }

std::string TestGuest::console_log() const { return vm_->console_log(); }

std::string TestGuest::post_mortem() {
    return "QEMU " + vm_->status_text() + "; console tail:\n" + console_tail(vm_->console_log()) +
           "\n--- QEMU output ---\n" + vm_->qemu_log_tail();
}

}  // namespace hvpatch::test
