// vmm_bench: what the QEMU backend's basic operations cost on the real test
// guest, with and without a shared RAM file. Prints figures, asserts nothing.
//
//   build/bench/vmm_bench [--reps N]     (N defaults to 20; ~1 minute)
//
// The guest is booted twice, one after the other (each takes both cores):
// once with its RAM in a shared file (hvpatch maps it), once with anonymous
// RAM (hvpatch reads it out of the QEMU process; memory_path_bench compares
// all three memory paths on one guest). Every operation is timed N
// times through hvpatch's own Machine interface; the table shows the median
// and [min-max] in milliseconds.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_args.h"
#include "bench_figures.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "support/test_guest.h"

namespace {

using namespace hvpatch;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kReadBytes = 16ULL << 20;
// Where the 16 MiB are read: the kernel's usual physical load area.
constexpr std::uint64_t kReadAddress = 16ULL << 20;
// Let the guest run this long between pause measurements, so that every
// pause stops vCPUs that are busy (the guest's workloads keep them busy).
constexpr std::chrono::milliseconds kRunBetween{10};

using bench::ms_since;

struct Samples {
    std::vector<double> ms;
    std::string note;  // e.g. the memory path, or why there are no figures

    double median() const { return bench::median_of(ms); }
    std::string cell() const {
        if (ms.empty()) return note.empty() ? "-" : note;
        return bench::median_and_range(ms);
    }
};

// Row name → samples, in the order rows were first measured.
struct Results {
    std::vector<std::string> order;
    std::map<std::string, Samples> rows;
    Samples& operator[](const std::string& row) {
        if (!rows.count(row)) order.push_back(row);
        return rows[row];
    }
};

struct GuestInfo {
    std::string release, accel, memory_path;
    int vcpus = 0;
    long long boot_ms = 0;
};

void bench_guest(bool shared_ram, int reps, Results& out, GuestInfo& info) {
    test::TestGuestOptions options;
    options.shared_ram = shared_ram;
    std::fprintf(stderr, "vmm_bench: booting the test guest (%s)...\n", shared_ram ? "shared RAM file" : "anonymous RAM");
    auto guest = test::TestGuest::boot(options);
    info.release = guest->release();
    info.accel = guest->vm().accel();
    info.boot_ms = guest->boot_time().count();
    const std::string target = guest->target();

    // Opening a Machine: QMP connect, greeting, capabilities, query-status,
    // query-cpus-fast, memory discovery (info mtree, qom-get, mmap).
    for (int i = 0; i < reps; ++i) {
        auto start = Clock::now();
        auto machine = open_machine(target);
        out["open Machine (QMP connect + discovery)"].ms.push_back(ms_since(start));
        if (i == 0) {
            auto mem = machine->memory_access();
            info.memory_path = memory_path_name(mem.path);
            info.vcpus = static_cast<int>(machine->vcpus().size());
        }
    }

    // pause→resume while no gdb client is attached: QMP stop + cont.
    {
        auto machine = open_machine(target);
        for (int i = 0; i < reps; ++i) {
            std::this_thread::sleep_for(kRunBetween);
            auto start = Clock::now();
            machine->pause();
            machine->resume();
            out["pause+resume via QMP (no stub attached)"].ms.push_back(ms_since(start));
        }
    }

    // First attach: gdbserver on a private socket, connect, handshake,
    // target.xml, thread list; the first register read triggers it (timed
    // together with that read: ~1 ms of it, see the register row). Closing
    // detaches, removes the stub and resumes.
    for (int i = 0; i < reps; ++i) {
        auto machine = open_machine(target);
        machine->pause();
        auto start = Clock::now();
        machine->read_registers(0);
        out["first gdb attach (+ vCPU 0 registers)"].ms.push_back(ms_since(start));
        start = Clock::now();
        machine.reset();
        out["close Machine after attach (detach, cont)"].ms.push_back(ms_since(start));
    }

    {
        auto machine = open_machine(target);
        machine->pause();
        machine->read_registers(0);  // attach
        machine->resume();

        // pause→resume while attached: 0x03 + stop reply, `c`.
        for (int i = 0; i < reps; ++i) {
            std::this_thread::sleep_for(kRunBetween);
            auto start = Clock::now();
            machine->pause();
            machine->resume();
            out["pause+resume via gdbstub (attached)"].ms.push_back(ms_since(start));
        }

        machine->pause();
        const auto vcpus = machine->vcpus();
        const std::string regs_row = "read registers, all " + std::to_string(vcpus.size()) + " vCPUs";
        for (int i = 0; i < reps; ++i) {
            auto start = Clock::now();
            for (int v : vcpus) machine->read_registers(v);
            out[regs_row].ms.push_back(ms_since(start));
        }

        std::vector<std::byte> buf(kReadBytes);
        const std::string read_row = "read 16 MiB guest-physical (VM paused)";
        for (int i = 0; i < reps; ++i) {
            auto start = Clock::now();
            machine->read_physical(GuestPhysAddr{kReadAddress}, buf);
            out[read_row].ms.push_back(ms_since(start));
        }
        out[read_row].note = info.memory_path;
        machine->resume();
    }
}

void print_table(const Results& a, const GuestInfo& ia, const Results& b, const GuestInfo& ib, int reps) {
    std::printf("\nhvpatch vmm_bench: test guest %s, %d vCPUs, 512 MiB, %s; %d reps each\n", ia.release.c_str(),
                ia.vcpus, ia.accel.c_str(), reps);
    std::printf("figures in ms: median [min-max]; guest boot %lld ms / %lld ms\n\n", ia.boot_ms, ib.boot_ms);
    const int w0 = 44, w1 = 30;
    std::printf("%-*s %-*s %-*s\n", w0, "", w1, "shared RAM file", w1, "anonymous RAM");
    std::printf("%-*s %-*s %-*s\n", w0, "RAM read through", w1, ia.memory_path.c_str(), w1, ib.memory_path.c_str());
    std::printf("%s\n", std::string(w0 + 2 * w1 + 2, '-').c_str());
    for (const auto& row : a.order) {
        auto cell = [&](const Results& r) {
            auto it = r.rows.find(row);
            return it == r.rows.end() ? std::string("-") : it->second.cell();
        };
        std::printf("%-*s %-*s %-*s\n", w0, row.c_str(), w1, cell(a).c_str(), w1, cell(b).c_str());
    }
    // Throughput of the 16 MiB read, from the medians.
    auto mibps = [](const Results& r) {
        for (const auto& [row, s] : r.rows)
            if (row.rfind("read 16 MiB", 0) == 0 && !s.ms.empty()) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.0f MiB/s", 16.0 / (s.median() / 1000.0));
                return std::string(buf);
            }
        return std::string("-");
    };
    std::printf("%-*s %-*s %-*s\n", w0, "  = throughput (median)", w1, mibps(a).c_str(), w1, mibps(b).c_str());
}


}  // namespace

int main(int argc, char** argv) {
    std::optional<int> parsed = bench::parse_reps(argc, argv, 20, "vmm_bench");
    if (!parsed) return 2;
    const int reps = *parsed;
    try {
        Results shared, anonymous;
        GuestInfo shared_info, anonymous_info;
        bench_guest(true, reps, shared, shared_info);
        bench_guest(false, reps, anonymous, anonymous_info);
        print_table(shared, shared_info, anonymous, anonymous_info, reps);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "vmm_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
