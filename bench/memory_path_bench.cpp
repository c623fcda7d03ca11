// memory_path_bench: the three ways hvpatch reads guest RAM, side by side on
// one guest in one run. Prints figures, asserts nothing.
//
//   build/bench/memory_path_bench [--reps N]     (N defaults to 5; ~2 minutes)
//
// The test guest boots once with its RAM in a shared file, so that every
// path can reach it: the mapped file, the QEMU process's memory (gpa2hva +
// process_vm_readv, what a VM without a shared file gets) and the gdbstub
// (the last resort). Each path is forced with --memory-path. Figures:
//   - read throughput: one bulk read (16 MiB; 2 MiB through the stub) and
//     256 scattered 4 KiB reads, the VM paused, through hvpatch's Machine;
//   - `hvpatch ps`: the one freeze it takes (paused_ms of its --json);
//   - `hvpatch apply` / `revert` of the sample patch: the guest-visible
//     pause, total and longest, and how many times the guest was stopped
//     (every stop, gdbstub reads of the running guest included), and the
//     wall time of the command.
// Cells are the median and [min-max] of N runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_args.h"
#include "bench_figures.h"
#include "hvpatch/machine.h"
#include "support/example_patches.h"
#include "support/run_command.h"
#include "support/test_guest.h"

namespace {

using namespace hvpatch;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

const std::vector<MemoryAccessInfo::Path> kPaths = {MemoryAccessInfo::Path::MappedFile,
                                                    MemoryAccessInfo::Path::ProcessMemory,
                                                    MemoryAccessInfo::Path::GdbStub};

using bench::fmt;
using bench::ms_since;

struct Samples {
    std::vector<double> v;
    double median() const { return bench::median_of(v); }
    std::string cell() const { return bench::median_and_range(v); }
};

// Row → path → samples, rows in the order first measured.
struct Table {
    std::vector<std::string> rows;
    std::map<std::string, std::map<std::string, Samples>> cells;
    void add(const std::string& row, const std::string& path, double value) {
        if (!cells.count(row)) rows.push_back(row);
        cells[row][path].v.push_back(value);
    }
};

void bench_reads(const std::string& target, MemoryAccessInfo::Path path, int reps, Table& table) {
    const std::string name = memory_path_name(path);
    auto machine = open_machine(target, "", path);
    PauseGuard pause(*machine);
    const std::uint64_t bulk = path == MemoryAccessInfo::Path::GdbStub ? 2ULL << 20 : 16ULL << 20;
    std::vector<std::byte> buf(bulk);
    std::mt19937_64 random(42);
    const std::uint64_t ram = machine->memory_access().ram_size;
    for (int i = 0; i < reps; ++i) {
        auto start = Clock::now();
        machine->read_physical(GuestPhysAddr{16ULL << 20}, buf);
        double ms = ms_since(start);
        table.add("bulk read, MiB/s", name, static_cast<double>(bulk >> 20) / (ms / 1000));
        std::vector<std::byte> page(4096);
        start = Clock::now();
        for (int j = 0; j < 256; ++j)
            machine->read_physical(GuestPhysAddr{(random() % (ram / 4096)) * 4096}, page);
        table.add("one scattered 4 KiB read, us", name, ms_since(start) * 1000 / 256);
    }
}

json hvpatch_json(const std::vector<std::string>& args, const std::string& path, const std::string& dir) {
    std::vector<std::string> argv = {test::hvpatch_binary(), "--memory-path", path, "--state-dir", dir + "/state",
                                     "--audit-log", dir + "/audit.jsonl"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--json");
    test::CommandResult r = test::run_command(argv, 300s);
    if (r.exit_code != 0) throw std::runtime_error("hvpatch failed: " + r.describe());
    return json::parse(r.out);
}

void bench_commands(test::TestGuest& guest, MemoryAccessInfo::Path path, int reps, const std::string& dir,
                    Table& table) {
    const std::string name = memory_path_name(path);
    const std::string ko = test::example_patch_ko(test::Example::Cmdline, guest.release());
    for (int i = 0; i < reps; ++i) {
        json ps = hvpatch_json({"ps", guest.target()}, name, dir);
        table.add("ps: the freeze, ms", name, ps["paused_ms"].get<double>());

        for (const char* verb : {"apply", "revert"}) {
            std::vector<std::string> args = {verb, guest.target()};
            args.push_back(std::string(verb) == "apply" ? ko : "livepatch_cmdline");
            auto start = Clock::now();
            json r = hvpatch_json(args, name, dir);
            double wall = ms_since(start);
            const std::string v = verb;
            table.add(v + ": guest paused in total, ms", name, r["paused_total_ms"].get<double>());
            table.add(v + ": longest pause, ms", name, r["paused_max_ms"].get<double>());
            table.add(v + ": times the guest was stopped", name, r["stops"].get<double>());
            table.add(v + ": command wall time, ms", name, wall);
        }
        if (guest.run_ok(std::string(test::kCmdlineOracle)) == test::kCmdlinePatchedOutput)
            throw std::runtime_error("the guest still runs the patch after revert");
    }
}

}  // namespace

int main(int argc, char** argv) {
    auto reps = bench::parse_reps(argc, argv, 5, "memory_path_bench");
    if (!reps) return 2;
    try {
        std::fprintf(stderr, "memory_path_bench: booting the test guest (shared RAM file, reachable by every path)\n");
        auto guest = test::TestGuest::boot();
        char tmpl[] = "/tmp/hvpatch-memory-bench.XXXXXX";
        const std::string dir = mkdtemp(tmpl);
        Table table;
        for (auto path : kPaths) {
            std::fprintf(stderr, "memory_path_bench: %s\n", memory_path_name(path));
            bench_reads(guest->target(), path, *reps, table);
            bench_commands(*guest, path, *reps, dir, table);
        }
        std::filesystem::remove_all(dir);

        std::printf("memory_path_bench: kernel %s, %s, %d runs each; median [min-max]\n\n", guest->release().c_str(),
                    guest->vm().accel().c_str(), *reps);
        std::printf("%-40s %-26s %-26s %-26s %s\n", "", "mapped-file", "process-memory", "gdbstub",
                    "process/file");
        for (const auto& row : table.rows) {
            auto& c = table.cells[row];
            double file = c["mapped-file"].median(), process = c["process-memory"].median();
            std::string ratio = file > 0 ? fmt(process / file) + "x" : "-";
            std::printf("%-40s %-26s %-26s %-26s %s\n", row.c_str(), c["mapped-file"].cell().c_str(),
                        c["process-memory"].cell().c_str(), c["gdbstub"].cell().c_str(), ratio.c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "memory_path_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
