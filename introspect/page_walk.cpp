// x86-64 page-table walk (Intel SDM vol. 3A ch. 4.5, AMD APM vol. 2 ch. 5.3).
//
// What counts as "reserved" here is only what is reserved on every x86-64
// CPU whatever its configuration, because the walker knows neither
// MAXPHYADDR, EFER.NXE nor whether the CPU supports 1 GiB pages:
//   - PS (bit 7) in a PML5 or PML4 entry;
//   - bits 13..29 of a PDPT entry that maps a 1 GiB page (bit 12 is PAT);
//   - bits 13..20 of a PD entry that maps a 2 MiB page (bit 12 is PAT).
// Not checked, because they depend on the CPU or on state the walker does not
// see: physical-address bits between MAXPHYADDR and 51 (addresses are simply
// masked to 52 bits), NX (bit 63) when EFER.NXE=0 (Linux always sets NXE),
// PS in a PDPT entry on a CPU without 1 GiB pages (treated as a 1 GiB page),
// and AMD's must-be-zero bit 8 of PML4 entries (Intel ignores it). Bits 52..62
// are ignored or protection keys, never reserved.
//
// With page-table isolation the kernel switches CR3 between two PGDs that
// differ in bit 12; that bit is kept, so the walk follows whichever CR3 value
// is passed in.
#include "introspect/page_walk.h"

#include <algorithm>
#include <array>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t kPresent = 1ull << 0;
constexpr std::uint64_t kWritable = 1ull << 1;
constexpr std::uint64_t kUser = 1ull << 2;
constexpr std::uint64_t kPageSize = 1ull << 7;
constexpr std::uint64_t kNoExecute = 1ull << 63;

constexpr std::uint64_t kAddrMask = 0x000f'ffff'ffff'f000ull;  // bits 12..51
constexpr std::uint64_t kAddr1G = 0x000f'ffff'c000'0000ull;    // bits 30..51
constexpr std::uint64_t kAddr2M = 0x000f'ffff'ffe0'0000ull;    // bits 21..51
constexpr std::uint64_t kReserved1G = 0x3fff'e000ull;          // bits 13..29
constexpr std::uint64_t kReserved2M = 0x001f'e000ull;          // bits 13..20

constexpr std::uint64_t k4K = 1ull << 12;
constexpr std::uint64_t k2M = 1ull << 21;
constexpr std::uint64_t k1G = 1ull << 30;

const char* level_name(int level) {
    switch (level) {
        case 5: return "PML5";
        case 4: return "PML4";
        case 3: return "PDPT";
        case 2: return "PD";
        case 1: return "PT";
    }
    return "page-table";
}

// Reserved bits set in `entry` at `level`, per the list at the top.
std::uint64_t reserved_bits(int level, std::uint64_t entry) {
    if (level >= 4) return entry & kPageSize;
    if (level == 3 && (entry & kPageSize)) return entry & kReserved1G;
    if (level == 2 && (entry & kPageSize)) return entry & kReserved2M;
    return 0;
}

bool is_canonical(std::uint64_t va, int levels) {
    // Bits 63..(width-1) must all equal bit (width-1); width is 48 or 57.
    int width = levels == 5 ? 57 : 48;
    std::uint64_t top = va >> (width - 1);
    std::uint64_t all = (1ull << (64 - width + 1)) - 1;
    return top == 0 || top == all;
}

}  // namespace

PagingLevels paging_levels_from_cr4(std::uint64_t cr4) {
    return (cr4 & (1ull << 12)) ? PagingLevels::Five : PagingLevels::Four;
}

std::string TranslationFailure::describe(GuestVirtAddr va) const {
    std::string head = hex(va.value) + " not mapped: ";
    std::string entry_at = std::string(level_name(level)) + " entry at " + hex(entry_address.value);
    switch (reason) {
        case Reason::NonCanonical: {
            // `level` holds the paging depth (4 or 5) for this reason.
            int width = level == 5 ? 57 : 48;
            return head + "not canonical for " + std::to_string(level) + "-level paging (bits 63.." +
                   std::to_string(width - 1) + " must all equal bit " + std::to_string(width - 1) + ")";
        }
        case Reason::NotPresent: return head + entry_at + " is not present (" + hex_short(entry) + ")";
        case Reason::ReservedBits:
            return head + entry_at + " has reserved bits " + hex_short(reserved_bits(level, entry)) +
                   " set (" + hex_short(entry) + ")";
        case Reason::TableUnreadable:
            return head + entry_at + " cannot be read (outside guest RAM; the table pointer above is bad)";
    }
    return head + entry_at;
}

PageWalker::PageWalker(PhysicalMemoryReader& memory, std::uint64_t cr3, PagingLevels levels)
    : memory_(memory), cr3_(cr3), levels_(levels) {}

