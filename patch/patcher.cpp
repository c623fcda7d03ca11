#include "patch/patcher.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>

#include "guest-shim/prev_state.h"
#include "guest-shim/trampoline.h"
#include "hvpatch/error.h"
#include "introspect/branch_mitigations.h"
#include "introspect/code_inspect.h"
#include "introspect/guest_kernel.h"
#include "introspect/kernel_code_facts.h"
#include "introspect/modules.h"
#include "introspect/task_stacks.h"
#include "introspect/tasks.h"
#include "patch/audit_log.h"
#include "patch/audit_syslog.h"
#include "patch/guest_call.h"
#include "patch/guest_livepatch.h"
#include "patch/kernel_write.h"
#include "patch/livepatch_module.h"
#include "patch/module_image.h"
#include "patch/operation_lock.h"
#include "patch/posix_file.h"
#include "patch/supported_kernels.h"
#include "patch/system_states.h"
#include "patch/transition_plan.h"
#include "patch/vm_state_store.h"
#include "vmm/interrupt.h"

namespace hvpatch {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
constexpr std::uint64_t kPage = 4096;
// The patch's buffer for hvpatch's lines in the guest's kernel log.
constexpr std::uint64_t kGuestLogBufferSize = 256;

std::vector<std::uint8_t> to_vector(std::span<const std::byte> bytes) {
    std::vector<std::uint8_t> out(bytes.size());
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
}

std::span<const std::byte> as_span(const std::vector<std::uint8_t>& bytes) {
    return std::as_bytes(std::span(bytes));
}

json blockers_json(const std::vector<TransitionBlocker>& blockers) {
    json out = json::array();
    for (const auto& b : blockers)
        out.push_back({{"pid", b.pid}, {"comm", b.comm}, {"reason", b.reason}, {"frames", b.frames}});
    return out;
}

json function_json(const RedirectedFunction& f) {
    return {{"object", f.object},
            {"name", f.name},
            {"sympos", f.sympos},
            {"address", hex(f.entry)},
            {"site", hex(f.site)},
            {"new_function", f.new_symbol},
            {"new_address", hex(f.new_address)},
            {"trampoline", hex(f.trampoline)},
            {"bytes_before", bytes_to_hex(f.original)},
            {"bytes_after", bytes_to_hex(f.to_new)}};
}

double ms(std::chrono::nanoseconds d) { return std::chrono::duration<double, std::milli>(d).count(); }
std::int64_t us(std::chrono::nanoseconds d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

}  // namespace

std::string guest_boot_id(GuestKernel& kernel) {
    std::string seed = std::to_string(kernel.info().kaslr_offset) + "\n" + kernel.info().banner + "\n";
    if (auto canary = kernel.btf().find_member("task_struct", "stack_canary")) {
        std::uint64_t value = kernel.memory().read_u64(GuestVirtAddr{kernel.symbol("init_task") + canary->offset});
        seed += hex(value);
    }
    return sha256_hex(std::as_bytes(std::span(seed))).substr(0, 32);
}

std::vector<ForeignCode> applied_patch_code(Machine& machine, GuestKernel& kernel, const std::string& state_dir) {
    const std::string key = machine.identity().key();
    auto state = open_vm_state_store(machine, state_dir, key)->load();
    if (!state || !is_current_record(*state, key, guest_boot_id(kernel))) return {};
    return foreign_code_of(*state);
}

bool is_current_record(const VmState& state, const std::string& vm_key, const std::string& boot_id) {
    return state.boot_id == boot_id && state.vm_key == vm_key;
}

// Everything one operation holds: the lock, the guest kernel, the state.
struct Patcher::Session {
    Machine& machine;
    PatchOptions& options;
    MachineIdentity id;
    std::string state_dir;
    std::unique_ptr<VmStateStore> store;
    std::unique_ptr<OperationLock> lock;
    std::unique_ptr<GuestKernel> kernel;
    std::unique_ptr<GuestLivepatch> livepatch;
    std::unique_ptr<GuestCaller> caller;
    std::string boot_id;
    VmState state;
    std::optional<VmState> stale;  // a record from an earlier boot
    // Consistent-view steps; what the guest saw of them, and of everything
    // else that stopped it, is the machine's StopStats.
    int freezes = 0;
    bool frozen = false;
    bool was_running = false;  // the run state the VM is left in at the end
    // The lock description of an earlier operation that never finished
    // (operation_lock.h), "" if the last one did.
    std::string unfinished;

    Session(Machine& m, PatchOptions& o, std::string_view operation, bool take_lock) : machine(m), options(o) {
        id = machine.identity();
        machine.reset_stop_stats();
        state_dir = options.state_dir.empty() ? default_state_dir() : options.state_dir;
        make_private_directories(state_dir);
        was_running = machine.run_state() == RunState::Running;
        if (take_lock) {
            lock = std::make_unique<OperationLock>(OperationLock::acquire(default_lock_dir(), id.key(), operation));
            take_over_unfinished(operation);
        } else {
            unfinished = unfinished_operation(default_lock_dir(), id.key());
        }
        freeze();
        kernel = GuestKernel::open(machine);
        boot_id = guest_boot_id(*kernel);
        // What follows reads only kernel text and static data until a step
        // freezes again for a consistent view: keep the pause short.
        if (was_running) thaw();
        store = open_vm_state_store(machine, state_dir, id.key());
        auto loaded = store->load();
        if (loaded && !is_current_record(*loaded, id.key(), boot_id)) {
            stale = std::move(loaded);
            loaded.reset();
        }
        if (loaded) {
            state = std::move(*loaded);
        } else {
            state.vm_key = id.key();
            state.vm_uuid = id.uuid;
            state.vm_name = id.name;
            state.target = id.target;
            state.boot_id = boot_id;
            state.kernel_release = kernel->info().release;
        }
    }

    ~Session() {
        // On errors too: the VM goes back to the run state it was found in.
        IgnoreInterrupts ignore;
        try {
            if (was_running) thaw();
            else freeze();
        } catch (...) {
        }
    }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    void say(const std::string& text) const {
        if (options.log) options.log(text);
    }
    void stage(OperationStage name) const {
        if (options.stage) options.stage(name);
    }

    // An hvpatch killed mid-operation leaves its lock description behind
    // and, if it had the guest paused at that moment, the guest paused with
    // nobody left to resume it. Its description says whether it had found
    // the VM running: then this operation leaves the VM running. Ours says
    // the same for whoever comes after us.
    void take_over_unfinished(std::string_view operation) {
        unfinished = lock->previous_holder();
        if (!unfinished.empty()) {
            say("the last operation on this VM, " + describe_unfinished_operation(unfinished) + "; this " +
                std::string(operation) + " takes over");
            json previous = json::parse(unfinished, nullptr, /*allow_exceptions=*/false);
            bool it_found_running = previous.is_object() && previous.contains("vm_running") &&
                                    previous["vm_running"].is_boolean() && previous["vm_running"].get<bool>();
            if (!was_running && it_found_running) {
                say("the VM is paused as that hvpatch left it (it had found the VM running): it runs again when this " +
                    std::string(operation) + " ends");
                was_running = true;
                machine.set_run_state_on_close(RunState::Running);
            }
        }
        lock->describe("vm_running", was_running);
    }

    void freeze() {
        if (frozen) return;
        machine.pause();
        frozen = true;
        ++freezes;
        if (kernel) kernel->memory().clear_cache();
    }
    // Guest calls and transitions need the guest to run, also one an
    // operator had paused: it is paused again when the session ends.
    void thaw() {
        if (!frozen) return;
        frozen = false;
        machine.resume();
    }
    // A guest call runs the guest; the caller leaves it paused again.
    GuestCaller& call() {
        freeze();
        if (!caller) caller = std::make_unique<GuestCaller>(*kernel);
        return *caller;
    }
    // The caller leaves the guest paused again after its call(s).
    void after_call() {
        // The call ran the guest: what was read before is stale.
        kernel->memory().clear_cache();
        ++freezes;
        // The caller leaves the guest paused; every step that needs a
        // consistent view freezes again itself.
        if (was_running) thaw();
    }
    GuestLivepatch& klp() {
        if (!livepatch) livepatch = std::make_unique<GuestLivepatch>(*kernel);
        return *livepatch;
    }
    void save(AppliedPatch& patch) {
        patch.updated_at = utc_now_iso8601();
        store->save(state);
    }
    void forget(const std::string& name) {
        std::erase_if(state.patches, [&](const AppliedPatch& p) { return p.name == name; });
        store->save(state);
    }
    std::vector<std::uint8_t> read_guest(std::uint64_t address, std::size_t size) {
        return to_vector(kernel->memory().read_bytes(GuestVirtAddr{address}, size));
    }
    void write_guest(std::uint64_t address, const std::vector<std::uint8_t>& bytes) {
        write_kernel_memory(*kernel, address, as_span(bytes));
    }

