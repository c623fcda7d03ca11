#include "vmm/qemu/qmp_client.h"

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <utility>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

// A single message larger than this is not something QEMU sends (the biggest
// real replies, e.g. `info mtree` or query-qmp-schema, are a few MiB).
constexpr std::size_t kMaxMessageBytes = 64u << 20;
// JSON nesting deeper than this is refused before it reaches the parser.
constexpr int kMaxNesting = 512;
// Unclaimed events beyond this are dropped, oldest first, so a client that
// never calls take_events() does not grow without bound.
constexpr std::size_t kMaxQueuedEvents = 4096;
// Events a connection may deliver before the greeting (see the constructor).
constexpr int kMaxEventsBeforeGreeting = 64;
// How much of a non-QMP peer's output is quoted in an error message.
constexpr std::size_t kQuoteBytes = 80;
constexpr std::size_t kReadChunk = 64 * 1024;

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// Renders untrusted bytes for an error message: printable ASCII as is, the
// rest escaped, at most kQuoteBytes of input.
std::string quote(std::string_view bytes) {
    std::string out;
    std::size_t n = std::min(bytes.size(), kQuoteBytes);
    for (std::size_t i = 0; i < n; ++i) {
        unsigned char c = static_cast<unsigned char>(bytes[i]);
        if (c == '\r') {
            out += "\\r";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\\') {
            out += "\\\\";
        } else if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    if (bytes.size() > n) out += "...";
    return out;
}

std::string quote_json(const nlohmann::json& j) {
    return quote(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::string ms_text(std::chrono::milliseconds t) { return std::to_string(t.count()) + " ms"; }

// Finds the end of the first complete JSON object in a buffer that starts
// with '{'. Keeps its state between calls so that a message arriving in many
// pieces is scanned once. scan() returns the object's length, or 0 if it is
// not complete yet; throws Error(Protocol) on excessive nesting. Only
// brackets outside strings are counted; validation is the parser's job.
struct ObjectScanner {
    std::size_t pos = 0;
    int depth = 0;
    bool in_string = false;
    bool escape = false;

    std::size_t scan(std::string_view buf) {
        for (; pos < buf.size(); ++pos) {
            char c = buf[pos];
            if (in_string) {
                if (escape) escape = false;
                else if (c == '\\') escape = true;
                else if (c == '"') in_string = false;
                continue;
            }
            switch (c) {
                case '"': in_string = true; break;
                case '{':
                case '[':
                    if (++depth > kMaxNesting)
                        throw Error(ErrorKind::Protocol,
                                    "it sent JSON nested deeper than " + std::to_string(kMaxNesting) +
                                        " levels");
                    break;
                case '}':
                case ']':
                    if (--depth == 0) return ++pos;
                    break;
                default: break;
            }
        }
        return 0;
    }
};

// ": <what>" unless the socket's message only says that the peer closed.
std::string closed_detail(const Error& e) {
    std::string_view what = e.what();
    if (what.ends_with("closed the connection")) return "";
    return std::string(": ") + e.what();
}

// Rethrows a failure that happened while talking to the peer with the peer
// and the activity in the message, keeping its kind.
[[noreturn]] void rethrow_in_context(const Error& e, const std::string& who, const std::string& activity,
                                     std::chrono::milliseconds timeout) {
    switch (e.kind()) {
        case ErrorKind::Timeout:
            throw Error(ErrorKind::Timeout, who + " did not answer within " + ms_text(timeout) + " while " +
                                                activity + " (is another client holding the monitor?)");
        case ErrorKind::Unreachable:
            throw Error(ErrorKind::Unreachable,
                        who + " closed the connection while " + activity + " (did QEMU exit?)" +
                            closed_detail(e));
        case ErrorKind::Protocol:
            throw Error(ErrorKind::Protocol, who + " broke the QMP protocol while " + activity + ": " + e.what());
        case ErrorKind::Interrupted:
            throw Error(ErrorKind::Interrupted, "interrupted while " + activity + " on " + who);
        default: throw Error(e.kind(), who + ": " + activity + ": " + e.what());
    }
}

}  // namespace

QmpClient QmpClient::connect(const std::string& path, std::chrono::milliseconds timeout) {
    return QmpClient(Socket::connect_unix(path, timeout), timeout);
}

QmpClient::QmpClient(Socket socket, std::chrono::milliseconds timeout) : socket_(std::move(socket)) {
    const std::string who = "qmp:" + peer();
    nlohmann::json greeting;
    try {
        // QEMU can hand a new connection an event left over from the
        // monitor's previous client before the greeting (seen: a RESUME on
        // a socket another client had just left). Such events predate this
        // session: skipped, a bounded number, within the same deadline.
        const Deadline deadline(timeout);
        greeting = read_message(deadline);
        for (int skipped = 0; greeting.is_object() && greeting.contains("event") && !greeting.contains("QMP") &&
                              skipped < kMaxEventsBeforeGreeting;
             ++skipped)
            greeting = read_message(deadline);
    } catch (const Error& e) {
        switch (e.kind()) {
            case ErrorKind::Protocol:
                throw Error(ErrorKind::Protocol, who + " is not a QMP server: " + e.what());
            case ErrorKind::Timeout:
                throw Error(ErrorKind::Timeout,
                            who + " sent no QMP greeting within " + ms_text(timeout) +
                                " (not a QMP socket, or another client holds the monitor)");
            case ErrorKind::Unreachable:
                throw Error(ErrorKind::Unreachable,
                            who + " closed the connection before sending a QMP greeting" + closed_detail(e));
            default: rethrow_in_context(e, who, "reading the QMP greeting", timeout);
        }
    }
    auto it = greeting.find("QMP");
    if (it == greeting.end() || !it->is_object())
        throw Error(ErrorKind::Protocol, who + " is not a QMP server: it sent '" + quote_json(greeting) + "'");
    greeting_ = *it;
    execute("qmp_capabilities", nlohmann::json::object(), timeout);
}

nlohmann::json QmpClient::read_message(const Deadline& deadline) {
    ObjectScanner scanner;
    char chunk[kReadChunk];
    while (true) {
        // Whitespace (QEMU's CRLF) between messages is skipped.
        std::size_t start = 0;
        while (start < buffer_.size() && is_space(buffer_[start])) ++start;
        if (start > 0) {
            buffer_.erase(0, start);
            scanner = ObjectScanner{};
        }
        if (!buffer_.empty()) {
            if (buffer_[0] != '{') {
                // Not JSON. Gather the rest of the line (briefly) so the
                // error shows what the peer is, then report it. The bytes
                // stay in the buffer: the stream cannot be resynchronised.
                Deadline more(std::chrono::milliseconds(std::min(deadline.remaining_ms(), 100)));
                while (buffer_.size() < kQuoteBytes && buffer_.find('\n') == std::string::npos) {
                    std::size_t n = 0;
                    try {
                        n = socket_.recv_some_until(chunk, kQuoteBytes, more);
                    } catch (const Error& e) {
                        if (e.kind() == ErrorKind::Interrupted) throw;
                        break;
                    }
                    if (n == 0) break;
                    buffer_.append(chunk, n);
                }
                throw Error(ErrorKind::Protocol, "it sent '" + quote(buffer_) + "'");
            }
            if (std::size_t len = scanner.scan(buffer_); len > 0) {
                std::string text = buffer_.substr(0, len);
                buffer_.erase(0, len);
                nlohmann::json msg = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
                if (msg.is_discarded() || !msg.is_object())
                    throw Error(ErrorKind::Protocol, "it sent malformed JSON '" + quote(text) + "'");
                return msg;
            }
            if (buffer_.size() > kMaxMessageBytes)
                throw Error(ErrorKind::Protocol, "it sent a message longer than " +
                                                     std::to_string(kMaxMessageBytes >> 20) +
                                                     " MiB without finishing it: '" + quote(buffer_) + "'");
        }
        std::size_t n = socket_.recv_some(chunk, sizeof chunk, deadline);
        buffer_.append(chunk, n);
    }
}

nlohmann::json QmpClient::execute(const std::string& command, const nlohmann::json& arguments,
                                  std::chrono::milliseconds timeout) {
    const std::string who = "qmp:" + peer();
    const std::string activity = "running '" + command + "'";
    const unsigned long id = next_id_++;
    nlohmann::json request = {{"execute", command}, {"id", id}};
    if (!arguments.is_null() && !(arguments.is_object() && arguments.empty()))
        request["arguments"] = arguments;

    Deadline deadline(timeout);
    try {
        socket_.send_all(request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\r\n",
                         deadline);
        while (true) {
            nlohmann::json msg = read_message(deadline);
            if (msg.contains("event")) {
                events_.push_back(std::move(msg));
                if (events_.size() > kMaxQueuedEvents) events_.pop_front();
                continue;
            }
            bool is_reply = msg.contains("return") || msg.contains("error");
            if (!is_reply)
                throw Error(ErrorKind::Protocol, "it sent an unexpected message '" + quote_json(msg) + "'");
            // QEMU echoes "id". A reply with another id is a late answer to a
            // command that timed out earlier: drop it. A reply without one
            // answers a request QEMU could not parse, i.e. this one.
            if (auto idit = msg.find("id"); idit != msg.end() && *idit != nlohmann::json(id)) continue;
            if (auto err = msg.find("error"); err != msg.end()) {
                std::string cls = "GenericError";
                std::string desc;
                if (err->is_object()) {
                    if (auto c = err->find("class"); c != err->end() && c->is_string()) cls = c->get<std::string>();
                    if (auto d = err->find("desc"); d != err->end() && d->is_string()) desc = d->get<std::string>();
                    else desc = quote_json(*err);
                } else {
                    desc = quote_json(*err);
                }
                throw Error(ErrorKind::Guest, who + ": QMP '" + command + "' failed: " + cls + ": " + desc);
            }
            return msg["return"];
        }
    } catch (const Error& e) {
        if (e.kind() == ErrorKind::Guest) throw;
        rethrow_in_context(e, who, activity, timeout);
    }
}

std::string QmpClient::hmp(const std::string& command_line, std::chrono::milliseconds timeout) {
    nlohmann::json ret = execute("human-monitor-command", {{"command-line", command_line}}, timeout);
    if (!ret.is_string())
        throw Error(ErrorKind::Protocol, "qmp:" + peer() + " answered HMP '" + command_line +
                                             "' with a non-string '" + quote_json(ret) + "'");
    return ret.get<std::string>();
}

std::deque<nlohmann::json> QmpClient::take_events() {
    // Pick up events that have already arrived without waiting: complete
    // messages left in the buffer after the last reply, and whatever the
    // socket holds right now. A closed or broken connection stops the pump
    // quietly; the next execute() reports it.
    while (socket_.is_open()) {
        bool buffered_object = false;
        if (!buffer_.empty()) {
            ObjectScanner probe;
            std::size_t start = 0;
            while (start < buffer_.size() && is_space(buffer_[start])) ++start;
            if (start < buffer_.size() && buffer_[start] == '{') {
                try {
                    buffered_object = probe.scan(std::string_view(buffer_).substr(start)) > 0;
                } catch (const Error&) {
                    break;
                }
            }
        }
        if (!buffered_object && !socket_.readable_now()) break;
        nlohmann::json msg;
        try {
            msg = read_message(Deadline(std::chrono::milliseconds(0)));
        } catch (const Error& e) {
            if (e.kind() == ErrorKind::Interrupted) throw;
            break;
        }
        // A stray reply here can only be a late answer to a timed-out command.
        if (msg.contains("event")) {
            events_.push_back(std::move(msg));
            if (events_.size() > kMaxQueuedEvents) events_.pop_front();
        }
    }
    return std::exchange(events_, {});
}

}  // namespace hvpatch
