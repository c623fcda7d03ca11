// stream_bench: the upgrade of a cumulative patch, v1 -> v2 (klp_patch.replace),
// by hvpatch and by the guest's own livepatch core, on the same test guest
// with the same .ko files, side by side. Prints figures, asserts nothing.
//
//   build/bench/stream_bench [--reps N]     (default 3; ~20 s per rep)
//
// The modules are tests/integration/patches/livepatch-stream's stream_v1
// (/proc/version and /proc/cmdline) and stream_v2 (/proc/version only: the
// replace also puts cmdline_proc_show back), built with kbuild against the
// guest's headers and stripped of debug info; the guest's insmod and hvpatch
// load the same files. Per repetition:
//   - guest's own: insmod v1 and wait until its transition is over; then the
//     measured step: insmod v2 and poll until /sys/kernel/livepatch/stream_v2
//     /transition is 0 and stream_v1 is gone (host wall time, through the
//     ~25 ms/command serial channel), and the guest's own measure from its
//     kernel log ("enabling patch 'stream_v2'" -> "'stream_v2': patching
//     complete"); then disable and rmmod both. The guest's core never stops
//     the guest (ftrace changes the entries with text_poke and IPIs), so it
//     has no pause to report.
//   - hvpatch: `hvpatch apply v1`, then the measured step `hvpatch apply v2
//     --json` (process wall time; from its report: transition time, freezes,
//     guest paused in total and at most), then `hvpatch revert stream_v2`.
// Medians [min-max] over the repetitions; TCG on this host, so absolute
// figures are those of an emulated CPU.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_args.h"
#include "bench/bench_figures.h"
#include "hvpatch/error.h"
#include "support/run_command.h"
#include "support/test_guest.h"
#include "support/test_modules.h"

namespace {

using namespace hvpatch;
using namespace hvpatch::test;
using namespace hvpatch::bench;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
namespace fs = std::filesystem;

// The kernel log timestamp (seconds) of the first line containing `text`.
std::optional<double> log_time(const std::string& dmesg, const std::string& text) {
    std::istringstream in(dmesg);
    for (std::string line; std::getline(in, line);) {
        if (line.find(text) == std::string::npos || line.rfind("[", 0) != 0) continue;
        return std::stod(line.substr(1, line.find(']') - 1));
    }
    return std::nullopt;
}

// Runs until `condition` (a guest shell test) holds; Error(Timeout) after 60 s.
void wait_in_guest(TestGuest& guest, const std::string& condition) {
    const auto deadline = Clock::now() + 60s;
    while (guest.run(condition).status != 0) {
        if (Clock::now() > deadline) throw Error(ErrorKind::Timeout, "guest never got to: " + condition);
        std::this_thread::sleep_for(20ms);
    }
}

struct Figures {
    std::vector<double> own_wall, own_log, hv_wall, hv_transition, hv_paused_total, hv_paused_max, hv_freezes;
};

}  // namespace

