// GdbClient against a fake gdbstub: a thread at the other end of a
// socketpair that imitates QEMU 7.2's stub byte for byte where it matters
// (measured against the real one, see FIELD-NOTES.md):
// - the connect stop reply when the VM was running;
// - while the VM runs, any byte stops it, is dropped, and QEMU sends T02;
// - a sent reply stays "last packet" until `+` or the next `$`; `-` resends;
// - packets longer than PacketSize - 1 are dropped without an answer;
// - `m` over 0x800 bytes → E22, unmapped → E14; `p` answers empty until
//   target.xml was read; `D` → E22 once multiprocess is on, `D;1` → OK.
#include "vmm/qemu/gdb_client.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kKernelBase = 0xffffffff81000000ULL;  // virtual alias of fake RAM offset 0
constexpr std::size_t kRamSize = 0x10000;
constexpr std::uint64_t kHoleStart = 0x8000, kHoleEnd = 0x9000;  // unmapped → E14
constexpr std::size_t kRegsBytes = 608;                          // QEMU 7.2 x86-64 `g`

std::string hex2(unsigned v) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", v & 0xff);
    return b;
}

std::string hexnum(std::uint64_t v) {
    char b[20];
    std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
    return b;
}

// The stub's own (independent) encoder: escapes, optional RLE of runs.
std::string stub_frame(const std::string& payload, bool rle, int* runs) {
    std::string body;
    for (std::size_t i = 0; i < payload.size();) {
        char c = payload[i];
        bool special = c == '$' || c == '#' || c == '}' || c == '*';
        std::size_t run = 1;
        while (i + run < payload.size() && payload[i + run] == c && run < 98) ++run;
        if (special) {
            body += '}';
            body += static_cast<char>(c ^ 0x20);
            ++i;
            continue;
        }
        // n - 29 repeats; never produce '#' (6 repeats) or '$' (7 repeats).
        if (rle && run >= 4) {
            std::size_t repeats = run - 1;
            if (repeats == 6 || repeats == 7) repeats = 5;
            body += c;
            body += '*';
            body += static_cast<char>(repeats + 29);
            if (runs) ++*runs;
            i += repeats + 1;
            continue;
        }
        body += c;
        ++i;
    }
    unsigned sum = 0;
    for (char c : body) sum += static_cast<unsigned char>(c);
    return "$" + body + "#" + hex2(sum);
}

struct StubOptions {
    bool running_at_connect = true;  // QEMU then sends T02 when we connect
    bool rle = false;
    int nack_packets = 0;             // answer `-` to this many good packets
    int corrupt_replies = 0;          // send this many replies with a bad checksum
    std::string stop_before_ack_on;   // first packet with this prefix: a T02 comes before its `+`
    std::string stop_after_ack_on;    // ... or between its `+` and its reply
    int answer_limit = -1;            // go silent after answering this many packets
    std::string close_mid_reply_on;   // send `+` and half the reply, then hang up
    std::string delay_reply_on;       // first such packet: `+` and reply after delay_ms
    int delay_ms = 0;
    bool multiprocess_sticky = false;  // an earlier client negotiated multiprocess
    bool offer_multiprocess = true;
    std::string short_reply_on;        // first such packet: only half the hex
    std::string bogus_reply_on;        // first such packet: "zzzz"
    bool support_z0 = true;
    int threads = 2;
    int threads_per_reply = 1;
    bool trickle = false;  // write byte by byte
    std::map<std::string, std::string> xml = {
        {"target.xml",
         "<?xml version=\"1.0\"?><target><xi:include href=\"i386-64bit.xml\"/></target>"},
    };
};

