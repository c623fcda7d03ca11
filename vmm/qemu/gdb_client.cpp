// GDB remote protocol client for QEMU's gdbstub (see gdb_client.h for the
// stub behaviour this relies on).
//
// Ordering is what keeps replies matched to requests. QEMU handles its input
// in order: it answers a packet with `+` and then its reply, and a stop reply
// caused by anything else (connect, QMP `stop`, our 0x03) is a packet of its
// own in the same stream. So:
// - a packet that arrives before the `+` for ours predates it: it is acked
//   and skipped;
// - after the `+`, a stop reply is skipped unless the request can produce one
//   (`?`, `s`, `c` ...): the replies to `m`, `g`, `p`, `OK`-packets etc.
//   never look like `Txx...` or `Sxx`;
// - a stop reply before the `+` can also mean the VM was running (QMP `cont`
//   behind our back) when our packet arrived: QEMU then stops the VM on the
//   packet's first byte and drops the packet. We cannot tell the two apart
//   by waiting, so we send `qC` as a marker and read up to its `QC...`
//   reply: a reply to our packet, if any, comes before it.
#include "vmm/qemu/gdb_client.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <utility>

#include "hvpatch/address.h"
#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::size_t kMaxThreads = 4096;
constexpr std::size_t kMaxFeatureXml = 1 << 20;
// More undecoded input than any QEMU reply can be: the peer is not a stub.
constexpr std::size_t kMaxPending = 4 << 20;
constexpr int kMaxResends = 3;
constexpr int kMaxBadChecksums = 3;
constexpr std::size_t kFeatureChunk = 0x7f0;  // QEMU caps at (4096 - 5) / 2
constexpr const char* kMarker = "qC";              // answered "QC<thread>"
constexpr const char* kSecondMarker = "qAttached";  // answered "1"

bool is_hex_digit(char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }

bool is_hex_string(std::string_view s) { return std::all_of(s.begin(), s.end(), is_hex_digit); }

// "T05..." or "S05": a stop reply.
bool is_stop_reply(std::string_view p) {
    if (p.size() < 3 || !is_hex_digit(p[1]) || !is_hex_digit(p[2])) return false;
    return p[0] == 'T' || (p[0] == 'S' && p.size() == 3);
}

// "W00" / "X09": the process (the VM) exited.
bool is_exit_reply(std::string_view p) {
    return p.size() >= 3 && (p[0] == 'W' || p[0] == 'X') && is_hex_digit(p[1]) && is_hex_digit(p[2]) &&
           (p.size() == 3 || p[3] == ';');
}

bool is_marker_reply(std::string_view p) { return p.starts_with("QC"); }

// "E14": an error reply.
bool is_error_reply(std::string_view p) {
    return p.size() == 3 && p[0] == 'E' && is_hex_digit(p[1]) && is_hex_digit(p[2]);
}

// Requests whose answer is a stop reply.
bool expects_stop_reply(std::string_view p) {
    if (p.empty()) return false;
    if (p == "?") return true;
    if (p.starts_with("vCont;")) return true;
    return p[0] == 'c' || p[0] == 's' || p[0] == 'C' || p[0] == 'S';
}

std::string summary(std::string_view payload) {
    constexpr std::size_t kMax = 40;
    std::string out = "'";
    for (std::size_t i = 0; i < payload.size() && i < kMax; ++i) {
        auto c = static_cast<unsigned char>(payload[i]);
        out += (c >= 0x20 && c < 0x7f) ? static_cast<char>(c) : '.';
    }
    out += payload.size() > kMax ? "...'" : "'";
    return out;
}

std::string hexnum(std::uint64_t v) {
    char buf[20];
    auto r = std::to_chars(buf, buf + sizeof buf, v, 16);
    return std::string(buf, r.ptr);
}

std::optional<std::uint64_t> parse_hex(std::string_view s) {
    if (s.empty() || s.size() > 16) return std::nullopt;
    std::uint64_t v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v, 16);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
    return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    while (true) {
        auto pos = s.find(sep);
        out.push_back(s.substr(0, pos));
        if (pos == std::string_view::npos) break;
        s.remove_prefix(pos + 1);
    }
    return out;
}

