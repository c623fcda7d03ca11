// introspect_bench: what one freeze-and-inspect pass costs on the real test
// guest: pause, locate and decode the kernel (GuestKernel::open), enumerate
// every task, unwind every stack, resume. Prints figures, asserts nothing.
//
//   build/bench/introspect_bench [--reps N]     (N defaults to 10; ~30 s)
//
// One guest is booted (RAM in a shared file: hvpatch maps it, the fast
// path) and measured twice: phase A with its default workload, phase B after
// ~1000 extra sleeping tasks were started in it. Each phase runs
//   - cold passes: pause, GuestKernel::open, list_tasks, StackWalker,
//     unwind every task, resume: what `hvpatch stack --all` does today;
//   - breakdown passes (separate freezes, not part of the cold pause): the
//     pieces of GuestKernel::open called one by one, and parts of listing
//     and unwinding re-run on their own;
//   - warm passes: the kernel opened once (kallsyms, BTF and layouts kept,
//     as a later cache would keep them for a boot), then per freeze only
//     list_tasks + StackWalker + unwind all: the per-pass cost of a
//     transition's freeze-and-check. The translation cache is cleared at
//     every freeze (the guest may change its page tables while it runs).
// One Machine is kept open per phase; the first pass (which also attaches
// the gdbstub for register reads) is reported on its own and not counted.
// Guest memory reads are counted by a forwarding Machine wrapped around the
// real one (one extra virtual call per read). Last, pause/resume alone (no
// reads; through the stub, then through QMP) separates the VMM's share.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bench_args.h"
#include "bench_figures.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"
#include "introspect/guest_kernel.h"
#include "introspect/guest_layouts.h"
#include "introspect/kallsyms.h"
#include "introspect/kernel_btf.h"
#include "introspect/kernel_location.h"
#include "introspect/kernel_memory.h"
#include "introspect/modules.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"
#include "support/test_guest.h"

namespace {

using namespace hvpatch;
using Clock = std::chrono::steady_clock;

constexpr int kExtraTasks = 1000;
// Let the guest run this long between freezes, so that every pause stops
// busy vCPUs and every pass sees memory the guest has just touched.
constexpr std::chrono::milliseconds kRunBetween{10};

using bench::fmt;
using bench::median_of;
using bench::ms_since;

struct Samples {
    std::vector<double> ms;
    double median() const { return median_of(ms); }
    std::string cell() const {
        if (ms.empty()) return "-";
        char buf[96];
        auto [lo, hi] = std::minmax_element(ms.begin(), ms.end());
        std::snprintf(buf, sizeof buf, "%s [%s-%s]", fmt(median()).c_str(), fmt(*lo).c_str(), fmt(*hi).c_str());
        return buf;
    }
};

// Guest accesses made through the Machine.
struct Counts {
    std::uint64_t reads = 0, bytes = 0, registers = 0;
    Counts operator-(const Counts& o) const { return {reads - o.reads, bytes - o.bytes, registers - o.registers}; }
    std::string cell() const {
        char buf[96];
        if (bytes >= 10 * 1024)
            std::snprintf(buf, sizeof buf, "%llu reads, %llu KiB", static_cast<unsigned long long>(reads),
                          static_cast<unsigned long long>(bytes / 1024));
        else
            std::snprintf(buf, sizeof buf, "%llu reads, %llu B", static_cast<unsigned long long>(reads),
                          static_cast<unsigned long long>(bytes));
        std::string s = buf;
        if (registers) s += ", " + std::to_string(registers) + " regs";
        return s;
    }
};

// A Machine that forwards everything to another one and counts guest
// reads: GuestKernel reads through the Machine it is given.
class CountingMachine final : public Machine {
public:
    explicit CountingMachine(Machine& inner) : inner_(inner) {}
    Counts counts() const { return counts_; }

