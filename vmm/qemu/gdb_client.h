// GDB remote protocol client for QEMU's gdbstub.
//
// QEMU gdbstub behaviour this client is written for (QEMU 7.2, measured):
// - Connecting stops the VM and QEMU then sends an unsolicited stop reply
//   (`T02thread:...`); `drain_unsolicited()` consumes it.
// - 0x03 to a VM that is already stopped gets no reply at all.
// - While the VM runs (after `c`), any byte sent stops it and is swallowed
//   without a `+`: interrupt first, read the stop reply, then send.
// - Once `multiprocess+` is negotiated, a plain `D` answers `E22`; `D;1`
//   detaches and resumes the VM. Closing without detaching leaves it stopped.
// - Threads are vCPUs (`p01.01`, `p01.02`, ...); `Hg` selects one.
// - `m`/`M` take at most 0x800 bytes per packet; `Qqemu.PhyMemMode:1`
//   switches them to guest-physical addresses.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vmm/qemu/gdb_packet.h"
#include "vmm/socket.h"

namespace hvpatch {

class GdbClient {
public:
    static constexpr std::chrono::milliseconds kDefaultTimeout{5000};
    static constexpr std::size_t kMaxMemoryChunk = 0x800;

    // Wraps a connected socket. Nothing is sent until handshake().
    GdbClient(Socket socket, std::string target_name);

    // Consumes the stop reply QEMU sends on connect (waits up to `wait`),
    // then negotiates qSupported (multiprocess+, qXfer:features:read+) and
    // reads the thread list.
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

    // Thread ids as the stub names them ("p1.1", "p1.2" ...), in stub order.
    const std::vector<std::string>& threads() const { return threads_; }
    bool multiprocess() const { return multiprocess_; }

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

    // `c`: the VM runs until a stop reply. No reply is read here.
    void resume();
    bool running() const { return running_; }
    // Waits for a stop reply while running. Returns the payload (e.g.
    // "T05thread:p01.02;") or nullopt at the timeout (VM still running).
    std::optional<std::string> wait_stop(std::chrono::milliseconds timeout);
    // Stops a running VM (0x03) and returns the stop reply. Does nothing
    // (returns nullopt) if the VM is not running under this client.
    std::optional<std::string> interrupt(std::chrono::milliseconds timeout = kDefaultTimeout);

    // `D;1` (or `D` without multiprocess): detaches and resumes the VM.
    void detach();
    // Closes without detaching (QEMU keeps the VM stopped).
    void close();

    const std::string& target_name() const { return target_; }

private:
    // Next packet payload from the stub; acks it. nullopt at the deadline.
    std::optional<std::string> read_packet(const Deadline& deadline);
    void send_raw(std::string_view bytes);

    Socket socket_;
    std::string target_;
    gdb::PacketDecoder decoder_;
    std::vector<std::string> threads_;
    bool multiprocess_ = false;
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
