#include "support/guest_shell.h"

#include <cstdint>
#include <span>
#include <stdexcept>
#include <thread>

#include "hvpatch/error.h"
#include "patch/livepatch_module.h"

namespace hvpatch::test {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kReadyMarker = "HVPATCH-GUEST-READY ";

std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    return text;
}

// RFC 4648 base64 with padding, no line breaks (what busybox base64 -d reads).
std::string base64_encode(std::string_view bytes) {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        std::uint32_t v = static_cast<unsigned char>(bytes[i]) << 16 | static_cast<unsigned char>(bytes[i + 1]) << 8 |
                          static_cast<unsigned char>(bytes[i + 2]);
        for (int shift : {18, 12, 6, 0}) out += kAlphabet[(v >> shift) & 63];
    }
    if (std::size_t rest = bytes.size() - i) {
        std::uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
        if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
        out += kAlphabet[(v >> 18) & 63];
        out += kAlphabet[(v >> 12) & 63];
        out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
        out += '=';
    }
    return out;
}

}  // namespace

std::string console_tail(const std::string& text, std::size_t max_bytes) {
    return text.size() > max_bytes ? "..." + text.substr(text.size() - max_bytes) : text;
}

void GuestShell::wait_until_ready(const Deadline& deadline, const std::function<void()>& alive) {
    while (true) {
        std::string log = console_log();
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
        alive();
        if (deadline.expired())
            throw Error(ErrorKind::Timeout, "the test guest did not print " + std::string(kReadyMarker) +
                                                "in time; " + post_mortem());
        std::this_thread::sleep_for(50ms);
    }
}

void GuestShell::connect_command_channel(const std::string& socket_path, const Deadline& deadline,
                                         const std::function<void()>& alive) {
    try {
        channel_ = GuestCommandChannel::connect(socket_path, deadline, alive);
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Timeout) throw;
        throw Error(ErrorKind::Timeout, std::string(e.what()) + "; " + post_mortem());
    }
}

GuestShell::Result GuestShell::run(const std::string& command, std::chrono::milliseconds timeout) {
    std::lock_guard lock(mutex_);
    try {
        GuestCommandResult result = channel_.run(command, timeout);
        return {result.status, std::move(result.output)};
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Unreachable) throw;
        throw Error(ErrorKind::Unreachable,
                    "guest command `" + command + "`: " + e.what() + "; " + post_mortem());
    }
}

std::string GuestShell::run_ok(const std::string& command, std::chrono::milliseconds timeout) {
    Result result = run(command, timeout);
    if (result.status != 0)
        throw std::runtime_error("guest command `" + command + "` exited with status " +
                                 std::to_string(result.status) + ":\n" + result.output);
    return result.output;
}

void GuestShell::put_file(const std::string& guest_path, std::string_view bytes) {
    if (guest_path.empty() || guest_path[0] != '/' || guest_path.back() == '/' ||
        guest_path.find_first_of("\n\r'") != std::string::npos)
        throw Error(ErrorKind::Usage, "put_file: the guest path must be absolute, name a file and have no quote or "
                                      "line break: " + guest_path);
    // One command line is one argv string for the guest's `sh -c` (at most
    // 128 KiB); 48 KiB of base64 is ~3.5 s of serial input under TCG.
    constexpr std::size_t kChunk = 48 * 1024;
    const std::string encoded = base64_encode(bytes);
    const std::string part = guest_shell_quote(guest_path + ".part");
    const std::string b64 = guest_shell_quote(guest_path + ".part.b64");
    run_ok("rm -f " + b64 + " && : > " + b64);
    for (std::size_t at = 0; at < encoded.size(); at += kChunk)
        run_ok("printf %s '" + encoded.substr(at, kChunk) + "' >> " + b64, std::chrono::seconds(60));
    std::string sum = run_ok("base64 -d < " + b64 + " > " + part + " && rm -f " + b64 + " && chmod 0644 " + part +
                             " && mv -f " + part + " " + guest_shell_quote(guest_path) + " && sha256sum " +
                             guest_shell_quote(guest_path));
    const std::string expected = sha256_hex(std::as_bytes(std::span(bytes.data(), bytes.size())));
    if (sum.substr(0, 64) != expected)
        throw Error(ErrorKind::Protocol, "put_file: the guest's " + guest_path + " (" + std::to_string(bytes.size()) +
                                             " bytes sent) has sha256 " + trim(sum) + ", expected " + expected);
}

}  // namespace hvpatch::test