int main(int argc, char** argv) {
    auto reps = parse_reps(argc, argv, 3, "stream_bench");
    if (!reps) return 2;
    try {
        const std::string release = test_guest_release();
        char work[] = "/tmp/hvpatch-stream-bench-XXXXXX";
        if (!mkdtemp(work)) throw Error(ErrorKind::Internal, "mkdtemp");
        const std::string dir = work;
        auto build = start_kbuild("livepatch-stream", dir, release, /*strip=*/true);
        auto guest = TestGuest::boot();
        CommandResult built = build->wait();
        if (built.exit_code != 0) throw Error(ErrorKind::Internal, "building the stream modules: " + built.describe());
        for (const char* m : {"stream_v1", "stream_v2"})
            guest->put_file(std::string("/tmp/") + m + ".ko", read_host_file(dir + "/" + m + ".ko"));
        const std::vector<std::string> hv = {hvpatch_binary(), "--state-dir", dir + "/state", "--audit-log",
                                             dir + "/audit.jsonl"};
        auto hvpatch = [&](std::vector<std::string> args) {
            std::vector<std::string> argv = hv;
            argv.insert(argv.end(), args.begin(), args.end());
            CommandResult r = run_command(argv, 180s);
            if (r.exit_code != 0) throw Error(ErrorKind::Internal, "hvpatch " + args[0] + ": " + r.describe());
            return r;
        };

        Figures f;
        for (int rep = 0; rep < *reps; ++rep) {
            // The guest's own livepatch core.
            guest->run_ok("insmod /tmp/stream_v1.ko");
            wait_in_guest(*guest, "[ \"$(cat /sys/kernel/livepatch/stream_v1/transition)\" = 0 ]");
            guest->run_ok("dmesg -c > /dev/null");
            auto t0 = Clock::now();
            guest->run_ok("insmod /tmp/stream_v2.ko");
            wait_in_guest(*guest, "[ \"$(cat /sys/kernel/livepatch/stream_v2/transition)\" = 0 ] && "
                                  "[ ! -e /sys/kernel/livepatch/stream_v1 ]");
            f.own_wall.push_back(ms_since(t0));
            const std::string log = guest->run_ok("dmesg");
            auto begin = log_time(log, "enabling patch 'stream_v2'"), end = log_time(log, "'stream_v2': patching complete");
            if (begin && end) f.own_log.push_back((*end - *begin) * 1000);
            if (guest->run_ok("cat /proc/version") != "stream_v2\n") throw Error(ErrorKind::Internal, "v2 does not run");
            guest->run_ok("echo 0 > /sys/kernel/livepatch/stream_v2/enabled");
            wait_in_guest(*guest, "[ ! -e /sys/kernel/livepatch/stream_v2 ]");
            guest->run_ok("rmmod stream_v2; rmmod stream_v1");

            // hvpatch.
            hvpatch({"apply", guest->target(), dir + "/stream_v1.ko"});
            t0 = Clock::now();
            CommandResult r = hvpatch({"apply", guest->target(), dir + "/stream_v2.ko", "--json"});
            f.hv_wall.push_back(ms_since(t0));
            json report = json::parse(r.out);
            if (report.value("replaced", json::array()) != json::array({"stream_v1"}))
                throw Error(ErrorKind::Internal, "hvpatch's v2 did not replace v1: " + r.out);
            f.hv_transition.push_back(report.value("transition_ms", 0.0));
            f.hv_paused_total.push_back(report.value("paused_total_ms", 0.0));
            f.hv_paused_max.push_back(report.value("paused_max_ms", 0.0));
            f.hv_freezes.push_back(report.value("freezes", 0));
            if (guest->run_ok("cat /proc/version") != "stream_v2\n") throw Error(ErrorKind::Internal, "v2 does not run");
            hvpatch({"revert", guest->target(), "stream_v2"});
            std::fprintf(stderr, "rep %d/%d done\n", rep + 1, *reps);
        }

        std::printf("Cumulative upgrade v1 -> v2 (replace), %d reps, guest %s under TCG, median [min-max]\n", *reps,
                    release.c_str());
        std::printf("%-58s %-24s %s\n", "", "guest's own (insmod)", "hvpatch (CLI)");
        std::printf("%-58s %-24s %s\n", "until v2 runs everywhere and v1 is gone, host wall, ms",
                    median_and_range(f.own_wall).c_str(), median_and_range(f.hv_wall).c_str());
        std::printf("%-58s %-24s %s\n", "transition (guest: its log; hvpatch: its report), ms",
                    median_and_range(f.own_log).c_str(), median_and_range(f.hv_transition).c_str());
        std::printf("%-58s %-24s %s\n", "guest paused in total, ms", "0 (never stopped)",
                    median_and_range(f.hv_paused_total).c_str());
        std::printf("%-58s %-24s %s\n", "longest pause, ms", "0 (never stopped)", median_and_range(f.hv_paused_max).c_str());
        std::printf("%-58s %-24s %s\n", "freezes", "-", median_and_range(f.hv_freezes).c_str());
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "stream_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