class FakeStub {
public:
    explicit FakeStub(StubOptions opt) : opt_(std::move(opt)) {
        int fds[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
        client_fd_ = fds[0];
        fd_ = fds[1];
        for (std::size_t i = 0; i < kRamSize; ++i) ram_[i] = static_cast<std::byte>((i * 7 + (i >> 8)) & 0xff);
        for (std::size_t i = 0x4000; i < 0x5000; ++i) ram_[i] = std::byte{0};  // a zero page, for RLE
        regs_.assign(kRegsBytes, std::byte{0});
        set_reg64(16, 0xffffffff81234567ULL);  // rip
        set_reg64(7, 0xffffc90000a3fe58ULL);   // rsp
        multiprocess_ = opt_.multiprocess_sticky;
        running_ = opt_.running_at_connect;
        thread_ = std::thread([this] { run(); });
    }
    ~FakeStub() {
        stop_ = true;
        thread_.join();
        if (fd_ >= 0) ::close(fd_);
    }

    Socket client_socket() { return Socket(client_fd_, "fake-gdbstub"); }

    // --- what the "rest of QEMU" does (QMP, a vCPU hitting a breakpoint)
    void qmp_stop() {
        std::lock_guard lock(mu_);
        if (running_) vm_stopped("T02thread:p01.01;");
    }
    void qmp_cont() {
        std::lock_guard lock(mu_);
        running_ = true;
    }
    // A stop (QMP `stop` after a QMP `cont`) that QEMU sends just before it
    // reads the `$` of the n-th next packet from us.
    void stale_stop_before_packet(int n) {
        std::lock_guard lock(mu_);
        stale_stop_countdown_ = n;
    }
    void hit_breakpoint(const std::string& thread) {
        std::lock_guard lock(mu_);
        if (running_) vm_stopped("T05thread:" + thread + ";");
    }

    // --- inspection
    std::vector<std::string> log() {
        std::lock_guard lock(mu_);
        return log_;
    }
    int count(const std::string& prefix) {
        std::lock_guard lock(mu_);
        int n = 0;
        for (const auto& p : log_) n += p.rfind(prefix, 0) == 0;
        return n;
    }
    bool running() {
        std::lock_guard lock(mu_);
        return running_;
    }
    int dropped_while_running() {
        std::lock_guard lock(mu_);
        return dropped_while_running_;
    }
    int resent() {
        std::lock_guard lock(mu_);
        return resent_;
    }
    int rle_runs() {
        std::lock_guard lock(mu_);
        return rle_runs_;
    }
    int oversized() {
        std::lock_guard lock(mu_);
        return oversized_;
    }
    std::size_t max_packet() {
        std::lock_guard lock(mu_);
        return max_packet_;
    }
    std::vector<std::byte> ram(std::size_t off, std::size_t n) {
        std::lock_guard lock(mu_);
        return {ram_.begin() + static_cast<long>(off), ram_.begin() + static_cast<long>(off + n)};
    }
    std::vector<std::byte> ram_copy() {
        std::lock_guard lock(mu_);
        return ram_;
    }
    std::string regs_hex() {
        std::lock_guard lock(mu_);
        return to_hex(regs_);
    }
    bool physical_mode() {
        std::lock_guard lock(mu_);
        return physical_;
    }
    bool has_breakpoint(std::uint64_t a) {
        std::lock_guard lock(mu_);
        return breakpoints_.count(a) != 0;
    }

private:
    static std::string to_hex(const std::vector<std::byte>& v) {
        std::string s;
        for (auto b : v) s += hex2(std::to_integer<unsigned>(b));
        return s;
    }
    void set_reg64(int idx, std::uint64_t v) {
        for (int i = 0; i < 8; ++i) regs_[static_cast<std::size_t>(idx * 8 + i)] = static_cast<std::byte>(v >> (8 * i));
    }

    void write(const std::string& bytes) {
        if (fd_ < 0) return;
        if (opt_.trickle) {
            for (char c : bytes) {
                (void)::send(fd_, &c, 1, MSG_NOSIGNAL);
                std::this_thread::sleep_for(20us);
            }
            return;
        }
        (void)::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    }
    void put_packet(const std::string& payload) {
        last_packet_ = stub_frame(payload, opt_.rle, &rle_runs_);
        if (opt_.corrupt_replies > 0) {
            --opt_.corrupt_replies;
            std::string bad = last_packet_;
            bad[bad.size() - 1] = bad[bad.size() - 1] == '0' ? '1' : '0';
            write(bad);
            return;
        }
        write(last_packet_);
    }
    void vm_stopped(const std::string& stop) {
        running_ = false;
        put_packet(stop);
    }

    void run() {
        {
            std::lock_guard lock(mu_);
            if (running_) vm_stopped("T02thread:p01.01;");  // connecting stops the VM
        }
        char buf[8192];
        while (!stop_ && fd_ >= 0) {
            pollfd p{fd_, POLLIN, 0};
            if (poll(&p, 1, 10) <= 0) continue;
            ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) break;  // the client hung up
            std::lock_guard lock(mu_);
            for (ssize_t i = 0; i < n && fd_ >= 0; ++i) byte(buf[i]);
        }
    }

    // QEMU 7.2 gdb_read_byte(), system mode.
    void byte(char ch) {
        if (!last_packet_.empty()) {
            if (ch == '-') {
                ++resent_;
                write(last_packet_);
            }
            if (ch == '+' || ch == '$') last_packet_.clear();
            if (ch != '$') return;
        }
        if (running_) {
            ++dropped_while_running_;
            vm_stopped("T02thread:p01.01;");
            return;
        }
        switch (state_) {
            case State::Idle:
                if (ch == '$' && stale_stop_countdown_ > 0 && --stale_stop_countdown_ == 0)
                    write(stub_frame("T02thread:p01.01;", false, nullptr));  // the `$` clears it as last packet
                if (ch == '$') {
                    line_.clear();
                    state_ = State::Line;
                }
                break;
            case State::Line:
                if (ch == '#') {
                    state_ = State::Ck1;
                } else if (line_.size() >= 4095) {  // QEMU's 4096-byte line buffer
                    ++oversized_;
                    state_ = State::Idle;
                } else {
                    line_ += ch;
                }
                break;
            case State::Ck1:
                ck_ = std::string(1, ch);
                state_ = State::Ck2;
                break;
            case State::Ck2: {
                ck_ += ch;
                state_ = State::Idle;
                unsigned sum = 0;
                for (char c : line_) sum += static_cast<unsigned char>(c);
                if (hex2(sum) != ck_) {
                    write("-");
                    break;
                }
                if (opt_.nack_packets > 0) {
                    --opt_.nack_packets;
                    write("-");
                    break;
                }
                if (opt_.answer_limit == 0) break;  // silent
                if (opt_.answer_limit > 0) --opt_.answer_limit;
                max_packet_ = std::max(max_packet_, line_.size());
                std::string payload;
                for (std::size_t i = 0; i < line_.size(); ++i)
                    payload += line_[i] == '}' && i + 1 < line_.size() ? static_cast<char>(line_[++i] ^ 0x20) : line_[i];
                packet(payload);
                break;
            }
        }
    }

    bool take(std::string& prefix, const std::string& payload) {
        if (prefix.empty() || payload.rfind(prefix, 0) != 0) return false;
        prefix.clear();
        return true;
    }

