// ORC unwinder over guest memory, with a reliability verdict per stack.
//
// == Guest ORC formats ==================================================
//
// struct orc_entry is 6 bytes in every version: s16 sp_offset, s16
// bp_offset, then 16 bits of flags. Only the flags changed:
//
//   format  kernels     commit that introduced it                     flag bits (LSB first)
//   ------  ----------  --------------------------------------------  ------------------------------------------
//   V1      4.14..6.2   ee9f8fce9964 "x86/unwind: Add the ORC unwinder"  0-3 sp_reg, 4-7 bp_reg, 8-9 type, 10 end
//   V2      6.3         ffb1b4a41016 "x86/unwind/orc: Add 'signal'     0-3 sp_reg, 4-7 bp_reg, 8-9 type, 10 signal,
//                       field to ORC metadata"                           11 end
//   V3      6.4+        fb799447ae29 "x86,objtool: Split                0-3 sp_reg, 4-7 bp_reg, 8-10 type, 11 signal
//                       UNWIND_HINT_EMPTY in two"
//
//   type values   V1/V2: CALL=0 REGS=1 REGS_PARTIAL=2 (3 unused); "undefined"
//                        is sp_reg == ORC_REG_UNDEFINED with end = 0, "end of
//                        stack" the same with end = 1 (end is ignored when
//                        sp_reg is defined, as unwind_next_frame() does).
//                 V3:    UNDEFINED=0 END_OF_STACK=1 CALL=2 REGS=3 REGS_PARTIAL=4.
//   signal        V1 has no bit: the 6.1 unwinder sets state->signal true
//                 after REGS/REGS_PARTIAL and false after CALL, so the V1
//                 decoder derives it from the type; V2/V3 store it.
//   ORC_REG_*     unchanged since 4.14 (orc_unwind.h, namespace orc_reg).
//
// Detecting the format (orc_format_for_kernel): 6.4 added the .orc_header
// section (symbol __start_orc_header, a 20-byte hash of orc_types.h): if
// kallsyms has it, V3. Otherwise the banner's version decides: 6.3 is V2,
// anything older V1 (6.4+ without the symbol is still treated as V3). The
// Debian 6.1.192 source (/usr/src/linux-source-6.1) has the V1 layout: the
// signal field was not backported.
//
// The tables: __start_orc_unwind_ip[] holds s32 offsets relative to each
// entry's own address, sorted; __start_orc_unwind[] the entries in the same
// order; orc_lookup[] one u32 per 256-byte block of _stext.._etext plus one,
// giving the first table index for the block (unwind_init()). orc_find()
// uses that block index for core text, a whole-table binary search for
// .init.text, the module's own sorted table for module addresses, and the
// copied-from ftrace_(regs_)caller for dynamic ftrace trampolines.
//
// == Reliability rules (what makes reliable = false) =====================
//
// From the kernel's unwinder (arch/x86/kernel/unwind_orc.c, 6.1) — each of
// these sets state->error, which arch_stack_walk_reliable() turns into
// -EINVAL:
//   - no ORC entry for the ip (orc_find() NULL → orc_fp_entry guess + error)
//   - an UNDEFINED entry (V1/V2: sp_reg UNDEFINED without end)
//   - an unknown sp_reg, bp_reg or type
//   - an ORC_REG_R10/R13/DI/DX entry without pt_regs to read it from (get_reg)
//   - any stack access outside a valid stack of the task, or running past a
//     stack's end (stack_access_ok → get_stack_info)
//   - a stack visited twice (get_stack_info's visit_mask / stack_mask)
//   - sp not increasing on the same stack ("stack going in the wrong direction?")
//   - the start sp not on a stack of the task (__unwind_start)
//   - for a sleeping task: any stack other than its task stack
//     (get_stack_info_noinstr looks elsewhere only for current)
//   - a sleeping-task walk of a task with on_cpu set (__unwind_start,
//     task_on_another_cpu)
// From arch_stack_walk_reliable() (arch/x86/kernel/stacktrace.c):
//   - a frame whose address is 0 or not kernel text (unwind_get_return_address
//     / __kernel_text_address; the latter only if the caller supplies it)
//   - success only at user-mode pt_regs ("Success path for user tasks") or
//     at an END_OF_STACK entry (unwind_next_frame's the_end); kernel-mode
//     pt_regs are crossed, not rejected: only frame-pointer kernels reject them
// From Documentation/livepatch/reliable-stacktrace.rst:
//   - §2 "should not get stuck in an infinite loop or access memory in an
//     unsafe way": unreadable stack or ORC memory; more than max_frames
//     frames (livepatch's own buffer holds 100 and treats a full one as an
//     error)
//   - §4.1 "verify that a stacktrace ends at an expected location": the
//     user-mode pt_regs must end exactly at the top of the stack they are on
//     (task_pt_regs() on the task stack; the hardware iret frame at the top
//     of the entry or an IST stack for a vCPU caught in entry code) —
//     stricter than the kernel
//   - §4.4 return addresses rewritten by return_to_handler (function-graph
//     tracing) or arch_rethook_trampoline (kretprobes): recovered through the
//     caller's callback, like unwind_recover_ret_addr(), or unreliable; an ip
//     inside such a trampoline ("the middle of return_to_handler") is unreliable
// hvpatch's own:
//   - inconsistent pt_regs / inactive_task_frame layouts (they come from BTF)
//   - a running task is walked from its vCPU's registers as the kernel walks
//     from an interrupt's full pt_regs (rst §4.3: ORC describes every
//     instruction); a vCPU in user mode has no kernel frames: reliable, empty.
//
// == How stacks end in 6.1 ===============================================
//
//   user task     ... → do_syscall_64 → entry_SYSCALL_64 (UNWIND_HINT_REGS)
//                 → user-mode pt_regs at the top of the task stack (also
//                 interrupts/exceptions from user mode: the entry code moves
//                 the frame to task_pt_regs()).
//   kthread       ... → kthread → ret_from_fork: the return address after
//                 CALL_NOSPEC rbx lies after ret_from_fork's second
//                 UNWIND_HINT_EMPTY (V1: sp_reg UNDEFINED, end = 1) → END.
//                 A task that never ran: inactive_task_frame.ret_addr ==
//                 ret_from_fork, looked up at ret_from_fork itself (signal)
//                 → END at once.
//   idle, APs     do_idle → cpu_startup_entry → start_secondary, entered by
//                 lretq from secondary_startup_64 (head_64.S), which pushed
//                 .Lafter_lret as a return address "for the unwinder": ip - 1
//                 is the lretq, under secondary_startup_64's UNWIND_HINT_EMPTY
//                 → END.
//   idle, CPU 0   do_idle → cpu_startup_entry → rest_init → arch_call_rest_init
//                 → start_kernel → x86_64_start_reservations →
//                 x86_64_start_kernel → the same .Lafter_lret → END. The
//                 frames from arch_call_rest_init down are __init: their ORC
//                 entries stay in .orc_unwind (before __init_begin) but are
//                 reached only through the init-text slow path
//                 (VmlinuxOrcTables::inittext_start/end).
//   The kernel itself never walks a running idle task (livepatch switches
//   idle tasks from do_idle); from a frozen vCPU the walk starts at the
//   halted RIP (after hlt) with signal lookup.
#include "introspect/orc_unwind.h"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include "hvpatch/error.h"