    std::string name() const override { return inner_.name(); }
    std::string accelerator() override { return inner_.accelerator(); }
    MachineIdentity identity() override { return inner_.identity(); }
    RunState run_state() override { return inner_.run_state(); }
    void pause() override { inner_.pause(); }
    void resume() override { inner_.resume(); }
    StopStats stop_stats() const override { return inner_.stop_stats(); }
    void reset_stop_stats() override { inner_.reset_stop_stats(); }
    std::vector<int> vcpus() override { return inner_.vcpus(); }
    VcpuRegisters read_registers(int vcpu) override {
        ++counts_.registers;
        return inner_.read_registers(vcpu);
    }
    void write_registers(int vcpu, const VcpuRegisters& regs) override { inner_.write_registers(vcpu, regs); }
    MemoryAccessInfo memory_access() override { return inner_.memory_access(); }
    void read_physical(GuestPhysAddr addr, std::span<std::byte> out) override {
        ++counts_.reads;
        counts_.bytes += out.size();
        inner_.read_physical(addr, out);
    }
    void write_physical(GuestPhysAddr addr, std::span<const std::byte> data) override {
        inner_.write_physical(addr, data);
    }
    void set_breakpoint(GuestVirtAddr addr) override { inner_.set_breakpoint(addr); }
    void clear_breakpoint(GuestVirtAddr addr) override { inner_.clear_breakpoint(addr); }
    std::optional<BreakpointHit> run_until_breakpoint(std::chrono::milliseconds timeout) override {
        return inner_.run_until_breakpoint(timeout);
    }

private:
    Machine& inner_;
    Counts counts_;
};

// Row name → samples (and the guest accesses of the last sample), in the
// order rows were first measured; headings are rows without figures.
struct Results {
    std::vector<std::string> order;
    std::map<std::string, Samples> rows;
    std::map<std::string, Counts> counts;
    std::set<std::string> headings;

    Samples& operator[](const std::string& row) {
        if (!rows.count(row)) order.push_back(row);
        return rows[row];
    }
    void heading(const std::string& h) {
        if (headings.insert(h).second) order.push_back(h);
    }
    double median(const std::string& row) const {
        auto it = rows.find(row);
        return it == rows.end() ? 0 : it->second.median();
    }
};

struct PhaseInfo {
    std::string label;
    int guest_processes = 0;      // /proc/[0-9]* in the guest
    std::string mem_available;    // MemAvailable in the guest, before the phase
    std::string host_load;        // the host's load average (1, 5, 15 min), before the phase
    std::size_t tasks = 0, frames = 0, unreliable = 0, unwind_errors = 0;
    std::size_t symbols = 0, btf_types = 0, modules = 0;
    std::uint64_t btf_bytes = 0, image_bytes = 0;
    double first_pass_ms = 0;     // the first cold pass (gdbstub attach included)
};

class Phase {
public:
    Phase(CountingMachine& machine, Results& out, PhaseInfo& info) : m_(machine), out_(out), info_(info) {}

    // Times fn() into `row` (and its guest accesses), returns milliseconds.
    template <typename F>
    double step(const std::string& row, F&& fn) {
        Counts before = m_.counts();
        auto start = Clock::now();
        fn();
        double ms = ms_since(start);
        out_[row].ms.push_back(ms);
        out_.counts[row] = m_.counts() - before;
        return ms;
    }
    void add(const std::string& row, double value) { out_[row].ms.push_back(value); }

    // Unwinds every task; guest errors on one task are counted, not fatal.
    std::vector<TaskStack> unwind_all(StackWalker& walker, const std::vector<GuestTask>& tasks) {
        std::vector<TaskStack> stacks;
        stacks.reserve(tasks.size());
        std::size_t errors = 0;
        for (const auto& task : tasks) {
            try {
                stacks.push_back(walker.unwind(task));
            } catch (const Error& e) {
                if (e.kind() != ErrorKind::Guest) throw;
                ++errors;
            }
        }
        info_.unwind_errors = std::max(info_.unwind_errors, errors);
        return stacks;
    }

    // pause, open, list, walker, unwind all, resume; returns the total pause.
    double cold_pass() {
        std::this_thread::sleep_for(kRunBetween);
        auto t0 = Clock::now();
        std::unique_ptr<GuestKernel> kernel;
        std::vector<GuestTask> tasks;
        std::optional<StackWalker> walker;
        std::vector<TaskStack> stacks;
        double pause = step("pause", [&] { m_.pause(); });
        double open = step("GuestKernel::open", [&] { kernel = GuestKernel::open(m_); });
        double list = step("list_tasks", [&] { tasks = list_tasks(*kernel); });
        double construct = step("StackWalker construction", [&] { walker.emplace(*kernel); });
        double unwind = step("unwind every task", [&] { stacks = unwind_all(*walker, tasks); });
        double resume = step("resume", [&] { m_.resume(); });
        double total = ms_since(t0);
        double n = static_cast<double>(tasks.size());
        add("= total pause (pause..resume returned)", total);
        add("  host work (open+list+walker+unwind)", open + list + construct + unwind);
        add("  VMM (pause+resume)", pause + resume);
        add("  list+unwind per task (us)", (list + unwind) / n * 1000);
        add("  list+unwind per 1000 tasks", (list + unwind) / n * 1000);
        add("  total pause per task (us)", total / n * 1000);
        note_stacks(tasks, stacks);
        info_.symbols = kernel->symbols().symbols().size();
        info_.btf_types = kernel->btf().type_count();
        info_.image_bytes = kernel->image().size;
        return total;
    }

