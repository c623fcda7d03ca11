// GDB remote serial protocol packet encoding and decoding.
//
// Receiving follows GDB's own reader: after `$` (or `%`) the first raw `#`
// ends the payload (a `#` inside a payload is always sent escaped), two hex
// digits follow, and the checksum covers the payload bytes exactly as sent.
// A `$` seen before the `#` abandons the packet in progress (GDB does the
// same: the stub started over).
#include "vmm/qemu/gdb_packet.h"

#include <string>

#include "hvpatch/error.h"

namespace hvpatch::gdb {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool needs_escape(char c) { return c == '$' || c == '#' || c == '}' || c == '*'; }

// A printable quote of at most `max` bytes of `s` for error messages.
std::string quote(std::string_view s, std::size_t max = 40) {
    std::string out = "'";
    for (std::size_t i = 0; i < s.size() && i < max; ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c < 0x7f) {
            out += static_cast<char>(c);
        } else {
            out += "\\x";
            out += kHexDigits[c >> 4];
            out += kHexDigits[c & 0xf];
        }
    }
    out += s.size() > max ? "'..." : "'";
    return out;
}

}  // namespace

std::uint8_t checksum(std::string_view bytes) {
    unsigned sum = 0;
    for (char c : bytes) sum += static_cast<unsigned char>(c);
    return static_cast<std::uint8_t>(sum & 0xff);
}

std::string frame_packet(std::string_view payload) {
    std::string escaped;
    escaped.reserve(payload.size() + 8);
    for (char c : payload) {
        if (needs_escape(c)) {
            escaped += '}';
            escaped += static_cast<char>(c ^ 0x20);
        } else {
            escaped += c;
        }
    }
    std::uint8_t sum = checksum(escaped);
    std::string out;
    out.reserve(escaped.size() + 4);
    out += '$';
    out += escaped;
    out += '#';
    out += kHexDigits[sum >> 4];
    out += kHexDigits[sum & 0xf];
    return out;
}

std::string decode_payload(std::string_view raw) {
    std::string out;
    out.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        char c = raw[i];
        if (c == '}') {
            if (i + 1 >= raw.size())
                throw Error(ErrorKind::Protocol,
                            "gdb packet payload ends in a dangling escape: " + quote(raw));
            out += static_cast<char>(raw[++i] ^ 0x20);
        } else if (c == '*') {
            if (out.empty())
                throw Error(ErrorKind::Protocol,
                            "gdb packet payload has a run-length marker with nothing to repeat: " +
                                quote(raw));
            if (i + 1 >= raw.size())
                throw Error(ErrorKind::Protocol,
                            "gdb packet payload ends in a run-length marker without a count: " +
                                quote(raw));
            auto n = static_cast<unsigned char>(raw[++i]);
            // Counts are printable characters; n - 29 >= 3 repeats.
            if (n < 0x20 || n > 0x7e)
                throw Error(ErrorKind::Protocol,
                            "gdb packet payload has a bad run-length count " + quote(raw.substr(i, 1)) +
                                " in " + quote(raw));
            out.append(static_cast<std::size_t>(n - 29), out.back());
        } else {
            out += c;
        }
    }
    return out;
}

std::string to_hex(std::span<const std::byte> bytes) {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (std::byte b : bytes) {
        auto v = std::to_integer<unsigned>(b);
        out += kHexDigits[v >> 4];
        out += kHexDigits[v & 0xf];
    }
    return out;
}

std::vector<std::byte> from_hex(std::string_view hex) {
    if (hex.size() % 2 != 0)
        throw Error(ErrorKind::Protocol,
                    "odd number of hex digits (" + std::to_string(hex.size()) + "): " + quote(hex));
    std::vector<std::byte> out;
    out.reserve(hex.size() / 2);
    for (std::size_t i = 0; i < hex.size(); i += 2) {
        int hi = hex_value(hex[i]);
        int lo = hex_value(hex[i + 1]);
        if (hi < 0 || lo < 0)
            throw Error(ErrorKind::Protocol, "not a hex digit at offset " + std::to_string(hi < 0 ? i : i + 1) +
                                                 ": " + quote(hex.substr(i, 2)) + " in " + quote(hex));
        out.push_back(static_cast<std::byte>((hi << 4) | lo));
    }
    return out;
}

void PacketDecoder::feed(std::string_view bytes) { buffer_.append(bytes); }

// Scans from the front of the buffer. Bytes before an event are dropped;
// an incomplete packet stays in the buffer until more bytes arrive. A
// packet whose checksum matches but whose payload is malformed (dangling
// escape, bad run length) is consumed and then reported by throwing
// Error(Protocol): resending it would not help.
std::optional<PacketDecoder::Event> PacketDecoder::next() {
    std::size_t i = 0;
    while (i < buffer_.size()) {
        char c = buffer_[i];
        if (c == '+' || c == '-') {
            buffer_.erase(0, i + 1);
            return Event{c == '+' ? Event::Type::Ack : Event::Type::Nack, {}};
        }
        if (c != '$' && c != '%') {
            ++i;  // junk between packets (e.g. a stray 0x03 or line noise)
            continue;
        }
        // A packet starts at i. Find its end; a new `$` restarts.
        std::size_t start = i;
        std::size_t j = start + 1;
        for (; j < buffer_.size(); ++j) {
            if (buffer_[j] == '#') break;
            if (buffer_[j] == '$') break;
        }
        if (j >= buffer_.size()) {
            buffer_.erase(0, start);  // incomplete: keep it for the next feed
            return std::nullopt;
        }
        if (buffer_[j] == '$') {  // abandoned packet: start over at the new `$`
            i = j;
            continue;
        }
        if (j + 2 >= buffer_.size()) {  // checksum digits not here yet
            buffer_.erase(0, start);
            return std::nullopt;
        }
        std::string raw = buffer_.substr(start + 1, j - start - 1);
        int hi = hex_value(buffer_[j + 1]);
        int lo = hex_value(buffer_[j + 2]);
        bool notification = buffer_[start] == '%';
        buffer_.erase(0, j + 3);
        if (hi < 0 || lo < 0 || checksum(raw) != static_cast<std::uint8_t>((hi << 4) | lo))
            return Event{Event::Type::BadChecksum, {}};
        return Event{notification ? Event::Type::Notification : Event::Type::Packet,
                     decode_payload(raw)};
    }
    buffer_.clear();  // only junk
    return std::nullopt;
}

}  // namespace hvpatch::gdb