namespace hvpatch {

namespace {

constexpr std::uint64_t kLookupBlockSize = 256;  // LOOKUP_BLOCK_SIZE
constexpr std::size_t kCacheLimit = 1u << 16;     // entries per cache before it is dropped
constexpr std::uint64_t kMaxPrefetch = 1024;      // ip entries read in one go

std::uint64_t sext(std::int16_t v) { return static_cast<std::uint64_t>(static_cast<std::int64_t>(v)); }
std::uint64_t sext32(std::int32_t v) { return static_cast<std::uint64_t>(static_cast<std::int64_t>(v)); }

bool is_guest_error(const Error& e) { return e.kind() == ErrorKind::Guest; }

// One ip table + orc table pair (vmlinux or a module), read lazily.
class OrcTable {
public:
    OrcTable(VirtualMemory& memory, std::uint64_t ip_table, std::uint64_t orc_table, std::uint64_t count,
             OrcFormat format)
        : memory_(memory), ip_table_(ip_table), orc_table_(orc_table), count_(count), format_(format) {}

    std::uint64_t size() const { return count_; }

    // __orc_find() over entries [first, first + n), n > 0: the rightmost
    // entry whose address is <= ip; `first` itself when none is (the
    // kernel returns its initial `found` then). At most 64 probes.
    std::uint64_t search(std::uint64_t first, std::uint64_t n, std::uint64_t ip) {
        std::uint64_t lo = first, hi = first + n, found = first;
        if (hi < lo) hi = ~std::uint64_t{0};
        while (lo < hi) {
            std::uint64_t mid = lo + (hi - lo) / 2;
            if (address_of(mid) <= ip) {
                found = mid;
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return found;
    }

    // Reads [first, first + n) of the ip table at once when small: one
    // guest read instead of a dozen (each may be a gdbstub round trip).
    void prefetch(std::uint64_t first, std::uint64_t n) {
        if (n == 0 || n > kMaxPrefetch || ips_.contains(first)) return;
        std::vector<std::int32_t> raw(n);
        try {
            memory_.read(GuestVirtAddr{ip_table_ + first * 4}, std::as_writable_bytes(std::span(raw)));
        } catch (const Error& e) {
            if (!is_guest_error(e)) throw;
            return;  // the single reads will name the failing address
        }
        trim(ips_);
        for (std::uint64_t i = 0; i < n; ++i) ips_[first + i] = resolve(first + i, raw[i]);
    }

    OrcEntry entry(std::uint64_t index) {
        if (auto it = entries_.find(index); it != entries_.end()) return it->second;
        std::byte raw[6];
        memory_.read(GuestVirtAddr{orc_table_ + index * 6}, std::span<std::byte>(raw, 6));
        OrcEntry e = decode_orc_entry(raw, format_);
        trim(entries_);
        entries_.emplace(index, e);
        return e;
    }

private:
    std::uint64_t resolve(std::uint64_t index, std::int32_t offset) const {
        return ip_table_ + index * 4 + sext32(offset);  // orc_ip(): self-relative
    }
    std::uint64_t address_of(std::uint64_t index) {
        if (auto it = ips_.find(index); it != ips_.end()) return it->second;
        auto offset = static_cast<std::int32_t>(memory_.read_u32(GuestVirtAddr{ip_table_ + index * 4}));
        std::uint64_t ip = resolve(index, offset);
        trim(ips_);
        ips_.emplace(index, ip);
        return ip;
    }
    template <typename Map>
    static void trim(Map& map) {
        if (map.size() >= kCacheLimit) map.clear();
    }

    VirtualMemory& memory_;
    std::uint64_t ip_table_, orc_table_, count_;
    OrcFormat format_;
    std::unordered_map<std::uint64_t, std::uint64_t> ips_;
    std::unordered_map<std::uint64_t, OrcEntry> entries_;
};

class VmlinuxOrc : public OrcSource {
public:
    VmlinuxOrc(VirtualMemory& memory, const VmlinuxOrcTables& t)
        : memory_(memory), t_(t), table_(memory, t.ip_table.value, t.orc_table.value, t.num_entries, t.format) {}

    std::optional<OrcEntry> find(std::uint64_t ip) override {
        // For non-init vmlinux addresses, the fast lookup table (orc_find()).
        if (ip >= t_.text_start.value && ip < t_.text_end.value) {
            std::uint64_t idx = (ip - t_.text_start.value) / kLookupBlockSize;
            if (t_.lookup_entries < 2 || idx >= t_.lookup_entries - 1) return std::nullopt;  // "bad lookup idx"
            auto [start, next] = block(idx);
            std::uint64_t stop = std::uint64_t{next} + 1;
            // "bad lookup value"; stop <= start (a corrupt, unsorted lookup)
            // would make the kernel search a wrapped range: refuse instead.
            if (start >= table_.size() || stop > table_.size() || stop <= start) return std::nullopt;
            table_.prefetch(start, stop - start);
            return table_.entry(table_.search(start, stop - start, ip));
        }
        // vmlinux .init slow lookup.
        if (t_.inittext_start.value != 0 && ip >= t_.inittext_start.value && ip < t_.inittext_end.value) {
            if (table_.size() == 0) return std::nullopt;
            return table_.entry(table_.search(0, table_.size(), ip));
        }
        return std::nullopt;
    }

private:
    std::pair<std::uint32_t, std::uint32_t> block(std::uint64_t idx) {
        if (auto it = blocks_.find(idx); it != blocks_.end()) return it->second;
        std::uint32_t pair[2];
        memory_.read(t_.lookup_table + idx * 4, std::as_writable_bytes(std::span(pair)));
        if (blocks_.size() >= kCacheLimit) blocks_.clear();
        blocks_.emplace(idx, std::pair{pair[0], pair[1]});
        return {pair[0], pair[1]};
    }

    VirtualMemory& memory_;
    VmlinuxOrcTables t_;
    OrcTable table_;
    std::unordered_map<std::uint64_t, std::pair<std::uint32_t, std::uint32_t>> blocks_;
};

class ModuleOrc : public OrcSource {
public:
    ModuleOrc(VirtualMemory& memory, const ModuleOrcTables& t)
        : ranges_(t.ranges), table_(memory, t.ip_table.value, t.orc_table.value, t.num_entries, t.format) {}

    std::optional<OrcEntry> find(std::uint64_t ip) override {
        // orc_module_find(): __module_address() first, then the whole table.
        bool inside = std::any_of(ranges_.begin(), ranges_.end(),
                                  [ip](const ModuleOrcTables::Range& r) { return ip >= r.begin && ip < r.end; });
        if (!inside || table_.size() == 0) return std::nullopt;
        return table_.entry(table_.search(0, table_.size(), ip));
    }

private:
    std::vector<ModuleOrcTables::Range> ranges_;
    OrcTable table_;
};

}  // namespace

// ---- formats -------------------------------------------------------------

const char* to_string(OrcEntry::Type type) {
    switch (type) {
        case OrcEntry::Type::Undefined: return "UNDEFINED";
        case OrcEntry::Type::EndOfStack: return "END_OF_STACK";
        case OrcEntry::Type::Call: return "CALL";
        case OrcEntry::Type::Regs: return "REGS";
        case OrcEntry::Type::RegsPartial: return "REGS_PARTIAL";
        case OrcEntry::Type::Invalid: return "invalid";
    }
    return "?";
}

const char* to_string(OrcFormat format) {
    switch (format) {
        case OrcFormat::V1: return "v1 (4.14-6.2)";
        case OrcFormat::V2: return "v2 (6.3)";
        case OrcFormat::V3: return "v3 (6.4-6.x)";
        case OrcFormat::V4: return "v4 (7.x registers)";
    }
    return "?";
}

namespace {
// The hashes scripts/orc_hash.sh gives, computed from the orc_types.h of
// Linux 6.12 and 7.2 (Debian's linux-source packages) and matching the
// .orc_header of Debian's 6.12.95 and 7.2.12 images.
constexpr OrcHeader kHeaderV3 = {0xfe, 0x5d, 0x32, 0xbf, 0x58, 0x1b, 0xd6, 0x3b, 0x2c, 0xa9,
                                 0xa5, 0xc6, 0x5b, 0xa5, 0xa6, 0x25, 0xea, 0xb3, 0xfe, 0x24};
constexpr OrcHeader kHeaderV4 = {0x13, 0x7c, 0x36, 0xad, 0x76, 0x27, 0xc4, 0xdd, 0x55, 0x93,
                                 0x21, 0x76, 0xbb, 0x0e, 0xcd, 0xbd, 0x50, 0x41, 0xfc, 0x82};
}  // namespace

std::optional<OrcFormat> orc_format_of_header(const OrcHeader& header) {
    if (header == kHeaderV3) return OrcFormat::V3;
    if (header == kHeaderV4) return OrcFormat::V4;
    return std::nullopt;
}

std::string to_hex(const OrcHeader& header) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (std::uint8_t b : header) {
        out += kDigits[b >> 4];
        out += kDigits[b & 0xf];
    }
    return out;
}

OrcFormat orc_format_for_kernel(int major, int minor, const std::optional<OrcHeader>& header) {
    if (header) {
        if (auto format = orc_format_of_header(*header)) return *format;
        throw Error(ErrorKind::Guest, "the guest's ORC format is not one hvpatch knows (.orc_header hash " +
                                          to_hex(*header) + "; known: " + to_hex(kHeaderV3) + " = 6.4-6.x, " +
                                          to_hex(kHeaderV4) + " = 7.x)");
    }
    if (major > 6 || (major == 6 && minor >= 4))
        throw Error(ErrorKind::Guest, "the guest kernel (" + std::to_string(major) + "." + std::to_string(minor) +
                                          ") has no .orc_header to tell its ORC format by");
    if (major == 6 && minor == 3) return OrcFormat::V2;
    return OrcFormat::V1;
}

namespace {
// Raw 4-bit register numbers to orc_reg:: (normalised).
std::uint8_t normalise_register(unsigned raw, OrcFormat format) {
    if (format == OrcFormat::V4) {
        // 7.x: UNDEFINED 0, AX 1, DX 2, SP 3, BP 4, DI 5, R10 6, R13 7,
        // PREV_SP 8, SP_INDIRECT 9, BP_INDIRECT 10.
        static constexpr std::uint8_t kMap[16] = {
            orc_reg::kUndefined, orc_reg::kAx,       orc_reg::kDx,         orc_reg::kSp,
            orc_reg::kBp,        orc_reg::kDi,       orc_reg::kR10,        orc_reg::kR13,
            orc_reg::kPrevSp,    orc_reg::kSpIndirect, orc_reg::kBpIndirect, orc_reg::kUnknown,
            orc_reg::kUnknown,   orc_reg::kUnknown,  orc_reg::kUnknown,    orc_reg::kUnknown};
        return kMap[raw & 0xf];
    }
    return raw <= orc_reg::kSpIndirect ? static_cast<std::uint8_t>(raw) : orc_reg::kUnknown;
}

unsigned raw_register(std::uint8_t reg, OrcFormat format) {
    if (format == OrcFormat::V4) {
        switch (reg) {
            case orc_reg::kUndefined: return 0;
            case orc_reg::kAx: return 1;
            case orc_reg::kDx: return 2;
            case orc_reg::kSp: return 3;
            case orc_reg::kBp: return 4;
            case orc_reg::kDi: return 5;
            case orc_reg::kR10: return 6;
            case orc_reg::kR13: return 7;
            case orc_reg::kPrevSp: return 8;
            case orc_reg::kSpIndirect: return 9;
            case orc_reg::kBpIndirect: return 10;
            default: return 15;
        }
    }
    return reg <= orc_reg::kSpIndirect ? reg : 15;
}
}  // namespace

OrcEntry decode_orc_entry(const std::byte raw[6], OrcFormat format) {
    auto u16 = [raw](int i) {
        return static_cast<std::uint16_t>(std::to_integer<unsigned>(raw[i]) | std::to_integer<unsigned>(raw[i + 1]) << 8);
    };
    OrcEntry e;
    e.sp_offset = static_cast<std::int16_t>(u16(0));
    e.bp_offset = static_cast<std::int16_t>(u16(2));
    std::uint16_t flags = u16(4);
    e.raw_flags = flags;
    e.sp_reg = normalise_register(flags & 0xf, format);
    e.bp_reg = normalise_register((flags >> 4) & 0xf, format);
    if (format == OrcFormat::V3 || format == OrcFormat::V4) {
        switch ((flags >> 8) & 7) {
            case 0: e.type = OrcEntry::Type::Undefined; break;
            case 1: e.type = OrcEntry::Type::EndOfStack; break;
            case 2: e.type = OrcEntry::Type::Call; break;
            case 3: e.type = OrcEntry::Type::Regs; break;
            case 4: e.type = OrcEntry::Type::RegsPartial; break;
            default: e.type = OrcEntry::Type::Invalid; break;
        }
        e.signal = (flags >> 11) & 1;
        return e;
    }
    bool end = format == OrcFormat::V1 ? (flags >> 10) & 1 : (flags >> 11) & 1;
    unsigned type = (flags >> 8) & 3;
    if (e.sp_reg == orc_reg::kUndefined) {
        e.type = end ? OrcEntry::Type::EndOfStack : OrcEntry::Type::Undefined;
    } else {
        static constexpr OrcEntry::Type kTypes[4] = {OrcEntry::Type::Call, OrcEntry::Type::Regs,
                                                     OrcEntry::Type::RegsPartial, OrcEntry::Type::Invalid};
        e.type = kTypes[type];
    }
    if (format == OrcFormat::V2)
        e.signal = (flags >> 10) & 1;
    else
        e.signal = e.type == OrcEntry::Type::Regs || e.type == OrcEntry::Type::RegsPartial;
    return e;
}

std::array<std::byte, 6> encode_orc_entry(const OrcEntry& e, OrcFormat format) {
    std::uint16_t flags = static_cast<std::uint16_t>(raw_register(e.sp_reg, format) | raw_register(e.bp_reg, format) << 4);
    if (format == OrcFormat::V3 || format == OrcFormat::V4) {
        unsigned type = 7;
        switch (e.type) {
            case OrcEntry::Type::Undefined: type = 0; break;
            case OrcEntry::Type::EndOfStack: type = 1; break;
            case OrcEntry::Type::Call: type = 2; break;
            case OrcEntry::Type::Regs: type = 3; break;
            case OrcEntry::Type::RegsPartial: type = 4; break;
            case OrcEntry::Type::Invalid: type = 7; break;
        }
        flags |= type << 8 | unsigned{e.signal} << 11;
    } else {
        unsigned type = 3;
        bool end = false;
        switch (e.type) {
            case OrcEntry::Type::Undefined:
            case OrcEntry::Type::EndOfStack:
                flags &= 0xf0;  // sp_reg = ORC_REG_UNDEFINED
                type = 0;
                end = e.type == OrcEntry::Type::EndOfStack;
                break;
            case OrcEntry::Type::Call: type = 0; break;
            case OrcEntry::Type::Regs: type = 1; break;
            case OrcEntry::Type::RegsPartial: type = 2; break;
            case OrcEntry::Type::Invalid: type = 3; break;
        }
        flags |= type << 8;
        if (format == OrcFormat::V1)
            flags |= unsigned{end} << 10;
        else
            flags |= unsigned{e.signal} << 10 | unsigned{end} << 11;
    }
    auto sp = static_cast<std::uint16_t>(e.sp_offset);
    auto bp = static_cast<std::uint16_t>(e.bp_offset);
    return {std::byte(sp & 0xff), std::byte(sp >> 8), std::byte(bp & 0xff),
            std::byte(bp >> 8),   std::byte(flags & 0xff), std::byte(flags >> 8)};
}

// ---- sources -------------------------------------------------------------

std::unique_ptr<OrcSource> make_vmlinux_orc(VirtualMemory& memory, const VmlinuxOrcTables& tables) {
    return std::make_unique<VmlinuxOrc>(memory, tables);
}

std::unique_ptr<OrcSource> make_module_orc(VirtualMemory& memory, const ModuleOrcTables& tables) {
    return std::make_unique<ModuleOrc>(memory, tables);
}

void CompositeOrcSource::add(std::unique_ptr<OrcSource> source) { sources_.push_back(std::move(source)); }

void CompositeOrcSource::add_ftrace_trampoline(std::uint64_t begin, std::uint64_t size, std::uint64_t copied_from) {
    trampolines_.push_back({begin, size, copied_from});
}

std::optional<OrcEntry> CompositeOrcSource::find_direct(std::uint64_t ip) {
    for (auto& s : sources_)
        if (auto e = s->find(ip)) return e;
    return std::nullopt;
}

std::optional<OrcEntry> CompositeOrcSource::find(std::uint64_t ip) {
    if (auto e = find_direct(ip)) return e;
    // orc_ftrace_find(): the same offset in the code the trampoline copies.
    for (const Trampoline& t : trampolines_) {
        if (ip - t.begin >= t.size) continue;
        std::uint64_t target = t.copied_from + (ip - t.begin);
        if (target == ip) return std::nullopt;  // "Prevent unlikely recursion"
        return find_direct(target);
    }
    return std::nullopt;
}

// ---- names ---------------------------------------------------------------

const char* to_string(StackType type) {
    switch (type) {
        case StackType::Task: return "task";
        case StackType::Irq: return "IRQ";
        case StackType::Exception: return "exception";
        case StackType::Entry: return "entry";
        case StackType::Unknown: return "unknown";
    }
    return "?";
}

const char* to_string(FrameKind kind) {
    switch (kind) {
        case FrameKind::Vcpu: return "vCPU";
        case FrameKind::TaskSwitch: return "task switch";
        case FrameKind::Call: return "call";
        case FrameKind::Regs: return "pt_regs";
        case FrameKind::PartialRegs: return "iret frame";
    }
    return "?";
}

const char* to_string(UnwindEnd end) {
    switch (end) {
        case UnwindEnd::UserRegs: return "user pt_regs";
        case UnwindEnd::EndOfStackHint: return "end-of-stack hint";
        case UnwindEnd::UserModeVcpu: return "vCPU in user mode";
        case UnwindEnd::Failed: return "failed";
    }
    return "?";
}

UnwindLayouts UnwindLayouts::x86_64() {
    // struct pt_regs (arch/x86/include/asm/ptrace.h, !__i386__):
    // r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss.
    UnwindLayouts l;
    l.pt_regs_size = 21 * 8;
    l.regs_r13 = 2 * 8;
    l.regs_bp = 4 * 8;
    l.regs_r10 = 7 * 8;
    l.regs_ax = 10 * 8;
    l.regs_dx = 12 * 8;
    l.regs_di = 14 * 8;
    l.regs_orig_ax = 15 * 8;
    l.regs_ip = 16 * 8;
    l.regs_cs = 17 * 8;
    l.regs_flags = 18 * 8;
    l.regs_sp = 19 * 8;
    // struct inactive_task_frame (asm/switch_to.h, CONFIG_X86_64):
    // r15 r14 r13 r12 bx bp ret_addr.
    l.frame_size = 7 * 8;
    l.frame_bp = 5 * 8;
    l.frame_ret_addr = 6 * 8;
    return l;
}

// ---- the unwinder ----------------------------------------------------------

namespace {

std::string layout_problem(const UnwindLayouts& l) {
    constexpr std::uint64_t kMax = 4096;
    if (l.pt_regs_size < 8 || l.pt_regs_size > kMax) return "pt_regs size " + std::to_string(l.pt_regs_size);
    for (std::uint64_t off : {l.regs_ip, l.regs_sp, l.regs_bp, l.regs_cs, l.regs_flags, l.regs_orig_ax, l.regs_r10,
                              l.regs_r13, l.regs_di, l.regs_dx, l.regs_ax})
        if (off % 8 != 0 || off + 8 > l.pt_regs_size) return "pt_regs member at offset " + std::to_string(off);
    // The iret frame (ip, cs, flags, sp, ss) is the tail of pt_regs:
    // IRET_FRAME_OFFSET = offsetof(ip).
    if (l.regs_cs < l.regs_ip || l.regs_sp < l.regs_ip || l.regs_flags < l.regs_ip)
        return "iret frame members before pt_regs.ip";
    if (l.frame_size < 16 || l.frame_size > kMax || l.frame_bp + 8 > l.frame_size || l.frame_ret_addr + 8 > l.frame_size ||
        l.frame_bp % 8 != 0 || l.frame_ret_addr % 8 != 0)
        return "inactive_task_frame size " + std::to_string(l.frame_size);
    return {};
}

bool on_stack(const StackArea& a, std::uint64_t addr, std::uint64_t len) {
    return addr >= a.begin && addr < a.end && len <= a.end - addr;
}

class Unwinder {
public:
    Unwinder(const UnwindContext& c, const UnwindStart& s) : c_(c), s_(s), l_(c.layouts) {}

