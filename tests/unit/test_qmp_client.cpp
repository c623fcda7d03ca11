#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "hvpatch/error.h"
#include "vmm/qemu/qmp_client.h"
#include "vmm/socket.h"

namespace hvpatch {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;

constexpr auto kServerTimeout = 5000ms;
constexpr const char* kGreeting =
    R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}})"
    "\r\n";

// The server side of a fake QMP monitor, run on its own thread.
class FakeServer {
public:
    explicit FakeServer(Socket s) : sock_(std::move(s)) {}

    void send(std::string_view data) { sock_.send_all(data, Deadline(kServerTimeout)); }

    // Reads one request (the client ends each with a line break).
    json read_request() {
        while (true) {
            if (auto nl = buf_.find('\n'); nl != std::string::npos) {
                std::string line = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return json::parse(line);
            }
            char tmp[4096];
            buf_.append(tmp, sock_.recv_some(tmp, sizeof tmp, Deadline(kServerTimeout)));
        }
    }

    // Reads a request for `command` and returns its id.
    json expect(const std::string& command) {
        json req = read_request();
        EXPECT_EQ(req.value("execute", ""), command) << req.dump();
        EXPECT_TRUE(req.contains("id")) << req.dump();
        last_request = req;
        return req["id"];
    }

    void reply(const json& id, const json& ret) { send(json{{"return", ret}, {"id", id}}.dump() + "\r\n"); }

    void handshake() {
        send(kGreeting);
        reply(expect("qmp_capabilities"), json::object());
    }

    void close() { sock_.close(); }

    // Holds the connection open until the client drops it.
    void wait_for_close() {
        char tmp[256];
        try {
            while (true) sock_.recv_some(tmp, sizeof tmp, Deadline(kServerTimeout));
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Unreachable) throw;
        }
    }

    json last_request;

private:
    Socket sock_;
    std::string buf_;
};

// A socketpair: the client end for QmpClient, the other served by `script`
// on a thread. Failures of the script (other than the client going away)
// are recorded in `error`.
class Harness {
public:
    explicit Harness(std::function<void(FakeServer&)> script) {
        int fds[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) throw std::runtime_error("socketpair");
        client_ = Socket(fds[0], "/run/fake/qmp.sock");
        thread_ = std::thread([this, s = Socket(fds[1], "client"), script]() mutable {
            FakeServer server(std::move(s));
            try {
                script(server);
            } catch (const std::exception& e) {
                error = e.what();
            }
        });
    }
    ~Harness() { join(); }

    Socket take_client() { return std::move(client_); }
    void join() {
        if (thread_.joinable()) thread_.join();
    }

    std::string error;

private:
    Socket client_;
    std::thread thread_;
};

template <class F>
Error expect_error(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        return e;
    }
    ADD_FAILURE() << "no hvpatch::Error thrown";
    return Error(ErrorKind::Internal, "none");
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

