#include "cli/progress_events.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>

#include <nlohmann/json.hpp>

namespace hvpatch::cli {
namespace {

using nlohmann::json;

// Bounds for a line from another process: a pass lists at most this many
// blockers and no text is kept longer than this.
constexpr std::size_t kMaxEventBlockers = 64;
constexpr std::size_t kMaxEventText = 4096;
constexpr std::size_t kMaxEventLine = 1 << 20;

std::string dump(const json& j) {
    // Invalid UTF-8 from the guest (a comm) is replaced, not thrown on.
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string bounded(std::string text) {
    if (text.size() > kMaxEventText) text.resize(kMaxEventText);
    return text;
}

void write_line(int fd, std::string line) {
    line += '\n';
    const char* p = line.data();
    std::size_t left = line.size();
    while (left > 0) {
        ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n;
        left -= static_cast<std::size_t>(n);
    }
}

}  // namespace

std::string stage_event_line(OperationStage stage) {
    return dump({{"event", "stage"}, {"stage", to_string(stage)}});
}

std::string pass_event_line(const TransitionProgress& p) {
    json blockers = json::array();
    for (const auto& b : p.blockers) {
        if (blockers.size() == kMaxEventBlockers) break;
        blockers.push_back({{"pid", b.pid}, {"comm", b.comm}, {"reason", b.reason}});
    }
    return dump({{"event", "pass"},
                 {"direction", p.direction},
                 {"pass", p.pass},
                 {"tasks", p.tasks},
                 {"remaining", p.remaining},
                 {"elapsed_ms", p.elapsed.count()},
                 {"blockers", blockers}});
}

std::string log_event_line(std::string_view text) {
    return dump({{"event", "log"}, {"text", text}});
}

std::optional<ProgressEvent> parse_progress_event(std::string_view line) {
    if (line.size() > kMaxEventLine) return std::nullopt;
    json j = json::parse(line, nullptr, false);
    if (!j.is_object()) return std::nullopt;
    auto text = [&j](const char* key) -> std::optional<std::string> {
        auto it = j.find(key);
        if (it == j.end() || !it->is_string()) return std::nullopt;
        return bounded(it->get<std::string>());
    };
    auto count = [&j](const char* key) -> std::optional<long> {
        auto it = j.find(key);
        if (it == j.end() || !it->is_number_integer()) return std::nullopt;
        long v = it->get<long>();
        if (v < 0) return std::nullopt;
        return v;
    };
    auto event = text("event");
    if (!event) return std::nullopt;
    ProgressEvent e;
    if (*event == "stage") {
        auto name = text("stage");
        if (!name) return std::nullopt;
        auto stage = operation_stage_from_string(*name);
        if (!stage) return std::nullopt;  // a stage this hvpatch does not know
        e.type = ProgressEvent::Type::Stage;
        e.stage = *stage;
        return e;
    }
    if (*event == "log") {
        auto t = text("text");
        if (!t) return std::nullopt;
        e.type = ProgressEvent::Type::Log;
        e.text = *t;
        return e;
    }
    if (*event != "pass") return std::nullopt;
    auto direction = text("direction");
    auto pass = count("pass");
    auto tasks = count("tasks");
    auto remaining = count("remaining");
    auto elapsed = count("elapsed_ms");
    if (!direction || !pass || !tasks || !remaining || !elapsed || *remaining > *tasks || *pass > 1000000000)
        return std::nullopt;
    e.type = ProgressEvent::Type::Pass;
    e.direction = *direction;
    e.pass = static_cast<int>(*pass);
    e.tasks = static_cast<std::size_t>(*tasks);
    e.remaining = static_cast<std::size_t>(*remaining);
    e.elapsed_ms = *elapsed;
    if (auto it = j.find("blockers"); it != j.end()) {
        if (!it->is_array()) return std::nullopt;
        for (const auto& b : *it) {
            if (e.blockers.size() == kMaxEventBlockers) break;
            if (!b.is_object()) return std::nullopt;
            ProgressEvent::Blocker blocker;
            auto pid = b.find("pid");
            auto comm = b.find("comm");
            auto reason = b.find("reason");
            if (pid == b.end() || !pid->is_number_integer() || comm == b.end() || !comm->is_string() ||
                reason == b.end() || !reason->is_string())
                return std::nullopt;
            blocker.pid = pid->get<int>();
            blocker.comm = bounded(comm->get<std::string>());
            blocker.reason = bounded(reason->get<std::string>());
            e.blockers.push_back(std::move(blocker));
        }
    }
    return e;
}

void add_progress_events(PatchOptions& options, int fd) {
    std::signal(SIGPIPE, SIG_IGN);
    options.stage = [fd, previous = options.stage](OperationStage stage) {
        if (previous) previous(stage);
        write_line(fd, stage_event_line(stage));
    };
    options.progress = [fd, previous = options.progress](const TransitionProgress& p) {
        if (previous) previous(p);
        write_line(fd, pass_event_line(p));
    };
    options.log = [fd, previous = options.log](const std::string& text) {
        if (previous) previous(text);
        write_line(fd, log_event_line(text));
    };
}

}  // namespace hvpatch::cli
