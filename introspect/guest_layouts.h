// Every structure offset hvpatch's introspection needs, looked up by name in
// the guest kernel's own BTF (nothing hard-coded). Built once per guest.
//
// Member names follow Linux 6.1 (include/linux/sched.h, module.h,
// livepatch.h, arch/x86/include/asm/{ptrace,switch_to,thread_info}.h), with
// the known renames of neighbouring versions accepted as alternatives; the
// `path` of each field says which one the guest has.
//
// Required fields throw Error(Guest) naming the first one missing. Optional
// fields (std::optional) depend on a config option or a kernel version and
// say so in their comment; consumers that need one report its absence.
//
// What BTF cannot give (they are #defines, not types): THREAD_SIZE,
// TIF_PATCH_PENDING, PF_* flags, KLP_UNDEFINED/KLP_UNPATCHED/KLP_PATCHED
// (patch_state values), TASK_* state bits other than enumerators.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "introspect/kernel_btf.h"

namespace hvpatch {

class VirtualMemory;

// One member of a guest struct.
struct LayoutField {
    std::uint64_t offset = 0;  // bytes from the start of its struct
    std::uint64_t size = 0;    // bytes (never a bitfield)
    std::string_view path;     // the member path that matched, e.g. "__state" or "state"
};

struct GuestLayouts {
    struct Task {  // struct task_struct
        std::uint64_t size = 0;
        LayoutField thread_info;        // first member (CONFIG_THREAD_INFO_IN_TASK, always on x86-64)
        LayoutField thread_info_flags;  // thread_info.flags (TIF_* bits)
        LayoutField state;              // __state (5.14+, unsigned int) or state (long)
        LayoutField stack;              // void *stack: base of the kernel stack (THREAD_SIZE bytes)
        LayoutField flags;              // PF_* bits
        LayoutField tasks;              // list_head on init_task.tasks
        LayoutField mm, active_mm;      // struct mm_struct *
        LayoutField exit_state;
        LayoutField pid, tgid;          // pid_t
        LayoutField real_parent, group_leader;  // struct task_struct *
        LayoutField thread_node;        // list_head on signal->thread_head (3.14+)
        LayoutField comm;               // char[TASK_COMM_LEN]: size is the length
        LayoutField signal;             // struct signal_struct *
        LayoutField thread_sp;          // thread.sp: saved RSP of a task not running
        std::optional<LayoutField> on_cpu;        // CONFIG_SMP
        std::optional<LayoutField> cpu;           // CONFIG_SMP: thread_info.cpu (5.16+) or cpu
        std::optional<LayoutField> thread_group;  // list_head of the thread group; gone in 6.7
        std::optional<LayoutField> patch_state;   // CONFIG_LIVEPATCH: KLP_UNDEFINED/UNPATCHED/PATCHED
    } task;

    struct InactiveTaskFrame {  // struct inactive_task_frame, at thread.sp of a switched-out task
        std::uint64_t size = 0;
        LayoutField bp, ret_addr;
    } frame;

    struct PtRegs {  // struct pt_regs (top of the kernel stack on entry)
        std::uint64_t size = 0;
        LayoutField r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
        LayoutField orig_ax, ip, cs, flags, sp, ss;  // cs/ss are 2 bytes with FRED (6.9+)
    } regs;

    struct ListHead {  // struct list_head
        std::uint64_t size = 0;
        LayoutField next, prev;
    } list_head;

    struct SignalStruct {  // struct signal_struct
        std::uint64_t size = 0;
        LayoutField thread_head;  // list of task_struct.thread_node
    } signal;

    struct MmStruct {  // struct mm_struct
        std::uint64_t size = 0;
        LayoutField pgd;  // pgd_t *: kernel-virtual address of the top-level page table
    } mm;

    // One of a module's memory regions. Up to 6.3: module_layout
    // (core_layout/init_layout), base..base+size is the whole region and
    // text_size its text part. 6.4+: mem[MOD_TEXT] / mem[MOD_INIT_TEXT],
    // the text only (data and rodata are separate regions, not described).
    struct ModuleRegion {
        LayoutField base;       // void *
        LayoutField size;       // unsigned int
        LayoutField text_size;  // unsigned int
    };
    struct ModuleOrc {  // module.arch, CONFIG_UNWINDER_ORC
        LayoutField num_orcs;       // unsigned int
        LayoutField orc_unwind_ip;  // int *
        LayoutField orc_unwind;     // struct orc_entry *
    };
    struct Module {  // struct module
        std::uint64_t size = 0;
        LayoutField state;  // enum module_state
        LayoutField list;   // list_head on `modules`
        LayoutField name;   // char[MODULE_NAME_LEN]
        ModuleRegion core, init;
        LayoutField kallsyms;       // struct mod_kallsyms * (RCU: core_kallsyms once init is freed)
        LayoutField core_kallsyms;  // struct mod_kallsyms
        std::optional<ModuleOrc> orc;       // CONFIG_UNWINDER_ORC
        std::optional<LayoutField> klp;     // CONFIG_LIVEPATCH: bool, module is a livepatch
        std::int64_t state_live = 0, state_coming = 0, state_going = 0, state_unformed = 0;  // enum module_state
    } module;

    struct ModKallsyms {  // struct mod_kallsyms
        std::uint64_t size = 0;
        LayoutField symtab;      // Elf64_Sym *
        LayoutField num_symtab;  // unsigned int
        LayoutField strtab;      // char *
        std::optional<LayoutField> typetab;  // char * (5.2+; before, the type was in st_info)
    } mod_kallsyms;

    // CONFIG_LIVEPATCH (include/linux/livepatch.h).
    struct Livepatch {
        struct Patch {  // struct klp_patch
            std::uint64_t size = 0;
            LayoutField mod, objs, states, replace, list, kobj, obj_list, enabled, forced;
        } patch;
        struct Object {  // struct klp_object
            std::uint64_t size = 0;
            LayoutField name, funcs, callbacks, kobj, func_list, node, mod, dynamic, patched;
        } object;
        struct Func {  // struct klp_func
            std::uint64_t size = 0;
            LayoutField old_name, new_func, old_sympos, old_func, kobj, node, stack_node, old_size, new_size, nop,
                patched, transition;
        } func;
        struct State {  // struct klp_state (5.5+): klp_patch.states[], ended by id 0
            std::uint64_t size = 0;
            LayoutField id, version, data;
        } state;
    };
    std::optional<Livepatch> livepatch;

    // Looks every field up. Throws Error(Guest) naming the first required
    // one missing ("guest BTF: struct task_struct has no member 'tgid'"),
    // one that is a bitfield, or one lying outside its struct.
    static GuestLayouts from_btf(const KernelBtf& btf);

    // Every struct size, offset and enumerator, one per line, optional ones
    // marked; for `inspect` and debugging.
    std::string describe() const;
};

// Reads the 1-, 2-, 4- or 8-byte field `field` of the structure at `base`,
// zero-extended. Throws Error(Guest) for another size (naming the field) or
// an unreadable address.
std::uint64_t read_layout_field(VirtualMemory& memory, std::uint64_t base, const LayoutField& field);

}  // namespace hvpatch