    UnwindResult run() {
        if (std::string p = layout_problem(l_); !p.empty())
            return failed("inconsistent pt_regs/inactive_task_frame layout: " + p);
        if (s_.from_vcpu) {
            // __unwind_start() with regs: user-mode regs end the walk at once.
            if (s_.cs & 3) {
                result_.reliable = true;
                result_.end = UnwindEnd::UserModeVcpu;
                result_.reason = "the vCPU was in user mode (cs " + hex_short(s_.cs) + "): no kernel frames";
                return std::move(result_);
            }
            ip_ = s_.ip;
            sp_ = s_.sp;
            bp_ = s_.bp;
            regs_ = {RegsKind::Host, 0};
            full_regs_ = true;
            signal_ = true;
            kind_ = FrameKind::Vcpu;
            if (!get_stack_info(sp_, "the vCPU's stack pointer")) {
                // The vCPU's RIP is known for certain even when its stack
                // pointer is not on a kernel stack (e.g. the first
                // instructions of the syscall entry, still on the user
                // stack): report it as the one frame of an unreliable walk.
                StackFrame f;
                f.ip = GuestVirtAddr{ip_};
                f.sp = sp_;
                f.kind = FrameKind::Vcpu;
                result_.frames.push_back(std::move(f));
                return failed();
            }
        } else {
            if (s_.task_on_cpu)
                return failed("the task is on a CPU (task->on_cpu): running or mid context switch; "
                              "unwind it from its vCPU's registers");
            // The inactive_task_frame at task->thread.sp, pushed by __switch_to_asm.
            std::uint64_t frame = s_.sp;
            if (!access_ok(frame, l_.frame_size, "inactive_task_frame")) return failed();
            if (!read_u64(frame + l_.frame_ret_addr, ip_) || !read_u64(frame + l_.frame_bp, bp_)) return failed();
            sp_ = frame + l_.frame_size;
            if (!cur_ || !cur_->contains(sp_))
                return failed("the inactive_task_frame at " + hex(frame) + " leaves no stack above it");
            signal_ = c_.ret_from_fork != 0 && ip_ == c_.ret_from_fork;
            kind_ = FrameKind::TaskSwitch;
        }

        // arch_stack_walk_reliable()'s loop; every pass adds a frame or ends.
        for (;;) {
            if (regs_.kind != RegsKind::None) {
                std::optional<bool> user = user_mode(regs_);
                if (!user) return failed();
                if (*user) return user_regs_end();
            }
            if (result_.frames.size() >= c_.max_frames)
                return failed("more than " + std::to_string(c_.max_frames) + " frames");
            bool ip_ok = check_frame_ip();
            // A walk from a vCPU always shows where the vCPU was, even if
            // that address is not kernel text with ORC data.
            if (!ip_ok && !(kind_ == FrameKind::Vcpu && result_.frames.empty())) return failed();
            StackFrame f;
            f.ip = GuestVirtAddr{ip_};
            f.sp = sp_;
            if (auto a = area_for(sp_)) {
                f.stack = a->type;
                f.stack_name = a->name;
            }
            f.kind = kind_;
            f.interrupt_frame = kind_ == FrameKind::Regs || kind_ == FrameKind::PartialRegs;
            f.recovered = recovered_;
            result_.frames.push_back(std::move(f));
            if (!ip_ok) return failed();

            switch (next_frame()) {
                case Step::Next: break;
                case Step::Error: return failed();
                case Step::End:
                    result_.reliable = true;
                    result_.end = UnwindEnd::EndOfStackHint;
                    result_.reason = "end of stack hint at " + hex(ip_);
                    return std::move(result_);
            }
        }
    }

private:
    enum class Step { Next, End, Error };
    enum class RegsKind { None, Host, Guest };
    struct Regs {
        RegsKind kind = RegsKind::None;
        std::uint64_t addr = 0;  // Guest: the pt_regs address (partial: sp - IRET_FRAME_OFFSET)
    };
    enum class Reg { Bp, R10, R13, Di, Dx, Ax };