    void packet(const std::string& p) {
        log_.push_back(p);
        if (take(opt_.delay_reply_on, p)) {  // a busy main loop: late `+` and reply
            mu_.unlock();
            std::this_thread::sleep_for(std::chrono::milliseconds(opt_.delay_ms));
            mu_.lock();
        }
        if (take(opt_.stop_before_ack_on, p)) put_packet("T02thread:p01.01;");
        write("+");
        if (take(opt_.close_mid_reply_on, p)) {
            std::string r = stub_frame("0011223344556677", false, nullptr);
            write(r.substr(0, r.size() / 2));
            ::shutdown(fd_, SHUT_RDWR);
            ::close(fd_);
            fd_ = -1;
            return;
        }
        if (take(opt_.stop_after_ack_on, p)) put_packet("T02thread:p01.01;");
        if (p == "c") {  // no reply until the VM stops
            running_ = true;
            return;
        }
        std::string r = reply(p);
        if (take(opt_.short_reply_on, p)) r = r.substr(0, r.size() / 2);
        if (take(opt_.bogus_reply_on, p)) r = "zzzz";
        put_packet(r);
        if (p.rfind("D", 0) == 0 && r == "OK") running_ = true;  // detached: the VM runs
    }

    std::string reply(const std::string& p) {
        auto starts = [&](const char* s) { return p.rfind(s, 0) == 0; };
        if (starts("qSupported")) {
            if (opt_.offer_multiprocess && p.find("multiprocess+") != std::string::npos) multiprocess_ = true;
            return std::string("PacketSize=1000;qXfer:features:read+;vContSupported+") +
                   (multiprocess_ ? ";multiprocess+" : "");
        }
        if (p == "qfThreadInfo") next_thread_ = 1;
        if (p == "qfThreadInfo" || p == "qsThreadInfo") {
            if (next_thread_ > opt_.threads) return "l";
            std::string r = "m";
            for (int k = 0; k < opt_.threads_per_reply && next_thread_ <= opt_.threads; ++k, ++next_thread_) {
                if (k) r += ',';
                r += multiprocess_ ? "p01." + hex2(static_cast<unsigned>(next_thread_)) : hex2(static_cast<unsigned>(next_thread_));
            }
            return r;
        }
        if (p == "qC") return multiprocess_ ? "QCp01.01" : "QC01";
        if (p == "qAttached") return "1";
        if (p == "?") return "T05thread:p01.01;";
        if (p == "c") return "";
        if (p == "D") return multiprocess_ ? "E22" : "OK";
        if (p == "D;1") return "OK";
        if (starts("Hg")) {
            std::string t = p.substr(2);
            return (t == "p01.01" || t == "p01.02" || t == "0") ? "OK" : "E22";
        }
        if (p == "Qqemu.PhyMemMode:1" || p == "Qqemu.PhyMemMode:0") {
            physical_ = p.back() == '1';
            return "OK";
        }
        if (p == "g") return to_hex(regs_);
        if (starts("p")) {
            if (!xml_read_) return "";
            unsigned long n = std::stoul(p.substr(1), nullptr, 16);
            if (n > 60) return "";
            if (n < 17) return to_hex({regs_.begin() + static_cast<long>(n * 8), regs_.begin() + static_cast<long>(n * 8 + 8)});
            return "00000000";
        }
        if (starts("P")) return xml_read_ ? "OK" : "";
        if (starts("qXfer:features:read:")) {
            std::string rest = p.substr(20);
            auto colon = rest.find(':');
            std::string annex = rest.substr(0, colon);
            auto comma = rest.find(',', colon);
            std::size_t off = std::stoul(rest.substr(colon + 1, comma - colon - 1), nullptr, 16);
            std::size_t len = std::stoul(rest.substr(comma + 1), nullptr, 16);
            auto it = opt_.xml.find(annex);
            if (it == opt_.xml.end()) return "E00";
            xml_read_ = true;
            len = std::min<std::size_t>(len, (4096 - 5) / 2);
            const std::string& doc = it->second;
            if (off >= doc.size()) return "l";
            std::string part = doc.substr(off, len);
            return (off + part.size() < doc.size() ? "m" : "l") + part;
        }
        if (starts("m") || starts("M")) {
            auto comma = p.find(',');
            std::uint64_t addr = std::stoull(p.substr(1, comma - 1), nullptr, 16);
            auto colon = p.find(':');
            std::size_t len = std::stoul(p.substr(comma + 1, colon == std::string::npos ? std::string::npos : colon - comma - 1),
                                         nullptr, 16);
            if (p[0] == 'm' && len > 0x800) return "E22";
            std::uint64_t off = addr;
            if (!physical_) {
                if (addr < kKernelBase) return "E14";
                off = addr - kKernelBase;
            }
            if (off + len > kRamSize || (off < kHoleEnd && off + len > kHoleStart)) return "E14";
            if (p[0] == 'm') return to_hex({ram_.begin() + static_cast<long>(off), ram_.begin() + static_cast<long>(off + len)});
            std::string data = p.substr(colon + 1);
            if (data.size() != len * 2) return "E01";
            for (std::size_t i = 0; i < len; ++i)
                ram_[off + i] = static_cast<std::byte>(std::stoul(data.substr(i * 2, 2), nullptr, 16));
            return "OK";
        }
        if (starts("Z0,") || starts("z0,")) {
            if (!opt_.support_z0) return "";
            std::uint64_t addr = std::stoull(p.substr(3), nullptr, 16);
            if (p[0] == 'Z') breakpoints_.insert({addr, 1});
            else breakpoints_.erase(addr);
            return "OK";
        }
        return "";
    }

