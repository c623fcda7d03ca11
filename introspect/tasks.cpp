#include "introspect/tasks.h"

#include <bit>
#include <unordered_set>

#include "hvpatch/error.h"
#include "introspect/guest_list.h"
#include "introspect/kernel_constants.h"

namespace hvpatch {


char task_state_letter(std::uint32_t state, std::uint32_t exit_state) {
    std::uint32_t reported = (state | exit_state) & kconst::kTaskReport;
    if ((state & kconst::kTaskIdle) == kconst::kTaskIdle) reported = kconst::kTaskReport + 1;  // TASK_REPORT_IDLE
    if ((state & kconst::kTaskRtlockWait) || (state & kconst::kTaskFrozen)) reported = kconst::kTaskUninterruptible;
    unsigned index = reported == 0 ? 0 : static_cast<unsigned>(std::bit_width(reported));
    return index < sizeof kconst::kTaskStateLetters - 1 ? kconst::kTaskStateLetters[index] : '?';
}

std::string proc_name(GuestKernel& kernel, const GuestTask& task) {
    if (!(task.flags & kconst::kPfKthread)) return task.comm;
    const KernelBtf& btf = kernel.btf();
    auto private_field = btf.find_member("task_struct", "worker_private");
    auto data_field = btf.find_member("kthread", "data");
    auto full_name_field = btf.find_member("kthread", "full_name");
    if (!private_field) return task.comm;
    KernelMemory& memory = kernel.memory();
    try {
        std::uint64_t kthread = memory.read_u64(GuestVirtAddr{task.address + private_field->offset});
        if (kthread == 0) return task.comm;
        if (task.flags & kconst::kPfWqWorker) {
            auto desc = btf.find_member("worker", "desc");
            auto current_work = btf.find_member("worker", "current_work");
            auto pool = btf.find_member("worker", "pool");
            if (!data_field || !desc || !current_work || !pool) return task.comm;
            std::uint64_t worker = memory.read_u64(GuestVirtAddr{kthread + data_field->offset});
            if (worker == 0 || memory.read_u64(GuestVirtAddr{worker + pool->offset}) == 0) return task.comm;
            std::string text = memory.read_cstring(GuestVirtAddr{worker + desc->offset}, desc->size);
            if (text.empty()) return task.comm;
            bool busy = memory.read_u64(GuestVirtAddr{worker + current_work->offset}) != 0;
            return task.comm + (busy ? "+" : "-") + text;
        }
        if (!full_name_field) return task.comm;
        std::uint64_t full_name = memory.read_u64(GuestVirtAddr{kthread + full_name_field->offset});
        if (full_name == 0) return task.comm;
        // /proc prints at most 64 bytes of it (tcomm[64] in proc_task_name()).
        std::string full = memory.read_cstring(GuestVirtAddr{full_name}, 63);
        return full.rfind(task.comm, 0) == 0 ? full : task.comm;
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        return task.comm;
    }
}

GuestTask read_task(GuestKernel& kernel, std::uint64_t address) {
    KernelMemory& memory = kernel.memory();
    const auto& t = kernel.layouts().task;
    GuestTask task;
    task.address = address;
    try {
        task.pid = static_cast<int>(read_layout_field(memory, address, t.pid));
        task.tgid = static_cast<int>(read_layout_field(memory, address, t.tgid));
        task.comm = memory.read_cstring(GuestVirtAddr{address + t.comm.offset}, t.comm.size);
        task.state = static_cast<std::uint32_t>(read_layout_field(memory, address, t.state));
        task.exit_state = static_cast<std::uint32_t>(read_layout_field(memory, address, t.exit_state));
        task.flags = static_cast<std::uint32_t>(read_layout_field(memory, address, t.flags));
        task.thread_flags = read_layout_field(memory, address, t.thread_info_flags);
        if (auto bit = kernel.info().tif_patch_pending) task.patch_pending = (task.thread_flags >> *bit) & 1;
        task.stack_base = read_layout_field(memory, address, t.stack);
        task.saved_sp = read_layout_field(memory, address, t.thread_sp);
        task.mm = read_layout_field(memory, address, t.mm);
        if (t.cpu) task.cpu = static_cast<int>(read_layout_field(memory, address, *t.cpu));
        if (t.on_cpu) task.on_cpu = read_layout_field(memory, address, *t.on_cpu) != 0;
        if (t.patch_state)
            task.patch_state = static_cast<std::int32_t>(read_layout_field(memory, address, *t.patch_state));
    } catch (const Error& e) {
        throw Error(ErrorKind::Guest, "task_struct at " + hex(address) + ": " + e.what());
    }
    task.state_letter = task_state_letter(task.state, task.exit_state);
    task.kthread = task.flags & kconst::kPfKthread;
    task.idle = (task.flags & kconst::kPfIdle) && task.pid == 0;
    task.name = proc_name(kernel, task);
    return task;
}

std::vector<GuestTask> list_tasks(GuestKernel& kernel, const TaskListOptions& options) {
    KernelMemory& memory = kernel.memory();
    const GuestLayouts& layouts = kernel.layouts();
    const int cpus = kernel.info().nr_cpu_ids;
    std::uint64_t runqueues = kernel.symbol("runqueues");
    std::uint64_t rq_curr = kernel.btf().offset_of("rq", "curr");
    std::uint64_t rq_idle = kernel.btf().offset_of("rq", "idle");

    std::vector<GuestTask> tasks;
    std::unordered_set<std::uint64_t> known;
    std::vector<std::uint64_t> current(static_cast<std::size_t>(cpus), 0);
    for (int cpu = 0; cpu < cpus; ++cpu) {
        std::uint64_t rq = kernel.per_cpu_offset(cpu) + runqueues;
        std::uint64_t idle = memory.read_u64(GuestVirtAddr{rq + rq_idle});
        current[static_cast<std::size_t>(cpu)] = memory.read_u64(GuestVirtAddr{rq + rq_curr});
        if (idle == 0) continue;  // CPU never brought up
        if (known.insert(idle).second) tasks.push_back(read_task(kernel, idle));
    }

    std::uint64_t init_task = kernel.symbol("init_task");
    std::vector<std::uint64_t> leaders = walk_list(memory, init_task + layouts.task.tasks.offset,
                                                   layouts.task.tasks.offset, options.max_tasks, "init_task.tasks");
    for (std::uint64_t leader : leaders) {
        std::uint64_t signal = memory.read_u64(GuestVirtAddr{leader + layouts.task.signal.offset});
        std::vector<std::uint64_t> threads;
        if (signal == 0) {
            threads.push_back(leader);  // a dead task whose signal_struct is gone
        } else {
            threads = walk_list(memory, signal + layouts.signal.thread_head.offset, layouts.task.thread_node.offset,
                                options.max_tasks, [leader] { return "thread group of task " + hex(leader); });
            if (threads.empty()) threads.push_back(leader);
        }
        for (std::uint64_t thread : threads) {
            if (tasks.size() >= options.max_tasks)
                throw Error(ErrorKind::Guest, "more than " + std::to_string(options.max_tasks) + " tasks");
            if (known.insert(thread).second) tasks.push_back(read_task(kernel, thread));
        }
    }
    for (auto& task : tasks)
        for (int cpu = 0; cpu < cpus; ++cpu)
            if (current[static_cast<std::size_t>(cpu)] == task.address) task.running_on = cpu;
    return tasks;
}

}  // namespace hvpatch