std::string ms_text(std::chrono::milliseconds t) { return std::to_string(t.count()) + " ms"; }

std::string failure_detail(const Error& e, std::chrono::milliseconds timeout) {
    std::string detail = e.what();
    if (e.kind() == ErrorKind::Timeout) detail += " within " + ms_text(timeout);
    return detail;
}

}  // namespace

GdbClient::GdbClient(Socket socket, std::string target_name)
    : socket_(std::move(socket)), target_(std::move(target_name)) {}

void GdbClient::fail(ErrorKind kind, const std::string& context, const std::string& detail) const {
    throw Error(kind, target_ + " gdbstub: " + context + ": " + detail);
}

std::size_t GdbClient::max_write_chunk() const {
    // "M" + 16 address digits + "," + length digits + ":" + 2 digits a byte
    // must fit in packet_size_ - 1 bytes (QEMU keeps room for a NUL).
    std::size_t room = packet_size_ > 64 ? (packet_size_ - 1 - 32) / 2 : 16;
    return std::min(kMaxMemoryChunk, room & ~std::size_t{0xf});
}

void GdbClient::send_raw(std::string_view bytes) {
    socket_.send_all(bytes, Deadline(kDefaultTimeout));
}

std::optional<gdb::PacketDecoder::Event> GdbClient::next_event(const Deadline& deadline) {
    while (true) {
        if (auto ev = decoder_.next()) return ev;
        if (decoder_.pending() > kMaxPending)
            throw Error(ErrorKind::Protocol, "more than " + std::to_string(kMaxPending) +
                                                 " bytes without a complete packet: not a gdbstub?");
        char buf[16384];
        std::size_t n = socket_.recv_some_until(buf, sizeof buf, deadline);
        if (n == 0) return std::nullopt;
        decoder_.feed(std::string_view(buf, n));
    }
}

std::optional<std::string> GdbClient::read_packet(const Deadline& deadline) {
    int bad = 0;
    while (auto ev = next_event(deadline)) {
        using T = gdb::PacketDecoder::Event::Type;
        switch (ev->type) {
            case T::Packet:
                send_raw("+");
                return std::move(ev->payload);
            case T::BadChecksum:
                if (++bad > kMaxBadChecksums)
                    throw Error(ErrorKind::Protocol, "packets with bad checksums, " + std::to_string(bad) +
                                                         " times in a row");
                send_raw("-");
                break;
            case T::Ack:
            case T::Nack:
            case T::Notification:
                break;  // stray acks; QEMU sends no notifications
        }
    }
    return std::nullopt;
}

bool GdbClient::send_and_wait_ack(std::string_view payload, const Deadline& deadline, BeforeAck mode) {
    const std::string framed = gdb::frame_packet(payload);
    send_raw(framed);
    int resends = 0;
    int bad = 0;
    while (auto ev = next_event(deadline)) {
        using T = gdb::PacketDecoder::Event::Type;
        switch (ev->type) {
            case T::Ack:
                return true;
            case T::Nack:
                if (++resends > kMaxResends)
                    throw Error(ErrorKind::Protocol, "the stub asked for the packet again " +
                                                         std::to_string(resends) + " times");
                send_raw(framed);
                break;
            case T::Packet:
                if (mode != BeforeAck::SkipWithoutAck) send_raw("+");
                if (is_exit_reply(ev->payload))
                    throw Error(ErrorKind::Unreachable, "the VM exited ('" + ev->payload + "')");
                // Our `+` may still come (the stop was older than our
                // packet) or never (our packet stopped a running VM and was
                // dropped): only a marker round trip can tell.
                if (is_stop_reply(ev->payload) && mode == BeforeAck::DetectDropped) return false;
                break;  // older than our packet: skip
            case T::BadChecksum:
                if (++bad > kMaxBadChecksums)
                    throw Error(ErrorKind::Protocol, "packets with bad checksums, " + std::to_string(bad) +
                                                         " times in a row");
                if (mode != BeforeAck::SkipWithoutAck) send_raw("-");
                break;
            case T::Notification:
                break;
        }
    }
    throw Error(ErrorKind::Timeout, "no acknowledgement");
}