    enum class State { Idle, Line, Ck1, Ck2 };

    StubOptions opt_;
    int fd_ = -1;
    int client_fd_ = -1;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::mutex mu_;
    State state_ = State::Idle;
    std::string line_, ck_, last_packet_;
    bool running_ = false;
    bool multiprocess_ = false;
    bool physical_ = false;
    bool xml_read_ = false;
    int next_thread_ = 1;
    std::vector<std::byte> ram_ = std::vector<std::byte>(kRamSize);
    std::vector<std::byte> regs_;
    std::map<std::uint64_t, int> breakpoints_;
    std::vector<std::string> log_;
    int stale_stop_countdown_ = 0;
    int dropped_while_running_ = 0, resent_ = 0, rle_runs_ = 0, oversized_ = 0;
    std::size_t max_packet_ = 0;
};

constexpr const char* kTarget = "qmp:/x.sock";

struct Connected {
    explicit Connected(StubOptions opt = {}) : stub(std::move(opt)), client(stub.client_socket(), kTarget) {}
    FakeStub stub;
    GdbClient client;
};

template <typename Fn>
Error expect_error(Fn&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e;
    }
    ADD_FAILURE() << "expected an hvpatch::Error";
    return Error(ErrorKind::Internal, "did not throw");
}

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---- handshake ---------------------------------------------------------------

TEST(GdbClientTest, HandshakeConsumesConnectStopReplyAndListsThreads) {
    Connected c;
    c.client.handshake();
    EXPECT_TRUE(c.client.multiprocess());
    EXPECT_EQ(c.client.packet_size(), 0x1000u);
    EXPECT_EQ(c.client.threads(), (std::vector<std::string>{"p01.01", "p01.02"}));
    EXPECT_FALSE(c.client.running());
    EXPECT_EQ(c.stub.count("qSupported:multiprocess+;qXfer:features:read+;vContSupported+"), 1);
    EXPECT_EQ(c.stub.count("qfThreadInfo"), 1);
    EXPECT_EQ(c.stub.count("qsThreadInfo"), 2);  // p01.02, then "l"
    // The T02 was not taken for a reply: the next exchange is in step.
    EXPECT_EQ(c.client.request("qAttached"), "1");
}

TEST(GdbClientTest, HandshakeWithVmAlreadyStoppedDoesNotIdle) {
    StubOptions opt;
    opt.running_at_connect = false;  // no stop reply on connect
    Connected c(opt);
    auto t0 = Clock::now();
    c.client.handshake(2000ms);
    EXPECT_LT(ms_since(t0), 500.0);
    EXPECT_EQ(c.client.threads().size(), 2u);
    EXPECT_EQ(c.stub.count("qC"), 0);  // no stop reply came: no re-synchronisation either
}

TEST(GdbClientTest, HandshakeSurvivesByteByByteDelivery) {
    StubOptions opt;
    opt.trickle = true;
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.client.threads().size(), 2u);
}

TEST(GdbClientTest, HandshakeWithoutMultiprocessUsesPlainThreadIdsAndPlainDetach) {
    StubOptions opt;
    opt.offer_multiprocess = false;
    Connected c(opt);
    c.client.handshake();
    EXPECT_FALSE(c.client.multiprocess());
    EXPECT_EQ(c.client.threads(), (std::vector<std::string>{"01", "02"}));
    c.client.detach();
    EXPECT_EQ(c.stub.log().back(), "D");
    EXPECT_EQ(c.stub.count("D"), 1);
}

TEST(GdbClientTest, HandshakeTakesSeveralThreadIdsPerReply) {
    StubOptions opt;
    opt.running_at_connect = false;
    opt.threads = 3;
    opt.threads_per_reply = 3;
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.client.threads(), (std::vector<std::string>{"p01.01", "p01.02", "p01.03"}));
    EXPECT_EQ(c.stub.count("qsThreadInfo"), 1);
}

