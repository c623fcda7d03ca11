#include "vmm/guest_command_channel.h"

#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

using namespace std::chrono_literals;

std::string tail(const std::string& text, std::size_t max_bytes) {
    return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
}

// Takes the response to request `id` out of `buffer`:
//   @@BEGIN <id>@@\n<output>@@END <id> <status>@@\n
// Whatever precedes it (answers to earlier, abandoned requests) is dropped.
// nullopt while the response is incomplete.
std::optional<GuestCommandResult> take_response(std::string& buffer, const std::string& id) {
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
    GuestCommandResult result{std::stoi(buffer.substr(digits, stop - digits)), buffer.substr(body, e - body)};
    buffer.erase(0, stop + 3);
    return result;
}

}  // namespace

std::string guest_shell_quote(const std::string& text) {
    std::string quoted = "'";
    for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return quoted + "'";
}

GuestCommandChannel GuestCommandChannel::connect(const std::string& socket_path, const Deadline& deadline,
                                                 const std::function<void()>& alive) {
    GuestCommandChannel channel;
    channel.socket_ = Socket::connect_unix(socket_path, 5s);
    std::vector<std::string> probes;
    while (!deadline.expired()) {
        probes.push_back("probe" + std::to_string(probes.size() + 1));
        channel.socket_.send_all("\n" + probes.back() + " echo hvpatch-probe\n", deadline);
        Deadline slice(500ms);
        char buf[4096];
        while (!slice.expired()) {
            std::size_t n = channel.socket_.recv_some_until(buf, sizeof buf, slice);
            channel.pending_.append(buf, n);
            for (const auto& id : probes) {
                // take_response trims the buffer when it finds nothing, so
                // look for each probe in a copy.
                std::string copy = channel.pending_;
                if (auto result = take_response(copy, id); result && result->output == "hvpatch-probe\n") {
                    channel.pending_ = copy;
                    return channel;
                }
            }
        }
        if (alive) alive();
    }
    throw Error(ErrorKind::Timeout, "the guest command channel " + socket_path + " did not answer");
}

GuestCommandResult GuestCommandChannel::run(const std::string& command, std::chrono::milliseconds timeout) {
    if (command.find('\n') != std::string::npos)
        throw Error(ErrorKind::Usage, "guest commands are one line: " + command);
    const std::string id = "c" + std::to_string(next_id_++);
    Deadline deadline(timeout);
    // The guest kills the command a little after we stop waiting for it, so
    // that a command that hangs cannot block the channel for later ones.
    auto guest_seconds = std::chrono::ceil<std::chrono::seconds>(timeout).count() + 1;
    const std::string request =
        id + " timeout -s KILL " + std::to_string(guest_seconds) + " sh -c " + guest_shell_quote(command) + "\n";
    socket_.send_all(request, deadline);
    char buf[16384];
    while (true) {
        if (auto result = take_response(pending_, id)) return *result;
        std::size_t n = socket_.recv_some_until(buf, sizeof buf, deadline);
        if (n == 0)
            throw Error(ErrorKind::Timeout, "guest command `" + command + "` did not finish within " +
                                                std::to_string(timeout.count()) + " ms (received so far: " +
                                                tail(pending_, 500) + ")");
        pending_.append(buf, n);
    }
}

}  // namespace hvpatch
