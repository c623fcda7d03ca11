// Stack ranges of x86-64 Linux 6.1; the layouts are described in stacks.h.
#include "introspect/stacks.h"

#include <array>
#include <utility>

namespace hvpatch::x86_64_6_1 {

namespace {

// [begin, begin + size) unless it wraps or is empty.
std::optional<StackArea> area(StackType type, std::string name, std::uint64_t begin, std::uint64_t size) {
    if (begin == 0 || size == 0 || begin + size < begin) return std::nullopt;
    return StackArea{type, std::move(name), begin, begin + size};
}

}  // namespace

std::optional<StackArea> task_stack_area(std::uint64_t task_stack, std::uint64_t thread_size) {
    return area(StackType::Task, "task", task_stack, thread_size);
}

std::vector<StackArea> stack_areas(const StackInputs& in) {
    std::vector<StackArea> out;
    if (auto a = task_stack_area(in.task_stack, in.thread_size)) out.push_back(*a);

    // in_irq_stack(): 5.6+ point hardirq_stack_ptr at the top-most word
    // (end = ptr + 8; that word holds the interrupted stack pointer);
    // 5.10's irq_64.c points it at the end itself. The stack is page-
    // aligned (vmap'd or per-CPU IRQ_STACK_SIZE), so the low bits tell.
    if (in.hardirq_stack_ptr != 0) {
        const std::uint64_t low = in.hardirq_stack_ptr % kPageSize;
        std::uint64_t end = low == kPageSize - 8 ? in.hardirq_stack_ptr + 8 : low == 0 ? in.hardirq_stack_ptr : 0;
        if (end > in.irq_stack_size)
            if (auto a = area(StackType::Irq, "IRQ", end - in.irq_stack_size, in.irq_stack_size)) out.push_back(*a);
    }

    // in_exception_stack(): ESTACKS_MEMBERS(PAGE_SIZE, EXCEPTION_STKSZ) in
    // enum exception_stack_ordering order, each stack after its guard page.
    if (in.cea_exception_stacks != 0) {
        static constexpr std::array<const char*, 6> kNames = {"#DF", "NMI", "#DB", "#MC", "#VC", "#VC2"};
        for (std::size_t i = 0; i < kNames.size(); ++i) {
            std::uint64_t offset = kPageSize + i * (kPageSize + in.exception_stack_size);
            std::uint64_t begin = in.cea_exception_stacks + offset;
            if (begin < in.cea_exception_stacks) break;
            if (auto a = area(StackType::Exception, kNames[i], begin, in.exception_stack_size)) out.push_back(*a);
        }
    }

    // in_entry_stack(): the entry_stack of cpu_entry_stack(cpu).
    if (auto a = area(StackType::Entry, "entry", in.entry_stack, kEntryStackSize)) out.push_back(*a);
    return out;
}

std::function<std::optional<StackArea>(std::uint64_t)> stack_lookup(std::vector<StackArea> areas) {
    return [areas = std::move(areas)](std::uint64_t addr) -> std::optional<StackArea> {
        for (const StackArea& a : areas)
            if (a.contains(addr)) return a;
        return std::nullopt;
    };
}

}  // namespace hvpatch::x86_64_6_1
