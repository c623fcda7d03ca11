// fleet_bench: `hvpatch fleet apply|revert` over N real test guests, one at
// a time (--parallel 1) against all at once (--parallel N), side by side
// in one run. Prints figures, asserts nothing.
//
//   build/bench/fleet_bench [--reps N] [--targets N] [--libvirt]
//       --reps N     repetitions (default 2); each applies and reverts the
//                    sample patch once per --parallel setting
//       --targets N  guests (default 4; each 1 vCPU, 512 MiB, TCG here)
//       --libvirt    the guests are transient libvirt domains on
//                    qemu:///system (shared RAM), named to hvpatch by name
//                    with -c; needs a running libvirtd
//                    (scripts/libvirt-daemon start). Default: QEMUs
//                    started by the launcher, named qmp:PATH.
//
// The N guests (default kernel, scripts/build-test-guest) are booted one
// after the other and stay up for the whole run. Each repetition runs, in alternating
// order, for P = 1 and P = N: `hvpatch fleet apply livepatch_cmdline.ko
// T1..TN --parallel P --json`, then `hvpatch fleet revert livepatch_cmdline
// ... --parallel P --json`, and takes
//   - the fleet's wall time: the whole hvpatch fleet process, as measured
//     around it (process start, the children, the report);
//   - each target's time from its report (its child's start to its end:
//     connecting, opening the kernel, loading, transition, finishing);
//   - the guest pause of each target (its child's own report).
// Every run must apply (revert) on every target, checked in its report
// and from inside one guest (cat /proc/cmdline); otherwise the bench stops.
// Figures are the median [min-max] over repetitions (per-target figures:
// over every target of every repetition). Under TCG on a 2-core host the
// guests' vCPUs and the hvpatch processes share both cores: parallel runs
// contend for them, which is part of what this shows.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_domain.h"
#include "support/test_guest.h"

namespace {

using namespace hvpatch;
using namespace hvpatch::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double median_of(std::vector<double> s) {
    if (s.empty()) return 0;
    std::sort(s.begin(), s.end());
    std::size_t n = s.size();
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

std::string fmt(double v) {
    char buf[32];
    if (v < 10) std::snprintf(buf, sizeof buf, "%.2f", v);
    else if (v < 100) std::snprintf(buf, sizeof buf, "%.1f", v);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

std::string cell(const std::vector<double>& values) {
    if (values.empty()) return "-";
    auto [lo, hi] = std::minmax_element(values.begin(), values.end());
    if (*lo == *hi) return fmt(*lo);
    return fmt(median_of(values)) + " [" + fmt(*lo) + "-" + fmt(*hi) + "]";
}

struct Options {
    int reps = 2;
    int targets = 4;
    bool libvirt = false;
};

std::optional<Options> parse_args(int argc, char** argv) {
    Options o;
    auto number = [](const char* text, long lo, long hi) -> std::optional<long> {
        char* end = nullptr;
        long v = std::strtol(text, &end, 10);
        if (*end != '\0' || v < lo || v > hi) return std::nullopt;
        return v;
    };
    for (int i = 1; i < argc; ++i) {
        std::optional<long> v;
        if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc && (v = number(argv[++i], 1, 1000))) {
            o.reps = static_cast<int>(*v);
        } else if (std::strcmp(argv[i], "--targets") == 0 && i + 1 < argc && (v = number(argv[++i], 2, 16))) {
            o.targets = static_cast<int>(*v);
        } else if (std::strcmp(argv[i], "--libvirt") == 0) {
            o.libvirt = true;
        } else {
            std::fprintf(stderr,
                         "usage: fleet_bench [--reps N] [--targets N] [--libvirt]   (defaults: 2 reps, 4 targets; 2..16)\n");
            return std::nullopt;
        }
    }
    return o;
}

struct ScratchDir {
    std::string path;
    ScratchDir() {
        char tmpl[] = "/tmp/fleet_bench.XXXXXX";
        if (!mkdtemp(tmpl)) throw Error(ErrorKind::Internal, "mkdtemp /tmp/fleet_bench.XXXXXX failed");
        path = tmpl;
    }
    ~ScratchDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};

// Row -> column -> samples.
using Figures = std::map<std::string, std::map<std::string, std::vector<double>>>;

// The guests, as QEMUs of the launcher or as libvirt domains: what the
// bench needs of either is a target name and a shell into the guest.
struct Guests {
    std::vector<std::unique_ptr<TestGuest>> qemus;
    std::vector<std::unique_ptr<TestDomain>> domains;
    std::vector<std::string> targets;  // as hvpatch names them
    GuestShell& first() { return qemus.empty() ? static_cast<GuestShell&>(*domains.front()) : *qemus.front(); }
    std::string release() { return first().release(); }
    std::string accelerator() { return qemus.empty() ? "tcg (domain type qemu)" : qemus.front()->vm().accel(); }
};

struct Bench {
    Guests& guests;
    bool libvirt = false;
    std::string dir, ko;
    Figures figures;

    // One fleet run; adds its figures under column `column`.
    void fleet(const std::string& verb, int parallel, const std::string& column) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", dir + "/state", "--audit-log",
                                         dir + "/audit.jsonl"};
        if (libvirt) argv.insert(argv.end(), {"-c", "qemu:///system"});
        argv.insert(argv.end(), {"fleet", verb, verb == "apply" ? ko : std::string("livepatch_cmdline")});
        argv.insert(argv.end(), guests.targets.begin(), guests.targets.end());
        argv.insert(argv.end(), {"--parallel", std::to_string(parallel), "--json"});
        CommandOptions options;
        options.timeout = 600s;
        const auto t0 = Clock::now();
        CommandResult r = run_command(argv, options);
        const double wall = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (r.exit_code != 0) throw Error(ErrorKind::Internal, "hvpatch fleet " + verb + ": " + r.describe());
        json report = json::parse(r.out);
        const std::string want = verb == "apply" ? "applied" : "reverted";
        std::vector<double> per_target;
        for (const auto& t : report["targets"]) {
            if (t.value("outcome", "") != want)
                throw Error(ErrorKind::Internal, "hvpatch fleet " + verb + ": " + t.dump());
            per_target.push_back(t["time_ms"].get<double>());
            figures[verb + ": per target, ms"][column].push_back(t["time_ms"].get<double>());
            figures[verb + ": guest paused per target, ms"][column].push_back(t["report"]["paused_total_ms"].get<double>());
        }
        figures[verb + ": fleet wall, ms"][column].push_back(wall);
        figures[verb + ": slowest target, ms"][column].push_back(*std::max_element(per_target.begin(), per_target.end()));
        figures[verb + ": sum of targets / wall"][column].push_back(
            std::accumulate(per_target.begin(), per_target.end(), 0.0) / wall);
        std::string seen = guests.first().run_ok(std::string(kCmdlineOracle));
        if ((seen == kCmdlinePatchedOutput) != (verb == "apply"))
            throw Error(ErrorKind::Internal, "after fleet " + verb + " the guest reads '" + seen + "'");
    }
};

}  // namespace