    // The pieces of GuestKernel::open and parts of list/unwind, each timed on
    // its own, in one separate freeze.
    void breakdown_pass() {
        std::this_thread::sleep_for(kRunBetween);
        m_.pause();
        KernelPageTables tables;
        double p = step("find kernel page tables (vCPU regs, walk)", [&] { tables = find_kernel_page_tables(m_); });
        KernelMemory memory(m_, tables.cr3, tables.levels);
        KernelImage image;
        p += step("find kernel image (IDT, 2 MiB probes)", [&] { image = find_kernel_image(memory); });
        std::optional<KallsymsTable> symbols;
        p += step("kallsyms locate+decode", [&] {
            symbols.emplace(KallsymsTable::locate(memory, image.start, image.size));
        });
        step("  of which decode (re-run, layout known)", [&] {
            KallsymsTable again = KallsymsTable::decode(memory, symbols->layout());
            if (again.symbols().size() != symbols->symbols().size()) throw Error(ErrorKind::Guest, "decode differs");
        });
        std::vector<std::byte> raw;
        p += step("BTF read (__start_BTF..__stop_BTF)", [&] {
            std::uint64_t start = symbols->require("__start_BTF").address.value;
            std::uint64_t stop = symbols->require("__stop_BTF").address.value;
            raw = memory.read_bytes(GuestVirtAddr{start}, stop - start);
        });
        info_.btf_bytes = raw.size();
        std::optional<KernelBtf> btf;
        p += step("BTF parse (libbpf + name indexes)", [&] { btf.emplace(KernelBtf::parse(raw)); });
        p += step("layouts from BTF", [&] { (void)GuestLayouts::from_btf(*btf); });
        std::unique_ptr<GuestKernel> kernel;
        add("  sum of the pieces above (without re-run)", p);
        step("GuestKernel::open (same freeze, after them)", [&] { kernel = GuestKernel::open(m_); });

        std::vector<GuestTask> tasks = list_tasks(*kernel);
        kernel->memory().clear_cache();
        step("  proc_name of every task (re-run)", [&] {
            for (const auto& t : tasks) (void)proc_name(*kernel, t);
        });
        kernel->memory().clear_cache();
        step("  module list + resolver (re-run)", [&] {
            auto resolver = ModuleSymbolResolver::for_kernel(*kernel);
            info_.modules = resolver.modules().size();
        });
        std::vector<int> vcpus = m_.vcpus();
        step("  read every vCPU's registers (re-run)", [&] {
            for (int v : vcpus) (void)m_.read_registers(v);
        });
        // The floor under every guest field read: one 8-byte read of each
        // task's pid field, repeated, through KernelMemory (translation
        // cached) and straight from the Machine (physical address known).
        constexpr int kRounds = 20;
        const std::uint64_t pid_offset = kernel->layouts().task.pid.offset;
        const double n_reads = static_cast<double>(tasks.size()) * kRounds;
        double virt = step("  8-byte KernelMemory reads, 20 per task", [&] {
            std::uint64_t sum = 0;
            for (int r = 0; r < kRounds; ++r)
                for (const auto& t : tasks) sum += kernel->memory().read_u64(GuestVirtAddr{t.address + pid_offset});
            if (sum == 1) std::fprintf(stderr, " ");
        });
        add("    = per KernelMemory read (ns)", virt / n_reads * 1e6);
        std::vector<GuestPhysAddr> phys;
        for (const auto& t : tasks) phys.push_back(kernel->memory().translate(GuestVirtAddr{t.address + pid_offset}));
        double direct = step("  8-byte Machine::read_physical, 20 per task", [&] {
            std::uint64_t sum = 0, v = 0;
            auto out = std::as_writable_bytes(std::span(&v, 1));
            for (int r = 0; r < kRounds; ++r)
                for (auto p : phys) {
                    m_.read_physical(p, out);
                    sum += v;
                }
            if (sum == 1) std::fprintf(stderr, " ");
        });
        add("    = per read_physical (ns)", direct / n_reads * 1e6);
        // The same reads, one per task, with the host's caches and TLB
        // emptied of guest RAM first (a 64 MiB sweep): what the first touch
        // of a task_struct cache line costs.
        sweep_host_caches();
        double cold = step("  8-byte reads after a host cache sweep", [&] {
            std::uint64_t sum = 0;
            for (const auto& t : tasks) sum += kernel->memory().read_u64(GuestVirtAddr{t.address + pid_offset});
            if (sum == 1) std::fprintf(stderr, " ");
        });
        add("    = per read, cold host cache (ns)", cold / static_cast<double>(tasks.size()) * 1e6);
        StackWalker walker(*kernel);
        std::vector<TaskStack> stacks = unwind_all(walker, tasks);
        step("  kallsyms resolve of every frame (re-run)", [&] {
            for (const auto& s : stacks)
                for (const auto& f : s.frames) (void)kernel->symbols().resolve(GuestVirtAddr{f.frame.ip.value - 1});
        });
        m_.resume();
    }