    json audit_base(const std::string& operation) const {
        json record = {{"operation", operation},
                       {"vm", {{"key", id.key()}, {"uuid", id.uuid}, {"name", id.name}, {"target", id.target}}},
                       {"kernel", {{"release", kernel ? kernel->info().release : ""}, {"boot_id", boot_id}}},
                       {"state_location", store->location()},
                       // How guest memory was read: an auditor can tell a
                       // ptrace-based read of the QEMU process from the others.
                       {"memory_path", memory_path_name(machine.memory_access().path)}};
        if (!id.connection.empty()) record["vm"]["connection"] = id.connection;
        if (lock && !unfinished.empty()) record["took_over"] = describe_unfinished_operation(unfinished);
        return record;
    }
    void audit(json record) {
        // Integers only: the audit chain hashes a canonical text, which floats would make fragile.
        StopStats stops = machine.stop_stats();
        record["pauses"] = {{"freezes", freezes},
                            {"stops", stops.stops},
                            {"total_us", us(stops.total)},
                            {"max_us", us(stops.longest)}};
        std::string path = options.audit_log.empty() ? default_audit_log_path() : options.audit_log;
        json stored = AuditLog(path).append(std::move(record));
        if (options.audit_syslog) send_audit_to_syslog(stored, path);
    }
};

namespace {

// Resolves a klp_func's old function in the guest and looks at its entry.
FunctionPlan plan_function(GuestKernel& kernel, const PatchedFunction& pf, const VmState& state) {
    FunctionPlan plan;
    RedirectedFunction& f = plan.function;
    f.object = pf.object.empty() ? "vmlinux" : pf.object;
    f.name = pf.old_name;
    f.sympos = pf.old_sympos;
    f.new_symbol = pf.new_func;
    std::vector<KernelSymbol> candidates;
    if (f.object == "vmlinux") {
        candidates = kernel.symbols().find_all(f.name);
    } else {
        auto modules = list_modules(kernel);
        auto it = std::find_if(modules.begin(), modules.end(), [&](const GuestModule& m) { return m.name == f.object; });
        if (it == modules.end()) {
            plan.refusal = "object " + f.object + " is not loaded in the guest (hvpatch patches loaded objects only)";
            return plan;
        }
        for (auto& sym : module_symbols(kernel, *it))
            if (sym.name == f.name && (sym.type == 't' || sym.type == 'T')) candidates.push_back(sym);
        std::sort(candidates.begin(), candidates.end(),
                  [](const KernelSymbol& a, const KernelSymbol& b) { return a.address < b.address; });
    }
    std::erase_if(candidates, [](const KernelSymbol& s) { return s.type != 't' && s.type != 'T'; });
    if (candidates.empty()) {
        plan.refusal = "function " + f.name + " not found in " + f.object + " of the guest";
        return plan;
    }
    if (f.sympos == 0 && candidates.size() > 1) {
        plan.refusal = "function " + f.name + " is ambiguous in " + f.object + " (" +
                       std::to_string(candidates.size()) + " matches) and the patch gives no old_sympos";
        return plan;
    }
    if (f.sympos > candidates.size()) {
        plan.refusal = "function " + f.name + " has no position " + std::to_string(f.sympos) + " in " + f.object +
                       " (" + std::to_string(candidates.size()) + " matches)";
        return plan;
    }
    f.entry = candidates[f.sympos == 0 ? 0 : f.sympos - 1].address.value;
    if (f.object == "vmlinux") {
        if (auto resolved = kernel.symbols().resolve(GuestVirtAddr{f.entry})) f.size = resolved->size;
    } else {
        auto modules = ModuleSymbolResolver::for_kernel(kernel);
        if (auto resolved = modules.resolve(f.entry)) f.size = resolved->size;
    }
    if (f.size == 0) f.size = 1;
    // A function an hvpatch patch redirects already: the new patch stacks
    // on it (the core's func_stack), with the original bytes on record.
    for (const auto& p : state.patches) {
        if (!is_live(p)) continue;
        for (const auto& existing : p.functions) {
            if (existing.entry != f.entry) continue;
            f.size = existing.size;
            f.site = existing.site;
            f.original = existing.original;
            auto stack = function_stack(state, f.site);
            plan.entry_kind = "redirected by hvpatch patch " + stack.back().patch->name + " (stacks on it)";
            return plan;
        }
    }
    auto head = kernel.memory().read_bytes(GuestVirtAddr{f.entry}, 16);
    const FtraceNop nop = derive_ftrace_nop(kernel);
    EntryKind kind = classify_entry(head, f.entry, nop);
    plan.entry_kind = kind.description;
    if (!kind.ftrace_nop()) {
        plan.refusal = "entry of " + f.name + " at " + hex(f.entry) + " is not the ftrace NOP: " + kind.description;
        return plan;
    }
    f.site = kind.patch_site;
    f.original = to_vector(std::span(head).subspan(f.site - f.entry, 5));
    return plan;
}

// The structure sizes alone: what check_link_formats() needs, without
// listing the guest's modules.
GuestLinkFacts link_format_facts(GuestKernel& kernel) {
    GuestLinkFacts facts;
    const KernelBtf& btf = kernel.btf();
    // A known form only if every member is where the linker reads it.
    auto at = [&](const char* type, const char* member, std::uint64_t offset, std::uint64_t size) {
        auto m = btf.find_member(type, member);
        return m && m->offset == offset && m->size == size && m->bit_size == 0;
    };
    facts.alt_instr_size = 0;
    if (btf.has_type("alt_instr")) {
        const std::uint64_t size = btf.size_of("alt_instr");
        const bool common = at("alt_instr", "instr_offset", 0, 4) && at("alt_instr", "repl_offset", 4, 4);
        if (size == 12 && common && at("alt_instr", "cpuid", 8, 2) && at("alt_instr", "instrlen", 10, 1) &&
            at("alt_instr", "replacementlen", 11, 1))
            facts.alt_instr_size = 12;
        if (size == 14 && common && at("alt_instr", "ft_flags", 8, 4) && at("alt_instr", "instrlen", 12, 1) &&
            at("alt_instr", "replacementlen", 13, 1))
            facts.alt_instr_size = 14;
    }
    facts.bug_entry = {};
    facts.bug_entry.size = 0;
    if (btf.has_type("bug_entry")) {
        auto member = [&](const char* name) { return btf.find_member("bug_entry", name); };
        auto addr = member("bug_addr_disp"), flags = member("flags"), file = member("file_disp"),
             line = member("line"), format = member("format_disp");
        const std::uint64_t size = btf.size_of("bug_entry");
        if (addr && addr->size == 4 && flags && flags->size == 2 && (!file || file->size == 4) &&
            (!line || line->size == 2) && (!format || format->size == 4) && size <= 32) {
            facts.bug_entry.size = size;
            facts.bug_entry.bug_addr = addr->offset;
            facts.bug_entry.flags = flags->offset;
            facts.bug_entry.file = file ? std::optional(file->offset) : std::nullopt;
            facts.bug_entry.line = line ? std::optional(line->offset) : std::nullopt;
            facts.bug_entry.has_format = format.has_value();
        }
    }
    facts.warn_trap_with_entry = kernel.find_symbol("__WARN_trap").has_value();
    return facts;
}

GuestLinkFacts link_facts(GuestKernel& kernel) {
    GuestLinkFacts facts = link_format_facts(kernel);
    auto modules = std::make_shared<std::vector<GuestModule>>(list_modules(kernel));
    facts.resolve = [&kernel, modules](const std::string& object, const std::string& name,
                                       std::uint64_t sympos) -> std::optional<std::uint64_t> {
        if (object.empty() || object == "vmlinux") {
            auto all = kernel.symbols().find_all(name);
            if (object.empty()) {
                // An ordinary undefined symbol: the unique one, or the one
                // global among several (the exported kind).
                if (all.size() == 1) return all[0].address.value;
                std::optional<std::uint64_t> global;
                for (const auto& s : all)
                    if (std::isupper(static_cast<unsigned char>(s.type))) {
                        if (global) return std::nullopt;
                        global = s.address.value;
                    }
                if (global || !object.empty()) return global;
                for (const auto& m : *modules)
                    for (const auto& s : module_symbols(kernel, m))
                        if (s.name == name && std::isupper(static_cast<unsigned char>(s.type))) return s.address.value;
                return std::nullopt;
            }
            if (sympos == 0) return all.size() == 1 ? std::optional(all[0].address.value) : std::nullopt;
            if (sympos > all.size()) return std::nullopt;
            return all[sympos - 1].address.value;
        }
        for (const auto& m : *modules) {
            if (m.name != object) continue;
            std::vector<std::uint64_t> found;
            for (const auto& s : module_symbols(kernel, m))
                if (s.name == name) found.push_back(s.address.value);
            std::sort(found.begin(), found.end());
            if (sympos == 0) return found.size() == 1 ? std::optional(found[0]) : std::nullopt;
            if (sympos > found.size()) return std::nullopt;
            return found[sympos - 1];
        }
        return std::nullopt;
    };
    facts.cpu_capabilities = cpu_capability_words(kernel);
    facts.mitigations = derive_branch_mitigations(kernel, facts.cpu_capabilities);
    facts.orc_header = guest_orc_header(kernel);
    facts.read_u32 = [&kernel](std::uint64_t address) -> std::optional<std::uint32_t> {
        try {
            return kernel.memory().read_u32(GuestVirtAddr{address});
        } catch (const Error&) {
            return std::nullopt;
        }
    };
    facts.object_loaded = [modules](const std::string& object) {
        if (object == "vmlinux") return true;
        return std::any_of(modules->begin(), modules->end(), [&](const GuestModule& m) { return m.name == object; });
    };
    return facts;
}

// klp_patch.replace over the guest's own livepatches: the core would take
// them over too; hvpatch replaces only its own. Empty: nothing to refuse.
std::string replace_refusal(GuestKernel& kernel, const LivepatchModule& module) {
    const auto& L = *kernel.layouts().livepatch;
    if (!module.replaces(L)) return "";
    if (auto head = kernel.find_symbol("klp_patches")) {
        const std::uint64_t next = kernel.memory().read_u64(GuestVirtAddr{*head});
        if (next != *head)
            return "klp_patch.replace is set (a cumulative patch): the guest's own livepatch core has patches loaded, "
                   "which it would replace; hvpatch replaces only its own patches";
    }
    return "";
}

// A patch of the record left mid-transition (killed): nothing else may
// start a transition until it is finished or reverted. Empty: none.
std::string unfinished_transition(const VmState& state, const std::string& except) {
    for (const auto& p : state.patches)
        if (p.name != except && (p.phase == PatchPhase::Patching || p.phase == PatchPhase::Unpatching))
            return "patch " + p.name + " on this VM is mid-transition (" + to_string(p.phase) +
                   "): finish it first with `hvpatch apply --resume` or `hvpatch revert " + p.name + "`";
    return "";
}

}  // namespace

Patcher::Patcher(Machine& machine, PatchOptions options) : machine_(machine), options_(std::move(options)) {}
Patcher::~Patcher() = default;

namespace {

constexpr int kTaskInterruptible = 1;  // TASK_INTERRUPTIBLE

// The last resort of a transition, as klp_send_signals() does it: a fake
// signal (TIF_NOTIFY_SIGNAL + wake-up) for user tasks, a wake-up for
// kthreads. The woken task returns through the kernel exit, where
// klp_update_patch_state() switches it; an interrupted syscall restarts.
void wake_blockers(Patcher::Session& s, const std::vector<TransitionBlocker>& blockers);

}  // namespace

// Runs TransitionPlans (transition_plan.h): redirect the moving sites to
// their trampolines, passes until every task switched, settle the sites.
// apply, revert, replace and their rollbacks are plans for it.
struct TransitionEngine {
    explicit TransitionEngine(Patcher::Session& session) : s(session) {}
    Patcher::Session& s;
    int passes = 0;
    std::vector<TransitionBlocker> first_blockers;
    std::chrono::nanoseconds time{0};