int main(int argc, char** argv) {
    auto options = parse_args(argc, argv);
    if (!options) return 2;
    try {
        ScratchDir scratch;
        std::printf("fleet_bench: booting %d test guests (1 vCPU, 512 MiB each) as %s ...\n", options->targets,
                    options->libvirt ? "libvirt domains (qemu:///system)" : "launcher QEMUs (qmp:)");
        std::fflush(stdout);
        const auto boot0 = Clock::now();
        Guests guests;
        for (int i = 0; i < options->targets; ++i) {
            if (options->libvirt) {
                TestDomainOptions o;
                o.name = test_domain_name("bench", std::to_string(i));
                o.vcpus = 1;
                guests.domains.push_back(TestDomain::boot(o));
                guests.targets.push_back(o.name);
            } else {
                // From this thread, one after the other: QEMU dies with the
                // thread that launched it (PR_SET_PDEATHSIG).
                TestGuestOptions o;
                o.vcpus = 1;
                guests.qemus.push_back(TestGuest::boot(o));
                guests.targets.push_back(guests.qemus.back()->target());
            }
        }
        const double boot_ms = std::chrono::duration<double, std::milli>(Clock::now() - boot0).count();
        std::printf("  booted in %s ms; kernel %s, accelerator %s\n", fmt(boot_ms).c_str(), guests.release().c_str(),
                    guests.accelerator().c_str());

        Bench bench{guests, options->libvirt, scratch.path, example_patch_ko(Example::Cmdline, guests.release()), {}};
        const std::string serial = "--parallel 1";
        const std::string parallel = "--parallel " + std::to_string(options->targets);
        for (int rep = 0; rep < options->reps; ++rep) {
            std::printf("  rep %d/%d\n", rep + 1, options->reps);
            std::fflush(stdout);
            // Alternate which setting goes first, so that neither always
            // meets the guests just after the other's run.
            std::vector<std::pair<int, std::string>> order = {{1, serial}, {options->targets, parallel}};
            if (rep % 2) std::swap(order[0], order[1]);
            for (const auto& [p, column] : order) {
                bench.fleet("apply", p, column);
                bench.fleet("revert", p, column);
            }
        }

        std::printf("\n%d targets, %d reps; median [min-max] (per target: over all targets of all reps)\n\n",
                    options->targets, options->reps);
        const int first = 42, width = 24;
        std::printf("%-*s %-*s %-*s\n", first, "", width, serial.c_str(), width, parallel.c_str());
        std::printf("%s\n", std::string(first + 2 * (width + 1), '-').c_str());
        for (std::string verb : {"apply", "revert"})
            for (std::string row : {": fleet wall, ms", ": slowest target, ms", ": per target, ms",
                                    ": guest paused per target, ms", ": sum of targets / wall"}) {
                auto& cells = bench.figures[verb + row];
                std::printf("%-*s %-*s %-*s\n", first, (verb + row).c_str(), width, cell(cells[serial]).c_str(), width,
                            cell(cells[parallel]).c_str());
            }
        auto& a1 = bench.figures["apply: fleet wall, ms"];
        auto& r1 = bench.figures["revert: fleet wall, ms"];
        std::printf("\nspeed-up of --parallel %d over --parallel 1 (median wall): apply %.2fx, revert %.2fx\n",
                    options->targets, median_of(a1[serial]) / median_of(a1[parallel]),
                    median_of(r1[serial]) / median_of(r1[parallel]));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "fleet_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
