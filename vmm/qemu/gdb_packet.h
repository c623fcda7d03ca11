// GDB remote serial protocol: packet encoding and decoding, nothing else.
//
// A packet is `$payload#cc`, cc the two-hex-digit modulo-256 sum of the
// payload bytes as sent. In the payload `}` escapes the next byte (sent XOR
// 0x20; required for `$`, `#`, `}` and `*`), and `X*n` run-length encodes:
// the byte before `*` repeats (n - 29) more times, where n is a printable
// character. The receiver acknowledges with `+` or asks for a resend with
// `-`. A notification is `%payload#cc` (not acknowledged). 0x03 sent
// outside a packet is an interrupt request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace hvpatch::gdb {

std::uint8_t checksum(std::string_view bytes);

// Escapes `$ # } *` and frames: returns "$<escaped>#cc".
std::string frame_packet(std::string_view payload);

// Undoes escapes and run-length encoding of a received payload (the bytes
// between `$` and `#`). Throws Error(Protocol) for a dangling escape or an
// RLE marker with nothing to repeat or a bad count.
std::string decode_payload(std::string_view raw);

// Hex helpers used for memory and register payloads.
std::string to_hex(std::span<const std::byte> bytes);
// Throws Error(Protocol) on odd length or a non-hex digit.
std::vector<std::byte> from_hex(std::string_view hex);

// Incremental receiver: feed it whatever the socket delivered, then take the
// events in order. Bytes outside a packet other than `+`/`-` are skipped.
class PacketDecoder {
public:
    struct Event {
        enum class Type { Ack, Nack, Packet, Notification, BadChecksum } type;
        std::string payload;  // decoded payload (Packet/Notification)
    };

    void feed(std::string_view bytes);
    std::optional<Event> next();
    // Bytes held that do not form a complete event yet.
    std::size_t pending() const { return buffer_.size(); }

private:
    std::string buffer_;
};

}  // namespace hvpatch::gdb