    // In a freeze: every moving site must hold its rest bytes from before
    // (or after: an interrupted run reversed) or already the trampoline jump
    // (an interrupted run resumed); all are checked before anything is
    // written. The trampolines get the plan's targets (rewritten only where
    // they differ: the same blob serves both directions), then the sites
    // jump to them. A write that fails puts back what this call wrote.
    void check_sites(const TransitionPlan& plan) {
        s.freeze();
        for (const auto& m : plan.moves) {
            auto now = s.read_guest(m.site, 5);
            if (now != m.rest_before && now != m.via && now != m.rest_after)
                throw Error(ErrorKind::Guest, "entry of " + m.function + " at " + hex(m.site) + " holds " +
                                                  bytes_to_hex(now) + ", expected " + bytes_to_hex(m.rest_before) +
                                                  ": something else changed it; hvpatch stops here");
        }
    }
    // The caller records the phase between check_sites() and redirect(),
    // in the same freeze: the record is written ahead of the guest.
    void redirect(const TransitionPlan& plan) {
        check_sites(plan);
        GuestLivepatch& klp = s.klp();
        std::vector<std::pair<std::uint64_t, std::vector<std::uint8_t>>> written;
        try {
            for (const auto& m : plan.moves) {
                const std::vector<std::byte> built = shim::build_trampoline(
                    {m.trampoline, klp.current_task_offset(), klp.patch_state_offset(), m.unpatched_target,
                     m.patched_target});
                auto blob = to_vector(built);
                auto before = s.read_guest(m.trampoline, blob.size());
                if (before == blob) continue;
                s.write_guest(m.trampoline, blob);
                written.emplace_back(m.trampoline, std::move(before));
            }
            for (const auto& m : plan.moves) {
                auto before = s.read_guest(m.site, 5);
                if (before == m.via) continue;
                s.write_guest(m.site, m.via);
                written.emplace_back(m.site, std::move(before));
            }
        } catch (...) {
            IgnoreInterrupts ignore;
            for (auto it = written.rbegin(); it != written.rend(); ++it) {
                try {
                    s.write_guest(it->first, it->second);
                } catch (...) {
                }
            }
            throw;
        }
    }

    // Passes towards the plan's target until every task switched or
    // `deadline`. Frozen on entry and on return.
    TransitionPass converge(const TransitionPlan& plan, Clock::time_point deadline) {
        const char* direction = plan.target == kKlpPatched ? "patching" : "unpatching";
        const auto start = Clock::now();
        bool signalled = false;
        for (;;) {
            throw_if_interrupted(std::string("the ") + direction + " transition (state kept: see hvpatch status)");
            s.freeze();
            TransitionPass pass = run_transition_pass(*s.kernel, s.klp(), plan.target, plan.checked, PassMode::Switch,
                                                      foreign_code_of(s.state));
            if (++passes == 1) first_blockers = pass.blockers;
            if (s.options.progress) {
                TransitionProgress p{direction, passes, pass.tasks, pass.remaining, pass.blockers,
                                     std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start)};
                s.options.progress(p);
            }
            if (pass.complete() || Clock::now() >= deadline) {
                time += Clock::now() - start;
                return pass;
            }
            if (!signalled && Clock::now() - start >= s.options.signal_after) {
                s.say("waking " + std::to_string(pass.blockers.size()) + " blocking task(s) as klp_send_signals does");
                wake_blockers(s, pass.blockers);
                signalled = true;
            }
            s.thaw();
            std::this_thread::sleep_for(s.options.pass_interval);
        }
    }

    // --force: every remaining task switched, loudly. Frozen.
    TransitionPass force(const TransitionPlan& plan) {
        s.freeze();
        return run_transition_pass(*s.kernel, s.klp(), plan.target, plan.checked, PassMode::Force,
                                   foreign_code_of(s.state));
    }

    // In one freeze, after the transition completed: the sites from the
    // trampoline jumps to their rest bytes (checked first, all of them),
    // every task's patch_state back to KLP_UNDEFINED, as
    // klp_complete_transition() orders it.
    void settle(const TransitionPlan& plan) {
        s.freeze();
        for (const auto& m : plan.moves) {
            auto now = s.read_guest(m.site, 5);
            if (now != m.via && now != m.rest_after)
                throw Error(ErrorKind::Guest, "entry of " + m.function + " at " + hex(m.site) + " holds " +
                                                  bytes_to_hex(now) + ", expected the jump to hvpatch's trampoline (" +
                                                  bytes_to_hex(m.via) + "): something else changed it; hvpatch stops here");
        }
        for (const auto& m : plan.moves) s.write_guest(m.site, m.rest_after);
        clear_transition_state(*s.kernel, s.klp());
    }
};