    using Key = std::pair<StackType, std::string>;

    // -- results and errors --
    bool fail(std::string reason) {
        if (reason_.empty()) reason_ = std::move(reason);
        return false;
    }
    UnwindResult failed(std::string reason = {}) {
        if (!reason.empty()) fail(std::move(reason));
        result_.reliable = false;
        result_.end = UnwindEnd::Failed;
        result_.reason = reason_.empty() ? "unwind failed" : reason_;
        return std::move(result_);
    }

    // -- stacks (get_stack_info / stack_access_ok) --
    std::optional<StackArea> area_for(std::uint64_t addr) const {
        std::optional<StackArea> a = c_.stack_of(addr);
        if (!a || !a->contains(addr)) return std::nullopt;
        if (!s_.from_vcpu && a->type != StackType::Task) return std::nullopt;
        return a;
    }

    bool get_stack_info(std::uint64_t addr, const std::string& what) {
        cur_.reset();
        std::optional<StackArea> a = area_for(addr);
        if (!a)
            return fail(what + " " + hex(addr) + " is not on any stack of the task" +
                        (s_.from_vcpu ? "" : " (a sleeping task has only its task stack)"));
        Key key{a->type, a->name};
        if (std::find(visited_.begin(), visited_.end(), key) != visited_.end())
            return fail(what + " " + hex(addr) + " returns to the " + a->name + " stack, already unwound");
        visited_.push_back(std::move(key));
        cur_ = std::move(a);
        return true;
    }

