// patch_bench: hvpatch against the guest's own livepatch core, on the same
// test guest with the same .ko, side by side. Prints figures, asserts
// nothing.
//
//   build/bench/patch_bench [--reps N] [--calls N] [--rounds N] [--busy-guest] [--sleeper]
//       --reps N      repetitions of everything (default 3; ~30 s per rep)
//       --calls N     pread()s per readloop round (default 2000)
//       --rounds N    readloop rounds per measurement (default 50)
//       --busy-guest  keep the guest's busy workloads running during (b)
//       --sleeper     also time example 2, livepatch-sleeper (its sleeping
//                     workloads hold up every transition ~16 s: ~100 s per rep)
//
// One guest is booted (TCG here, see FIELD-NOTES.md). The example .ko is
// stripped of its debug info once on the host (objcopy --strip-debug, the
// same code bytes) and that one file is what the guest's insmod and hvpatch
// both load. Every repetition, per example:
//
//  (a) time until the patch (or its removal) is complete in every task:
//      - guest's own: insmod in the guest, then poll
//        /sys/kernel/livepatch/NAME/transition until it is 0 (host wall time,
//        through the ~25 ms/command serial channel), and the guest's own
//        measure from its kernel log ("starting patching transition" →
//        "patching complete"); revert = echo 0 > enabled, wait until the
//        patch is gone, rmmod.
//      - hvpatch library: Patcher::apply / revert wall time and their
//        report (transition, passes, freezes, guest pause total and max).
//      - hvpatch CLI: `hvpatch apply|revert ... --json` process wall time
//        (process start, QMP connect, gdbstub attach, kernel discovery
//        included) and the same report from its JSON.
//  (b) cmdline only: the per-call cost of the patched function,
//      cmdline_proc_show, from a syscall loop in the guest (guest/src/
//      readloop.c: many short rounds of pread(/proc/cmdline); ns per call of
//      the best round, the mean of all rounds, and the thread's CPU time):
//        - unpatched; guest livepatch applied (every call goes through
//          ftrace to klp_ftrace_handler); hvpatch applied (entry → direct
//          jump to the new function);
//        - hvpatch during its apply transition (entry → hvpatch's
//          trampoline → new function) and during its revert transition
//          (trampoline → original), measured in PatchOptions::before_finish
//          while hvpatch holds the VM with its gdbstub attached; so, as the
//          baseline for these, unpatched and applied with just the gdbstub
//          attached.
//      The hook costs one more thaw/freeze, so these applies are not part
//      of the (a) figures. The patched cmdline_proc_show is not the same
//      work as the original (a shorter line, but through seq_printf instead
//      of seq_puts): the fair comparison of the redirections is between the
//      patched rows (same new function), not with unpatched.
//      The guest's busy workloads (cpu-loop, syscall-loop) are stopped
//      (SIGSTOP) while readloop runs, so that it has a vCPU to itself.
//
// Every figure is the median [min-max] over the repetitions. Under TCG the
// absolute figures are those of an emulated CPU, and the host's own load
// shows in all of them.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "patch/patcher.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"
#include "support/test_modules.h"

