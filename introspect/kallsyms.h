// The guest kernel's symbol table, decoded from its compressed kallsyms
// tables in guest memory (no vmlinux, no System.map).
//
// Layout history (scripts/kallsyms.c, kernel/kallsyms.c) — see kallsyms.cpp's
// header comment for the full table and how the decoder tells them apart.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hvpatch/address.h"
#include "introspect/virtual_memory.h"

namespace hvpatch {

struct KernelSymbol {
    std::string name;
    GuestVirtAddr address;
    char type = '?';      // as /proc/kallsyms prints it: 'T', 't', 'D', 'b', ...
    std::string module;   // "" for vmlinux
};

// Where the tables were found (for `inspect` and for diagnostics).
// decode() reads the tables at these addresses; num_syms, relative_base,
// absolute_percpu, big_symbols and format are outputs (filled from memory,
// ignored on input).
struct KallsymsLayout {
    // relative_base_var is 0 for place-relative tables (7.0+), which have none.
    GuestVirtAddr offsets, relative_base_var, num_syms_var, names, markers, token_table, token_index;
    // kallsyms_seqs_of_names (6.2+, backported to 6.1.y stable; the Debian
    // 6.1 kernels have it); address 0 = the kernel has none.
    GuestVirtAddr seqs_of_names;
    // kallsyms_relative_base; for place-relative tables, the lowest symbol
    // address (what resolve() takes as the start of kernel symbols).
    std::uint64_t relative_base = 0;
    std::uint64_t num_syms = 0;
    bool base_relative = true;     // CONFIG_KALLSYMS_BASE_RELATIVE (must be true: the only kind decoded)
    // Input: 7.0+ tables, where offsets[i] is the s32 distance from
    // &offsets[i] to the symbol (no kallsyms_relative_base).
    bool place_relative = false;
    // Input: every label's alignment: 8 up to 6.x on 64-bit, 4 from 7.0.
    unsigned label_alignment = 8;
    bool absolute_percpu = false;  // CONFIG_KALLSYMS_ABSOLUTE_PERCPU (seen in the offsets' signs)
    std::uint64_t big_symbols = 0; // names stored with a two-byte length (6.1+)
    std::string format;            // e.g. "4.6-6.3 order, base-relative, absolute per-CPU, seqs_of_names"
};

class KallsymsTable {
public:
    // Finds the tables by their shape inside the kernel image
    // [image_start, image_start + image_size) and decodes every symbol.
    // The range must contain _text (kallsyms_relative_base, checked) and the
    // tables; find_kernel_image() gives exactly that. A bad range (empty,
    // wrapping) is Error(Usage).
    // Throws Error(Guest) when no consistent set of tables is found, or when
    // they are truncated/corrupt (naming the table and address), or when they
    // are in a layout this decoder does not support (see kallsyms.cpp).
    // Bounded: at most `image_size` bytes scanned (unmapped pages inside the
    // image are skipped), num_syms capped at kMaxSymbols.
    static constexpr std::uint64_t kMaxSymbols = 2'000'000;  // Debian 6.1.0-56-amd64 has 94,266
    static KallsymsTable locate(VirtualMemory& memory, GuestVirtAddr image_start, std::uint64_t image_size);

    // Decodes tables whose addresses are already known (used by locate()
    // and by tests on synthetic tables).
    static KallsymsTable decode(VirtualMemory& memory, const KallsymsLayout& layout);

    const KallsymsLayout& layout() const { return layout_; }
    // vmlinux symbols in kallsyms order (the order /proc/kallsyms prints;
    // it skips symbols whose name is empty).
    const std::vector<KernelSymbol>& symbols() const { return symbols_; }

    // All symbols of that name, in address order. sympos (livepatch's
    // old_sympos) is 1-based into this list; 0 means "the only one" and
    // fails when there are several.
    std::vector<KernelSymbol> find_all(std::string_view name) const;
    std::optional<KernelSymbol> find(std::string_view name, unsigned sympos = 0) const;
    // Throws Error(Guest) "symbol 'x' not found in the guest kernel" /
    // "... is ambiguous (N matches), give a position".
    KernelSymbol require(std::string_view name, unsigned sympos = 0) const;

    struct Resolved {
        KernelSymbol symbol;
        std::uint64_t offset = 0;  // address - symbol.address
        std::uint64_t size = 0;    // next symbol's address - symbol.address (0 if last)
    };
    // The symbol containing `addr` (greatest address <= addr), as
    // /proc/PID/stack and %pS resolve it: of several symbols at that address
    // the first in kallsyms order; size up to the next greater address.
    // nullopt below the lowest non-per-CPU symbol and above the last symbol
    // (per-CPU offsets and module addresses are not vmlinux addresses).
    std::optional<Resolved> resolve(GuestVirtAddr addr) const;

private:
    KallsymsLayout layout_;
    std::vector<KernelSymbol> symbols_;     // kallsyms order, which is by address (checked)
    std::vector<std::uint32_t> by_name_;    // indices into symbols_, sorted by name then address
};

}  // namespace hvpatch