TEST(QmpClientTest, HandshakeAndCommand) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("query-status");
        EXPECT_FALSE(s.last_request.contains("arguments"));  // empty arguments are left out
        s.reply(id, {{"status", "prelaunch"}, {"singlestep", false}, {"running", false}});
        id = s.expect("qom-get");
        EXPECT_EQ(s.last_request["arguments"], (json{{"path", "/objects/m"}, {"property", "size"}}));
        s.reply(id, 536870912);
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.greeting()["version"]["qemu"]["major"], 7);
    EXPECT_EQ(c.peer(), "/run/fake/qmp.sock");
    json st = c.execute("query-status");
    EXPECT_EQ(st["status"], "prelaunch");
    EXPECT_EQ(c.execute("qom-get", {{"path", "/objects/m"}, {"property", "size"}}), 536870912);
    EXPECT_TRUE(c.take_events().empty());
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, IdsIncreaseAndAreEchoed) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json a = s.expect("stop");
        json b;
        s.reply(a, json::object());
        b = s.expect("cont");
        EXPECT_NE(a, b);
        s.reply(b, json::object());
    });
    QmpClient c(h.take_client(), 2000ms);
    c.execute("stop");
    c.execute("cont");
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, EventsBeforeTheReplyAreQueued) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("stop");
        s.send(R"({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"})" "\r\n");
        s.send(R"({"timestamp": {"seconds": 1, "microseconds": 3}, "event": "RTC_CHANGE", "data": {"offset": 0}})"
               "\r\n");
        s.reply(id, json::object());
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.execute("stop"), json::object());
    auto events = c.take_events();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0]["event"], "STOP");
    EXPECT_EQ(events[1]["event"], "RTC_CHANGE");
    EXPECT_TRUE(c.take_events().empty());
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, ErrorReplyThrowsGuestWithClassAndDesc) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("qom-get");
        s.send(json{{"error", {{"class", "DeviceNotFound"}, {"desc", "Device 'nope' not found"}}}, {"id", id}}.dump() +
               "\r\n");
        // The connection stays usable.
        s.reply(s.expect("query-status"), {{"status", "running"}});
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("qom-get", {{"path", "nope"}, {"property", "x"}}); });
    EXPECT_EQ(e.kind(), ErrorKind::Guest);
    EXPECT_EQ(std::string(e.what()),
              "qmp:/run/fake/qmp.sock: QMP 'qom-get' failed: DeviceNotFound: Device 'nope' not found");
    EXPECT_EQ(c.execute("query-status")["status"], "running");
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, ErrorReplyWithoutIdAnswersTheCurrentCommand) {
    // QEMU cannot echo the id of a request it failed to parse.
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("bogus");
        s.send(R"({"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}})" "\r\n");
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("bogus"); });
    EXPECT_EQ(e.kind(), ErrorKind::Guest);
    EXPECT_TRUE(contains(e.what(), "'bogus' failed: GenericError: JSON parse error")) << e.what();
}

TEST(QmpClientTest, ReplySplitAcrossWrites) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("human-monitor-command");
        EXPECT_EQ(s.last_request["arguments"]["command-line"], "info mtree");
        // Braces and escaped quotes inside the string must not confuse framing.
        std::string msg = json{{"return", "memory-region: {\"system\"} }}} [[\n  0000-ffff\r\n"},
                               {"id", id}}.dump() + "\r\n";
        for (std::size_t i = 0; i < msg.size(); i += 7) {
            s.send(std::string_view(msg).substr(i, 7));
            std::this_thread::sleep_for(1ms);
        }
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.hmp("info mtree"), "memory-region: {\"system\"} }}} [[\n  0000-ffff\r\n");
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, GreetingSplitAndWithoutLineBreaks) {
    Harness h([](FakeServer& s) {
        std::string g = kGreeting;
        s.send(g.substr(0, 10));
        std::this_thread::sleep_for(20ms);
        s.send(g.substr(10, 30));
        std::this_thread::sleep_for(20ms);
        s.send(g.substr(40, g.size() - 42));  // no CRLF at all
        // Reply and event back to back with no separator.
        json id = s.expect("qmp_capabilities");
        s.send(json{{"return", json::object()}, {"id", id}}.dump());
        id = s.expect("query-status");
        s.send(R"({"event": "RESUME"})" + json{{"return", {{"status", "running"}}}, {"id", id}}.dump());
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.execute("query-status")["status"], "running");
    EXPECT_EQ(c.take_events().size(), 1u);
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, TwoMessagesInOneWrite) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("cont");
        // Event and reply together, then the reply followed by an event.
        s.send(R"({"event": "RESUME", "timestamp": {"seconds": 5, "microseconds": 0}})" "\r\n" +
               json{{"return", json::object()}, {"id", id}}.dump() + "\r\n" +
               R"({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}})" "\r\n");
        id = s.expect("query-status");
        s.reply(id, {{"status", "shutdown"}});
    });
    QmpClient c(h.take_client(), 2000ms);
    c.execute("cont");
    // The event that arrived after the reply is already buffered: take_events
    // returns it without another command.
    auto events = c.take_events();
    ASSERT_EQ(events.size(), 2u);
    EXPECT_EQ(events[0]["event"], "RESUME");
    EXPECT_EQ(events[1]["event"], "SHUTDOWN");
    EXPECT_EQ(c.execute("query-status")["status"], "shutdown");
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, TakeEventsPicksUpEventsWaitingOnTheSocket) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.send(R"({"event": "STOP"})" "\r\n" R"({"event": "RES)");  // second one incomplete
        s.expect("query-status");  // wait until the client has looked
        s.send(R"(UME"})" "\r\n");
        s.reply(s.last_request["id"], {{"status", "running"}});
    });
    QmpClient c(h.take_client(), 2000ms);
    std::deque<json> events;
    for (int i = 0; i < 200 && events.empty(); ++i) {
        events = c.take_events();
        if (events.empty()) std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0]["event"], "STOP");
    EXPECT_EQ(c.execute("query-status")["status"], "running");
    events = c.take_events();
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0]["event"], "RESUME");
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, LateReplyToATimedOutCommandIsDropped) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json slow = s.expect("query-block");
        json next = s.expect("query-status");  // the client gave up on query-block
        s.reply(slow, json::array());          // late answer
        s.reply(next, {{"status", "running"}});
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("query-block", json::object(), 100ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    EXPECT_TRUE(contains(e.what(), "qmp:/run/fake/qmp.sock did not answer within 100 ms while running 'query-block'"))
        << e.what();
    EXPECT_EQ(c.execute("query-status")["status"], "running");
    h.join();
    EXPECT_EQ(h.error, "");
}