namespace {

using namespace hvpatch;
using namespace hvpatch::test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Enough for the sleeper's transitions (fake signals after 15 s) on a
// loaded TCG host.
constexpr auto kTransitionTimeout = 120s;

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double median_of(std::vector<double> s) {
    if (s.empty()) return 0;
    std::sort(s.begin(), s.end());
    std::size_t n = s.size();
    return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

std::string fmt(double v) {
    char buf[32];
    if (v == static_cast<double>(static_cast<long long>(v))) std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
    else if (v < 10) std::snprintf(buf, sizeof buf, "%.2f", v);
    else if (v < 100) std::snprintf(buf, sizeof buf, "%.1f", v);
    else std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
}

struct Samples {
    std::vector<double> values;
    std::string cell() const {
        if (values.empty()) return "-";
        auto [lo, hi] = std::minmax_element(values.begin(), values.end());
        if (*lo == *hi) return fmt(*lo);
        return fmt(median_of(values)) + " [" + fmt(*lo) + "-" + fmt(*hi) + "]";
    }
};

// A table: row → column → samples, rows in the order first measured.
struct Table {
    std::vector<std::string> columns;
    std::vector<std::string> order;
    std::map<std::string, std::map<std::string, Samples>> rows;
    void add(const std::string& row, const std::string& column, double value) {
        if (std::find(order.begin(), order.end(), row) == order.end()) order.push_back(row);
        rows[row][column].values.push_back(value);
    }
    void print(int first_width, int width) const {
        std::printf("%-*s", first_width, "");
        for (const auto& c : columns) std::printf(" %-*s", width, c.c_str());
        std::printf("\n%s\n", std::string(first_width + columns.size() * (width + 1), '-').c_str());
        for (const auto& row : order) {
            auto found = rows.find(row);
            if (found == rows.end()) continue;
            std::printf("%-*s", first_width, row.c_str());
            const auto& cells = found->second;
            for (const auto& c : columns) {
                auto it = cells.find(c);
                std::printf(" %-*s", width, it == cells.end() ? "" : it->second.cell().c_str());
            }
            std::printf("\n");
        }
    }
};

struct Options {
    int reps = 3;
    long calls = 2000;
    int rounds = 50;
    bool sleeper = false;
    bool busy_guest = false;
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
        } else if (std::strcmp(argv[i], "--calls") == 0 && i + 1 < argc && (v = number(argv[++i], 1, 10000000))) {
            o.calls = *v;
        } else if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc && (v = number(argv[++i], 1, 1000))) {
            o.rounds = static_cast<int>(*v);
        } else if (std::strcmp(argv[i], "--sleeper") == 0) {
            o.sleeper = true;
        } else if (std::strcmp(argv[i], "--busy-guest") == 0) {
            o.busy_guest = true;
        } else {
            std::fprintf(stderr,
                         "usage: patch_bench [--reps N] [--calls N] [--rounds N] [--busy-guest] [--sleeper]\n"
                         "       (defaults: 3 reps, 2000 calls, 50 rounds)\n");
            return std::nullopt;
        }
    }
    return o;
}

std::string trim(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    return text;
}

// A scratch dir for hvpatch's state file, audit log and the stripped .ko
// files; removed at the end.
struct ScratchDir {
    std::string path;
    ScratchDir() {
        char tmpl[] = "/tmp/patch_bench.XXXXXX";
        if (!mkdtemp(tmpl)) throw Error(ErrorKind::Internal, "mkdtemp /tmp/patch_bench.XXXXXX failed");
        path = tmpl;
    }
    ~ScratchDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};


// One .ko for both loaders: the example stripped of its debug info (what
// fits the serial channel; code and every other section unchanged), at
// `host_path` on the host and /tmp/<module>.ko in the guest.
struct PatchFile {
    const ExamplePatch* example;
    std::string host_path, guest_path;
};

PatchFile prepare_patch(TestGuest& guest, Example id, const std::string& scratch) {
    const ExamplePatch& example = example_patch(id);
    std::string ko = example_patch_ko(id, guest.release());
    std::string stripped = scratch + "/" + std::string(example.module) + ".ko";
    CommandResult r = run_command({"objcopy", "--strip-debug", ko, stripped}, 60s);
    if (r.exit_code != 0) throw Error(ErrorKind::Internal, "objcopy --strip-debug " + ko + ": " + r.describe());
    std::string guest_path = "/tmp/" + std::string(example.module) + ".ko";
    guest.put_file(guest_path, read_host_file(stripped));
    return {&example, stripped, guest_path};
}

// --- the per-call cost: guest/bin/readloop ---------------------------------

struct ReadloopResult {
    double best_ns = 0, mean_ns = 0, cpu_ns = 0;  // per call
    std::string first;  // the first line read: which version answered
};