// Markers are packets with unmistakable replies that change nothing. The
// first marker is dropped if the VM was running when it arrived; QEMU then
// stops the VM and sends a stop reply, so a second marker of another kind is
// certain to be answered, and the first one's reply (if any) comes before.
std::vector<std::string> GdbClient::sync(const Deadline& deadline) {
    send_raw(gdb::frame_packet(kMarker));
    bool second = false;
    std::vector<std::string> before;
    while (auto p = read_packet(deadline)) {
        if (!second && is_marker_reply(*p)) return before;
        if (second && (*p == "1" || *p == "0")) return before;  // qAttached
        if (is_exit_reply(*p)) throw Error(ErrorKind::Unreachable, "the VM exited ('" + *p + "')");
        if (is_stop_reply(*p)) {
            if (second)
                throw Error(ErrorKind::Protocol,
                            "stop replies keep arriving while re-synchronising (is the VM being resumed "
                            "behind our back?)");
            second = true;
            send_raw(gdb::frame_packet(kSecondMarker));
            continue;
        }
        if (second && is_marker_reply(*p)) continue;  // the first marker's reply
        before.push_back(std::move(*p));
        if (before.size() > 16) throw Error(ErrorKind::Protocol, "unexpected packets while re-synchronising");
    }
    throw Error(ErrorKind::Timeout, std::string("no answer to ") + (second ? kSecondMarker : kMarker) +
                                        " while re-synchronising");
}

std::string GdbClient::transact(std::string_view payload, const Deadline& deadline) {
    if (!socket_.is_open()) throw Error(ErrorKind::Unreachable, "not connected");
    if (running_)
        throw Error(ErrorKind::Internal,
                    "the VM is running under this client (a byte sent now would stop it and be dropped); "
                    "interrupt() first");
    if (resync_) {
        sync(deadline);
        resync_ = false;
    }
    const bool stop_ok = expects_stop_reply(payload);
    const bool marker = payload == kMarker;
    for (int attempt = 0; attempt <= kMaxResends; ++attempt) {
        auto mode = stop_ok || marker ? BeforeAck::Skip : BeforeAck::DetectDropped;
        if (!send_and_wait_ack(payload, deadline, mode)) {
            std::vector<std::string> before = sync(deadline);
            if (before.empty()) continue;  // dropped by a running VM: send it again
            if (before.size() > 1)
                throw Error(ErrorKind::Protocol, "more than one reply ('" + before[1].substr(0, 40) + "')");
            return std::move(before.front());
        }
        while (true) {
            auto p = read_packet(deadline);
            if (!p) throw Error(ErrorKind::Timeout, "no reply");
            if (is_exit_reply(*p)) throw Error(ErrorKind::Unreachable, "the VM exited ('" + *p + "')");
            if (!stop_ok && is_stop_reply(*p)) continue;  // stale
            if (!marker && is_marker_reply(*p)) continue;  // surplus reply to a marker
            return std::move(*p);
        }
    }
    throw Error(ErrorKind::Protocol, "the packet was dropped " + std::to_string(kMaxResends + 1) +
                                         " times (the VM keeps being resumed behind our back?)");
}

std::string GdbClient::request(std::string_view payload, std::chrono::milliseconds timeout) {
    Deadline deadline(timeout);
    try {
        return transact(payload, deadline);
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Internal) resync_ = true;
        fail(e.kind(), summary(payload), failure_detail(e, timeout));
    }
}

std::string GdbClient::request_ok(std::string_view payload, const std::string& what,
                                  std::chrono::milliseconds timeout) {
    Deadline deadline(timeout);
    std::string reply;
    try {
        reply = transact(payload, deadline);
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Internal) resync_ = true;
        fail(e.kind(), what + " (" + summary(payload) + ")", failure_detail(e, timeout));
    }
    if (reply.empty())
        fail(ErrorKind::Protocol, what, "not supported by the stub (empty reply to " + summary(payload) + ")");
    if (is_error_reply(reply)) fail(ErrorKind::Guest, what, reply);
    return reply;
}