    // The VMM's part alone: pause and resume with nothing read in between,
    // at once, after 50 ms paused with the host idle, and after 50 ms paused
    // with this thread busy (as during a cold pass).
    void vmm_only(int reps) {
        for (int i = 0; i < reps; ++i) {
            std::this_thread::sleep_for(kRunBetween);
            step("vmm only: pause", [&] { m_.pause(); });
            step("vmm only: resume at once", [&] { m_.resume(); });
            std::this_thread::sleep_for(kRunBetween);
            m_.pause();
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            step("vmm only: resume after 50 ms paused, idle", [&] { m_.resume(); });
            std::this_thread::sleep_for(kRunBetween);
            m_.pause();
            auto until = Clock::now() + std::chrono::milliseconds(50);
            volatile std::uint64_t spin = 0;
            while (Clock::now() < until) spin = spin + 1;
            step("vmm only: resume after 50 ms paused, busy", [&] { m_.resume(); });
        }
    }

    // Kernel opened once; per freeze only list + walker + unwind.
    void warm_passes(int reps) {
        std::this_thread::sleep_for(kRunBetween);
        m_.pause();
        std::unique_ptr<GuestKernel> kernel = GuestKernel::open(m_);
        m_.resume();
        for (int i = 0; i < reps; ++i) {
            std::this_thread::sleep_for(kRunBetween);
            auto t0 = Clock::now();
            std::vector<GuestTask> tasks;
            std::optional<StackWalker> walker;
            std::vector<TaskStack> stacks;
            double pause = step("warm: pause", [&] { m_.pause(); });
            kernel->memory().clear_cache();
            double list = step("warm: list_tasks", [&] { tasks = list_tasks(*kernel); });
            double construct = step("warm: StackWalker construction", [&] { walker.emplace(*kernel); });
            double unwind = step("warm: unwind every task", [&] { stacks = unwind_all(*walker, tasks); });
            double resume = step("warm: resume", [&] { m_.resume(); });
            double total = ms_since(t0);
            double n = static_cast<double>(tasks.size());
            double host = list + construct + unwind;
            add("warm: = total pause", total);
            add("warm:   host work (list+walker+unwind)", host);
            add("warm:   VMM (pause+resume)", pause + resume);
            add("warm:   host work per 1000 tasks", host / n * 1000);
            add("warm:   list+unwind per 1000 tasks", (list + unwind) / n * 1000);
            add("warm:   list+unwind per task (us)", (list + unwind) / n * 1000);
            add("warm:   total pause per task (us)", total / n * 1000);
        }
    }

private:
    void sweep_host_caches() {
        if (sweep_.empty()) sweep_.assign(64ULL << 20, 1);
        std::uint64_t sum = 0;
        for (std::size_t i = 0; i < sweep_.size(); i += 64) sum += sweep_[i]++;
        if (sum == 1) std::fprintf(stderr, " ");
    }

    void note_stacks(const std::vector<GuestTask>& tasks, const std::vector<TaskStack>& stacks) {
        info_.tasks = tasks.size();
        info_.frames = 0;
        info_.unreliable = 0;
        for (const auto& s : stacks) {
            info_.frames += s.frames.size();
            if (!s.unwind.reliable) ++info_.unreliable;
        }
    }

