#include "support/test_guest.h"

#include <map>
#include <optional>
#include <stdexcept>
#include <thread>

#include "hvpatch/error.h"
#include "support/run_command.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kReadyMarker = "HVPATCH-GUEST-READY ";

std::string tail(const std::string& text, std::size_t max_bytes = 3000) {
    return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
}

std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    return text;
}

// Takes the response to request `id` out of `buffer`:
//   @@BEGIN <id>@@\n<output>@@END <id> <status>@@\n
// Whatever precedes it (answers to earlier, abandoned requests) is dropped.
// nullopt while the response is incomplete.
std::optional<TestGuest::Result> take_response(std::string& buffer, const std::string& id) {
    const std::string begin = "@@BEGIN " + id + "@@\n";
    const std::string end = "@@END " + id + " ";
    std::size_t b = buffer.find(begin);
    if (b == std::string::npos) {
        // Keep only what could be the start of the marker.
        if (buffer.size() >= begin.size()) buffer.erase(0, buffer.size() - (begin.size() - 1));
        return std::nullopt;
    }
    std::size_t body = b + begin.size();
    std::size_t e = buffer.find(end, body);
    if (e == std::string::npos) return std::nullopt;
    std::size_t digits = e + end.size();
    std::size_t stop = digits;
    while (stop < buffer.size() && buffer[stop] >= '0' && buffer[stop] <= '9') ++stop;
    if (buffer.size() < stop + 3) return std::nullopt;
    if (stop == digits || buffer.compare(stop, 3, "@@\n") != 0)
        throw Error(ErrorKind::Protocol, "malformed end marker from the guest command loop: " +
                                             buffer.substr(e, std::min<std::size_t>(40, buffer.size() - e)));
    TestGuest::Result result{std::stoi(buffer.substr(digits, stop - digits)), buffer.substr(body, e - body)};
    buffer.erase(0, stop + 3);
    return result;
}


// Quotes `text` as one word for the guest's sh.
std::string shell_quote(const std::string& text) {
    std::string quoted = "'";
    for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

}  // namespace

std::string test_guest_dir(const std::string& flavour, const std::string& version) {
    // The script is cheap when cached, but asks apt each time (~0.5 s):
    // once per process is enough.
    static std::mutex mutex;
    static std::map<std::pair<std::string, std::string>, std::string> known;
    std::lock_guard lock(mutex);
    if (auto it = known.find({flavour, version}); it != known.end()) return it->second;

    std::vector<std::string> argv = {source_dir() + "/scripts/build-test-guest", "--print-dir"};
    if (!flavour.empty()) argv.insert(argv.end(), {"--flavour", flavour});
    if (!version.empty()) argv.insert(argv.end(), {"--version", version});
    // Cold, this downloads a ~70 MB kernel package.
    CommandResult result = run_command(argv, 15min);
    std::string dir = trim(result.out);
    if (result.exit_code != 0 || dir.empty())
        throw std::runtime_error("scripts/build-test-guest failed: " + result.describe());
    known[{flavour, version}] = dir;
    return dir;
}

std::unique_ptr<TestGuest> TestGuest::boot(const TestGuestOptions& options) {
    std::unique_ptr<TestGuest> guest(new TestGuest());
    guest->guest_dir_ = test_guest_dir(options.flavour, options.version);
    guest->release_ = guest_release(guest->guest_dir_);

    LaunchOptions launch = guest_launch_options(guest->guest_dir_);
    launch.vcpus = options.vcpus;
    launch.memory_mib = options.memory_mib;
    launch.cpu_model = options.cpu_model;
    launch.shared_ram = options.shared_ram;
    launch.extra_args = options.extra_args;
    if (!options.extra_append.empty()) launch.append += " " + options.extra_append;
    launch.command_port = true;

    auto started = Clock::now();
    Deadline deadline(options.boot_timeout);
    guest->vm_ = launch_vm(launch);
    guest->wait_until_ready(deadline);
    guest->probe_command_channel(deadline);
    guest->boot_time_ = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
    return guest;
}

TestGuest::~TestGuest() {
    channel_.close();
    if (vm_) vm_->stop();
}

std::string TestGuest::target() const { return "qmp:" + vm_->qmp_socket_path(); }

std::string TestGuest::console_log() const { return vm_->console_log(); }