namespace {

void wake_blockers(Patcher::Session& s, const std::vector<TransitionBlocker>& blockers) {
    const auto& flags_field = s.kernel->layouts().task.thread_info_flags;
    for (const auto& b : blockers) {
        s.freeze();
        if (!b.kthread) {
            std::uint64_t address = b.task + flags_field.offset;
            std::uint64_t flags = s.kernel->memory().read_u64(GuestVirtAddr{address});
            write_kernel_value(*s.kernel, address, flags | (std::uint64_t{1} << s.klp().tif_notify_signal()));
        }
        s.call().call("wake_up_state", {b.task, static_cast<std::uint64_t>(kTaskInterruptible)});
        s.after_call();
    }
}

std::string describe_blockers(const std::vector<TransitionBlocker>& blockers) {
    std::string text;
    std::size_t shown = 0;
    for (const auto& b : blockers) {
        if (shown++ == 8) {
            text += "; and " + std::to_string(blockers.size() - 8) + " more";
            break;
        }
        if (!text.empty()) text += "; ";
        text += "pid " + std::to_string(b.pid) + " (" + b.comm + ") " + b.reason;
    }
    return text;
}

// Frees the guest memory of a patch no task can be in any more, and forgets it.
void free_patch(Patcher::Session& s, AppliedPatch& patch) {
    if (patch.phase != PatchPhase::Loading) {
        patch.phase = PatchPhase::Freeing;
        s.save(patch);
    }
    if (patch.base) {
        s.call().unprotect_and_free_module(patch.base, static_cast<int>(patch.text_size / kPage),
                                           static_cast<int>(patch.rodata_size / kPage), patch.text_protected);
        s.after_call();
    }
    s.forget(patch.name);
}

enum class Callback { PrePatch = 0, PostPatch = 1, PreUnpatch = 2, PostUnpatch = 3 };

// A line in the guest's kernel log ("hvpatch: TEXT", KERN_INFO), so that
// the guest can tell what was done to it from the host: the text goes into
// the patch's log buffer and the guest's printk prints it (a guest call).
// Best effort: a failure is reported, not fatal.
void guest_log(Patcher::Session& s, const AppliedPatch& patch, const std::string& text) {
    if (!patch.log_buffer) return;
    try {
        std::string line = "\x01" "6hvpatch: ";
        for (char c : text) {
            if (c == '%') line += "%%";
            else if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) line += c;
        }
        line += '\n';
        if (line.size() >= kGuestLogBufferSize) line = line.substr(0, kGuestLogBufferSize - 2) + "\n";
        std::vector<std::uint8_t> bytes(line.begin(), line.end());
        bytes.push_back(0);
        s.freeze();
        s.write_guest(patch.log_buffer, bytes);
        const char* printk = s.kernel->find_symbol("_printk") ? "_printk" : "printk";
        s.call().call(printk, {patch.log_buffer});
        s.after_call();
    } catch (const Error& e) {
        s.say(std::string("warning: could not write to the guest's kernel log: ") + e.what());
    }
}

// Runs one callback of every object of `patch` whose module is loaded, in
// array order, in the guest (guest calls at a safe point), with the
// core's bookkeeping (kernel/livepatch/core.h): pre_patch decides
// post_unpatch_enabled and stops at the first object whose callback fails;
// post_unpatch runs only where it is enabled and disables it. Returns 0,
// or a failing pre_patch's return value with `failed` naming the object.
int run_callbacks(Patcher::Session& s, AppliedPatch& patch, Callback which, std::string* failed = nullptr) {
    const auto index = static_cast<std::size_t>(which);
    if (patch.prev_state && std::ranges::any_of(patch.objects, [&](const AppliedPatch::Object& o) {
            return o.loaded && o.callbacks[index];
        })) {
        auto table = to_vector(shim::prev_state_table(previous_states(s.state, patch)));
        s.freeze();
        s.write_guest(patch.prev_state + shim::prev_state_table_offset(), table);
    }
    for (auto& object : patch.objects) {
        if (!object.loaded) continue;
        if (which == Callback::PostUnpatch && !object.post_unpatch_enabled) continue;
        const std::string label = std::string(kKlpCallbackNames[index]) + " callback of klp_object '" +
                                  (object.name.empty() ? "vmlinux" : object.name) + "'";
        int result = 0;
        if (const std::uint64_t callback = object.callbacks[index]) {
            s.say("running the " + label);
            const std::uint64_t args[] = {object.address};
            const std::uint64_t rax = s.call().call(callback, args, label);
            s.after_call();
            result = static_cast<std::int32_t>(rax & 0xffffffff);
        }
        if (which == Callback::PrePatch) {
            object.post_unpatch_enabled = result == 0;
            s.save(patch);
            if (result != 0) {
                if (failed) *failed = label;
                return result;
            }
        } else if (which == Callback::PostUnpatch) {
            object.post_unpatch_enabled = false;
            s.save(patch);
        }
    }
    return 0;
}

void run_before_finish(Patcher::Session& s) {
    if (!s.options.before_finish) return;
    s.thaw();
    s.options.before_finish();
    s.freeze();
}

// Where the klp_get_prev_state copy at `stub` returns through: the guest's
// return thunk, as the loader patches the module's own returns
// (module_image.cpp, .return_sites), or 0 for a plain ret.
std::uint64_t return_thunk_for(GuestKernel& kernel, const GuestLinkFacts& facts, std::uint64_t stub) {
    if (!facts.mitigations.rethunk) return 0;
    std::uint64_t thunk = 0;
    if (auto pointer = kernel.find_symbol("x86_return_thunk"))
        thunk = kernel.memory().read_u64(GuestVirtAddr{*pointer});
    else
        thunk = kernel.symbol("__x86_return_thunk");
    const std::uint64_t jmp_at = stub + shim::prev_state_ret_jump_offset();
    return uses_return_thunk(true, thunk, kernel.find_symbol("its_return_thunk"), jmp_at) ? thunk : 0;
}

std::string pending_callbacks_warning(const std::string& object) {
    return "klp_object '" + object + "' has callbacks but module " + object +
           " is not loaded: the guest's livepatch core would run them when it loads; hvpatch does not follow "
           "module loads, so they will not run";
}

// " (ENODEV)" for a negative errno value the name of which is known.
std::string errno_name(int value) {
    switch (-value) {
        case 1: return " (EPERM)";
        case 2: return " (ENOENT)";
        case 5: return " (EIO)";
        case 12: return " (ENOMEM)";
        case 16: return " (EBUSY)";
        case 19: return " (ENODEV)";
        case 22: return " (EINVAL)";
        case 95: return " (EOPNOTSUPP)";
        default: return "";
    }
}

// The klp_objects of `module` that have callbacks, as loaded at `base`:
// their guest addresses and the callbacks' (read from the linked image),
// and for a module object whose module is loaded, klp_object.mod set in
// the image to the guest's struct module, as klp_init_object() finds it
// (callbacks read obj->mod). An object whose module is not loaded keeps
// mod NULL and its callbacks never run (the core would run them when the
// module loads: hvpatch does not follow module loads).
std::vector<AppliedPatch::Object> callback_objects(GuestKernel& kernel, const LivepatchModule& module,
                                                   ModuleImage& image, std::uint64_t base) {
    const auto& L = *kernel.layouts().livepatch;
    std::vector<AppliedPatch::Object> out;
    std::optional<std::vector<GuestModule>> modules;
    for (const auto& po : module.patch_objects(L)) {
        if (!po.has_callbacks()) continue;
        const std::string label = po.name.empty() ? "vmlinux" : po.name;
        const std::uint64_t at = image.image_offset(po.section, po.offset, "klp_object '" + label + "'");
        if (at + L.object.size > image.bytes.size() || L.object.callbacks.size < 32)
            throw Error(ErrorKind::Internal, "klp_object '" + label + "' lies outside the image");
        AppliedPatch::Object o;
        o.name = po.name;
        o.address = base + at;
        for (std::size_t i = 0; i < 4; ++i)
            if (po.callbacks[i]) std::memcpy(&o.callbacks[i], image.bytes.data() + at + L.object.callbacks.offset + 8 * i, 8);
        if (!po.name.empty()) {
            if (!modules) modules = list_modules(kernel);
            auto it = std::find_if(modules->begin(), modules->end(), [&](const GuestModule& m) { return m.name == po.name; });
            o.loaded = it != modules->end();
            if (o.loaded && L.object.mod.size == 8) std::memcpy(image.bytes.data() + at + L.object.mod.offset, &it->address, 8);
        }
        out.push_back(o);
    }
    return out;
}

// Waits (bounded by `deadline`) for a freeze in which no task is inside
// [begin, end): unreliable stacks count as inside. Tasks still inside after
// signal_after are woken once, as in the transition: after --force (or a
// transition a task passed with the patch on its stack) a long sleeper
// would otherwise keep the memory for as long as it sleeps. Returns frozen;
// the tasks inside at the deadline (empty: none).
std::vector<TransitionBlocker> wait_until_unused(Patcher::Session& s, std::uint64_t begin, std::uint64_t end,
                                                 const std::string& what, Clock::time_point deadline) {
    const auto start = Clock::now();
    bool signalled = false;
    for (;;) {
        s.freeze();
        auto inside = tasks_inside(*s.kernel, begin, end, foreign_code_of(s.state));
        if (inside.empty() || Clock::now() >= deadline) return inside;
        if (!signalled && Clock::now() - start >= s.options.signal_after) {
            s.say("waking " + std::to_string(inside.size()) + " task(s) still inside " + what +
                  " as klp_send_signals does");
            wake_blockers(s, inside);
            signalled = true;
        }
        s.thaw();
        std::this_thread::sleep_for(s.options.pass_interval);
    }
}