// QEMU can hand a new connection an event left from the monitor's previous
// client before its greeting (seen in CI: RESUME on a reconnect).
TEST(QmpClientTest, EventsBeforeTheGreetingAreSkipped) {
    Harness h([](FakeServer& s) {
        s.send(R"({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}})" "\r\n");
        s.send(R"({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 3}})" "\r\n");
        s.handshake();
        s.reply(s.expect("query-status"), {{"status", "running"}});
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.greeting()["version"]["qemu"]["major"], 7);
    EXPECT_EQ(c.execute("query-status")["status"], "running");
    EXPECT_TRUE(c.take_events().empty()) << "events from before the session are not this client's";
    h.join();
    EXPECT_EQ(h.error, "");
}

TEST(QmpClientTest, OnlyEventsAndNoGreetingIsNotQmp) {
    Harness h([](FakeServer& s) {
        for (int i = 0; i < 70; ++i) s.send(R"({"event": "RESUME"})" "\r\n");
        s.wait_for_close();
    });
    try {
        QmpClient c(h.take_client(), 2000ms);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Protocol);
        EXPECT_TRUE(contains(e.what(), "is not a QMP server: it sent '{\"event\"")) << e.what();
    }
    h.join();
}

TEST(QmpClientTest, SshServerIsNotQmp) {
    Harness h([](FakeServer& s) {
        s.send("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        s.wait_for_close();
    });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_EQ(std::string(e.what()),
              "qmp:/run/fake/qmp.sock is not a QMP server: it sent 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'");
}

TEST(QmpClientTest, HttpServerIsNotQmpAndTheQuoteIsTruncated) {
    Harness h([](FakeServer& s) {
        s.send("HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 5000\r\n\r\n" +
               std::string(5000, 'x'));
        s.wait_for_close();
    });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    std::string msg = e.what();
    EXPECT_TRUE(contains(msg, "is not a QMP server: it sent 'HTTP/1.1 400 Bad Request\\r\\n")) << msg;
    EXPECT_TRUE(contains(msg, "...'")) << msg;
    EXPECT_LT(msg.size(), 250u);
}

TEST(QmpClientTest, JsonWithoutQmpIsNotQmp) {
    Harness h([](FakeServer& s) {
        s.send(R"({"jsonrpc": "2.0", "method": "hello"})" "\n");
        s.wait_for_close();
    });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "qmp:/run/fake/qmp.sock is not a QMP server: it sent '{\"jsonrpc\"")) << e.what();
}

TEST(QmpClientTest, BinaryGarbageIsNotQmp) {
    Harness h([](FakeServer& s) {
        s.send(std::string("\x00\xff\x01+$", 5));
        s.wait_for_close();
    });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "it sent '\\x00\\xff\\x01+$'")) << e.what();
}

TEST(QmpClientTest, MalformedJsonIsProtocolError) {
    Harness h([](FakeServer& s) {
        s.send(R"({"QMP": {"version": 1,, }})" "\r\n");
        s.wait_for_close();
    });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "malformed JSON")) << e.what();
}