    CountingMachine& m_;
    Results& out_;
    PhaseInfo& info_;
    std::vector<unsigned char> sweep_;
};

int guest_count(test::TestGuest& guest, const std::string& command) {
    std::string out = guest.run_ok(command);
    char* end = nullptr;
    long v = std::strtol(out.c_str(), &end, 10);
    if (end == out.c_str()) throw Error(ErrorKind::Guest, "'" + command + "' printed '" + out + "', not a count");
    return static_cast<int>(v);
}

std::string load_average() {
    std::string s;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
        char buf[128] = {};
        if (std::fgets(buf, sizeof buf, f)) s = buf;
        std::fclose(f);
    }
    if (auto sp = s.find(' '); sp != std::string::npos)
        if (auto sp2 = s.find(' ', sp + 1); sp2 != std::string::npos)
            if (auto sp3 = s.find(' ', sp2 + 1); sp3 != std::string::npos) s.resize(sp3);
    return s;
}

std::string mem_available(test::TestGuest& guest) {
    std::string s = guest.run_ok("awk '/MemAvailable/ {print $2 / 1024 \" MiB\"}' /proc/meminfo");
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
}

const char* kCountProcesses = "ls /proc 2>/dev/null | grep -c '^[0-9]'";

void measure_phase(test::TestGuest& guest, int reps, Results& out, PhaseInfo& info) {
    info.guest_processes = guest_count(guest, kCountProcesses);
    info.mem_available = mem_available(guest);
    info.host_load = load_average();
    std::fprintf(stderr, "introspect_bench: %s: %d processes in the guest, measuring...\n", info.label.c_str(),
                 info.guest_processes);
    {
        auto machine = open_machine(guest.target());
        CountingMachine counting(*machine);

        // The first pass attaches the gdbstub (register reads); not counted.
        {
            Results scratch;
            Phase first(counting, scratch, info);
            info.first_pass_ms = first.cold_pass();
        }
        Phase phase(counting, out, info);
        out.heading("cold pass (one freeze each)");
        for (int i = 0; i < reps; ++i) phase.cold_pass();
        out.heading("breakdown (separate freezes, not in the pause above)");
        for (int i = 0; i < reps; ++i) phase.breakdown_pass();
        out.heading("warm pass (kernel opened once; per freeze)");
        phase.warm_passes(reps);
        out.heading("VMM alone (nothing read)");
        phase.vmm_only(reps);
    }
    // The same without the gdbstub (a new Machine: QMP stop/cont), to tell
    // QEMU's resume from the stub's.
    auto machine = open_machine(guest.target());
    for (int i = 0; i < reps; ++i) {
        std::this_thread::sleep_for(kRunBetween);
        machine->pause();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        auto start = Clock::now();
        machine->resume();
        out["vmm only: QMP cont after 50 ms paused"].ms.push_back(ms_since(start));
    }
}

void start_sleepers(test::TestGuest& guest, int baseline) {
    std::fprintf(stderr, "introspect_bench: starting %d sleeping tasks in the guest...\n", kExtraTasks);
    guest.run_ok("i=0; while [ $i -lt " + std::to_string(kExtraTasks) +
                     " ]; do sleep 100000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done",
                 std::chrono::seconds(120));
    // Wait until /proc shows them all as sleep (forked and exec'ed).
    auto deadline = Clock::now() + std::chrono::seconds(60);
    int sleepers = 0;
    do {
        sleepers = guest_count(guest, "grep -l '^sleep$' /proc/[0-9]*/comm 2>/dev/null | wc -l");
        if (sleepers >= kExtraTasks) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    } while (Clock::now() < deadline);
    int now = guest_count(guest, kCountProcesses);
    std::fprintf(stderr, "introspect_bench: %d sleep processes, %d processes (was %d)\n", sleepers, now, baseline);
    if (sleepers < kExtraTasks)
        throw Error(ErrorKind::Guest, "only " + std::to_string(sleepers) + " sleep processes started in the guest");
}