    bool access_ok(std::uint64_t addr, std::uint64_t len, const std::string& what) {
        if (cur_ && on_stack(*cur_, addr, len)) return true;
        if (!get_stack_info(addr, what)) return false;
        if (!on_stack(*cur_, addr, len))
            return fail(what + " at " + hex(addr) + " (" + std::to_string(len) + " bytes) runs past the end of the " +
                        cur_->name + " stack at " + hex(cur_->end));
        return true;
    }

    bool read_u64(std::uint64_t addr, std::uint64_t& out) {
        try {
            out = c_.memory->read_u64(GuestVirtAddr{addr});
            return true;
        } catch (const Error& e) {
            if (!is_guest_error(e)) throw;
            return fail("stack memory at " + hex(addr) + " unreadable: " + e.what());
        }
    }

    bool deref(std::uint64_t addr, std::uint64_t& out, const std::string& what) {
        return access_ok(addr, 8, what) && read_u64(addr, out);
    }

    // -- registers --
    std::uint64_t offset_of(Reg r) const {
        switch (r) {
            case Reg::Bp: return l_.regs_bp;
            case Reg::R10: return l_.regs_r10;
            case Reg::R13: return l_.regs_r13;
            case Reg::Di: return l_.regs_di;
            case Reg::Dx: return l_.regs_dx;
            case Reg::Ax: return l_.regs_ax;
        }
        return 0;
    }
    std::uint64_t host_value(Reg r) const {
        switch (r) {
            case Reg::Bp: return s_.bp;
            case Reg::R10: return s_.r10;
            case Reg::R13: return s_.r13;
            case Reg::Di: return s_.di;
            case Reg::Dx: return s_.dx;
            case Reg::Ax: return s_.ax;
        }
        return 0;
    }

