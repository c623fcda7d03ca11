// GDB remote protocol client for QEMU's gdbstub.
//
// QEMU gdbstub behaviour this client is written for (QEMU 7.2, measured):
// - Connecting stops the VM and QEMU then sends an unsolicited stop reply
//   (`T02thread:...`), before it reads anything from us; handshake()
//   consumes it. None comes when the VM was already stopped.
// - A second client's connect() succeeds while one is attached but gets no
//   answer; QEMU accepts it when the first leaves, which stops the VM even
//   if that second client has given up meanwhile.
// - 0x03 to a VM that is already stopped gets no reply at all.
// - While the VM runs (after `c`), any byte sent stops it and is swallowed
//   without a `+`: interrupt first, read the stop reply, then send.
// - Once `multiprocess+` is negotiated, a plain `D` answers `E22`; `D;1`
//   detaches and resumes the VM. Closing without detaching leaves it stopped.
// - Threads are vCPUs (`p01.01`, `p01.02`, ...); `Hg` selects one.
// - `m`/`M` take at most 0x800 bytes per packet; `Qqemu.PhyMemMode:1`
//   switches them to guest-physical addresses. In physical mode, addresses
//   with no RAM behind them read as zeros and writes answer OK (no E14).
// - Packets longer than PacketSize - 1 (4095) bytes are dropped without any
//   answer, so an `M` of 0x800 bytes (4096 hex digits) never works.
// - A stop reply stays pending until `+` or our next `$`; a `+` that
//   reaches a running VM with nothing pending stops it like any byte.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hvpatch/error.h"
#include "vmm/qemu/gdb_packet.h"
#include "vmm/socket.h"

namespace hvpatch {

class GdbClient {
public:
    static constexpr std::chrono::milliseconds kDefaultTimeout{5000};
    static constexpr std::size_t kMaxMemoryChunk = 0x800;

    // Wraps a connected socket. Nothing is sent until handshake().
    GdbClient(Socket socket, std::string target_name);

    // Consumes the stop reply QEMU sends on connect, then negotiates
    // qSupported (multiprocess+, qXfer:features:read+) and reads the thread
    // list. QEMU emits that stop reply synchronously when it accepts the
    // connection, before it reads any byte from us, so it always arrives
    // before the `+` for our first packet (measured): the handshake sends
    // qSupported at once and never idles waiting for a stop reply that does
    // not come when the VM was already stopped. `wait` is extra time allowed
    // for the first answer (QEMU stops the vCPUs before answering).
    void handshake(std::chrono::milliseconds wait = std::chrono::milliseconds(500));

    // Sends a packet and returns the reply payload. Retransmits on `-`.
    // Throws Error(Timeout) when no reply arrives, Error(Unreachable) when
    // the stub hangs up, Error(Protocol) for malformed replies.
    std::string request(std::string_view payload,
                        std::chrono::milliseconds timeout = kDefaultTimeout);
    // request() that also throws Error(Guest) for an `Exx` reply and
    // Error(Protocol) for an empty (unsupported) reply, naming `what`.
    std::string request_ok(std::string_view payload, const std::string& what,
                           std::chrono::milliseconds timeout = kDefaultTimeout);

    // Thread ids as the stub names them ("p01.01", "p01.02" ...), in stub order.
    const std::vector<std::string>& threads() const { return threads_; }
    bool multiprocess() const { return multiprocess_; }
    // The stub's PacketSize (QEMU: 0x1000): its input buffer. A longer
    // packet is dropped without an answer, so `M` writes use smaller chunks.
    std::size_t packet_size() const { return packet_size_; }
    std::size_t max_write_chunk() const;

    void select_thread(const std::string& thread_id);  // Hg
    std::string read_all_registers_hex();              // g
    std::string read_register_hex(int regnum);         // p
    void write_register_hex(int regnum, std::string_view hex);  // P

    // qXfer:features:read:<annex> — the whole document.
    std::string read_feature_xml(const std::string& annex);

    void set_physical_mode(bool physical);  // Qqemu.PhyMemMode
    // Reads/writes in chunks of at most kMaxMemoryChunk bytes.
    void read_memory(std::uint64_t addr, std::span<std::byte> out);
    void write_memory(std::uint64_t addr, std::span<const std::byte> data);

    void insert_breakpoint(std::uint64_t addr);  // Z0
    void remove_breakpoint(std::uint64_t addr);  // z0

    // `c`: the VM runs until a stop reply. Only the stub's `+` is read here
    // (after a `qC` round trip that drains stale stop replies). No-op if
    // the VM already runs under this client. Until the stop reply, nothing
    // is sent to the stub (not even a `+`: any byte stops a running VM).
    void resume();
    bool running() const { return running_; }
    // Waits for a stop reply while running. Returns the payload (e.g.
    // "T05thread:p01.02;") or nullopt at the timeout (VM still running).
    // Throws Error(Internal) if the VM is not running under this client.
    std::optional<std::string> wait_stop(std::chrono::milliseconds timeout);
    // Stops a running VM (0x03) and returns the stop reply. Does nothing
    // (returns nullopt) if the VM is not running under this client.
    std::optional<std::string> interrupt(std::chrono::milliseconds timeout = kDefaultTimeout);

    // `D;1` (or `D` without multiprocess): detaches and resumes the VM,
    // then closes the socket (QEMU accepts a new client only after that).
    // Interrupts first if the VM runs under this client.
    void detach();
    // Closes without detaching (QEMU keeps the VM stopped).
    void close();

    const std::string& target_name() const { return target_; }

private:
    // Next packet payload from the stub; acks it. nullopt at the deadline.
    std::optional<std::string> read_packet(const Deadline& deadline);
    void send_raw(std::string_view bytes);
    // Next decoder event, reading the socket as needed; nullopt at the deadline.
    std::optional<gdb::PacketDecoder::Event> next_event(const Deadline& deadline);
    // How send_and_wait_ack treats packets that arrive before the `+`.
    enum class BeforeAck {
        Skip,            // ack and skip them (they predate our packet)
        DetectDropped,   // same, but a stop reply returns false: the VM may
                         // have been running and dropped our packet
        SkipWithoutAck,  // for `c`: a `+` reaching a running VM would stop it
    };
    // Sends a packet and waits for its `+` (resending on `-`).
    bool send_and_wait_ack(std::string_view payload, const Deadline& deadline, BeforeAck mode);
    // A marker round trip (`qC`, then `qAttached` if a stop reply shows the
    // VM was running): returns the other non-stop packets that came before
    // the marker's reply (a reply still due to us).
    std::vector<std::string> sync(const Deadline& deadline);
    std::string transact(std::string_view payload, const Deadline& deadline);
    [[noreturn]] void fail(ErrorKind kind, const std::string& context, const std::string& detail) const;

    Socket socket_;
    std::string target_;
    gdb::PacketDecoder decoder_;
    std::vector<std::string> threads_;
    bool multiprocess_ = false;
    std::size_t packet_size_ = 0x1000;
    // Set after a failed exchange: the next request first re-synchronises
    // (a late reply must not be taken for the answer to a new packet).
    bool resync_ = false;
    bool physical_mode_ = false;
    bool running_ = false;
};

// Parses "T05thread:p01.02;..." → the thread id "p01.02" (empty if absent)
// and the signal number.
struct StopReply {
    int signal = 0;
    std::string thread;
};
std::optional<StopReply> parse_stop_reply(std::string_view payload);

}  // namespace hvpatch
