#include "vmm/qemu/gdb_packet.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch::gdb {
namespace {

using Type = PacketDecoder::Event::Type;

std::vector<std::byte> bytes(std::initializer_list<int> v) {
    std::vector<std::byte> out;
    for (int b : v) out.push_back(static_cast<std::byte>(b));
    return out;
}

std::string hex2(std::uint8_t v) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", v);
    return buf;
}

ErrorKind kind_of(auto&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.kind();
    }
    return ErrorKind::Internal;  // "did not throw"
}

// ---- checksum and framing ---------------------------------------------

TEST(GdbPacketTest, ChecksumIsModulo256Sum) {
    EXPECT_EQ(checksum(""), 0);
    EXPECT_EQ(checksum("OK"), 0x9a);  // 'O' 0x4f + 'K' 0x4b
    EXPECT_EQ(checksum("qC"), 0xb4);
    // 0xff * 2 = 0x1fe -> 0xfe
    EXPECT_EQ(checksum(std::string("\xff\xff", 2)), 0xfe);
}

TEST(GdbPacketTest, FramesPlainPayloadWithLowerCaseChecksum) {
    EXPECT_EQ(frame_packet("OK"), "$OK#9a");
    EXPECT_EQ(frame_packet(""), "$#00");
    EXPECT_EQ(frame_packet("m1000,800"), "$m1000,800#" + hex2(checksum("m1000,800")));
    // Measured against QEMU 7.2.
    EXPECT_EQ(frame_packet("T02thread:p01.01;"), "$T02thread:p01.01;#03");
    EXPECT_EQ(frame_packet("PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+"),
              "$PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+#92");
}

TEST(GdbPacketTest, EscapesAllFourSpecialBytesAndChecksumsTheEscapedForm) {
    // '$' 0x24 -> "}\x04", '#' 0x23 -> "}\x03", '}' 0x7d -> "}]", '*' 0x2a -> "}\x0a"
    std::string framed = frame_packet("a$b#c}d*e");
    std::string escaped = std::string("a}\x04" "b}\x03" "c}]d}\x0a" "e");
    EXPECT_EQ(framed, "$" + escaped + "#" + hex2(checksum(escaped)));
    // Nothing else is escaped (binary bytes travel as they are).
    EXPECT_EQ(frame_packet(std::string("\x00\x03\xff", 3)).substr(0, 4), std::string("$\x00\x03\xff", 4));
}

TEST(GdbPacketTest, FramedPayloadRoundTripsThroughDecoder) {
    std::string payload;
    for (int i = 0; i < 256; ++i) payload += static_cast<char>(i);
    PacketDecoder d;
    d.feed(frame_packet(payload));
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Packet);
    EXPECT_EQ(ev->payload, payload);
    EXPECT_EQ(d.pending(), 0u);
}

// ---- payload decoding ---------------------------------------------------

TEST(GdbPacketTest, DecodesEscapes) {
    EXPECT_EQ(decode_payload("a}\x04" "b"), "a$b");
    EXPECT_EQ(decode_payload("}\x03"), "#");
    EXPECT_EQ(decode_payload("}]"), "}");
    EXPECT_EQ(decode_payload("}\x0a"), "*");
    EXPECT_EQ(decode_payload("plain"), "plain");
    EXPECT_EQ(decode_payload(""), "");
}

TEST(GdbPacketTest, ExpandsRunLengthEncoding) {
    // "0* " = '0' then 32 - 29 = 3 more: "0000" (the example in GDB's manual).
    EXPECT_EQ(decode_payload("0* "), "0000");
    // '"' = 34 -> 5 more
    EXPECT_EQ(decode_payload("ab*\""), "a" + std::string(6, 'b'));
    // Largest count '~' = 126 -> 97 more.
    EXPECT_EQ(decode_payload("x*~"), std::string(98, 'x'));
    // Several runs, and a run directly after another run repeats the same byte.
    EXPECT_EQ(decode_payload("1* 2* "), "11112222");
    EXPECT_EQ(decode_payload("0* * "), std::string(7, '0'));
    // The repeated byte can itself be an escaped one.
    EXPECT_EQ(decode_payload("}\x0a* "), "****");
    // An escaped '*' is data, not a run marker.
    EXPECT_EQ(decode_payload("a}\x0a" "b"), "a*b");
    // A register dump as QEMU would compress it: 16 zero digits.
    EXPECT_EQ(decode_payload("0*+"), std::string(15, '0'));  // '+' = 43 -> 14 more
}