// Ends an unpatching transition that completed. The sites are settled only
// in a freeze in which no task is inside the patch memory: a task preempted
// in a trampoline would take the patched side once its patch_state is back
// to KLP_UNDEFINED. Then the memory is freed. The patch is gone from the
// record afterwards.
void finish_unpatch(Patcher::Session& s, TransitionEngine& engine, const TransitionPlan& plan, AppliedPatch& patch,
                    Clock::time_point deadline) {
    run_before_finish(s);
    auto inside = wait_until_unused(s, patch.base, patch.base + patch.size, "the patch memory of " + patch.name, deadline);
    if (!inside.empty())
        throw Error(ErrorKind::Timeout, "tasks are still inside the patch memory of " + patch.name + ": " +
                                            describe_blockers(inside) + "; state kept, run hvpatch revert again");
    engine.settle(plan);
    run_callbacks(s, patch, Callback::PostUnpatch);  // the code is still there: freed after
    guest_log(s, patch, "'" + patch.name + "': unpatching complete");
    free_patch(s, patch);
}

// Ends a patching transition that completed: the sites settle on the new
// functions. A replace then ends as klp_complete_transition() ends one:
// its nops are discarded (their sites hold the original bytes again) and
// the patches it replaced are unpatched and freed, each once no task is
// inside its memory; one still in use at the deadline stays recorded as
// freeing (hvpatch revert frees it later). Returns what happened to each
// replaced patch, for the audit record. `patch` may move in the record.
json finish_patch(Patcher::Session& s, TransitionEngine& engine, const TransitionPlan& plan, AppliedPatch& patch,
                  Clock::time_point deadline) {
    run_before_finish(s);
    engine.settle(plan);
    patch.phase = PatchPhase::Applied;
    std::erase_if(patch.functions, [](const RedirectedFunction& f) { return f.nop; });
    const std::string name = patch.name;
    json replaced = json::array();
    for (const auto& other : plan.replaced)
        if (AppliedPatch* r = s.state.find(other); r && r->name != name) r->phase = PatchPhase::Freeing;
    s.save(patch);
    // klp_complete_transition(): the post_patch callbacks of the patch that
    // completed; a replaced patch's callbacks do not run.
    run_callbacks(s, patch, Callback::PostPatch);
    guest_log(s, patch, "'" + name + "': patching complete" + [&] {
        std::string list;
        for (const auto& r : plan.replaced) list += (list.empty() ? "" : ", ") + ("'" + r + "'");
        return list.empty() ? std::string() : " (replaced " + list + ")";
    }());
    for (const auto& other : plan.replaced) {
        AppliedPatch* r = s.state.find(other);
        if (!r || r->name == name) continue;
        json entry = {{"name", r->name}, {"sha256", r->sha256}};
        auto inside = wait_until_unused(s, r->base, r->base + r->size, "the memory of replaced patch " + r->name, deadline);
        if (inside.empty()) {
            s.say("replaced patch " + r->name + " is gone: freeing its memory");
            free_patch(s, *r);
            entry["freed"] = true;
        } else {
            s.say("warning: replaced patch " + r->name + " is no longer used, but tasks are still inside its memory (" +
                  describe_blockers(inside) + "): it stays recorded as freeing; `hvpatch revert " + r->name +
                  "` frees it later");
            entry["freed"] = false;
        }
        replaced.push_back(std::move(entry));
    }
    return replaced;
}

}  // namespace

namespace {

json functions_json(const std::vector<RedirectedFunction>& functions) {
    json out = json::array();
    for (const auto& f : functions) out.push_back(function_json(f));
    return out;
}

// An operation that ended in an error is audited once, unless a rollback
// path already wrote its own outcome; with the functions it had got as far
// as planning (their addresses and bytes), if any.
void audit_failure(Patcher::Session& s, json& record, const char* outcome, const Error& e,
                   const std::vector<RedirectedFunction>& functions) {
    if (record.contains("outcome")) return;
    IgnoreInterrupts ignore;
    record["outcome"] = outcome;
    record["error"] = e.what();
    if (!functions.empty()) record["functions"] = functions_json(functions);
    try {
        s.audit(record);
    } catch (...) {
    }
}

// The figures of a finished apply or revert, into its report and its audit record.
void audit_success(Patcher::Session& s, OperationReport& report, json& record, Clock::time_point t0) {
    StopStats stops = s.machine.stop_stats();
    report.freezes = s.freezes;
    report.stops = stops.stops;
    report.paused_total = stops.total;
    report.paused_max = stops.longest;
    report.total_time = Clock::now() - t0;
    record["outcome"] = to_string(report.outcome);
    record["functions"] = functions_json(report.functions);
    record["passes"] = report.passes;
    record["blockers"] = blockers_json(report.first_blockers);
    if (!report.forced.empty()) record["forced"] = blockers_json(report.forced);
    s.audit(record);
}

}  // namespace