ReadloopResult readloop(TestGuest& guest, const Options& o) {
    std::string command = "readloop /proc/cmdline " + std::to_string(o.calls) + " " + std::to_string(o.rounds);
    // The busy workloads stopped for the run (unless --busy-guest): the loop
    // then has a vCPU to itself, and QEMU's other vCPU thread idles.
    if (!o.busy_guest)
        command = "p=$(pidof cpu-loop syscall-loop); kill -STOP $p; " + command + "; s=$?; kill -CONT $p; exit $s";
    std::string out = trim(guest.run_ok(command, 300s));
    ReadloopResult r;
    long n = 0, rounds = 0;
    int consumed = 0;
    if (std::sscanf(out.c_str(), "calls=%ld rounds=%ld best_wall_ns=%lf mean_wall_ns=%lf mean_cpu_ns=%lf first=%n", &n,
                    &rounds, &r.best_ns, &r.mean_ns, &r.cpu_ns, &consumed) != 5 ||
        n != o.calls || rounds != o.rounds)
        throw Error(ErrorKind::Protocol, "unexpected readloop output: '" + out + "'");
    r.first = out.substr(consumed);
    return r;
}

// The readloop rows: what each must see and what it is compared with.
// hvpatch's trampoline rows can only be measured while hvpatch holds the
// VM (its gdbstub attached, inside before_finish), so the same situations
// with the stub attached and nothing else going on are measured as well:
// the fair baseline for them.
enum CostRowId {
    kUnpatched,
    kGuestLivepatch,
    kHvpatchDirect,
    kUnpatchedAttached,
    kHvpatchDirectAttached,
    kHvpatchApplyTrampoline,
    kHvpatchRevertTrampoline,
};
struct CostRow {
    std::string name;
    bool patched;      // the patched text must show
    CostRowId baseline;
};
const std::vector<CostRow> kCostRows = {
    {"unpatched (original cmdline_proc_show)", false, kUnpatched},
    {"guest livepatch applied (ftrace -> klp handler)", true, kUnpatched},
    {"hvpatch applied (direct jump)", true, kUnpatched},
    {"unpatched, hvpatch's gdbstub attached", false, kUnpatchedAttached},
    {"hvpatch applied, gdbstub attached", true, kUnpatchedAttached},
    {"hvpatch apply transition (trampoline), attached", true, kUnpatchedAttached},
    {"hvpatch revert transition (trampoline), attached", false, kUnpatchedAttached},
};

struct CostResults {
    std::map<int, Samples> best, mean, cpu;
    std::map<int, int> right_version, runs;
    void add(CostRowId row, const ReadloopResult& r) {
        const CostRow& spec = kCostRows.at(row);
        best[row].values.push_back(r.best_ns);
        mean[row].values.push_back(r.mean_ns);
        cpu[row].values.push_back(r.cpu_ns);
        bool patched = r.first + "\n" == kCmdlinePatchedOutput;
        ++runs[row];
        if (patched == spec.patched) ++right_version[row];
        else std::fprintf(stderr, "patch_bench: %s: readloop read '%s'\n", spec.name.c_str(), r.first.c_str());
    }
};

// --- one repetition ----------------------------------------------------------

const std::string kGuestColumn = "guest's own livepatch";
// The rows of (a), in print order; "apply"/"revert" + the suffix.
const std::string kWall = ": wall until done in every task, ms";
const std::string kTransition = ": transition, ms (guest: its log; hvpatch: report)";
const std::string kRevertDisabled = "revert: of it, disable -> transition done, ms";
const std::string kWhole = ": whole operation (hvpatch report), ms";
const std::string kPasses = ": passes";
const std::string kFreezes = ": freezes";
const std::string kPausedTotal = ": guest paused in total, ms";
const std::string kPausedMax = ": longest pause, ms";
const std::string kApplyWall = "apply" + kWall;
const std::string kRevertWall = "revert" + kWall;
const std::string kApplyTransition = "apply" + kTransition;
const std::string kRevertTransition = "revert" + kTransition;
std::vector<std::string> timing_rows() {
    std::vector<std::string> rows;
    for (std::string op : {"apply", "revert"}) {
        rows.push_back(op + kWall);
        if (op == "revert") rows.push_back(kRevertDisabled);
        for (const auto& suffix : {kTransition, kWhole, kPasses, kFreezes, kPausedTotal, kPausedMax})
            rows.push_back(op + suffix);
    }
    return rows;
}
const std::string kLibraryColumn = "hvpatch (library)";
const std::string kCliColumn = "hvpatch (CLI)";