TEST(GdbPacketTest, RejectsMalformedPayloads) {
    EXPECT_EQ(kind_of([] { decode_payload("abc}"); }), ErrorKind::Protocol);  // dangling escape
    EXPECT_EQ(kind_of([] { decode_payload("* "); }), ErrorKind::Protocol);    // nothing to repeat
    EXPECT_EQ(kind_of([] { decode_payload("a*"); }), ErrorKind::Protocol);    // no count
    EXPECT_EQ(kind_of([] { decode_payload("a*\x1f"); }), ErrorKind::Protocol);  // count below ' '
    EXPECT_EQ(kind_of([] { decode_payload("a*\x7f"); }), ErrorKind::Protocol);  // count above '~'
    EXPECT_EQ(kind_of([] { decode_payload(std::string("a*\x80", 3)); }), ErrorKind::Protocol);
}

// ---- hex helpers ----------------------------------------------------------

TEST(GdbPacketTest, HexEncodesLowerCase) {
    EXPECT_EQ(to_hex(bytes({0x00, 0x1f, 0xab, 0xff})), "001fabff");
    EXPECT_EQ(to_hex({}), "");
}

TEST(GdbPacketTest, HexDecodesEitherCase) {
    EXPECT_EQ(from_hex("001fABff"), bytes({0x00, 0x1f, 0xab, 0xff}));
    EXPECT_TRUE(from_hex("").empty());
    std::vector<std::byte> all;
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<std::byte>(i));
    EXPECT_EQ(from_hex(to_hex(all)), all);
}

TEST(GdbPacketTest, HexRejectsOddLengthAndNonDigits) {
    EXPECT_EQ(kind_of([] { from_hex("abc"); }), ErrorKind::Protocol);
    EXPECT_EQ(kind_of([] { from_hex("0g"); }), ErrorKind::Protocol);
    EXPECT_EQ(kind_of([] { from_hex("E1"); }), ErrorKind::Internal);  // valid hex: does not throw
    EXPECT_EQ(kind_of([] { from_hex("xx"); }), ErrorKind::Protocol);
    EXPECT_EQ(kind_of([] { from_hex("E14"); }), ErrorKind::Protocol);
}

// ---- incremental decoder -----------------------------------------------

TEST(GdbPacketTest, DecoderReportsAcksNacksAndPacketsInOrder) {
    PacketDecoder d;
    d.feed("+$OK#9a-+$T02thread:p01.01;#03");
    auto e1 = d.next();
    auto e2 = d.next();
    auto e3 = d.next();
    auto e4 = d.next();
    auto e5 = d.next();
    ASSERT_TRUE(e1 && e2 && e3 && e4 && e5);
    EXPECT_EQ(e1->type, Type::Ack);
    EXPECT_EQ(e2->type, Type::Packet);
    EXPECT_EQ(e2->payload, "OK");
    EXPECT_EQ(e3->type, Type::Nack);
    EXPECT_EQ(e4->type, Type::Ack);
    EXPECT_EQ(e5->type, Type::Packet);
    EXPECT_EQ(e5->payload, "T02thread:p01.01;");
    EXPECT_FALSE(d.next());
    EXPECT_EQ(d.pending(), 0u);
}

