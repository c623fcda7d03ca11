// Fuzz the ORC unwinder; unwind_stack() must never crash, hang or throw.
//
// Two modes, chosen by the first byte:
//  - raw: the input is one guest memory image holding everything (ORC
//    tables of vmlinux and a module, lookup table, stacks); a header places
//    each piece and picks the layouts, so the tables themselves are hostile.
//  - structured: the input lists ORC entries (text offset + 6 raw bytes);
//    the harness sorts them and builds the ip/orc/lookup tables the way
//    objtool and unwind_init() do, so the fuzzer spends its time on the
//    unwinding itself. The rest of the input is the stack memory.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/orc_unwind.h"

namespace {

using namespace hvpatch;

struct Region {
    std::uint64_t base;
    const std::uint8_t* data;
    std::size_t size;
};

class FuzzMemory : public VirtualMemory {
public:
    void add(std::uint64_t base, const std::uint8_t* data, std::size_t size) { regions_.push_back({base, data, size}); }
    void read(GuestVirtAddr addr, std::span<std::byte> out) override {
        for (const Region& r : regions_) {
            std::uint64_t off = addr.value - r.base;
            if (addr.value >= r.base && off <= r.size && out.size() <= r.size - off) {
                std::memcpy(out.data(), r.data + off, out.size());
                return;
            }
        }
        throw Error(ErrorKind::Guest, "outside the fuzz image");
    }

private:
    std::vector<Region> regions_;
};

struct Reader {
    const std::uint8_t* p;
    std::size_t left;
    std::uint64_t take(std::size_t n) {
        std::uint64_t v = 0;
        std::size_t k = left < n ? left : n;
        std::memcpy(&v, p, k);
        p += k;
        left -= k;
        return v;
    }
    std::uint64_t u64() { return take(8); }
    std::uint64_t u32() { return take(4); }
    std::uint64_t u16() { return take(2); }
    std::uint64_t u8() { return take(1); }
};

// HVPATCH_FUZZ_STATS=1: print each verdict (to see how deep a corpus gets:
// run with -runs=0 over it and tally).
const bool kStats = std::getenv("HVPATCH_FUZZ_STATS") != nullptr;

void check(const UnwindContext& ctx, const UnwindStart& start) {
    UnwindResult r = unwind_stack(ctx, start);
    if (kStats) std::fprintf(stderr, "verdict %s frames=%zu %s\n", to_string(r.end), r.frames.size(), r.reason.c_str());
    if (r.frames.size() > ctx.max_frames) __builtin_trap();
    if (r.reliable == (r.end == UnwindEnd::Failed)) __builtin_trap();
    if (!r.reliable && r.reason.empty()) __builtin_trap();
}

// -- raw mode ----------------------------------------------------------------

constexpr std::uint64_t kBase = 0xffffffff81000000ull;  // the image's first byte

void raw(const std::uint8_t* data, std::size_t size) {
    Reader h{data + 1, size - 1};
    const std::uint64_t mode = h.u16();
    const std::uint64_t image = size;
    // Addresses that mostly land inside the image, sometimes anywhere.
    auto where = [&](std::uint64_t v) { return (mode & 0x8000) ? v : kBase + v % image; };

    FuzzMemory memory;
    memory.add(kBase, data, size);

    VmlinuxOrcTables t;
    t.format = static_cast<OrcFormat>(h.u8() % 4);
    t.text_start = GuestVirtAddr{where(h.u16())};
    t.text_end = GuestVirtAddr{t.text_start.value + h.u16()};
    t.ip_table = GuestVirtAddr{where(h.u16())};
    t.orc_table = GuestVirtAddr{where(h.u16())};
    t.num_entries = (mode & 0x10) ? h.u64() : h.u16();
    t.lookup_table = GuestVirtAddr{where(h.u16())};
    t.lookup_entries = (mode & 0x20) ? h.u64() : h.u8();
    if (mode & 0x40) {
        t.inittext_start = GuestVirtAddr{where(h.u16())};
        t.inittext_end = GuestVirtAddr{t.inittext_start.value + h.u16()};
    }

    ModuleOrcTables m;
    m.format = t.format;
    std::uint64_t mod_begin = where(h.u16());
    m.ranges = {{mod_begin, mod_begin + h.u16()}};
    m.ip_table = GuestVirtAddr{where(h.u16())};
    m.orc_table = GuestVirtAddr{where(h.u16())};
    m.num_entries = (mode & 0x80) ? h.u32() : h.u8();

    CompositeOrcSource orc;
    orc.add(make_vmlinux_orc(memory, t));
    orc.add(make_module_orc(memory, m));
    std::uint64_t tramp = where(h.u16());
    orc.add_ftrace_trampoline(tramp, h.u8(), where(h.u16()));

    StackArea task{StackType::Task, "task", where(h.u16()), 0};
    task.end = task.begin + h.u16();
    StackArea irq{StackType::Irq, "IRQ", where(h.u16()), 0};
    irq.end = irq.begin + h.u16();

    UnwindContext ctx;
    ctx.memory = &memory;
    ctx.orc = &orc;
    ctx.layouts = UnwindLayouts::x86_64();
    if (mode & 0x100) {  // hostile layouts (they come from guest BTF)
        ctx.layouts.pt_regs_size = h.u16();
        ctx.layouts.regs_ip = h.u8() * 8;
        ctx.layouts.regs_sp = h.u8() * 8;
        ctx.layouts.regs_cs = h.u8() * 8;
        ctx.layouts.frame_size = h.u8();
        ctx.layouts.frame_ret_addr = h.u8();
    }
    ctx.stack_of = [&](std::uint64_t sp) -> std::optional<StackArea> {
        if (task.contains(sp)) return task;
        if (irq.contains(sp)) return irq;
        return std::nullopt;
    };
    ctx.ret_from_fork = where(h.u16());
    ctx.max_frames = 1 + h.u8() * 2;
    if (mode & 0x200) {
        std::uint64_t rt = where(h.u16());
        ctx.return_trampolines.push_back({rt, rt + h.u8(), "return_to_handler"});
        const std::uint64_t recovered = h.u64();
        if (mode & 0x400)
            ctx.recover_return_address = [recovered](std::uint64_t, std::uint64_t) -> std::optional<std::uint64_t> {
                return recovered;
            };
    }
    if (mode & 0x800) ctx.is_kernel_text = [&](std::uint64_t ip) { return ip >= kBase && ip - kBase < image; };

    UnwindStart start;
    start.from_vcpu = mode & 1;
    start.task_on_cpu = (mode & 0x1000) != 0;
    start.ip = (mode & 2) ? where(h.u16()) : h.u64();
    start.sp = (mode & 4) ? where(h.u16()) : h.u64();
    start.bp = where(h.u16());
    start.cs = h.u8();
    start.di = where(h.u16());
    start.dx = h.u64();
    start.r10 = where(h.u16());
    start.r13 = h.u64();
    start.ax = where(h.u16());                        // ORC_REG_AX (7.x)
    ctx.task_stack_padding = 8 * (h.u8() % 4);        // FRED's 16, and others
    check(ctx, start);
}

// -- structured mode -----------------------------------------------------------

constexpr std::uint64_t kText = 0xffffffff81000000ull;
constexpr std::uint64_t kTextSize = 0x1000;
constexpr std::uint64_t kTables = 0xffffffff82000000ull;
constexpr std::uint64_t kStack = 0xffffc90000000000ull;

void structured(const std::uint8_t* data, std::size_t size) {
    Reader h{data + 1, size - 1};
    const std::uint64_t mode = h.u16();
    const OrcFormat format = static_cast<OrcFormat>(h.u8() % 4);
    const std::size_t n = 1 + h.u8() % 64;

    // Objtool's sorted tables, then unwind_init()'s orc_lookup.
    std::vector<std::pair<std::uint64_t, std::array<std::uint8_t, 6>>> entries;
    for (std::size_t i = 0; i < n; ++i) {
        std::uint64_t ip = kText + h.u16() % (kTextSize + 0x40);
        std::array<std::uint8_t, 6> raw{};
        for (auto& b : raw) b = static_cast<std::uint8_t>(h.u8());
        entries.emplace_back(ip, raw);
    }
    std::stable_sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.first < b.first; });
    auto index_for = [&](std::uint64_t ip) {
        std::size_t found = 0;
        for (std::size_t i = 0; i < entries.size(); ++i)
            if (entries[i].first <= ip) found = i;
        return static_cast<std::uint32_t>(found);
    };
    const std::uint64_t blocks = kTextSize / 256 + 1;
    std::vector<std::uint8_t> tables(0x3000);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        std::uint64_t at = kTables + 4 * i;
        auto rel = static_cast<std::uint32_t>(entries[i].first - at);
        std::memcpy(&tables[4 * i], &rel, 4);
        std::memcpy(&tables[0x1000 + 6 * i], entries[i].second.data(), 6);
    }
    for (std::uint64_t b = 0; b < blocks; ++b) {
        std::uint32_t idx = index_for(b + 1 < blocks ? kText + 256 * b : kText + kTextSize);
        std::memcpy(&tables[0x2000 + 4 * b], &idx, 4);
    }

    // Everything after the header is the stack (task stack, then IRQ stack).
    const std::uint8_t* stack = h.p;
    const std::size_t stack_size = h.left;
    FuzzMemory memory;
    memory.add(kTables, tables.data(), tables.size());
    memory.add(kStack, stack, stack_size);

    VmlinuxOrcTables t;
    t.format = format;
    t.ip_table = GuestVirtAddr{kTables};
    t.orc_table = GuestVirtAddr{kTables + 0x1000};
    t.num_entries = entries.size();
    t.lookup_table = GuestVirtAddr{kTables + 0x2000};
    t.lookup_entries = blocks;
    t.text_start = GuestVirtAddr{kText};
    t.text_end = GuestVirtAddr{kText + kTextSize};
    auto orc = make_vmlinux_orc(memory, t);

    const std::uint64_t split = kStack + (stack_size / 2 & ~std::uint64_t{7});
    StackArea task{StackType::Task, "task", kStack, split};
    StackArea irq{StackType::Irq, "IRQ", split, kStack + stack_size};
    UnwindContext ctx;
    ctx.memory = &memory;
    ctx.orc = orc.get();
    ctx.layouts = UnwindLayouts::x86_64();
    ctx.stack_of = [&](std::uint64_t sp) -> std::optional<StackArea> {
        if (task.contains(sp)) return task;
        if (irq.contains(sp)) return irq;
        return std::nullopt;
    };
    ctx.ret_from_fork = kText + 0x500;
    ctx.max_frames = 64;
    if (mode & 0x10) ctx.return_trampolines.push_back({kText + 0x600, kText + 0x640, "return_to_handler"});

    UnwindStart start;
    start.from_vcpu = mode & 1;
    start.cs = (mode & 2) ? 0x33 : 0x10;
    start.ip = kText + (mode >> 4) % kTextSize;
    start.sp = kStack + (h.u16() % (stack_size + 1));
    start.bp = kStack + (h.u16() % (stack_size + 1));
    start.di = start.sp + 8 * (mode & 0xf);
    start.r10 = start.sp + 16;
    start.ax = start.sp + 24;
    ctx.task_stack_padding = (mode & 0x20) ? 16 : 0;
    check(ctx, start);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    if (data[0] & 1)
        structured(data, size);
    else
        raw(data, size);
    return 0;
}