void GdbClient::handshake(std::chrono::milliseconds wait) {
    // The first request also consumes the unsolicited stop reply (it
    // arrives before the `+`; see the header).
    std::string features = request_ok("qSupported:multiprocess+;qXfer:features:read+;vContSupported+",
                                      "negotiating features", kDefaultTimeout + wait);
    multiprocess_ = false;
    for (auto item : split(features, ';')) {
        if (item == "multiprocess+") multiprocess_ = true;
        if (item.starts_with("PacketSize=")) {
            auto v = parse_hex(item.substr(11));
            if (!v || *v < 0x100 || *v > 0x1000000)
                fail(ErrorKind::Protocol, "negotiating features", "bad PacketSize in '" + features + "'");
            packet_size_ = static_cast<std::size_t>(*v);
        }
    }

    threads_.clear();
    std::string query = "qfThreadInfo";
    while (true) {
        std::string reply = request_ok(query, "listing threads");
        if (reply[0] != 'm' && reply[0] != 'l')
            fail(ErrorKind::Protocol, "listing threads", "unexpected reply '" + reply.substr(0, 40) + "'");
        std::string_view list = std::string_view(reply).substr(1);
        if (reply[0] == 'm' && list.empty())
            fail(ErrorKind::Protocol, "listing threads", "empty 'm' reply");
        if (!list.empty()) {
            for (auto id : split(list, ',')) {
                if (id.empty()) fail(ErrorKind::Protocol, "listing threads", "empty thread id in '" + reply + "'");
                threads_.emplace_back(id);
            }
        }
        if (threads_.size() > kMaxThreads)
            fail(ErrorKind::Protocol, "listing threads", "more than " + std::to_string(kMaxThreads) + " threads");
        if (reply[0] == 'l') break;
        query = "qsThreadInfo";
    }
    if (threads_.empty()) fail(ErrorKind::Protocol, "listing threads", "the stub lists no threads");
    running_ = false;
}

void GdbClient::select_thread(const std::string& thread_id) {
    std::string reply = request_ok("Hg" + thread_id, "selecting thread " + thread_id);
    if (reply != "OK") fail(ErrorKind::Protocol, "selecting thread " + thread_id, "unexpected reply '" + reply + "'");
}

std::string GdbClient::read_all_registers_hex() {
    std::string reply = request_ok("g", "reading registers");
    bool ok = reply.size() % 2 == 0 &&
              std::all_of(reply.begin(), reply.end(), [](char c) { return is_hex_digit(c) || c == 'x'; });
    if (!ok) fail(ErrorKind::Protocol, "reading registers", "malformed reply '" + reply.substr(0, 40) + "'");
    return reply;
}

std::string GdbClient::read_register_hex(int regnum) {
    std::string what = "reading register " + std::to_string(regnum);
    std::string reply;
    try {
        reply = request_ok("p" + hexnum(static_cast<std::uint64_t>(regnum)), what);
    } catch (const Error& e) {
        if (e.kind() == ErrorKind::Protocol && std::string_view(e.what()).find("empty reply") != std::string_view::npos)
            throw Error(e.kind(), std::string(e.what()) +
                                      " (QEMU answers `p` only after target.xml was read, and not for "
                                      "registers it does not have)");
        throw;
    }
    bool ok = reply.size() % 2 == 0 &&
              std::all_of(reply.begin(), reply.end(), [](char c) { return is_hex_digit(c) || c == 'x'; });
    if (!ok) fail(ErrorKind::Protocol, what, "malformed reply '" + reply.substr(0, 40) + "'");
    return reply;
}

void GdbClient::write_register_hex(int regnum, std::string_view hex_value) {
    std::string what = "writing register " + std::to_string(regnum);
    if (hex_value.empty() || hex_value.size() % 2 != 0 || !is_hex_string(hex_value))
        throw Error(ErrorKind::Internal, target_ + " gdbstub: " + what + ": bad value '" +
                                             std::string(hex_value.substr(0, 40)) + "'");
    std::string reply = request_ok("P" + hexnum(static_cast<std::uint64_t>(regnum)) + "=" + std::string(hex_value), what);
    if (reply != "OK") fail(ErrorKind::Protocol, what, "unexpected reply '" + reply + "'");
}