struct Bench {
    TestGuest& guest;
    Options options;
    std::string scratch;
    Table timing;
    CostResults cost;

    PatchOptions patch_options() const {
        PatchOptions o;
        o.state_dir = scratch + "/state";
        o.audit_log = scratch + "/audit.jsonl";
        o.timeout = kTransitionTimeout;
        return o;
    }

    void add_report(const std::string& op, const std::string& column, const nlohmann::json& r) {
        timing.add(op + kTransition, column, r.at("transition_ms").get<double>());
        timing.add(op + kWhole, column, r.at("total_ms").get<double>());
        timing.add(op + kPasses, column, r.at("passes").get<double>());
        timing.add(op + kFreezes, column, r.at("freezes").get<double>());
        timing.add(op + kPausedTotal, column, r.at("paused_total_ms").get<double>());
        timing.add(op + kPausedMax, column, r.at("paused_max_ms").get<double>());
    }

    void guest_own(const PatchFile& patch, bool measure_cost) {
        const auto module = patch.example->module;
        auto start = Clock::now();
        guest_insmod(guest, patch.guest_path);
        std::string state = wait_guest_livepatch_transition(guest, module, kTransitionTimeout);
        timing.add(kApplyWall, kGuestColumn, ms_since(start));
        if (state != "0") throw Error(ErrorKind::Guest, std::string(module) + " transition ended as '" + state + "'");
        double in_guest = guest_transition_seconds(guest, module, true);
        if (in_guest >= 0) timing.add(kApplyTransition, kGuestColumn, in_guest * 1000);

        if (measure_cost) cost.add(kGuestLivepatch, readloop(guest, options));

        start = Clock::now();
        guest_livepatch_disable(guest, module);
        state = wait_guest_livepatch_transition(guest, module, kTransitionTimeout);
        double disabled = ms_since(start);
        guest_rmmod(guest, module);
        timing.add(kRevertWall, kGuestColumn, ms_since(start));
        timing.add(kRevertDisabled, kGuestColumn, disabled);
        double back = guest_transition_seconds(guest, module, false);
        if (back >= 0) timing.add(kRevertTransition, kGuestColumn, back * 1000);
    }

    void hvpatch_library(const PatchFile& patch) {
        {
            auto machine = open_machine(guest.target());
            Patcher patcher(*machine, patch_options());
            auto start = Clock::now();
            OperationReport r = patcher.apply(patch.host_path);
            timing.add(kApplyWall, kLibraryColumn, ms_since(start));
            add_report("apply", kLibraryColumn, r.to_json());
        }
        {
            auto machine = open_machine(guest.target());
            Patcher patcher(*machine, patch_options());
            auto start = Clock::now();
            OperationReport r = patcher.revert(std::string(patch.example->module));
            timing.add(kRevertWall, kLibraryColumn, ms_since(start));
            add_report("revert", kLibraryColumn, r.to_json());
        }
    }

    nlohmann::json run_cli(std::vector<std::string> verb_args) {
        std::vector<std::string> argv = {hvpatch_binary(), "--state-dir", scratch + "/state", "--audit-log",
                                         scratch + "/audit.jsonl"};
        argv.insert(argv.end(), verb_args.begin(), verb_args.end());
        argv.push_back("--json");
        CommandResult r = run_command(argv, std::chrono::duration_cast<std::chrono::milliseconds>(kTransitionTimeout) + 60s);
        if (r.exit_code != 0) throw Error(ErrorKind::Guest, "hvpatch " + verb_args[0] + ": " + r.describe());
        try {
            return nlohmann::json::parse(r.out);
        } catch (const nlohmann::json::exception&) {
            throw Error(ErrorKind::Protocol, "hvpatch " + verb_args[0] + " --json printed no JSON: " + r.out);
        }
    }

