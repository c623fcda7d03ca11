// kernel_matrix_bench: GuestKernel::open and one apply on each guest kernel
// of the matrix, side by side in one run, per symbol and per task against
// the default 6.1 guest. Prints figures, asserts nothing.
//
//   build/bench/kernel_matrix_bench [--reps N]     (N defaults to 5; ~2 min)
//
// Each kernel's guest is booted in turn (scripts/build-test-guest --suite,
// cached) with the same QEMU options (2 vCPUs, 512 MiB, shared RAM file).
// Per kernel: N freezes, each timing GuestKernel::open (locate, kallsyms,
// BTF, layouts, per-CPU data, TIF bits from code) and list_tasks; then, on
// the kernels hvpatch patches, `hvpatch apply` and `hvpatch revert` of the
// cmdline example through the CLI (the report's own duration).
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_args.h"
#include "bench_figures.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/tasks.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace {

using namespace hvpatch;
using namespace std::chrono_literals;
using bench::fmt;
using bench::median_and_range;
using bench::median_of;
using bench::ms_since;

struct Kernel {
    const char* name;
    const char* suite;
    bool applies;
};
constexpr Kernel kKernels[] = {
    {"6.1 (default)", "", true},
    {"5.10 (bullseye)", "bullseye", true},
    {"6.12 (bookworm-backports)", "bookworm-backports", true},
    {"7.2 (forky)", "forky", true},
};

struct Row {
    std::string name, release;
    std::size_t symbols = 0, tasks = 0;
    std::vector<double> open_ms, tasks_ms;
    std::vector<double> apply_ms, revert_ms;
};

std::vector<double> cli_durations(const std::vector<std::string>& args, int reps) {
    std::vector<double> out;
    for (int i = 0; i < reps; ++i) {
        std::vector<std::string> argv{test::hvpatch_binary()};
        argv.insert(argv.end(), args.begin(), args.end());
        auto start = std::chrono::steady_clock::now();
        test::CommandResult r = test::run_command(argv, 300s);
        if (r.exit_code != 0) throw std::runtime_error(args[0] + " failed: " + r.describe());
        out.push_back(ms_since(start));
    }
    return out;
}

Row measure(const Kernel& k, int reps) {
    test::TestGuestOptions options;
    options.suite = k.suite;
    std::fprintf(stderr, "kernel_matrix_bench: booting %s\n", k.name);
    auto guest = test::TestGuest::boot(options);
    Row row;
    row.name = k.name;
    row.release = guest->release();
    auto machine = open_machine(guest->target());
    for (int i = 0; i < reps; ++i) {
        std::this_thread::sleep_for(50ms);
        PauseGuard pause(*machine);
        auto start = std::chrono::steady_clock::now();
        auto kernel = GuestKernel::open(*machine);
        row.open_ms.push_back(ms_since(start));
        row.symbols = kernel->symbols().symbols().size();
        start = std::chrono::steady_clock::now();
        row.tasks = list_tasks(*kernel).size();
        row.tasks_ms.push_back(ms_since(start));
    }
    machine.reset();
    if (k.applies) {
        const std::string ko = test::example_patch_ko(test::Example::Cmdline, guest->release());
        for (int i = 0; i < reps; ++i) {
            auto a = cli_durations({"apply", guest->target(), ko}, 1);
            auto r = cli_durations({"revert", guest->target(), "livepatch_cmdline"}, 1);
            row.apply_ms.push_back(a.front());
            row.revert_ms.push_back(r.front());
        }
    }
    return row;
}

}  // namespace

int main(int argc, char** argv) {
    auto reps = bench::parse_reps(argc, argv, 5, "kernel_matrix_bench");
    if (!reps) return 2;
    try {
        std::vector<Row> rows;
        for (const Kernel& k : kKernels) rows.push_back(measure(k, *reps));
        const Row& base = rows.front();
        const double base_sym = median_of(base.open_ms) / static_cast<double>(base.symbols) * 1000.0;
        const double base_task = median_of(base.tasks_ms) / static_cast<double>(base.tasks);
        std::printf("kernel_matrix_bench: %d freezes per kernel, median [min-max] ms; ratios against %s\n\n", *reps,
                    base.name.c_str());
        std::printf("%-27s %-22s %8s %6s %-22s %-11s %-18s %-10s %-22s %-22s\n", "kernel", "release", "symbols",
                    "tasks", "GuestKernel::open", "ms/1k syms", "list_tasks", "ms/task", "apply (CLI)",
                    "revert (CLI)");
        for (const Row& r : rows) {
            const double per_sym = median_of(r.open_ms) / static_cast<double>(r.symbols) * 1000.0;
            const double per_task = median_of(r.tasks_ms) / static_cast<double>(r.tasks);
            std::printf("%-27s %-22s %8zu %6zu %-22s %-11s %-18s %-10s %-22s %-22s\n", r.name.c_str(),
                        r.release.c_str(), r.symbols, r.tasks, median_and_range(r.open_ms).c_str(),
                        (fmt(per_sym) + " " + fmt(per_sym / base_sym) + "x").c_str(),
                        median_and_range(r.tasks_ms).c_str(),
                        (fmt(per_task) + " " + fmt(per_task / base_task) + "x").c_str(),
                        r.apply_ms.empty() ? "refused" : median_and_range(r.apply_ms).c_str(),
                        r.revert_ms.empty() ? "-" : median_and_range(r.revert_ms).c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "kernel_matrix_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