OperationReport Patcher::apply(const std::string& module_path, bool resume) {
    const auto t0 = Clock::now();
    Session s(machine_, options_, "apply", true);
    OperationReport report;
    report.operation = "apply";
    json record = s.audit_base(resume ? "apply --resume" : "apply");
    s.stage(OperationStage::Checking);
    bool touched = false;
    AppliedPatch* patch = nullptr;
    // The file, also for a refusal of one that cannot be opened (not an ELF).
    record["patch"] = {{"path", module_path}};
    try {
        LivepatchModule module = LivepatchModule::open(module_path);
        const std::string name = module.name();
        report.patch_name = name;
        report.sha256 = module.sha256();
        record["patch"] = {{"name", name}, {"sha256", module.sha256()}, {"path", module_path}};
        patch = s.state.find(name);
        if (patch && !resume && patch->phase == PatchPhase::Applied) s.stage(OperationStage::AlreadyApplied);
        if (patch && !resume)
            throw Error(ErrorKind::Usage, "patch " + name + " is already on " + s.id.target + " (" +
                                              to_string(patch->phase) + ")" +
                                              (patch->phase == PatchPhase::Applied ? "" : ": finish it with `hvpatch apply --resume` or `hvpatch revert`"));
        if (!patch && resume) throw Error(ErrorKind::Usage, "no interrupted apply of " + name + " to resume on " + s.id.target);
        if (patch && patch->sha256 != module.sha256())
            throw Error(ErrorKind::Usage, module_path + " is not the module being applied (sha256 " + patch->sha256 + ")");
        if (patch && patch->phase != PatchPhase::Loading && patch->phase != PatchPhase::Patching)
            throw Error(ErrorKind::Usage, "patch " + name + " is " + to_string(patch->phase) +
                                              ": nothing to resume (use hvpatch revert)");
        if (std::string why = unfinished_transition(s.state, name); !why.empty()) throw Error(ErrorKind::Guest, why);
        if (patch && patch->phase == PatchPhase::Loading) {
            s.say("an interrupted load left guest memory at " + hex(patch->base) + ": freeing it, then starting over");
            s.stage(OperationStage::Loading);
            free_patch(s, *patch);
            patch = nullptr;
        }
        bool resumed_transition = false;
        if (!patch) {
            if (auto why = unsupported_kernel_reason(s.kernel->info().release)) throw Error(ErrorKind::Guest, *why);
            if (!options_.force_vermagic) module.check_compatible(s.kernel->info().release);
            module.check_supported();
            if (!s.kernel->layouts().livepatch)
                throw Error(ErrorKind::Guest, "guest BTF lacks the livepatch structures (klp_patch/klp_object/klp_func)");
            const auto& L = *s.kernel->layouts().livepatch;
            auto wanted = module.patched_functions(L);
            const bool replace = module.replaces(L);
            if (std::string why = replace_refusal(*s.kernel, module); !why.empty())
                throw Error(ErrorKind::Guest, module_path + ": " + why);
            std::vector<RedirectedFunction> functions;
            std::string refusals;
            for (const auto& pf : wanted) {
                FunctionPlan plan = plan_function(*s.kernel, pf, s.state);
                if (!plan.refusal.empty()) refusals += (refusals.empty() ? "" : "; ") + plan.refusal;
                functions.push_back(plan.function);
            }
            if (!refusals.empty()) throw Error(ErrorKind::Guest, module_path + ": " + refusals);
            // An atomic replace takes every other live patch's functions: the
            // ones it does not patch itself go back to the original code.
            std::vector<RedirectedFunction> nops;
            std::vector<std::string> replaces;
            if (replace) {
                nops = replace_nops(s.state, name, functions);
                replaces = replaced_by(s.state, name);
                if (!replaces.empty())
                    s.say("replacing " + std::to_string(replaces.size()) + " patch(es) (" + [&] {
                        std::string list;
                        for (const auto& r : replaces) list += (list.empty() ? "" : ", ") + r;
                        return list;
                    }() + "); " + std::to_string(nops.size()) + " function(s) go back to the original code");
            }
            GuestLivepatch& klp = s.klp();
            if (klp.guest_transition_in_progress())
                throw Error(ErrorKind::Guest, "the guest's own livepatch is in a transition; try again later");
            if (int t = klp.target_state(); t != kKlpUndefined)
                throw Error(ErrorKind::Guest, "klp_target_state is " + std::to_string(t) +
                                                  ": a livepatch transition is in progress in the guest");

            // klp_is_patch_compatible(): the system states of the patches on the VM.
            const auto states = module.patch_states(L);
            if (std::string why = state_refusal(s.state, name, states, replace); !why.empty())
                throw Error(ErrorKind::Guest, module_path + ": " + why);
            const KoSymbol* prev_state_call = module.find_symbol("klp_get_prev_state");
            const bool calls_prev_state = prev_state_call && prev_state_call->shndx == 0;

            const std::uint64_t tsize = shim::trampoline_size();
            const std::size_t slots = functions.size() + nops.size();
            const std::uint64_t prev_state_offset = tsize * slots;  // after the trampolines
            const std::uint64_t log_offset = prev_state_offset + (calls_prev_state ? shim::prev_state_size() : 0);
            const std::uint64_t extra_text = log_offset + kGuestLogBufferSize;
            ModuleLayout layout = plan_module_layout(module, extra_text);
            check_link_formats(module, link_format_facts(*s.kernel));
            s.say("allocating " + std::to_string(layout.total_size()) + " bytes of guest module memory");
            s.stage(OperationStage::Loading);
            std::uint64_t base = s.call().allocate_module_memory(layout.total_size());
            s.after_call();
            touched = true;
            AppliedPatch fresh;
            fresh.name = name;
            fresh.sha256 = module.sha256();
            fresh.module_path = module_path;
            fresh.base = base;
            fresh.size = layout.total_size();
            fresh.text_size = layout.text_size;
            fresh.rodata_size = layout.rodata_size;
            fresh.data_size = layout.data_size;
            fresh.replace = replace;
            fresh.replaces = replaces;
            fresh.applied_at = utc_now_iso8601();
            s.state.patches.push_back(fresh);
            patch = &s.state.patches.back();
            s.save(*patch);
            try {
                GuestLinkFacts facts = link_facts(*s.kernel);
                if (calls_prev_state) {
                    // klp_get_prev_state() of the guest walks only its own
                    // patches: the module's calls go to hvpatch's copy.
                    patch->prev_state = base + layout.extra_text_offset + prev_state_offset;
                    facts.resolve = [inner = facts.resolve, stub = patch->prev_state](
                                        const std::string& object, const std::string& symbol,
                                        std::uint64_t sympos) -> std::optional<std::uint64_t> {
                        if (object.empty() && symbol == "klp_get_prev_state") return stub;
                        return inner(object, symbol, sympos);
                    };
                }
                ModuleImage image = link_module(module, base, extra_text, facts);
                patch->log_buffer = base + layout.extra_text_offset + log_offset;
                if (calls_prev_state) {
                    auto blob = shim::build_prev_state(patch->prev_state, return_thunk_for(*s.kernel, facts, patch->prev_state));
                    std::copy(blob.begin(), blob.end(),
                              image.bytes.begin() + static_cast<std::ptrdiff_t>(layout.extra_text_offset + prev_state_offset));
                }
                for (const auto& st : states)
                    patch->states.push_back(
                        {st.id, st.version, base + image.image_offset(st.section, st.offset, "klp_state " + std::to_string(st.id))});
                report.loader_actions = image.actions;
                // klp_func.old_func, as klp_init_func() sets it: patch code
                // may call the old function through it (example 3 does).
                const auto& func_layout = L.func;
                for (std::size_t i = 0; i < functions.size(); ++i) {
                    if (!wanted[i].has_klp_func) continue;  // klp-build: no klp_func in the module
                    std::uint64_t at = image.image_offset(wanted[i].func_section, wanted[i].func_offset,
                                                          "klp_func of " + wanted[i].old_name) +
                                       func_layout.old_func.offset;
                    if (func_layout.old_func.size != 8 || at + 8 > image.bytes.size())
                        throw Error(ErrorKind::Internal, "klp_func.old_func of " + wanted[i].old_name + " lies outside the image");
                    std::memcpy(image.bytes.data() + at, &functions[i].entry, 8);
                }
                for (const auto& w : image.warnings) s.say("warning: " + w);
                patch->objects = callback_objects(*s.kernel, module, image, base);
                for (const auto& o : patch->objects)
                    if (!o.loaded) s.say("warning: " + pending_callbacks_warning(o.name));
                for (auto& f : functions) {
                    f.new_address = image.symbol_address(f.new_symbol);
                    for (const auto& [symbol, begin, end] : image.functions)
                        if (begin == f.new_address) f.new_size = end - begin;
                    f.to_new = to_vector(shim::jmp_rel32(f.site, f.new_address));
                }
                functions.insert(functions.end(), nops.begin(), nops.end());
                // The trampoline slots stay int3 padding here: every
                // transition writes its trampolines (TransitionEngine::redirect).
                for (std::size_t i = 0; i < functions.size(); ++i) {
                    RedirectedFunction& f = functions[i];
                    f.trampoline = base + layout.extra_text_offset + i * tsize;
                    f.to_trampoline = to_vector(shim::jmp_rel32(f.site, f.trampoline));
                    std::fill_n(image.bytes.begin() + static_cast<std::ptrdiff_t>(layout.extra_text_offset + i * tsize),
                                tsize, std::byte{0xcc});
                }
                s.freeze();
                write_kernel_memory(*s.kernel, base, image.bytes);
                auto back = s.kernel->memory().read_bytes(GuestVirtAddr{base}, image.bytes.size());
                if (!std::equal(back.begin(), back.end(), image.bytes.begin()))
                    throw Error(ErrorKind::Guest, "patch image written at " + hex(base) + " does not read back the same");
                // Recorded first: undoing a half-done protection must unprotect.
                patch->text_protected = true;
                s.save(*patch);
                s.call().protect_module(base, static_cast<int>(layout.text_size / kPage),
                                        static_cast<int>(layout.rodata_size / kPage));
                s.after_call();
                patch->functions = functions;
                patch->orc_ip_table = image.orc_unwind_ip;
                patch->orc_table = image.orc_unwind;
                patch->orc_entries = image.orc_entries;
                for (const auto& [symbol, begin, end] : image.functions) patch->code.push_back({symbol, begin, end});
                s.save(*patch);

                // __klp_enable_patch(): each loaded object's pre_patch, in
                // order, before any of its functions is redirected; a
                // failure cancels the patch (the post_unpatch callbacks of
                // the objects whose pre_patch succeeded run) and the load
                // is undone below.
                guest_log(s, *patch, "enabling patch '" + name + "' (sha256 " + patch->sha256 + ") from the host");
                std::string failed;
                if (int ret = run_callbacks(s, *patch, Callback::PrePatch, &failed); ret != 0) {
                    run_callbacks(s, *patch, Callback::PostUnpatch);
                    guest_log(s, *patch, "'" + name + "': the " + failed + " failed (" + std::to_string(ret) +
                                             "): not applied");
                    throw Error(ErrorKind::Guest, "the " + failed + " returned " + std::to_string(ret) +
                                                      errno_name(ret) + ": " + name +
                                                      " is not applied (its memory is freed again)");
                }

                // The first freeze of the transition: the guest ran during
                // the calls; nothing may have started meanwhile.
                s.freeze();
                if (klp.guest_transition_in_progress() || klp.target_state() != kKlpUndefined)
                    throw Error(ErrorKind::Guest, "a livepatch transition started in the guest meanwhile");
                patch->phase = PatchPhase::Patching;
                TransitionPlan plan = plan_patching(s.state, name);
                TransitionEngine first{s};
                first.check_sites(plan);
                s.save(*patch);
                s.stage(OperationStage::Transition);
                first.redirect(plan);
            } catch (...) {
                IgnoreInterrupts ignore;
                s.say("undoing the load");
                patch = s.state.find(name);
                if (patch->phase == PatchPhase::Patching) patch->phase = PatchPhase::Loading;
                free_patch(s, *patch);
                throw;
            }
        } else {
            s.stage(OperationStage::Transition);  // resumed: an earlier run left the patch mid-transition
            resumed_transition = true;
        }
        report.base = patch->base;
        report.size = patch->size;
        report.functions = patch->functions;

        TransitionEngine engine{s};
        TransitionPlan plan = plan_patching(s.state, name);
        if (resumed_transition) engine.redirect(plan);  // whatever the interrupted run had not written yet
        TransitionPass pass = engine.converge(plan, Clock::now() + options_.timeout);
        report.outcome = OperationOutcome::Applied;
        if (!pass.complete()) {
            if (options_.force_switch) {
                s.say("--force: switching " + std::to_string(pass.remaining) + " blocked task(s): " +
                      describe_blockers(pass.blockers));
                pass = engine.force(plan);
                report.forced = pass.blockers;
                report.outcome = OperationOutcome::Forced;
            } else {
                std::string why = "not every task switched within " + std::to_string(options_.timeout.count()) +
                                  " ms: " + describe_blockers(pass.blockers);
                record["blockers"] = blockers_json(pass.blockers);
                s.say(why + "; rolling back");
                patch->phase = PatchPhase::Unpatching;
                s.save(*patch);
                TransitionPlan back = plan_unpatching(s.state, name);
                engine.redirect(back);
                TransitionPass undone = engine.converge(back, Clock::now() + options_.timeout);
                if (!undone.complete())
                    throw Error(ErrorKind::Timeout, why + "; the rollback did not complete either (" +
                                                        describe_blockers(undone.blockers) +
                                                        "); state kept: run hvpatch revert " + name);
                finish_unpatch(s, engine, back, *patch, Clock::now() + options_.timeout);
                report.outcome = OperationOutcome::RolledBack;
                report.passes = engine.passes;
                record["functions"] = functions_json(report.functions);
                record["outcome"] = to_string(OperationOutcome::RolledBack);
                record["error"] = why;
                s.thaw();
                s.audit(record);
                throw Error(ErrorKind::Timeout, why + "; rolled back, the guest is as before");
            }
        }
        json replaced = finish_patch(s, engine, plan, *patch, Clock::now() + options_.timeout);
        if (!replaced.empty()) record["replaced"] = replaced;
        s.thaw();
        report.functions = s.state.find(name)->functions;
        report.replaced = plan.replaced;
        report.passes = engine.passes;
        report.first_blockers = engine.first_blockers;
        report.transition_time = engine.time;
    } catch (const Error& e) {
        audit_failure(s, record, touched ? "failed" : "refused", e, report.functions);
        throw;
    }
    record["memory"] = {{"base", hex(report.base)}, {"size", report.size}};
    audit_success(s, report, record, t0);
    return report;
}