std::string GdbClient::read_feature_xml(const std::string& annex) {
    std::string what = "reading " + annex;
    std::string doc;
    while (true) {
        std::string query =
            "qXfer:features:read:" + annex + ":" + hexnum(doc.size()) + "," + hexnum(kFeatureChunk);
        std::string reply = request(query);
        if (reply.empty()) fail(ErrorKind::Protocol, what, "qXfer:features:read is not supported");
        if (is_error_reply(reply)) fail(ErrorKind::Protocol, what, "the stub has no such document (" + reply + ")");
        char kind = reply[0];
        if (kind != 'm' && kind != 'l')
            fail(ErrorKind::Protocol, what, "unexpected reply '" + reply.substr(0, 40) + "'");
        if (kind == 'm' && reply.size() == 1)
            fail(ErrorKind::Protocol, what, "empty 'm' reply at offset " + std::to_string(doc.size()));
        if (doc.size() + reply.size() - 1 > kMaxFeatureXml)
            fail(ErrorKind::Protocol, what, "document larger than " + std::to_string(kMaxFeatureXml) + " bytes");
        doc.append(reply, 1);
        if (kind == 'l') return doc;
    }
}

void GdbClient::set_physical_mode(bool physical) {
    std::string what = std::string("switching to ") + (physical ? "physical" : "virtual") + " addresses";
    std::string reply = request_ok(physical ? "Qqemu.PhyMemMode:1" : "Qqemu.PhyMemMode:0", what);
    if (reply != "OK") fail(ErrorKind::Protocol, what, "unexpected reply '" + reply + "'");
    physical_mode_ = physical;
}

void GdbClient::read_memory(std::uint64_t addr, std::span<std::byte> out) {
    const char* space = physical_mode_ ? "physical" : "virtual";
    for (std::size_t done = 0; done < out.size();) {
        std::size_t n = std::min(kMaxMemoryChunk, out.size() - done);
        std::uint64_t a = addr + done;
        std::string what = "reading " + hex_short(n) + " bytes at " + space + " " + hex_short(a);
        std::string reply = request_ok("m" + hexnum(a) + "," + hexnum(n), what);
        std::vector<std::byte> bytes;
        try {
            bytes = gdb::from_hex(reply);
        } catch (const Error& e) {
            fail(ErrorKind::Protocol, what, std::string("malformed reply: ") + e.what());
        }
        if (bytes.size() != n)
            fail(ErrorKind::Protocol, what,
                 (bytes.size() < n ? "short reply: " : "long reply: ") + std::to_string(bytes.size()) + " bytes");
        std::copy(bytes.begin(), bytes.end(), out.begin() + static_cast<std::ptrdiff_t>(done));
        done += n;
    }
}

void GdbClient::write_memory(std::uint64_t addr, std::span<const std::byte> data) {
    const char* space = physical_mode_ ? "physical" : "virtual";
    const std::size_t chunk = max_write_chunk();
    for (std::size_t done = 0; done < data.size();) {
        std::size_t n = std::min(chunk, data.size() - done);
        std::uint64_t a = addr + done;
        std::string what = "writing " + hex_short(n) + " bytes at " + space + " " + hex_short(a);
        std::string reply =
            request_ok("M" + hexnum(a) + "," + hexnum(n) + ":" + gdb::to_hex(data.subspan(done, n)), what);
        if (reply != "OK") fail(ErrorKind::Protocol, what, "unexpected reply '" + reply.substr(0, 40) + "'");
        done += n;
    }
}

void GdbClient::insert_breakpoint(std::uint64_t addr) {
    std::string what = "inserting a breakpoint at " + hex_short(addr);
    std::string reply = request_ok("Z0," + hexnum(addr) + ",1", what);
    if (reply != "OK") fail(ErrorKind::Protocol, what, "unexpected reply '" + reply + "'");
}

void GdbClient::remove_breakpoint(std::uint64_t addr) {
    std::string what = "removing the breakpoint at " + hex_short(addr);
    std::string reply = request_ok("z0," + hexnum(addr) + ",1", what);
    if (reply != "OK") fail(ErrorKind::Protocol, what, "unexpected reply '" + reply + "'");
}