    // get_reg(): from full regs, or from the previous full regs when the
    // current ones are only an iret frame. nullopt: not available (or a read
    // failed, then reason_ is set).
    std::optional<std::uint64_t> get_reg(Reg r) {
        if (regs_.kind == RegsKind::None) return std::nullopt;
        const Regs* from = full_regs_ ? &regs_ : prev_regs_.kind != RegsKind::None ? &prev_regs_ : nullptr;
        if (!from) return std::nullopt;
        if (from->kind == RegsKind::Host) return host_value(r);
        std::uint64_t v = 0;
        if (!read_u64(from->addr + offset_of(r), v)) return std::nullopt;
        return v;
    }

    std::optional<bool> user_mode(const Regs& r) {
        if (r.kind == RegsKind::Host) return (s_.cs & 3) != 0;
        std::uint64_t cs = 0;
        if (!read_u64(r.addr + l_.regs_cs, cs)) return std::nullopt;
        return (cs & 3) != 0;
    }

    // The user-task end: the user-mode pt_regs must be the frame the entry
    // code built at the top of its stack.
    UnwindResult user_regs_end() {
        if (regs_.kind != RegsKind::Guest) return failed("user-mode registers without a pt_regs frame");
        std::uint64_t end = regs_.addr + l_.pt_regs_size;
        std::optional<StackArea> a = area_for(end - 8);
        const std::uint64_t padding = a && a->type == StackType::Task ? c_.task_stack_padding : 0;
        if (!a || a->end - padding != end)
            return failed("user-mode pt_regs at " + hex(regs_.addr) + " are not at the top of " +
                          (a ? "the " + a->name + " stack (top " + hex(a->end) +
                                   (padding ? " less " + std::to_string(padding) + " bytes of padding" : "") + ")"
                             : std::string("a stack")));
        if (a->type == StackType::Irq)
            return failed("user-mode pt_regs at " + hex(regs_.addr) + " on the IRQ stack");
        result_.reliable = true;
        result_.end = UnwindEnd::UserRegs;
        result_.reason = "reached user pt_regs at " + hex(regs_.addr) + " (top of the " + a->name + " stack)";
        return std::move(result_);
    }