    void hvpatch_cli(const PatchFile& patch) {
        auto start = Clock::now();
        nlohmann::json applied = run_cli({"apply", guest.target(), patch.host_path, "--timeout",
                                          std::to_string(kTransitionTimeout.count())});
        timing.add(kApplyWall, kCliColumn, ms_since(start));
        add_report("apply", kCliColumn, applied);
        start = Clock::now();
        nlohmann::json reverted = run_cli({"revert", guest.target(), std::string(patch.example->module), "--timeout",
                                           std::to_string(kTransitionTimeout.count())});
        timing.add(kRevertWall, kCliColumn, ms_since(start));
        add_report("revert", kCliColumn, reverted);
    }

    // hvpatch's Machine with its gdbstub attached, the guest running: as
    // during before_finish, without a patch operation.
    std::unique_ptr<Machine> attached_machine() {
        auto machine = open_machine(guest.target());
        machine->pause();
        machine->read_registers(0);  // attaches the gdbstub
        machine->resume();
        return machine;
    }

    // Apply and revert through the library with readloop runs in the hooks
    // (trampolines), and the direct jump in between, with hvpatch detached
    // and attached.
    void hvpatch_cost(const PatchFile& patch) {
        {
            auto attached = attached_machine();
            cost.add(kUnpatchedAttached, readloop(guest, options));
        }
        CostRowId during = kHvpatchApplyTrampoline;
        PatchOptions o = patch_options();
        o.before_finish = [&] { cost.add(during, readloop(guest, options)); };
        {
            auto machine = open_machine(guest.target());
            Patcher(*machine, o).apply(patch.host_path);
        }
        cost.add(kHvpatchDirect, readloop(guest, options));
        {
            auto attached = attached_machine();
            cost.add(kHvpatchDirectAttached, readloop(guest, options));
        }
        during = kHvpatchRevertTrampoline;
        {
            auto machine = open_machine(guest.target());
            Patcher(*machine, o).revert(std::string(patch.example->module));
        }
    }

    // One repetition of (a), and of (b) if `measure_cost` (cmdline only).
    void repetition(const PatchFile& patch, bool measure_cost) {
        if (measure_cost) cost.add(kUnpatched, readloop(guest, options));
        guest_own(patch, measure_cost);
        hvpatch_library(patch);
        hvpatch_cli(patch);
        if (measure_cost) hvpatch_cost(patch);
    }
};