TEST(QmpClientTest, PeerThatClosesAtOnce) {
    Harness h([](FakeServer& s) { s.close(); });
    Error e = expect_error([&] { QmpClient c(h.take_client(), 2000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
    EXPECT_EQ(std::string(e.what()),
              "qmp:/run/fake/qmp.sock closed the connection before sending a QMP greeting");
}

TEST(QmpClientTest, PeerClosesMidCommand) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("quit");
        s.send(R"({"event": "SHUTDOWN"})" "\r\n" R"({"retu)");
        s.close();
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("quit"); });
    EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
    EXPECT_TRUE(contains(e.what(), "qmp:/run/fake/qmp.sock closed the connection while running 'quit'")) << e.what();
    // The event that made it is kept; later commands fail the same way.
    EXPECT_EQ(c.take_events().size(), 1u);
    EXPECT_EQ(expect_error([&] { c.execute("query-status"); }).kind(), ErrorKind::Unreachable);
}

TEST(QmpClientTest, SilentPeerTimesOut) {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    Socket server(fds[1], "server");  // holds the other end open, says nothing
    auto start = Clock::now();
    Error e = expect_error([&] { QmpClient c(Socket(fds[0], "/run/fake/silent.sock"), 150ms); });
    auto took = Clock::now() - start;
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    EXPECT_TRUE(contains(e.what(), "qmp:/run/fake/silent.sock sent no QMP greeting within 150 ms")) << e.what();
    EXPECT_GE(took, 140ms);
    EXPECT_LT(took, 1500ms);
}

TEST(QmpClientTest, SilentAfterHandshakeTimesOut) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("query-status");
        s.wait_for_close();
    });
    QmpClient c(h.take_client(), 2000ms);
    auto start = Clock::now();
    Error e = expect_error([&] { c.execute("query-status", json::object(), 100ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Timeout);
    EXPECT_TRUE(contains(e.what(), "'query-status'")) << e.what();
    EXPECT_LT(Clock::now() - start, 1000ms);
}

TEST(QmpClientTest, GarbageDuringCommandIsProtocolError) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("query-status");
        s.send("Segmentation fault\r\n");
        s.wait_for_close();
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("query-status"); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "qmp:/run/fake/qmp.sock broke the QMP protocol while running 'query-status'"))
        << e.what();
    EXPECT_TRUE(contains(e.what(), "Segmentation fault")) << e.what();
}

TEST(QmpClientTest, UnexpectedMessageIsProtocolError) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("query-status");
        s.send(R"({"hello": "world"})" "\r\n");
        s.wait_for_close();
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("query-status"); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "unexpected message")) << e.what();
}

TEST(QmpClientTest, DeeplyNestedJsonIsRefused) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("query-status");
        s.send(R"({"return": )" + std::string(100000, '['));
        s.wait_for_close();
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("query-status"); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "nested deeper")) << e.what();
}

TEST(QmpClientTest, EndlessMessageIsCappedAt64MiB) {
    Harness h([](FakeServer& s) {
        s.handshake();
        s.expect("query-status");
        s.send(R"({"return": ")");
        std::string chunk(1 << 20, 'a');
        for (int i = 0; i < 70; ++i) s.send(chunk);  // fails once the client gives up
    });
    QmpClient c(h.take_client(), 2000ms);
    Error e = expect_error([&] { c.execute("query-status", json::object(), 10000ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "longer than 64 MiB")) << e.what();
    EXPECT_LT(std::string(e.what()).size(), 300u);
}

TEST(QmpClientTest, HmpReturnsText) {
    Harness h([](FakeServer& s) {
        s.handshake();
        json id = s.expect("human-monitor-command");
        EXPECT_EQ(s.last_request["arguments"], (json{{"command-line", "info status"}}));
        s.reply(id, "VM status: paused (prelaunch)\r\n");
        s.reply(s.expect("human-monitor-command"), 42);
    });
    QmpClient c(h.take_client(), 2000ms);
    EXPECT_EQ(c.hmp("info status"), "VM status: paused (prelaunch)\r\n");
    Error e = expect_error([&] { c.hmp("info weird"); });
    EXPECT_EQ(e.kind(), ErrorKind::Protocol);
    EXPECT_TRUE(contains(e.what(), "'info weird'")) << e.what();
}

TEST(QmpClientTest, ConnectToMissingPathIsUnreachable) {
    const std::string path = "/tmp/hvpatch-test-no-such-qmp-" + std::to_string(::getpid()) + ".sock";
    Error e = expect_error([&] { QmpClient::connect(path, 500ms); });
    EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
    EXPECT_TRUE(contains(e.what(), path)) << e.what();
}

}  // namespace
}  // namespace hvpatch