OperationReport Patcher::revert(const std::string& name) {
    const auto t0 = Clock::now();
    Session s(machine_, options_, "revert", true);
    OperationReport report;
    report.operation = "revert";
    report.outcome = OperationOutcome::Reverted;
    report.patch_name = name;
    json record = s.audit_base("revert");
    record["patch"] = {{"name", name}};
    s.stage(OperationStage::Checking);
    try {
        AppliedPatch* patch = s.state.find(name);
        if (!patch) {
            s.stage(OperationStage::NotApplied);
            if (s.stale && s.stale->find(name))
                throw Error(ErrorKind::Guest, "the record of " + name + " on " + s.id.target +
                                                  " is from an earlier boot of the guest: nothing of it is in the running kernel");
            std::string applied;
            for (const auto& p : s.state.patches) applied += (applied.empty() ? "" : ", ") + p.name;
            throw Error(ErrorKind::Usage, "no patch " + name + " on " + s.id.target +
                                              (applied.empty() ? " (nothing applied)" : " (applied: " + applied + ")"));
        }
        record["patch"] = {{"name", name}, {"sha256", patch->sha256}, {"path", patch->module_path}};
        report.sha256 = patch->sha256;
        report.base = patch->base;
        report.size = patch->size;
        report.functions = patch->functions;
        TransitionEngine engine{s};
        if (patch->phase == PatchPhase::Loading || patch->phase == PatchPhase::Freeing) {
            s.stage(OperationStage::Freeing);
            free_patch(s, *patch);
        } else {
            if (std::string why = unfinished_transition(s.state, name); !why.empty()) throw Error(ErrorKind::Guest, why);
            if (patch->phase == PatchPhase::Applied) {
                s.freeze();
                GuestLivepatch& klp = s.klp();
                if (klp.guest_transition_in_progress() || klp.target_state() != kKlpUndefined)
                    throw Error(ErrorKind::Guest, "a livepatch transition is in progress in the guest; try again later");
            }
            // Applied, or an interrupted apply or revert (patching / unpatching): back out.
            const bool was_applied = patch->phase == PatchPhase::Applied;
            patch->phase = PatchPhase::Unpatching;
            TransitionPlan plan = plan_unpatching(s.state, name);
            engine.check_sites(plan);
            s.stage(OperationStage::Transition);
            guest_log(s, *patch, std::string(was_applied ? "disabling" : "reversing") + " patch '" + name +
                                     "' (sha256 " + patch->sha256 + ") from the host");
            // __klp_disable_patch(): the pre_unpatch callbacks before the
            // transition starts. (Reversing an interrupted apply runs none,
            // as klp_reverse_transition() does not.)
            if (was_applied) {
                run_callbacks(s, *patch, Callback::PreUnpatch);
                s.freeze();
            }
            s.save(*patch);
            s.stage(OperationStage::Transition);
            engine.redirect(plan);
            TransitionPass pass = engine.converge(plan, Clock::now() + options_.timeout);
            report.outcome = OperationOutcome::Reverted;
            if (!pass.complete()) {
                if (options_.force_switch) {
                    s.say("--force: switching " + std::to_string(pass.remaining) + " blocked task(s): " +
                          describe_blockers(pass.blockers));
                    pass = engine.force(plan);
                    report.forced = pass.blockers;
                    report.outcome = OperationOutcome::Forced;
                } else {
                    std::string why = "not every task switched back within " +
                                      std::to_string(options_.timeout.count()) + " ms: " + describe_blockers(pass.blockers);
                    record["blockers"] = blockers_json(pass.blockers);
                    s.say(why + "; re-applying");
                    patch->phase = PatchPhase::Patching;
                    s.save(*patch);
                    TransitionPlan again = plan_patching(s.state, name);
                    engine.redirect(again);
                    TransitionPass redone = engine.converge(again, Clock::now() + options_.timeout);
                    if (!redone.complete())
                        throw Error(ErrorKind::Timeout, why + "; re-applying did not complete either; state kept: "
                                                              "run hvpatch revert " + name + " again");
                    json replaced = finish_patch(s, engine, again, *patch, Clock::now() + options_.timeout);
                    if (!replaced.empty()) record["replaced"] = replaced;
                    record["functions"] = functions_json(report.functions);
                    record["outcome"] = "revert-rolled-back";
                    record["error"] = why;
                    s.thaw();
                    s.audit(record);
                    throw Error(ErrorKind::Timeout, why + "; the patch stays applied");
                }
            }
            finish_unpatch(s, engine, plan, *patch, Clock::now() + options_.timeout);
        }
        s.thaw();
        report.passes = engine.passes;
        report.first_blockers = engine.first_blockers;
        report.transition_time = engine.time;
    } catch (const Error& e) {
        audit_failure(s, record, "failed", e, report.functions);
        throw;
    }
    audit_success(s, report, record, t0);
    return report;
}