    // -- frame checks (unwind_get_return_address, rst §4.4) --
    const ReturnTrampoline* trampoline_at(std::uint64_t ip) const {
        for (const ReturnTrampoline& t : c_.return_trampolines)
            if (ip >= t.begin && ip < t.end) return &t;
        return nullptr;
    }

    bool check_frame_ip() {
        if (ip_ == 0) return fail("frame " + std::to_string(result_.frames.size()) + " has address 0");
        if (c_.is_kernel_text && !c_.is_kernel_text(ip_))
            return fail("frame " + std::to_string(result_.frames.size()) + " address " + hex(ip_) +
                        " is not kernel text");
        if (const ReturnTrampoline* t = trampoline_at(ip_))
            return fail("frame " + std::to_string(result_.frames.size()) + " at " + hex(ip_) + " is inside " + t->name +
                        ": its caller's return address is held elsewhere");
        return true;
    }

    // unwind_recover_ret_addr() / unwind_recover_rethook(): a return address
    // equal to a return trampoline's entry was rewritten; `slot` is where
    // it was read.
    bool recover(std::uint64_t& ip, std::uint64_t slot) {
        recovered_ = false;
        const ReturnTrampoline* t = trampoline_at(ip);
        if (!t || ip != t->begin) return true;  // inside-the-trampoline ips are refused per frame
        if (c_.recover_return_address) {
            if (std::optional<std::uint64_t> orig = c_.recover_return_address(ip, slot)) {
                ip = *orig;
                recovered_ = true;
                return true;
            }
        }
        return fail("return address at " + hex(slot) + " was rewritten to " + t->name +
                    " and the original cannot be recovered");
    }

    std::optional<OrcEntry> lookup(std::uint64_t ip) {
        try {
            return c_.orc->find(ip);
        } catch (const Error& e) {
            if (!is_guest_error(e)) throw;
            fail("ORC data for " + hex(ip) + " unreadable: " + e.what());
            return std::nullopt;
        }
    }