std::string TestGuest::post_mortem() {
    return "QEMU " + vm_->status_text() + "; console tail:\n" + tail(vm_->console_log()) +
           "\n--- QEMU output ---\n" + vm_->qemu_log_tail();
}

void TestGuest::wait_until_ready(const Deadline& deadline) {
    while (true) {
        std::string log = vm_->console_log();
        if (std::size_t at = log.find(kReadyMarker); at != std::string::npos) {
            std::size_t eol = log.find('\n', at);
            if (eol != std::string::npos) {
                std::string booted = trim(log.substr(at + kReadyMarker.size(), eol - at - kReadyMarker.size()));
                if (booted != release_)
                    throw Error(ErrorKind::Guest, "the guest booted " + booted + ", expected " + release_);
                return;
            }
        }
        if (log.find("Kernel panic") != std::string::npos)
            throw Error(ErrorKind::Guest, "the test guest panicked while booting; " + post_mortem());
        if (!vm_->running()) throw Error(ErrorKind::Unreachable, "the test guest died while booting; " + post_mortem());
        if (deadline.expired())
            throw Error(ErrorKind::Timeout, "the test guest did not print " + std::string(kReadyMarker) +
                                                "in time; " + post_mortem());
        std::this_thread::sleep_for(50ms);
    }
}

// Serial input that arrives before the guest opened the port is lost, and a
// request may be cut in half: send probes (each after a newline that ends
// any partial line) until one is answered. Answers to the other probes come
// later and are dropped by take_response().
void TestGuest::probe_command_channel(const Deadline& deadline) {
    channel_ = Socket::connect_unix(vm_->command_socket_path(), 5s);
    std::vector<std::string> probes;
    while (!deadline.expired()) {
        probes.push_back("probe" + std::to_string(probes.size() + 1));
        channel_.send_all("\n" + probes.back() + " echo hvpatch-probe\n", deadline);
        Deadline slice(500ms);
        char buf[4096];
        while (!slice.expired()) {
            std::size_t n = channel_.recv_some_until(buf, sizeof buf, slice);
            pending_.append(buf, n);
            for (const auto& id : probes) {
                // take_response trims the buffer when it finds nothing, so
                // look for each probe in a copy.
                std::string copy = pending_;
                if (auto result = take_response(copy, id); result && result->output == "hvpatch-probe\n") {
                    pending_ = copy;
                    return;
                }
            }
        }
        if (!vm_->running()) throw Error(ErrorKind::Unreachable, "the test guest died while booting; " + post_mortem());
    }
    throw Error(ErrorKind::Timeout,
                "the guest command channel " + vm_->command_socket_path() + " did not answer; " + post_mortem());
}

TestGuest::Result TestGuest::run(const std::string& command, std::chrono::milliseconds timeout) {
    if (command.find('\n') != std::string::npos)
        throw Error(ErrorKind::Usage, "guest commands are one line: " + command);
    std::lock_guard lock(mutex_);
    const std::string id = "c" + std::to_string(next_id_++);
    Deadline deadline(timeout);
    // The guest kills the command a little after we stop waiting for it, so
    // that a command that hangs cannot block the channel for later ones.
    auto guest_seconds = std::chrono::ceil<std::chrono::seconds>(timeout).count() + 1;
    const std::string request =
        id + " timeout -s KILL " + std::to_string(guest_seconds) + " sh -c " + shell_quote(command) + "\n";
    try {
        channel_.send_all(request, deadline);
        char buf[16384];
        while (true) {
            if (auto result = take_response(pending_, id)) return *result;
            std::size_t n = channel_.recv_some_until(buf, sizeof buf, deadline);
            if (n == 0) {
                throw Error(ErrorKind::Timeout, "guest command `" + command + "` did not finish within " +
                                                    std::to_string(timeout.count()) + " ms (received so far: " +
                                                    tail(pending_, 500) + ")");
            }
            pending_.append(buf, n);
        }
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Unreachable) throw;
        throw Error(ErrorKind::Unreachable,
                    "guest command `" + command + "`: " + e.what() + "; " + post_mortem());
    }
}

std::string TestGuest::run_ok(const std::string& command, std::chrono::milliseconds timeout) {
    Result result = run(command, timeout);
    if (result.status != 0)
        throw std::runtime_error("guest command `" + command + "` exited with status " +
                                 std::to_string(result.status) + ":\n" + result.output);
    return result.output;
}

}  // namespace hvpatch::test