void print_table(const Results& a, const PhaseInfo& ia, const Results& b, const PhaseInfo& ib, int reps,
                 const std::string& release, const std::string& accel, long long boot_ms, int vcpus,
                 const std::string& memory_path) {
    std::printf("\nhvpatch introspect_bench: test guest %s, %d vCPUs, 512 MiB, %s, RAM via %s; %d reps each\n",
                release.c_str(), vcpus, accel.c_str(), memory_path.c_str(), reps);
    std::printf("figures in ms unless marked (us): median [min-max]; guest boot %lld ms\n\n", boot_ms);
    const int w0 = 46, w1 = 30;
    auto line = [&](const std::string& c0, const std::string& c1, const std::string& c2) {
        std::printf("%-*s %-*s %-*s\n", w0, c0.c_str(), w1, c1.c_str(), w1, c2.c_str());
    };
    line("", ia.label, ib.label);
    line("tasks (hvpatch) / guest processes", std::to_string(ia.tasks) + " / " + std::to_string(ia.guest_processes),
         std::to_string(ib.tasks) + " / " + std::to_string(ib.guest_processes));
    line("frames / unreliable stacks / unwind errors",
         std::to_string(ia.frames) + " / " + std::to_string(ia.unreliable) + " / " + std::to_string(ia.unwind_errors),
         std::to_string(ib.frames) + " / " + std::to_string(ib.unreliable) + " / " + std::to_string(ib.unwind_errors));
    line("guest MemAvailable before", ia.mem_available, ib.mem_available);
    line("host load average before (" + std::to_string(std::thread::hardware_concurrency()) + " host CPUs)",
         ia.host_load, ib.host_load);
    line("first pass (gdbstub attach; not counted)", fmt(ia.first_pass_ms), fmt(ib.first_pass_ms));
    auto cells = [&](const std::string& row, bool counts) {
        auto cell = [&](const Results& r) {
            if (counts) {
                auto it = r.counts.find(row);
                return it == r.counts.end() ? std::string("") : it->second.cell();
            }
            auto it = r.rows.find(row);
            return it == r.rows.end() ? std::string("-") : it->second.cell();
        };
        return std::pair{cell(a), cell(b)};
    };
    for (bool counts : {false, true}) {
        if (counts) std::printf("\nguest accesses through the Machine per step (last rep):\n");
        for (const auto& row : a.order) {
            if (a.headings.count(row)) {
                std::printf("%s\n", std::string(w0 + 2 * w1 + 2, '-').c_str());
                std::printf("%s\n", row.c_str());
                continue;
            }
            auto [ca, cb] = cells(row, counts);
            if (counts && ca.empty() && cb.empty()) continue;
            line(row, ca, cb);
        }
    }

    // Marginal cost of the extra tasks: the difference of the medians.
    std::printf("\nmarginal cost per 1000 extra tasks, (B - A) / (%zu - %zu tasks) x 1000, from the medians:\n",
                ib.tasks, ia.tasks);
    double dn = static_cast<double>(ib.tasks) - static_cast<double>(ia.tasks);
    for (const char* row : {"list_tasks", "unwind every task", "StackWalker construction", "warm: list_tasks",
                            "warm: unwind every task",
                            "warm:   host work (list+walker+unwind)", "warm: = total pause"}) {
        double d = dn > 0 ? (b.median(row) - a.median(row)) / dn * 1000 : 0;
        std::printf("  %-*s %s ms\n", w0 - 2, row, fmt(d).c_str());
    }
    std::printf("\nkallsyms %zu symbols; BTF %llu KiB, %zu types; kernel image %llu MiB mapped; %zu modules\n",
                ia.symbols, static_cast<unsigned long long>(ia.btf_bytes / 1024), ia.btf_types,
                static_cast<unsigned long long>(ia.image_bytes >> 20), ia.modules);
}


}  // namespace

int main(int argc, char** argv) {
    std::optional<int> parsed = bench::parse_reps(argc, argv, 10, "introspect_bench");
    if (!parsed) return 2;
    const int reps = *parsed;
    try {
        test::TestGuestOptions options;
        options.shared_ram = true;
        std::fprintf(stderr, "introspect_bench: booting the test guest (shared RAM file)...\n");
        auto guest = test::TestGuest::boot(options);
        std::string memory_path;
        int vcpus = 0;
        {
            auto machine = open_machine(guest->target());
            auto mem = machine->memory_access();
            memory_path = memory_path_name(mem.path);
            vcpus = static_cast<int>(machine->vcpus().size());
        }
        Results a, b;
        PhaseInfo ia, ib;
        ia.label = "A: default workload";
        ib.label = "B: +" + std::to_string(kExtraTasks) + " sleeping tasks";
        measure_phase(*guest, reps, a, ia);
        start_sleepers(*guest, ia.guest_processes);
        measure_phase(*guest, reps, b, ib);
        print_table(a, ia, b, ib, reps, guest->release(), guest->vm().accel(), guest->boot_time().count(), vcpus,
                    memory_path);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "introspect_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