void print_results(const Bench& cmdline, const Bench* sleeper, const TestGuest& guest, const Options& o,
                   int reps_done, const std::string& cmdline_ko, const std::string& sleeper_ko) {
    std::printf("\nhvpatch patch_bench: test guest %s, %s, %d rep(s) done of %d; median [min-max]\n",
                guest.release().c_str(), guest.vm().accel().c_str(), reps_done, o.reps);
    std::printf("The guest's workloads (cpu-loop, syscall-loop, 3 sleeps) run during every transition. The guest's\n"
                "wall times go through the serial command channel (~25 ms per command, 10 ms polling in the guest).\n");
    auto print_timing = [&](const Bench& b, const std::string& ko) {
        std::printf("\n(a) %s.ko (stripped; both load the same file): time until complete in every task\n\n",
                    ko.c_str());
        b.timing.print(58, 22);
    };
    print_timing(cmdline, cmdline_ko);
    if (sleeper) print_timing(*sleeper, sleeper_ko);

    std::printf("\n(b) per-call cost of pread(/proc/cmdline) (cmdline_proc_show) from a loop in the guest,\n"
                "    ns per call; per measurement %d rounds of %ld calls (best round; mean of all rounds)%s\n\n",
                o.rounds, o.calls,
                o.busy_guest ? "; the guest's workloads running" : ";\n    the guest's busy workloads (cpu-loop, syscall-loop) stopped meanwhile");
    const auto& c = cmdline.cost;
    auto median_at = [](const std::map<int, Samples>& m, int row) {
        auto it = m.find(row);
        return it == m.end() ? -1.0 : median_of(it->second.values);
    };
    auto delta = [](double v, double base) {
        if (base < 0 || v < 0) return std::string("-");
        char buf[32];
        std::snprintf(buf, sizeof buf, "%+.0f", v - base);
        return std::string(buf);
    };
    const char* line = "%-50s %-19s %-11s %-19s %-19s %s\n";
    std::printf(line, "", "best round", "best vs", "mean", "mean thread CPU", "version");
    std::printf(line, "", "", "baseline", "", "", "right");
    std::printf("%s\n", std::string(128, '-').c_str());
    for (int id = 0; id < static_cast<int>(kCostRows.size()); ++id) {
        if (!c.best.count(id)) continue;
        const CostRow& row = kCostRows[id];
        std::string right = std::to_string(c.right_version.count(id) ? c.right_version.at(id) : 0) + "/" +
                            std::to_string(c.runs.at(id));
        std::string versus = row.baseline == id ? "baseline" : delta(median_at(c.best, id), median_at(c.best, row.baseline));
        std::printf(line, row.name.c_str(), c.best.at(id).cell().c_str(), versus.c_str(), c.mean.at(id).cell().c_str(),
                    c.cpu.at(id).cell().c_str(), right.c_str());
    }
    std::printf("Medians [min-max] over the repetitions; \"best vs baseline\" between medians. \"version right\":\n"
                "runs whose first read showed the version the row expects (patched text or the original).\n");
}

}  // namespace

int main(int argc, char** argv) {
    std::optional<Options> parsed = parse_args(argc, argv);
    if (!parsed) return 2;
    const Options options = *parsed;
    std::unique_ptr<TestGuest> guest;
    std::optional<Bench> cmdline, sleeper;
    int reps_done = 0;
    ScratchDir scratch;
    int status = 0;
    try {
        std::fprintf(stderr, "patch_bench: booting the test guest...\n");
        guest = TestGuest::boot();
        if (guest->run("test -x /bin/readloop").status != 0)
            throw Error(ErrorKind::Guest, "the test guest has no /bin/readloop (guest/src/readloop.c): rebuild it with "
                                          "scripts/build-test-guest");
        PatchFile cmdline_patch = prepare_patch(*guest, Example::Cmdline, scratch.path);
        std::optional<PatchFile> sleeper_patch;
        if (options.sleeper) sleeper_patch = prepare_patch(*guest, Example::Sleeper, scratch.path);

        Table timing;
        timing.columns = {kGuestColumn, kLibraryColumn, kCliColumn};
        timing.order = timing_rows();
        cmdline.emplace(Bench{*guest, options, scratch.path, timing, {}});
        if (options.sleeper) sleeper.emplace(Bench{*guest, options, scratch.path, timing, {}});
        for (int rep = 0; rep < options.reps; ++rep) {
            std::fprintf(stderr, "patch_bench: repetition %d of %d\n", rep + 1, options.reps);
            cmdline->repetition(cmdline_patch, true);
            if (sleeper) {
                std::fprintf(stderr, "patch_bench: repetition %d of %d, livepatch-sleeper\n", rep + 1, options.reps);
                sleeper->repetition(*sleeper_patch, false);
            }
            ++reps_done;
        }
        std::vector<std::string> problems = kernel_problem_lines(guest->console_log());
        if (!problems.empty()) {
            std::fprintf(stderr, "patch_bench: the guest kernel logged problems:\n");
            for (const auto& line : problems) std::fprintf(stderr, "  %s\n", line.c_str());
            status = 1;
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "patch_bench: %s\n", e.what());
        status = 1;
    }
    if (guest && cmdline)
        print_results(*cmdline, sleeper ? &*sleeper : nullptr, *guest, options, reps_done, "livepatch_cmdline",
                      "livepatch_sleeper");
    return status;
}