void GdbClient::resume() {
    if (running_) return;
    if (!socket_.is_open()) fail(ErrorKind::Unreachable, "resuming the VM", "not connected");
    Deadline deadline(kDefaultTimeout);
    try {
        // The marker round trip drains stale stop replies and stops a VM
        // someone else resumed; after it the `c` cannot be dropped.
        sync(deadline);
        resync_ = false;
        // A stop reply before this `+` is older than the `c`: skipped, and
        // not acked (the `+` would reach a running VM and stop it).
        send_and_wait_ack("c", deadline, BeforeAck::SkipWithoutAck);
    } catch (const Error& e) {
        resync_ = true;
        fail(e.kind(), "resuming the VM ('c')", e.what());
    }
    running_ = true;
}

std::optional<std::string> GdbClient::wait_stop(std::chrono::milliseconds timeout) {
    if (!running_)
        throw Error(ErrorKind::Internal, target_ + " gdbstub: waiting for a stop reply while the VM is not "
                                                   "running under this client");
    Deadline deadline(timeout);
    try {
        int bad = 0;
        while (auto ev = next_event(deadline)) {
            using T = gdb::PacketDecoder::Event::Type;
            if (ev->type == T::BadChecksum) {
                // Most likely the stop reply itself; QEMU resends it on `-`.
                if (++bad > kMaxBadChecksums)
                    throw Error(ErrorKind::Protocol, "packets with bad checksums, " + std::to_string(bad) +
                                                         " times in a row");
                send_raw("-");
                continue;
            }
            if (ev->type != T::Packet) continue;
            if (is_stop_reply(ev->payload)) {
                send_raw("+");  // the VM is stopped now: the `+` is safe
                running_ = false;
                return std::move(ev->payload);
            }
            if (is_exit_reply(ev->payload)) {
                running_ = false;
                throw Error(ErrorKind::Unreachable, "the VM exited ('" + ev->payload + "')");
            }
            // Anything else is skipped and not acked: a `+` would stop the VM.
        }
    } catch (const Error& e) {
        fail(e.kind(), "waiting for the VM to stop", e.what());
    }
    return std::nullopt;
}

std::optional<std::string> GdbClient::interrupt(std::chrono::milliseconds timeout) {
    if (!running_) return std::nullopt;  // QEMU does not answer 0x03 on a stopped VM
    try {
        send_raw("\x03");
    } catch (const Error& e) {
        fail(e.kind(), "interrupting the VM (0x03)", e.what());
    }
    // If the VM stopped on its own meanwhile, its stop reply is the one we
    // read and QEMU ignores the 0x03: either way exactly one stop reply.
    auto stop = wait_stop(timeout);
    if (!stop) fail(ErrorKind::Timeout, "interrupting the VM (0x03)", "no stop reply within " + ms_text(timeout));
    return stop;
}

void GdbClient::detach() {
    if (!socket_.is_open()) fail(ErrorKind::Unreachable, "detaching", "not connected");
    if (running_) interrupt();
    std::string reply;
    std::string packet = "D";
    if (multiprocess_) {
        std::uint64_t pid = 1;
        if (!threads_.empty() && threads_.front().starts_with("p")) {
            std::string_view id = threads_.front();
            id.remove_prefix(1);
            if (auto v = parse_hex(id.substr(0, id.find('.')))) pid = *v;
        }
        packet = "D;" + hexnum(pid);
    }
    reply = request(packet);
    // QEMU keeps multiprocess mode from an earlier connection: a plain `D`
    // then answers E22 while `D;1` works.
    if (packet == "D" && is_error_reply(reply)) {
        packet = "D;1";
        reply = request(packet);
    }
    if (reply != "OK") fail(ErrorKind::Protocol, "detaching (" + summary(packet) + ")", "unexpected reply '" + reply + "'");
    socket_.close();
    running_ = false;
}

void GdbClient::close() {
    socket_.close();
    running_ = false;
}

std::optional<StopReply> parse_stop_reply(std::string_view payload) {
    if (!is_stop_reply(payload)) return std::nullopt;
    StopReply out;
    out.signal = static_cast<int>(*parse_hex(payload.substr(1, 2)));
    if (payload[0] == 'S') return out;
    for (auto field : split(payload.substr(3), ';')) {
        auto colon = field.find(':');
        if (colon == std::string_view::npos) continue;
        if (field.substr(0, colon) == "thread") out.thread = std::string(field.substr(colon + 1));
    }
    return out;
}

}  // namespace hvpatch
