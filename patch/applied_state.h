// What hvpatch has applied to one VM, kept outside the guest.
//
// One JSON file per VM in the state directory (<state_dir>/<vm key>.json),
// or the same record in the VMM's record store (vm_state_store.h),
// written atomically before every step that changes the guest (write-ahead),
// so that after a crash or a kill -9 the file says what may be in the guest
// and `hvpatch status` can compare it with what is there. The guest's boot
// identity is recorded: after a reboot nothing of it is in the guest any
// more, and the record is recognised as stale.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "introspect/task_stacks.h"

namespace hvpatch {

struct RedirectedFunction {
    std::string object;        // "vmlinux" or a module name
    std::string name;          // klp_func.old_name
    std::uint64_t sympos = 0;
    std::string new_symbol;    // the module's replacement function
    std::uint64_t entry = 0;   // old function's address
    std::uint64_t size = 0;    // old function's size (to the next symbol)
    std::uint64_t site = 0;    // the 5-byte ftrace NOP redirected (entry, or entry + 4 after endbr64)
    std::uint64_t new_address = 0, new_size = 0;
    std::uint64_t trampoline = 0;
    std::vector<std::uint8_t> original;       // the 5 bytes at site before hvpatch
    std::vector<std::uint8_t> to_trampoline;  // jmp to the trampoline (during transitions)
    std::vector<std::uint8_t> to_new;         // jmp to the new function (once applied)
    // An atomic replace's "nop" (the core's klp_func.nop): a function the
    // replaced patches redirect and the replacing one does not; patched
    // tasks go back to the original code (new_address 0, to_new == original).
    // It exists only while the replace is in transition.
    bool nop = false;
};

// Phases, in order. A crash leaves a patch in any of them.
enum class PatchPhase {
    Loading,     // guest memory allocated (maybe written); no redirection yet
    Patching,    // redirections to trampolines; tasks switching to patched
    Applied,     // direct jumps; no per-task state
    Unpatching,  // redirections to trampolines; tasks switching back
    Freeing,     // original bytes back; guest memory being freed
};
const char* to_string(PatchPhase phase);
PatchPhase patch_phase_from_string(const std::string& text);

struct AppliedPatch {
    std::string name;  // module name (modinfo name=)
    std::string sha256;
    std::string module_path;
    PatchPhase phase = PatchPhase::Loading;
    std::uint64_t base = 0, size = 0;  // the guest allocation (module_alloc)
    std::uint64_t text_size = 0, rodata_size = 0, data_size = 0;
    bool text_protected = false;    // set_memory_ro/x done on text, ro on rodata
    // The patch's own ORC tables in guest memory and its functions, so that
    // hvpatch unwinds through patch code (the guest cannot: it does not know it).
    std::uint64_t orc_ip_table = 0, orc_table = 0, orc_entries = 0;
    struct Function {
        std::string name;
        std::uint64_t begin = 0, end = 0;
    };
    std::vector<Function> code;
    std::vector<RedirectedFunction> functions;
    // The klp_objects with callbacks, in array order (the core's order).
    struct Object {
        std::string name;          // "" = vmlinux
        std::uint64_t address = 0;  // the klp_object in the patch memory (the callbacks' argument)
        std::array<std::uint64_t, 4> callbacks{};  // pre_patch, post_patch, pre_unpatch, post_unpatch; 0 = none
        bool loaded = true;  // its module was loaded at apply (else its callbacks never run)
        // klp_callbacks.post_unpatch_enabled: pre_patch ran and returned 0.
        bool post_unpatch_enabled = false;
    };
    std::vector<Object> objects;
    // klp_patch.states, each with its struct klp_state in the patch memory
    // (what klp_get_prev_state() answers to later patches).
    struct State {
        std::uint64_t id = 0, version = 0, address = 0;
    };
    std::vector<State> states;
    // The patch's copy of klp_get_prev_state (guest-shim/prev_state.h), whose
    // table hvpatch rewrites before callbacks run; 0: the module does not call it.
    std::uint64_t prev_state = 0;
    // Where hvpatch puts its lines for the guest's kernel log (0: none).
    std::uint64_t log_buffer = 0;
    // klp_patch.replace: when its transition completes, every other patch
    // live on the VM is gone. `replaces` names them (recorded before the
    // transition starts, so that a resumed or reverted replace knows).
    bool replace = false;
    std::vector<std::string> replaces;
    std::string applied_at, updated_at;  // UTC ISO-8601
};

struct VmState {
    std::string vm_key;  // MachineIdentity::key()
    std::string vm_uuid, vm_name, target;
    std::string boot_id;  // guest boot identity when the state was written
    std::string kernel_release;
    std::vector<AppliedPatch> patches;

    // state.patches is in the order they were applied: for a function
    // several patches redirect, the last live one runs (the core's func_stack).
    AppliedPatch* find(const std::string& name);
};

// A patch whose redirections may be in the guest: patching, applied or
// unpatching (loading and freeing ones redirect nothing).
bool is_live(const AppliedPatch& patch);

nlohmann::json to_json(const VmState& state);
VmState vm_state_from_json(const nlohmann::json& json);  // Error(Internal) naming the bad field

// <state_dir>/<vm_key>.json; nullopt if there is none.
std::string vm_state_path(const std::string& state_dir, const std::string& vm_key);
std::optional<VmState> load_vm_state(const std::string& state_dir, const std::string& vm_key);
// Writes atomically; removes the file when no patch is left.
void save_vm_state(const std::string& state_dir, const VmState& state);

// The patch code of `state`'s patches, for StackWalker.
std::vector<ForeignCode> foreign_code_of(const VmState& state);

std::string bytes_to_hex(const std::vector<std::uint8_t>& bytes);  // "0f 1f 44 00 00"
std::string utc_now_iso8601();

}  // namespace hvpatch