    // unwind_next_frame(), step for step.
    Step next_frame() {
        const std::uint64_t orig_ip = ip_, prev_sp = sp_;
        const std::optional<Key> prev_type = cur_ ? std::optional<Key>(Key{cur_->type, cur_->name}) : std::nullopt;

        // A return address's own instruction may belong to the next
        // function (a call to a noreturn function): look up ip - 1, unless
        // the ip came from a signal/interrupt frame.
        const std::uint64_t at = signal_ ? ip_ : ip_ - 1;
        std::optional<OrcEntry> orc = lookup(at);
        if (!reason_.empty()) return Step::Error;
        if (!orc) {
            fail("no ORC data for " + hex(orig_ip) + (at != orig_ip ? " (looked up at " + hex(at) + ")" : std::string()));
            return Step::Error;
        }
        switch (orc->type) {
            case OrcEntry::Type::Undefined:
                fail("ORC entry for " + hex(at) + " is UNDEFINED: no unwind information for that code");
                return Step::Error;
            case OrcEntry::Type::EndOfStack: return Step::End;
            case OrcEntry::Type::Invalid:
                fail("unknown ORC entry type (flags " + hex_short(orc->raw_flags) + ") for " + hex(at));
                return Step::Error;
            default: break;
        }

        // The previous frame's stack pointer.
        std::uint64_t sp = 0;
        bool indirect = false;
        auto from_reg = [&](Reg r, const char* name) {
            std::optional<std::uint64_t> v = get_reg(r);
            if (!v) {
                fail(std::string("missing ") + name + " value at " + hex(orig_ip) + ": no pt_regs to take it from");
                return false;
            }
            sp = *v;
            return true;
        };
        switch (orc->sp_reg) {
            case orc_reg::kSp: sp = sp_ + sext(orc->sp_offset); break;
            case orc_reg::kBp: sp = bp_ + sext(orc->sp_offset); break;
            case orc_reg::kSpIndirect:
                sp = sp_;
                indirect = true;
                break;
            case orc_reg::kBpIndirect:
                sp = bp_ + sext(orc->sp_offset);
                indirect = true;
                break;
            case orc_reg::kR10:
                if (!from_reg(Reg::R10, "R10")) return Step::Error;
                break;
            case orc_reg::kR13:
                if (!from_reg(Reg::R13, "R13")) return Step::Error;
                break;
            case orc_reg::kDi:
                if (!from_reg(Reg::Di, "RDI")) return Step::Error;
                break;
            case orc_reg::kDx:
                if (!from_reg(Reg::Dx, "RDX")) return Step::Error;
                break;
            case orc_reg::kAx:
                if (!from_reg(Reg::Ax, "RAX")) return Step::Error;
                break;
            default:
                fail("unknown ORC SP base register " + std::to_string(orc->raw_flags & 0xf) + " for " + hex(at));
                return Step::Error;
        }
        if (indirect) {
            std::uint64_t slot = sp;
            if (!deref(slot, sp, "indirect stack pointer")) return Step::Error;
            if (orc->sp_reg == orc_reg::kSpIndirect) sp += sext(orc->sp_offset);
        }

        // The previous frame's ip (and sp, and regs).
        switch (orc->type) {
            case OrcEntry::Type::Call: {
                std::uint64_t ip_p = sp - 8, ip = 0;
                if (!deref(ip_p, ip, "return address")) return Step::Error;
                if (!recover(ip, ip_p)) return Step::Error;
                ip_ = ip;
                sp_ = sp;
                regs_ = {};
                prev_regs_ = {};
                kind_ = FrameKind::Call;
                break;
            }
            case OrcEntry::Type::Regs: {
                std::uint64_t ip = 0, new_sp = 0;
                if (!access_ok(sp, l_.pt_regs_size, "pt_regs") || !read_u64(sp + l_.regs_ip, ip) ||
                    !read_u64(sp + l_.regs_sp, new_sp))
                    return Step::Error;
                if (!recover(ip, new_sp - 8)) return Step::Error;
                ip_ = ip;
                sp_ = new_sp;
                regs_ = {RegsKind::Guest, sp};
                prev_regs_ = {};
                full_regs_ = true;
                kind_ = FrameKind::Regs;
                break;
            }
            case OrcEntry::Type::RegsPartial: {
                // sp points at the iret frame: regs = sp - IRET_FRAME_OFFSET.
                std::uint64_t regs = sp - l_.regs_ip, ip = 0, new_sp = 0;
                if (!access_ok(sp, l_.pt_regs_size - l_.regs_ip, "iret frame") || !read_u64(regs + l_.regs_ip, ip) ||
                    !read_u64(regs + l_.regs_sp, new_sp))
                    return Step::Error;
                if (!recover(ip, new_sp - 8)) return Step::Error;
                ip_ = ip;
                sp_ = new_sp;
                if (full_regs_) prev_regs_ = regs_;
                regs_ = {RegsKind::Guest, regs};
                full_regs_ = false;
                kind_ = FrameKind::PartialRegs;
                break;
            }
            default: return Step::Error;  // handled above
        }

        // The previous frame's bp.
        switch (orc->bp_reg) {
            case orc_reg::kUndefined:
                if (std::optional<std::uint64_t> v = get_reg(Reg::Bp))
                    bp_ = *v;
                else if (!reason_.empty())
                    return Step::Error;
                break;
            case orc_reg::kPrevSp:
                if (!deref(sp + sext(orc->bp_offset), bp_, "saved bp")) return Step::Error;
                break;
            case orc_reg::kBp: {
                std::uint64_t v = 0;
                if (!deref(bp_ + sext(orc->bp_offset), v, "saved bp")) return Step::Error;
                bp_ = v;
                break;
            }
            default:
                fail("unknown ORC BP base register " + std::to_string((orc->raw_flags >> 4) & 0xf) + " for " + hex(at));
                return Step::Error;
        }

        // Prevent a recursive loop due to bad ORC data.
        if (cur_ && prev_type && Key{cur_->type, cur_->name} == *prev_type && on_stack(*cur_, sp_, 8) &&
            sp_ <= prev_sp) {
            fail("stack going in the wrong direction at " + hex(orig_ip) + ": sp " + hex(sp_) + " after " +
                 hex(prev_sp) + " on the " + cur_->name + " stack");
            return Step::Error;
        }
        signal_ = orc->signal;
        return Step::Next;
    }

    const UnwindContext& c_;
    const UnwindStart& s_;
    const UnwindLayouts& l_;
    UnwindResult result_;
    std::string reason_;

    std::uint64_t ip_ = 0, sp_ = 0, bp_ = 0;
    bool signal_ = false, full_regs_ = false, recovered_ = false;
    Regs regs_, prev_regs_;
    FrameKind kind_ = FrameKind::Call;
    std::optional<StackArea> cur_;  // state->stack_info; nullopt = STACK_TYPE_UNKNOWN
    std::vector<Key> visited_;      // state->stack_mask
};

}  // namespace

UnwindResult unwind_stack(const UnwindContext& context, const UnwindStart& start) {
    if (!context.memory || !context.orc || !context.stack_of)
        throw Error(ErrorKind::Internal, "unwind_stack: context lacks memory, ORC source or stack_of");
    return Unwinder(context, start).run();
}

}  // namespace hvpatch