WalkResult PageWalker::walk(GuestVirtAddr va) const {
    const int top = static_cast<int>(levels_);
    WalkResult result;
    if (!is_canonical(va.value, top)) {
        result.failure = TranslationFailure{TranslationFailure::Reason::NonCanonical, top, {}, 0};
        return result;
    }

    std::uint64_t table = cr3_ & kAddrMask;  // drops PCID (0..11) and bits 52..63
    bool writable = true;
    bool user = true;
    bool no_execute = false;
    for (int level = top; level >= 1; --level) {
        const int shift = 12 + 9 * (level - 1);
        const std::uint64_t index = (va.value >> shift) & 0x1ff;
        const GuestPhysAddr entry_address{table + index * 8};

        std::array<std::byte, 8> raw{};
        try {
            memory_.read_physical(entry_address, raw);
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Guest) throw;
            result.failure =
                TranslationFailure{TranslationFailure::Reason::TableUnreadable, level, entry_address, 0};
            return result;
        }
        std::uint64_t entry = 0;
        for (int i = 7; i >= 0; --i) entry = (entry << 8) | static_cast<std::uint64_t>(raw[i]);

        if (!(entry & kPresent)) {
            result.failure = TranslationFailure{TranslationFailure::Reason::NotPresent, level, entry_address, entry};
            return result;
        }
        if (reserved_bits(level, entry) != 0) {
            result.failure =
                TranslationFailure{TranslationFailure::Reason::ReservedBits, level, entry_address, entry};
            return result;
        }
        writable = writable && (entry & kWritable);
        user = user && (entry & kUser);
        no_execute = no_execute || (entry & kNoExecute);

        std::uint64_t page_size = 0;
        std::uint64_t base = 0;
        if (level == 3 && (entry & kPageSize)) {
            page_size = k1G;
            base = entry & kAddr1G;
        } else if (level == 2 && (entry & kPageSize)) {
            page_size = k2M;
            base = entry & kAddr2M;
        } else if (level == 1) {
            page_size = k4K;  // bit 7 here is PAT, not PS
            base = entry & kAddrMask;
        }
        if (page_size != 0) {
            result.translation =
                Translation{GuestPhysAddr{base | (va.value & (page_size - 1))}, page_size, writable, user, no_execute};
            return result;
        }
        table = entry & kAddrMask;
    }
    return result;  // not reached: level 1 always ends the walk
}

GuestPhysAddr PageWalker::translate(GuestVirtAddr va) const {
    WalkResult r = walk(va);
    if (!r.ok()) throw Error(ErrorKind::Guest, r.failure->describe(va));
    return r.translation->phys;
}

void PageWalker::read_virtual(GuestVirtAddr va, std::span<std::byte> out) const {
    if (out.empty()) return;
    if (out.size() - 1 > ~std::uint64_t{0} - va.value)
        throw Error(ErrorKind::Guest, "cannot read " + std::to_string(out.size()) + " bytes at " + hex(va.value) +
                                          ": the range wraps past the top of the address space");
    std::size_t done = 0;
    while (done < out.size()) {
        const GuestVirtAddr at = va + done;
        WalkResult r = walk(at);
        if (!r.ok())
            throw Error(ErrorKind::Guest, "cannot read " + std::to_string(out.size()) + " bytes at " +
                                              hex(va.value) + ": " + r.failure->describe(at));
        const Translation& t = *r.translation;
        // One translation covers the rest of its (possibly large) page.
        const std::uint64_t in_page = t.page_size - (at.value & (t.page_size - 1));
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(in_page, out.size() - done));
        try {
            memory_.read_physical(t.phys, out.subspan(done, n));
        } catch (const Error& e) {
            if (e.kind() != ErrorKind::Guest) throw;
            // Part of a large page may be readable: find the first 4 KiB
            // piece that is not, so the message names the first bad address.
            std::uint64_t off = 0;
            while (off < n) {
                const std::uint64_t piece =
                    std::min<std::uint64_t>(n - off, k4K - ((t.phys.value + off) & (k4K - 1)));
                try {
                    memory_.read_physical(t.phys + off, out.subspan(done + off, piece));
                } catch (const Error& inner) {
                    if (inner.kind() != ErrorKind::Guest) throw;
                    throw Error(ErrorKind::Guest, "cannot read " + std::to_string(out.size()) + " bytes at " +
                                                      hex(va.value) + ": " + hex(at.value + off) +
                                                      " maps to physical " + hex(t.phys.value + off) +
                                                      ", which cannot be read: " + inner.what());
                }
                off += piece;
            }
            // Every piece read on its own: the reader is inconsistent; the
            // bytes are in `out` all the same.
        }
        done += n;
    }
}

}  // namespace hvpatch