TEST(GdbClientTest, HandshakeRefusesAbsurdThreadCounts) {
    StubOptions opt;
    opt.threads = 5000;
    opt.threads_per_reply = 100;
    Connected c(opt);
    Error e = expect_error([&] { c.client.handshake(); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("4096"), std::string::npos) << e.what();
}

// ---- memory --------------------------------------------------------------------

TEST(GdbClientTest, ReadsMemoryInChunksOf0x800) {
    Connected c;
    c.client.handshake();
    c.client.set_physical_mode(true);
    EXPECT_TRUE(c.stub.physical_mode());
    std::vector<std::byte> out(0x1900);
    c.client.read_memory(0x100, out);
    EXPECT_EQ(out, c.stub.ram(0x100, 0x1900));
    auto log = c.stub.log();
    std::vector<std::string> reads;
    for (const auto& p : log)
        if (p[0] == 'm') reads.push_back(p);
    EXPECT_EQ(reads, (std::vector<std::string>{"m100,800", "m900,800", "m1100,800", "m1900,100"}));
}

TEST(GdbClientTest, ReadsVirtualAddresses) {
    Connected c;
    c.client.handshake();
    std::vector<std::byte> out(0x10);
    c.client.read_memory(kKernelBase + 0x20, out);
    EXPECT_EQ(out, c.stub.ram(0x20, 0x10));
    EXPECT_EQ(c.stub.count("mffffffff81000020,10"), 1);
}

TEST(GdbClientTest, MemoryErrorReplyNamesTheFailingChunk) {
    Connected c;
    c.client.handshake();
    c.client.set_physical_mode(true);
    std::vector<std::byte> out(0x1000);
    Error e = expect_error([&] { c.client.read_memory(0x7400, out); });
    EXPECT_EQ(e.kind(), ErrorKind::Guest);
    EXPECT_STREQ(e.what(), "qmp:/x.sock gdbstub: reading 0x800 bytes at physical 0x7c00: E14");
    c.client.set_physical_mode(false);
    Error v = expect_error([&] { c.client.read_memory(0x1000, out); });
    EXPECT_EQ(v.kind(), ErrorKind::Guest);
    EXPECT_STREQ(v.what(), "qmp:/x.sock gdbstub: reading 0x800 bytes at virtual 0x1000: E14");
}

TEST(GdbClientTest, DecodesRunLengthCompressedReplies) {
    StubOptions opt;
    opt.rle = true;
    Connected c(opt);
    c.client.handshake();
    c.client.set_physical_mode(true);
    std::vector<std::byte> out(0x800);
    c.client.read_memory(0x3c00, out);  // half pattern, half zero page
    EXPECT_EQ(out, c.stub.ram(0x3c00, 0x800));
    std::string regs = c.client.read_all_registers_hex();
    EXPECT_EQ(regs.size(), 2 * kRegsBytes);
    EXPECT_EQ(regs, c.stub.regs_hex());
    EXPECT_EQ(regs.substr(16 * 16, 16), "67452381ffffffff");  // rip, little-endian
    EXPECT_GT(c.stub.rle_runs(), 10);  // the stub really compressed
}

TEST(GdbClientTest, WritesMemoryInChunksThatFitThePacketSize) {
    Connected c;
    c.client.handshake();
    EXPECT_EQ(c.client.max_write_chunk(), 0x7e0u);
    c.client.set_physical_mode(true);
    auto before = c.stub.ram_copy();
    std::vector<std::byte> data(0x1000);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(0xa5 ^ i);
    c.client.write_memory(0x2000, data);
    EXPECT_EQ(c.stub.ram(0x2000, 0x1000), data);
    EXPECT_EQ(c.stub.count("M"), 3);  // 0x7e0 + 0x7e0 + 0x40
    EXPECT_EQ(c.stub.oversized(), 0);
    EXPECT_LE(c.stub.max_packet(), 4095u);
    // Neighbours untouched.
    auto after = c.stub.ram_copy();
    std::copy(data.begin(), data.end(), before.begin() + 0x2000);
    EXPECT_EQ(after, before);
}

TEST(GdbClientTest, OversizedPacketIsDroppedByStubAndTimesOut) {
    // Documents the quirk write_memory's chunking avoids: QEMU answers
    // nothing at all to a packet longer than its line buffer.
    Connected c;
    c.client.handshake();
    std::string big = "M1000,800:" + std::string(0x1000, '0');
    auto t0 = Clock::now();
    Error e = expect_error([&] { c.client.request(big, 150ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    EXPECT_LT(ms_since(t0), 1000.0);
    EXPECT_EQ(c.stub.oversized(), 1);
}

TEST(GdbClientTest, ShortOrMalformedMemoryReplyIsAProtocolError) {
    StubOptions opt;
    opt.short_reply_on = "m";
    Connected c(opt);
    c.client.handshake();
    std::vector<std::byte> out(8);
    Error e = expect_error([&] { c.client.read_memory(kKernelBase, out); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_STREQ(e.what(), "qmp:/x.sock gdbstub: reading 0x8 bytes at virtual 0xffffffff81000000: short reply: 4 bytes");
    // The stub answers a 0x1000-byte `m` with E22 (QEMU's limit is 0x800).
    EXPECT_EQ(c.client.request("m" + hexnum(kKernelBase) + ",1000"), "E22");
}

TEST(GdbClientTest, NonHexMemoryReplyIsAProtocolError) {
    StubOptions opt;
    opt.bogus_reply_on = "m";
    Connected c(opt);
    c.client.handshake();
    std::vector<std::byte> out(2);
    Error e = expect_error([&] { c.client.read_memory(kKernelBase, out); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("malformed reply"), std::string::npos) << e.what();
    c.client.read_memory(kKernelBase, out);  // the next one is fine
    EXPECT_EQ(out, c.stub.ram(0, 2));
}

// ---- retransmission and checksums ------------------------------------------

TEST(GdbClientTest, RetransmitsAfterNack) {
    StubOptions opt;
    opt.running_at_connect = false;
    opt.nack_packets = 2;
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.stub.count("qSupported"), 1);  // the nacked copies were not handled
    EXPECT_EQ(c.client.threads().size(), 2u);
}

TEST(GdbClientTest, GivesUpAfterThreeRetransmissions) {
    StubOptions opt;
    opt.running_at_connect = false;
    opt.nack_packets = 100;
    Connected c(opt);
    Error e = expect_error([&] { c.client.handshake(); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("qmp:/x.sock gdbstub: negotiating features"), std::string::npos)
        << e.what();
    EXPECT_EQ(c.stub.count("qSupported"), 0);
}

TEST(GdbClientTest, AsksForResendOfReplyWithBadChecksum) {
    StubOptions opt;
    opt.running_at_connect = false;
    opt.corrupt_replies = 2;  // the replies to qSupported and qfThreadInfo
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.stub.resent(), 2);
    EXPECT_EQ(c.client.threads().size(), 2u);
    std::vector<std::byte> out(8);
    c.client.read_memory(kKernelBase, out);
    EXPECT_EQ(out, c.stub.ram(0, 8));
}

// ---- stale stop replies and a VM resumed behind our back -------------------

TEST(GdbClientTest, SkipsStaleStopReplyBeforeTheAck) {
    StubOptions opt;
    opt.stop_before_ack_on = "m";
    Connected c(opt);
    c.client.handshake();
    std::vector<std::byte> out(16);
    c.client.read_memory(kKernelBase + 0x40, out);
    EXPECT_EQ(out, c.stub.ram(0x40, 16));
    EXPECT_EQ(c.stub.count("m"), 1);  // not sent twice
    // And the stream stays in step.
    c.client.read_memory(kKernelBase + 0x80, out);
    EXPECT_EQ(out, c.stub.ram(0x80, 16));
}

TEST(GdbClientTest, SkipsStaleStopReplyBetweenAckAndReply) {
    StubOptions opt;
    opt.stop_after_ack_on = "g";
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.client.read_all_registers_hex(), c.stub.regs_hex());
    EXPECT_EQ(c.client.request("qAttached"), "1");
}

TEST(GdbClientTest, StopReplyIsTheAnswerWhenTheRequestCanProduceOne) {
    Connected c;
    c.client.handshake();
    EXPECT_EQ(c.client.request("?"), "T05thread:p01.01;");
}

TEST(GdbClientTest, QmpStopAndContBehindOurBackLeavesAStaleStopThatIsSkipped) {
    Connected c;
    c.client.handshake();
    c.stub.qmp_cont();
    c.stub.qmp_stop();  // T02 queued while the client believes the VM never ran
    std::vector<std::byte> out(8);
    c.client.read_memory(kKernelBase + 8, out);
    EXPECT_EQ(out, c.stub.ram(8, 8));
    EXPECT_EQ(c.stub.count("m"), 1);
}

TEST(GdbClientTest, PacketDroppedByVmResumedBehindOurBackIsSentAgain) {
    Connected c;
    c.client.handshake();
    c.stub.qmp_cont();  // e.g. someone ran QMP `cont` while we are attached
    std::vector<std::byte> out(8);
    c.client.read_memory(kKernelBase + 0x100, out);
    EXPECT_EQ(out, c.stub.ram(0x100, 8));
    EXPECT_EQ(c.stub.dropped_while_running(), 1);
    EXPECT_EQ(c.stub.count("m"), 1);  // the dropped copy never reached the stub's parser
    EXPECT_FALSE(c.stub.running());
    EXPECT_EQ(c.client.request("qAttached"), "1");
}

TEST(GdbClientTest, LateReplyAfterTimeoutIsNotTakenForTheNextAnswer) {
    StubOptions opt;
    opt.delay_reply_on = "mffffffff81000000";
    opt.delay_ms = 300;
    Connected c(opt);
    c.client.handshake();
    std::string first = "m" + hexnum(kKernelBase) + ",4";
    Error e = expect_error([&] { c.client.request(first, 100ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    std::vector<std::byte> out(4);
    c.client.read_memory(kKernelBase + 0x200, out);  // waits for the late reply, skips it
    EXPECT_EQ(out, c.stub.ram(0x200, 4));
}

// ---- timeouts and hang-ups ------------------------------------------------------

TEST(GdbClientTest, SilentStubTimesOutWithinTheDeadline) {
    StubOptions opt;
    opt.answer_limit = 4;  // qSupported, qC, qfThreadInfo, qsThreadInfo... then silence
    opt.running_at_connect = false;
    Connected c(opt);
    c.client.handshake();
    auto t0 = Clock::now();
    Error e = expect_error([&] { c.client.request("m0,4", 200ms); });
    double ms = ms_since(t0);
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    EXPECT_GE(ms, 190.0);
    EXPECT_LT(ms, 1000.0);
    EXPECT_NE(std::string(e.what()).find("qmp:/x.sock gdbstub: 'm0,4'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("200 ms"), std::string::npos) << e.what();
    // request_ok names what it was doing.
    Error e2 = expect_error([&] { c.client.request_ok("g", "reading registers", 100ms); });
    EXPECT_EQ(e2.kind(), ErrorKind::Timeout);
    EXPECT_NE(std::string(e2.what()).find("reading registers"), std::string::npos) << e2.what();
}

TEST(GdbClientTest, StubHangingUpMidReplyIsUnreachable) {
    StubOptions opt;
    opt.close_mid_reply_on = "m";
    Connected c(opt);
    c.client.handshake();
    std::vector<std::byte> out(8);
    Error e = expect_error([&] { c.client.read_memory(kKernelBase, out); });
    EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
    EXPECT_NE(std::string(e.what()).find("qmp:/x.sock gdbstub"), std::string::npos) << e.what();
}

TEST(GdbClientTest, ClosedClientRefusesRequests) {
    Connected c;
    c.client.handshake();
    c.client.close();
    Error e = expect_error([&] { c.client.request("g"); });
    EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
}

// ---- run control ------------------------------------------------------------------

TEST(GdbClientTest, ResumeWaitStopAndBreakpointHit) {
    Connected c;
    c.client.handshake();
    c.client.resume();
    EXPECT_TRUE(c.client.running());
    std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(c.stub.running());
    auto t0 = Clock::now();
    EXPECT_FALSE(c.client.wait_stop(50ms));
    EXPECT_GE(ms_since(t0), 45.0);
    EXPECT_TRUE(c.stub.running());  // waiting sent nothing that would stop it
    c.stub.hit_breakpoint("p01.02");
    auto stop = c.client.wait_stop(1000ms);
    ASSERT_TRUE(stop);
    EXPECT_EQ(*stop, "T05thread:p01.02;");
    EXPECT_FALSE(c.client.running());
    auto parsed = parse_stop_reply(*stop);
    ASSERT_TRUE(parsed);
    EXPECT_EQ(parsed->signal, 5);
    EXPECT_EQ(parsed->thread, "p01.02");
    EXPECT_EQ(c.client.request("qAttached"), "1");
}

TEST(GdbClientTest, InterruptStopsARunningVm) {
    Connected c;
    c.client.handshake();
    c.client.resume();
    std::this_thread::sleep_for(10ms);
    auto stop = c.client.interrupt(1000ms);
    ASSERT_TRUE(stop);
    EXPECT_EQ(parse_stop_reply(*stop)->signal, 2);
    EXPECT_FALSE(c.client.running());
    EXPECT_FALSE(c.stub.running());
    EXPECT_EQ(c.stub.dropped_while_running(), 1);  // the 0x03
    // On a stopped VM: nothing is sent (QEMU would not answer).
    EXPECT_FALSE(c.client.interrupt(100ms));
    EXPECT_EQ(c.stub.dropped_while_running(), 1);
    EXPECT_EQ(c.client.request("qAttached"), "1");
}

TEST(GdbClientTest, QmpStopWhileContinuePendingEndsTheWait) {
    Connected c;
    c.client.handshake();
    c.client.resume();
    std::this_thread::sleep_for(10ms);
    c.stub.qmp_stop();
    auto stop = c.client.wait_stop(1000ms);
    ASSERT_TRUE(stop);
    EXPECT_EQ(*stop, "T02thread:p01.01;");
    EXPECT_FALSE(c.client.interrupt());  // already stopped: a no-op
}

TEST(GdbClientTest, StaleStopBeforeResumeIsNotReportedAndDoesNotStopTheVm) {
    Connected c;
    c.client.handshake();
    c.stub.qmp_cont();
    c.stub.qmp_stop();  // a stale T02 waits in the socket
    c.client.resume();
    EXPECT_FALSE(c.client.wait_stop(100ms));  // the stale T02 is not this run's stop
    EXPECT_TRUE(c.stub.running());            // and no late `+` stopped the VM
    EXPECT_EQ(c.stub.dropped_while_running(), 0);
    c.client.interrupt();
}

TEST(GdbClientTest, StaleStopJustBeforeContinueIsNotAcked) {
    Connected c;
    c.client.handshake();
    c.stub.stale_stop_before_packet(2);  // resume() sends qC, then c
    c.client.resume();
    EXPECT_EQ(c.stub.count("c"), 1);
    EXPECT_FALSE(c.client.wait_stop(100ms));  // not this run's stop
    EXPECT_TRUE(c.stub.running());            // a `+` for it would have stopped the VM
    EXPECT_EQ(c.stub.dropped_while_running(), 0);
    c.client.interrupt();
}

TEST(GdbClientTest, ResumeAfterVmWasResumedBehindOurBack) {
    Connected c;
    c.client.handshake();
    c.stub.qmp_cont();
    c.client.resume();  // the marker stops the VM, then `c` resumes it
    EXPECT_TRUE(c.stub.running());
    EXPECT_EQ(c.stub.count("c"), 1);
    EXPECT_FALSE(c.client.wait_stop(50ms));
    c.client.interrupt();
    EXPECT_FALSE(c.stub.running());
}

TEST(GdbClientTest, RequestWhileRunningIsRefusedWithoutSendingAByte) {
    Connected c;
    c.client.handshake();
    c.client.resume();
    Error e = expect_error([&] { c.client.read_all_registers_hex(); });
    EXPECT_EQ(e.kind(), ErrorKind::Internal);
    std::this_thread::sleep_for(20ms);
    EXPECT_TRUE(c.stub.running());
    EXPECT_EQ(c.stub.dropped_while_running(), 0);
    c.client.interrupt();
}

TEST(GdbClientTest, WaitStopWhenNotRunningIsAnInternalError) {
    Connected c;
    c.client.handshake();
    EXPECT_EQ(expect_error([&] { c.client.wait_stop(10ms); }).kind(), ErrorKind::Internal);
}

// ---- detach --------------------------------------------------------------------------

TEST(GdbClientTest, DetachUsesProcessIdWithMultiprocess) {
    Connected c;
    c.client.handshake();
    c.client.detach();
    auto log = c.stub.log();
    ASSERT_FALSE(log.empty());
    EXPECT_EQ(log.back(), "D;1");
    EXPECT_EQ(c.stub.count("D"), 1);  // no plain `D` tried
    std::this_thread::sleep_for(10ms);
    EXPECT_TRUE(c.stub.running());  // detaching resumes the VM
    EXPECT_EQ(expect_error([&] { c.client.request("g"); }).kind(), ErrorKind::Unreachable);
}

TEST(GdbClientTest, DetachFallsBackWhenStubKeptMultiprocessFromAnEarlierClient) {
    StubOptions opt;
    opt.multiprocess_sticky = true;
    opt.running_at_connect = false;
    Connected c(opt);  // no handshake: the client does not know about multiprocess
    c.client.detach();
    EXPECT_EQ(c.stub.log(), (std::vector<std::string>{"D", "D;1"}));
}

TEST(GdbClientTest, DetachWhileRunningInterruptsFirst) {
    Connected c;
    c.client.handshake();
    c.client.resume();
    c.client.detach();
    auto log = c.stub.log();
    EXPECT_EQ(log.back(), "D;1");
    EXPECT_EQ(c.stub.dropped_while_running(), 1);  // the 0x03
}

// ---- registers, threads, features, breakpoints ---------------------------------

TEST(GdbClientTest, RegisterAccessNeedsTargetXmlFirst) {
    Connected c;
    c.client.handshake();
    Error e = expect_error([&] { c.client.read_register_hex(16); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("target.xml"), std::string::npos) << e.what();
    c.client.read_feature_xml("target.xml");
    EXPECT_EQ(c.client.read_register_hex(16), "67452381ffffffff");
    EXPECT_EQ(c.stub.count("p10"), 2);
    c.client.write_register_hex(16, "1122334455667788");
    EXPECT_EQ(c.stub.count("P10=1122334455667788"), 1);
    EXPECT_EQ(expect_error([&] { c.client.write_register_hex(0, "xyz"); }).kind(), ErrorKind::Internal);
}

TEST(GdbClientTest, SelectsThreads) {
    Connected c;
    c.client.handshake();
    c.client.select_thread("p01.02");
    EXPECT_EQ(c.stub.count("Hgp01.02"), 1);
    Error e = expect_error([&] { c.client.select_thread("p01.09"); });
    EXPECT_EQ(e.kind(), ErrorKind::Guest);
    EXPECT_NE(std::string(e.what()).find("p01.09"), std::string::npos) << e.what();
}

TEST(GdbClientTest, ReadsFeatureDocumentsInPiecesWithEscapedBytes) {
    StubOptions opt;
    std::string big;
    for (int i = 0; i < 400; ++i) big += "<reg name=\"r" + std::to_string(i) + "\" bitsize=\"64\"/> <!-- $#}* -->\n";
    opt.xml["i386-64bit.xml"] = big;
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(c.client.read_feature_xml("target.xml"), opt.xml["target.xml"]);
    std::string got = c.client.read_feature_xml("i386-64bit.xml");
    EXPECT_EQ(got.size(), big.size());
    EXPECT_EQ(got, big);
    EXPECT_GE(c.stub.count("qXfer:features:read:i386-64bit.xml:"), static_cast<int>(big.size() / 0x7f0));
    Error e = expect_error([&] { c.client.read_feature_xml("nonexistent.xml"); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("nonexistent.xml"), std::string::npos) << e.what();
}

TEST(GdbClientTest, RefusesFeatureDocumentsOverOneMebibyte) {
    StubOptions opt;
    opt.xml["huge.xml"] = std::string((1 << 20) + 10, 'x');
    Connected c(opt);
    c.client.handshake();
    EXPECT_EQ(expect_error([&] { c.client.read_feature_xml("huge.xml"); }).kind(), ErrorKind::Protocol);
}

TEST(GdbClientTest, InsertsAndRemovesSoftwareBreakpoints) {
    Connected c;
    c.client.handshake();
    c.client.insert_breakpoint(0xffffffff81000010ULL);
    EXPECT_EQ(c.stub.count("Z0,ffffffff81000010,1"), 1);
    EXPECT_TRUE(c.stub.has_breakpoint(0xffffffff81000010ULL));
    c.client.remove_breakpoint(0xffffffff81000010ULL);
    EXPECT_FALSE(c.stub.has_breakpoint(0xffffffff81000010ULL));
}

TEST(GdbClientTest, UnsupportedBreakpointsAreAProtocolError) {
    StubOptions opt;
    opt.support_z0 = false;
    Connected c(opt);
    c.client.handshake();
    Error e = expect_error([&] { c.client.insert_breakpoint(0x1000); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_NE(std::string(e.what()).find("breakpoint at 0x1000"), std::string::npos) << e.what();
}

// ---- stop reply parsing ----------------------------------------------------------------

TEST(GdbClientTest, ParsesStopReplies) {
    auto a = parse_stop_reply("T05thread:p01.02;");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->signal, 5);
    EXPECT_EQ(a->thread, "p01.02");
    auto b = parse_stop_reply("T02thread:p01.01;");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->signal, 2);
    auto w = parse_stop_reply("T05watch:ffffffff81000000;thread:p01.01;");
    ASSERT_TRUE(w);
    EXPECT_EQ(w->thread, "p01.01");
    auto s = parse_stop_reply("S0b");
    ASSERT_TRUE(s);
    EXPECT_EQ(s->signal, 11);
    EXPECT_EQ(s->thread, "");
    auto t = parse_stop_reply("T1f");
    ASSERT_TRUE(t);
    EXPECT_EQ(t->signal, 31);
    EXPECT_FALSE(parse_stop_reply("OK"));
    EXPECT_FALSE(parse_stop_reply(""));
    EXPECT_FALSE(parse_stop_reply("E14"));
    EXPECT_FALSE(parse_stop_reply("Text=1000"));
    EXPECT_FALSE(parse_stop_reply("S0b0c"));
    EXPECT_FALSE(parse_stop_reply("0011"));
}

}  // namespace
}  // namespace hvpatch