TEST(GdbPacketTest, DecoderAssemblesPacketSplitAtEveryPosition) {
    const std::string wire = "+" + frame_packet("m}#*$x") + "+";
    for (std::size_t cut = 0; cut <= wire.size(); ++cut) {
        for (std::size_t cut2 = cut; cut2 <= wire.size(); ++cut2) {
            PacketDecoder d;
            std::vector<PacketDecoder::Event> events;
            auto drain = [&] {
                while (auto ev = d.next()) events.push_back(*ev);
            };
            d.feed(wire.substr(0, cut));
            drain();
            d.feed(wire.substr(cut, cut2 - cut));
            drain();
            d.feed(wire.substr(cut2));
            drain();
            ASSERT_EQ(events.size(), 3u) << "cuts at " << cut << "," << cut2;
            EXPECT_EQ(events[0].type, Type::Ack);
            EXPECT_EQ(events[1].type, Type::Packet);
            EXPECT_EQ(events[1].payload, "m}#*$x");
            EXPECT_EQ(events[2].type, Type::Ack);
            EXPECT_EQ(d.pending(), 0u);
        }
    }
}

TEST(GdbPacketTest, DecoderHoldsIncompletePacketUntilChecksumDigitsArrive) {
    PacketDecoder d;
    d.feed("$OK#9");
    EXPECT_FALSE(d.next());
    EXPECT_EQ(d.pending(), 5u);
    d.feed("a");
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Packet);
    EXPECT_EQ(ev->payload, "OK");
    EXPECT_EQ(d.pending(), 0u);
}

TEST(GdbPacketTest, DecoderSkipsJunkBetweenPackets) {
    PacketDecoder d;
    d.feed(std::string("\x03garbage\r\n", 10) + "$OK#9a" + "zz" + "$E14#aa" + "tail");
    auto e1 = d.next();
    auto e2 = d.next();
    ASSERT_TRUE(e1 && e2);
    EXPECT_EQ(e1->payload, "OK");
    EXPECT_EQ(e2->payload, "E14");
    EXPECT_FALSE(d.next());
    EXPECT_EQ(d.pending(), 0u);  // junk is not held
}

TEST(GdbPacketTest, DecoderReportsBadChecksumAndRecovers) {
    PacketDecoder d;
    d.feed("$OK#00$OK#9a$OK#zz");
    auto e1 = d.next();
    auto e2 = d.next();
    auto e3 = d.next();
    ASSERT_TRUE(e1 && e2 && e3);
    EXPECT_EQ(e1->type, Type::BadChecksum);
    EXPECT_EQ(e2->type, Type::Packet);
    EXPECT_EQ(e2->payload, "OK");
    EXPECT_EQ(e3->type, Type::BadChecksum);  // non-hex checksum digits
    EXPECT_FALSE(d.next());
}

TEST(GdbPacketTest, DecoderAcceptsUpperCaseChecksumDigits) {
    PacketDecoder d;
    d.feed("$OK#9A");
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Packet);
}

TEST(GdbPacketTest, DecoderRestartsAtDollarInsidePacket) {
    PacketDecoder d;
    d.feed("$trunc$OK#9a");
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Packet);
    EXPECT_EQ(ev->payload, "OK");
    EXPECT_FALSE(d.next());
}

TEST(GdbPacketTest, DecoderReportsNotifications) {
    PacketDecoder d;
    d.feed("%Stop:T05#" + hex2(checksum("Stop:T05")));
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Notification);
    EXPECT_EQ(ev->payload, "Stop:T05");
}

TEST(GdbPacketTest, DecoderExpandsRunLengthInPackets) {
    // The checksum covers the compressed form.
    std::string raw = "0*\"1";
    PacketDecoder d;
    d.feed("$" + raw + "#" + hex2(checksum(raw)));
    auto ev = d.next();
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, Type::Packet);
    EXPECT_EQ(ev->payload, "0000001");
}

TEST(GdbPacketTest, DecoderThrowsForMalformedPayloadWithGoodChecksumAndMovesOn) {
    std::string raw = "*x";  // run-length marker with nothing to repeat
    PacketDecoder d;
    d.feed("$" + raw + "#" + hex2(checksum(raw)) + "$OK#9a");
    EXPECT_EQ(kind_of([&] { d.next(); }), ErrorKind::Protocol);
    auto ev = d.next();  // the bad packet was consumed
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->payload, "OK");
}

}  // namespace
}  // namespace hvpatch::gdb