CheckReport Patcher::check(const std::string& module_path) {
    Session s(machine_, options_, "check", false);
    CheckReport report;
    json record = s.audit_base("check");
    record["patch"] = {{"path", module_path}};
    try {
        LivepatchModule module = LivepatchModule::open(module_path);
        report.patch_name = module.name();
        report.sha256 = module.sha256();
        report.vermagic = module.vermagic();
        report.guest_release = s.kernel->info().release;
        record["patch"] = {{"name", module.name()}, {"sha256", module.sha256()}, {"path", module_path}};
        auto note = [&](auto&& step) {
            try {
                step();
            } catch (const Error& e) {
                report.refusals.push_back(e.what());
            }
        };
        if (auto why = unsupported_kernel_reason(report.guest_release)) report.refusals.push_back(*why);
        if (!options_.force_vermagic) note([&] { module.check_compatible(report.guest_release); });
        const std::size_t refusals_before = report.refusals.size();
        note([&] { module.check_supported(); });
        // apply's layout step refuses sections the guest's loader would
        // hand to a subsystem hvpatch does not register with, and unknown
        // SHF_ALLOC ones (module_image.cpp). It reports the refused special
        // sections check_supported() named already: only when none were.
        if (report.refusals.size() == refusals_before) {
            note([&] { plan_module_layout(module, 0); });  // the trampolines only add size
            note([&] { check_link_formats(module, link_format_facts(*s.kernel)); });
        }
        for (const auto& special : module.special_sections())
            report.special_sections.push_back(special.name + ": " + special.handling);
        if (auto* existing = s.state.find(module.name()))
            report.refusals.push_back("patch " + module.name() + " is already on this VM (" +
                                      to_string(existing->phase) + ")");
        std::vector<CheckedFunction> checked;
        if (!s.kernel->layouts().livepatch) {
            report.refusals.push_back("guest BTF lacks the livepatch structures");
        } else {
            note([&] {
                if (std::string why = replace_refusal(*s.kernel, module); !why.empty()) report.refusals.push_back(why);
            });
            if (std::string why = unfinished_transition(s.state, module.name()); !why.empty())
                report.refusals.push_back(why);
            note([&] {
                const auto& L = *s.kernel->layouts().livepatch;
                std::vector<RedirectedFunction> planned;
                for (const auto& pf : module.patched_functions(L)) {
                    FunctionPlan plan = plan_function(*s.kernel, pf, s.state);
                    if (!plan.refusal.empty()) report.refusals.push_back(plan.refusal);
                    if (plan.function.entry) {
                        checked.push_back(code_running_now(s.state, plan.function));
                        planned.push_back(plan.function);
                    }
                    report.functions.push_back(std::move(plan));
                }
                std::optional<std::vector<GuestModule>> modules;  // listed once, if a module object has callbacks
                for (const auto& po : module.patch_objects(L)) {
                    if (!po.has_callbacks()) continue;
                    std::string names;
                    for (std::size_t i = 0; i < 4; ++i)
                        if (po.callbacks[i]) names += (names.empty() ? "" : ", ") + std::string(kKlpCallbackNames[i]);
                    if (!po.name.empty() && !modules) modules = list_modules(*s.kernel);
                    const bool loaded = po.name.empty() ||
                                        std::ranges::any_of(*modules, [&](const GuestModule& m) { return m.name == po.name; });
                    report.callbacks.push_back((po.name.empty() ? std::string("vmlinux") : po.name) + ": " + names +
                                               (loaded ? "" : " (module not loaded: not run)"));
                    if (!loaded) report.warnings.push_back(pending_callbacks_warning(po.name));
                }
                report.replace = module.replaces(L);
                const auto states = module.patch_states(L);
                for (const auto& st : states)
                    report.states.push_back("id " + std::to_string(st.id) + " version " + std::to_string(st.version));
                if (std::string why = state_refusal(s.state, module.name(), states, report.replace); !why.empty())
                    report.refusals.push_back(why);
                if (report.replace) {
                    report.replaces = replaced_by(s.state, module.name());
                    for (const auto& nop : replace_nops(s.state, module.name(), planned)) {
                        checked.push_back(code_running_now(s.state, nop));
                        report.restores.push_back(nop.name);
                    }
                }
            });
        }
        note([&] {
            s.freeze();
            GuestLivepatch& klp = s.klp();
            report.guest_transition = klp.guest_transition_in_progress() || klp.target_state() != kKlpUndefined;
            if (report.guest_transition) report.refusals.push_back("a livepatch transition is in progress in the guest");
            TransitionPass pass =
                run_transition_pass(*s.kernel, klp, kKlpPatched, checked, PassMode::DryRun, foreign_code_of(s.state));
            report.tasks = pass.tasks;
            report.blockers = pass.blockers;
        });
    } catch (const Error& e) {
        report.refusals.push_back(e.what());
    }
    record["outcome"] = report.refusals.empty() ? "ok" : "would-refuse";
    if (!report.refusals.empty()) record["refusals"] = report.refusals;
    record["blockers"] = blockers_json(report.blockers);
    s.audit(record);
    return report;
}

StatusReport Patcher::status() {
    Session s(machine_, options_, "status", false);
    StatusReport report;
    report.vm = s.id;
    report.release = s.kernel->info().release;
    report.boot_id = s.boot_id;
    report.vm_running = s.was_running;
    if (!s.unfinished.empty()) report.unfinished_operation = describe_unfinished_operation(s.unfinished);
    report.state_location = s.store->location();
    if (s.stale) {
        report.stale = true;
        report.stale_boot_id = s.stale->boot_id;
        report.stale_reason =
            s.stale->vm_key != s.id.key()
                ? "the record was written for another VM (" + s.stale->vm_key +
                      "): the domain was copied with its metadata; none of it is live here"
                : "the recorded state is from boot " + s.stale->boot_id +
                      "; the guest rebooted since, none of it is live";
    }
    s.freeze();
    for (const auto& patch : s.state.patches) {
        PatchStatus ps;
        ps.patch = patch;
        for (const auto& f : patch.functions) {
            FunctionStatus fs{f, ""};
            auto stack = function_stack(s.state, f.site);
            const AppliedPatch* top = stack.empty() ? nullptr : stack.back().patch;
            const bool beneath = is_live(patch) && top && top != &patch;
            try {
                auto now = s.read_guest(f.site, 5);
                if (beneath && now == expected_site_bytes(s.state, f.site)) fs.entry_now = "beneath " + top->name;
                else if (now == f.original) fs.entry_now = "original";
                else if (now == f.to_trampoline) fs.entry_now = "trampoline";
                else if (now == rest_bytes(f)) fs.entry_now = "direct";
                else fs.entry_now = "unknown: " + bytes_to_hex(now);
            } catch (const Error& e) {
                fs.entry_now = std::string("unreadable: ") + e.what();
            }
            std::string expected = patch.phase == PatchPhase::Applied ? (f.nop ? "original" : "direct")
                                   : (patch.phase == PatchPhase::Patching || patch.phase == PatchPhase::Unpatching)
                                       ? "trampoline"
                                       : "original";
            if (beneath) expected = "beneath " + top->name;
            // A crash between the state write and the code write leaves the
            // previous bytes: say so rather than call it broken.
            if (fs.entry_now != expected) {
                ps.consistent = false;
                ps.note = "entry of " + f.name + " does not match phase " + std::string(to_string(patch.phase)) +
                          " (hvpatch stopped between recording a step and writing it): apply --resume or revert "
                          "finishes the step";
            }
            ps.functions.push_back(fs);
        }
        report.patches.push_back(std::move(ps));
    }
    try {
        GuestLivepatch& klp = s.klp();
        report.klp_target_state = klp.target_state();
        report.guest_transition = klp.guest_transition_in_progress();
        for (const auto& task : list_tasks(*s.kernel)) {
            ++report.tasks;
            if (task.patch_pending) ++report.tasks_pending;
            if (task.patch_state == kKlpPatched) ++report.tasks_patched;
            if (task.patch_state == kKlpUnpatched) ++report.tasks_unpatched;
        }
    } catch (const Error&) {
        // A kernel without livepatch support: nothing to count.
    }
    return report;
}

nlohmann::json CheckReport::to_json() const {
    json functions = json::array();
    for (const auto& plan : this->functions) {
        json f = function_json(plan.function);
        f["entry"] = plan.entry_kind;
        if (!plan.refusal.empty()) f["refusal"] = plan.refusal;
        functions.push_back(f);
    }
    return {{"patch", patch_name},     {"sha256", sha256},       {"vermagic", vermagic},
            {"guest_release", guest_release}, {"functions", functions}, {"special_sections", special_sections},
            {"refusals", refusals},    {"ok", refusals.empty()}, {"tasks", tasks},
            {"blockers", blockers_json(blockers)}, {"guest_transition", guest_transition},
            {"replace", replace}, {"replaces", replaces}, {"restores", restores},
            {"callbacks", callbacks}, {"states", states}, {"warnings", warnings}};
}

nlohmann::json OperationReport::to_json() const {
    json fs = json::array();
    for (const auto& f : functions) fs.push_back(function_json(f));
    return {{"operation", operation},
            {"patch", patch_name},
            {"sha256", sha256},
            {"outcome", to_string(outcome)},
            {"functions", fs},
            {"memory", {{"base", hex(base)}, {"size", size}}},
            {"passes", passes},
            {"freezes", freezes},
            {"stops", stops},
            {"paused_total_ms", ms(paused_total)},
            {"paused_max_ms", ms(paused_max)},
            {"transition_ms", ms(transition_time)},
            {"total_ms", ms(total_time)},
            {"forced", blockers_json(forced)},
            {"blocked_at_first_pass", blockers_json(first_blockers)},
            {"loader_actions", loader_actions},
            {"replaced", replaced}};
}

nlohmann::json StatusReport::to_json() const {
    json ps = json::array();
    for (const auto& p : patches) {
        json fs = json::array();
        for (const auto& f : p.functions) {
            json j = function_json(f.function);
            j["entry_now"] = f.entry_now;
            fs.push_back(j);
        }
        ps.push_back({{"name", p.patch.name},
                      {"sha256", p.patch.sha256},
                      {"phase", to_string(p.patch.phase)},
                      {"memory", {{"base", hex(p.patch.base)}, {"size", p.patch.size}}},
                      {"applied_at", p.patch.applied_at},
                      {"updated_at", p.patch.updated_at},
                      {"consistent", p.consistent},
                      {"note", p.note},
                      {"functions", fs}});
    }
    return {{"vm", {{"key", vm.key()}, {"uuid", vm.uuid}, {"name", vm.name}, {"target", vm.target}}},
            {"kernel_release", release},
            {"boot_id", boot_id},
            {"vm_running", vm_running},
            {"unfinished_operation", unfinished_operation},
            {"stale", stale},
            {"stale_boot_id", stale_boot_id},
            {"stale_reason", stale_reason},
            {"state_location", state_location},
            {"patches", ps},
            {"klp_target_state", klp_target_state},
            {"guest_transition", guest_transition},
            {"tasks", {{"total", tasks}, {"pending", tasks_pending}, {"patched", tasks_patched}, {"unpatched", tasks_unpatched}}}};
}

}  // namespace hvpatch
