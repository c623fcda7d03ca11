// kallsyms: the guest kernel's compressed symbol table, found by its shape in
// the kernel image and decoded without vmlinux or System.map.
//
// Format history (scripts/kallsyms.c writes the tables, kernel/kallsyms.c
// reads them; the guest's own source is /usr/src/linux-source-6.1):
//
//   kernel        tables in .rodata, in this order             what changed
//   ------------  -------------------------------------------  -----------------------------
//   < 4.6         addresses num_syms names markers             kallsyms_addresses[]: absolute
//                 token_table token_index                      unsigned longs
//   4.6           offsets relative_base num_syms names         CONFIG_KALLSYMS_BASE_RELATIVE:
//                 markers token_table token_index              s32 offsets; with
//                                                              KALLSYMS_ABSOLUTE_PERCPU (x86-64
//                                                              SMP) value >= 0 is an absolute
//                                                              per-CPU offset, value < 0 means
//                                                              relative_base - 1 - value;
//                                                              without it, relative_base + (u32)value
//   6.1           (same order)                                 "big" symbols: a compressed length
//                                                              >= 0x80 takes two bytes, ULEB128
//                                                              (len & 0x7f) | (next << 7);
//                                                              KSYM_NAME_LEN 128 -> 512
//   6.2           ... markers seqs_of_names token_table ...    kallsyms_seqs_of_names: 3 bytes
//                 (backported to 6.1.y: Debian 6.1.0-56 has    big-endian per symbol, symbol
//                 it, see the guest's 6.1.192 source)          indices in name order
//   6.4           num_syms names markers token_table           "scripts/kallsyms: change the
//                 token_index offsets relative_base            output order" (offsets moved
//                 seqs_of_names                                after token_index); Debian's
//                                                              6.12 has this order
//   6.15          (same order)                                 KALLSYMS_ABSOLUTE_PERCPU removed:
//                                                              offsets are relative_base + u32
//   7.0           num_syms names markers token_table           "kallsyms: ... pc-relative"
//                 token_index offsets seqs_of_names            offsets: offsets[i] is the s32
//                                                              distance from &offsets[i] to the
//                                                              symbol (".long _text - . + x");
//                                                              kallsyms_relative_base gone;
//                                                              every label ".balign 4"
//                                                              (Debian 7.2's scripts/kallsyms.c)
//
// Up to 6.x every label is ".balign 8" on 64-bit, so each table starts
// 8-aligned and the gaps are zero padding of fewer than 8 bytes; from 7.0
// ".balign 4" (num_syms is then directly followed by names). Common to all
// versions:
//   - kallsyms_names is a stream of [length][length code bytes]; each code
//     byte indexes kallsyms_token_index, whose u16 is the offset of a
//     NUL-terminated token in kallsyms_token_table. The expansion's first
//     character is the type letter /proc/kallsyms prints ('T', 't', 'D', ...);
//     per-CPU symbols made absolute get 'A'. Names are < 512 characters.
//   - kallsyms_markers[i] is the names offset of symbol 256*i.
//   - Symbols are sorted by address (ties: non-weak first, then by linker
//     "provide" symbols last, then by leading underscores, then input order).
//   - relative_base is the lowest non-absolute symbol address, so that
//     symbol's offset is exactly 0 (or -1 with absolute per-CPU).
//   - The token table is written in index order 0..255, and every character
//     that occurs in a symbol is its own one-character token at its own
//     index (insert_real_symbols_in_table()). Digits occur in symbols, so
//     tokens 0x30..0x39 are "0\0" "1\0" ... "9\0": twenty bytes that locate()
//     searches for.
//
// Supported: the 4.6-6.3 order, base-relative with or without absolute
// per-CPU offsets, one- and two-byte lengths, with or without
// seqs_of_names (told apart by the gap between kallsyms_markers and
// kallsyms_token_table: < 8 bytes, or 3 * num_syms rounded up to 8); the
// 6.4+ order (base-relative, offsets right after token_index); and the 7.0
// place-relative order with 4-byte labels. locate() tries the 8-aligned
// shapes first (old order: offsets and relative_base before num_syms; else
// new order: relative_base after the offsets, which must hold an address in
// the image), then the 4-aligned place-relative shape; decode() checks
// every symbol, so a wrong guess fails rather than gives wrong addresses.
// Refused with an error that says so: absolute address tables (< 4.6 or
// BASE_RELATIVE=n).
//
// The guest is untrusted: every count is capped, every offset and index is
// checked against the table it points into, every loop is bounded, the
// search has a work budget, and a failed check is Error(Guest) naming the
// table and address.
#include "introspect/kallsyms.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string_view>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

constexpr std::size_t kNameMax = 512;             // type letter + name (KSYM_NAME_LEN in 6.1)
constexpr std::size_t kTokenSlot = 32;            // tokens up to this long are copied in one fixed-size move
constexpr std::uint64_t kMaxCompressedLen = 0x3fff;  // two-byte ULEB128 maximum
constexpr std::uint64_t kTokenTableMax = 0x10000 + kNameMax + 1;  // u16 offsets + the last token
constexpr std::uint64_t kTokenIndexSize = 256 * 2;
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kScanChunk = 2ull << 20;
// From kallsyms_offsets to kallsyms_token_table; ~3 MiB for 150k symbols.
constexpr std::uint64_t kMaxTablesSpan = 48ull << 20;
constexpr std::uint64_t kMaxNamesSize = 64ull << 20;
constexpr std::size_t kMaxTokenCandidates = 64;
// Length steps over all num_syms candidates of one locate().
constexpr std::uint64_t kSearchBudget = 1ull << 27;

constexpr char kDigitTokens[] = "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9";
constexpr std::size_t kDigitTokensSize = sizeof(kDigitTokens);  // 20: includes the last NUL

std::uint64_t align_up(std::uint64_t v, unsigned alignment) { return (v + alignment - 1) & ~std::uint64_t{alignment - 1}; }

template <typename T>
T load(std::span<const std::byte> bytes, std::uint64_t offset) {
    T v;
    std::memcpy(&v, bytes.data() + offset, sizeof v);
    return v;
}

std::uint8_t byte_at(std::span<const std::byte> bytes, std::uint64_t offset) {
    return static_cast<std::uint8_t>(bytes[offset]);
}

[[noreturn]] void corrupt(std::string_view table, std::uint64_t address, const std::string& what) {
    throw Error(ErrorKind::Guest, std::string(table) + " at " + hex(address) + ": " + what);
}

// One table, read in one piece; an unreadable table is named in the error.
std::vector<std::byte> read_table(VirtualMemory& memory, GuestVirtAddr addr, std::uint64_t size,
                                  std::string_view table) {
    if (addr.value + size < addr.value)
        corrupt(table, addr.value, std::to_string(size) + " bytes wrap around the address space");
    std::vector<std::byte> out(size);
    try {
        memory.read(addr, out);
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        corrupt(table, addr.value, std::to_string(size) + " bytes are not readable: " + e.what());
    }
    return out;
}

// Reads [addr, addr + out.size()); parts that do not read (unmapped pages:
// freed init memory leaves holes in the image) become zeros. Halves a failing
// range down to pages, so a mostly mapped range costs a few reads.
void read_skipping_holes(VirtualMemory& memory, GuestVirtAddr addr, std::span<std::byte> out) {
    try {
        memory.read(addr, out);
        return;
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
    }
    std::uint64_t first_page_end = (addr.value | (kPage - 1)) + 1;
    if (out.size() <= first_page_end - addr.value) {  // within one page
        std::fill(out.begin(), out.end(), std::byte{0});
        return;
    }
    // Split at a page boundary near the middle.
    std::uint64_t mid = (addr.value + out.size() / 2) & ~(kPage - 1);
    if (mid <= addr.value) mid = first_page_end;
    std::size_t left = mid - addr.value;
    read_skipping_holes(memory, addr, out.first(left));
    read_skipping_holes(memory, GuestVirtAddr{mid}, out.subspan(left));
}

std::vector<std::byte> read_skipping_holes(VirtualMemory& memory, GuestVirtAddr addr, std::uint64_t size) {
    std::vector<std::byte> out(size);
    read_skipping_holes(memory, addr, out);
    return out;
}

struct Tokens {
    std::array<std::string, 256> text;
    std::uint64_t end = 0;  // table offset just past the last token's NUL
};

// The index must describe the tokens back to back in index order, exactly as
// scripts/kallsyms.c writes them.
Tokens parse_tokens(std::span<const std::byte> table, GuestVirtAddr table_addr,
                    std::span<const std::byte> index, GuestVirtAddr index_addr) {
    Tokens tokens;
    std::uint64_t expected = 0;
    for (std::size_t i = 0; i < 256; ++i) {
        std::uint64_t offset = load<std::uint16_t>(index, 2 * i);
        if (offset != expected)
            corrupt("kallsyms_token_index", index_addr.value + 2 * i,
                    "entry " + std::to_string(i) + " is " + std::to_string(offset) +
                        (i == 0 ? ", not 0" : ", but token " + std::to_string(i - 1) + " ends at " +
                                                  std::to_string(expected)));
        if (offset >= table.size())
            corrupt("kallsyms_token_table", table_addr.value,
                    "token " + std::to_string(i) + " at offset " + std::to_string(offset) +
                        " is past the table end (" + std::to_string(table.size()) + " bytes)");
        std::uint64_t limit = std::min<std::uint64_t>(table.size(), offset + kNameMax + 1);
        std::uint64_t nul = offset;
        while (nul < limit && table[nul] != std::byte{0}) ++nul;
        if (nul == limit)
            corrupt("kallsyms_token_table", table_addr.value + offset,
                    "token " + std::to_string(i) + " has no NUL within " + std::to_string(limit - offset) +
                        " bytes");
        tokens.text[i].assign(reinterpret_cast<const char*>(table.data()) + offset, nul - offset);
        expected = nul + 1;
    }
    tokens.end = expected;
    return tokens;
}

// The name as scripts/kallsyms.c compares it for seqs_of_names (it drops a
// clang LTO ".llvm.<hash>" suffix; gcc kernels have none).
std::string_view sort_key(const std::string& name) {
    std::string_view v = name;
    std::size_t llvm = v.find(".llvm.");
    return llvm == std::string_view::npos ? v : v.substr(0, llvm);
}

// Indices into `symbols` (in kallsyms order, so by address) ordered by
// name, then address, then index: as symbols are in address order, that is
// by name, then index (a total order, so any sort gives the same result).
std::vector<std::uint32_t> sorted_by_name(const std::vector<KernelSymbol>& symbols) {
    struct Key {
        std::string_view name;
        std::uint32_t index;
        bool operator<(const Key& o) const {
            int c = name.compare(o.name);
            return c != 0 ? c < 0 : index < o.index;
        }
    };
    std::vector<Key> keys;
    keys.reserve(symbols.size());
    for (std::size_t i = 0; i < symbols.size(); ++i) keys.push_back({symbols[i].name, static_cast<std::uint32_t>(i)});
    std::sort(keys.begin(), keys.end());
    std::vector<std::uint32_t> out;
    out.reserve(keys.size());
    for (const Key& k : keys) out.push_back(k.index);
    return out;
}

// What locate() concluded about one candidate, for the final error.
struct SearchState {
    std::uint64_t budget = kSearchBudget;
    std::string problem;  // the most specific reason a candidate failed
    int problem_rank = 0; // 0 none, 1 token table only, 2 names/markers consistent
    void note(int rank, std::string text) {
        if (rank >= problem_rank) {
            problem_rank = rank;
            problem = std::move(text);
        }
    }
};

struct TokenTablePosition {
    GuestVirtAddr table, index;
};

// Given the address of "0\01\0...9\0" inside [start, end): the token table
// and index it belongs to, if the bytes around it have the shape with labels
// aligned to `alignment` (8 or 4).
std::optional<TokenTablePosition> token_table_at(VirtualMemory& memory, std::uint64_t digits,
                                                 std::uint64_t start, std::uint64_t end, unsigned alignment) {
    if (digits <= start) return std::nullopt;
    // Tokens 0x30..0xff follow the digit run back to back.
    std::uint64_t window = std::min<std::uint64_t>(kTokenTableMax, end - digits);
    std::vector<std::byte> bytes = read_skipping_holes(memory, GuestVirtAddr{digits}, window);
    std::uint64_t p = 0;
    std::uint64_t last_token = 0;
    for (int token = 0x30; token <= 0xff; ++token) {
        std::uint64_t limit = std::min<std::uint64_t>(bytes.size(), p + kNameMax + 1);
        std::uint64_t nul = p;
        while (nul < limit && bytes[nul] != std::byte{0}) ++nul;
        if (nul == limit) return std::nullopt;
        last_token = p;
        p = nul + 1;
    }
    std::uint64_t table_end = digits + p;
    std::uint64_t index = align_up(table_end, alignment);
    if (index < table_end || index > end || end - index < kTokenIndexSize) return std::nullopt;
    std::array<std::byte, kTokenIndexSize> idx;
    try {
        memory.read(GuestVirtAddr{index}, idx);
        std::array<std::byte, 1> before;
        memory.read(GuestVirtAddr{digits - 1}, before);
        if (before[0] != std::byte{0}) return std::nullopt;  // '0' must start a token
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        return std::nullopt;
    }
    std::span<const std::byte> ix(idx);
    std::uint64_t zero = load<std::uint16_t>(ix, 2 * 0x30);
    if (load<std::uint16_t>(ix, 0) != 0 || zero > digits - start) return std::nullopt;
    std::uint64_t table = digits - zero;
    if (table % alignment != 0) return std::nullopt;
    for (int c = 0x31; c <= 0x39; ++c)
        if (load<std::uint16_t>(ix, 2 * c) != load<std::uint16_t>(ix, 2 * (c - 1)) + 2) return std::nullopt;
    if (load<std::uint16_t>(ix, 2 * 0xff) != (digits + last_token) - table) return std::nullopt;
    return TokenTablePosition{GuestVirtAddr{table}, GuestVirtAddr{index}};
}

// Decodes the tables at `layout`; a candidate that does not decode is
// noted (rank 2) with `found` and the reason, and gives nullopt.
std::optional<KallsymsTable> try_decode(VirtualMemory& memory, const KallsymsLayout& layout, std::uint64_t start,
                                        std::uint64_t end, const std::string& found, SearchState& state) {
    try {
        KallsymsTable table = KallsymsTable::decode(memory, layout);
        // decode() cannot check the base itself (every address moves with
        // it); it is the lowest kernel symbol (_text), so it lies in the image.
        const std::uint64_t base = table.layout().relative_base;
        if (base < start || base >= end)
            corrupt(layout.place_relative ? "kallsyms_offsets" : "kallsyms_relative_base",
                    layout.place_relative ? layout.offsets.value : layout.relative_base_var.value,
                    "the lowest symbol " + hex(base) + " is outside the kernel image " + hex(start) + ".." + hex(end));
        return table;
    } catch (const Error& e) {
        if (e.kind() != ErrorKind::Guest) throw;
        state.note(2, found + ", but " + e.what());
        return std::nullopt;
    }
}

// Searches backwards from the token table for kallsyms_num_syms: an
// aligned u32 N (followed by 4 zero bytes when labels are 8-aligned), then
// N names ending where kallsyms_markers starts, markers that agree with the
// names, and either nothing or N seqs_of_names entries up to the token
// table. Then the offsets are where one of the orders puts them:
//   alignment 8: before num_syms with relative_base (4.6-6.3), or after
//                token_index followed by relative_base (6.4+);
//   alignment 4: after token_index, place-relative (7.0+).
// decode() checks everything.
std::optional<KallsymsTable> tables_before(VirtualMemory& memory, TokenTablePosition tokens, std::uint64_t start,
                                           std::uint64_t end, unsigned alignment, SearchState& state) {
    const std::uint64_t a = alignment;
    const std::uint64_t t = tokens.table.value;
    const std::uint64_t floor = t - start > kMaxTablesSpan ? t - kMaxTablesSpan : start;
    if (t - floor < 16) return std::nullopt;
    // [lo, t), read backwards as the search needs it (doubling), so a
    // num_syms 1.5 MiB before the token table costs 2 MiB of reads, not 48.
    std::uint64_t lo = t;
    std::vector<std::byte> bytes;
    std::span<const std::byte> b;
    auto extend = [&]() {
        if (lo == floor) return false;
        std::uint64_t grow = std::min(lo - floor, std::max(kScanChunk, t - lo));
        std::vector<std::byte> more = read_skipping_holes(memory, GuestVirtAddr{lo - grow}, grow);
        more.insert(more.end(), bytes.begin(), bytes.end());
        bytes.swap(more);
        b = std::span<const std::byte>(bytes);
        lo -= grow;
        return true;
    };
    std::vector<std::uint32_t> marks;
    for (std::uint64_t s = (t - 16) & ~(a - 1); s >= floor; s -= a) {
        if (s < lo && !extend()) break;
        std::uint64_t n = load<std::uint32_t>(b, s - lo);
        if (n == 0 || n > KallsymsTable::kMaxSymbols || (a == 8 && load<std::uint32_t>(b, s + 4 - lo) != 0)) {
            if (s - floor < a) break;
            continue;
        }
        const std::uint64_t names = align_up(s + 4, alignment);
        const std::uint64_t avail = t - names;
        const std::uint64_t markers_size = 4 * ((n + 255) / 256);
        bool ok = avail >= 2 * n + markers_size;
        marks.clear();
        std::uint64_t off = 0;
        for (std::uint64_t i = 0; ok && i < n; ++i) {
            if (state.budget-- == 0)
                throw Error(ErrorKind::Guest, "kallsyms: search budget exhausted before kallsyms_token_table at " +
                                                  hex(t) + " (too many num_syms candidates)");
            if (i % 256 == 0) marks.push_back(static_cast<std::uint32_t>(off));
            if (off >= avail) { ok = false; break; }
            std::uint64_t len = byte_at(b, names + off - lo), header = 1;
            if (len & 0x80) {
                if (off + 1 >= avail) { ok = false; break; }
                len = (len & 0x7f) | (std::uint64_t{byte_at(b, names + off + 1 - lo)} << 7);
                header = 2;
            }
            if (len == 0 || len > kMaxCompressedLen) { ok = false; break; }
            off += header + len;
            if (off > avail) ok = false;
        }
        const std::uint64_t markers = align_up(names + off, alignment);
        if (ok && markers + markers_size <= t) {
            for (std::size_t j = 0; ok && j < marks.size(); ++j)
                ok = load<std::uint32_t>(b, markers + 4 * j - lo) == marks[j];
        } else {
            ok = false;
        }
        if (ok) {
            const std::uint64_t after_markers = align_up(markers + markers_size, alignment);
            KallsymsLayout layout;
            layout.label_alignment = alignment;
            layout.num_syms_var = GuestVirtAddr{s};
            layout.names = GuestVirtAddr{names};
            layout.markers = GuestVirtAddr{markers};
            layout.token_table = tokens.table;
            layout.token_index = tokens.index;
            const std::string found = "kallsyms_num_syms at " + hex(s) + " (" + std::to_string(n) +
                                      " symbols), kallsyms_names at " + hex(names) + " and kallsyms_markers at " +
                                      hex(markers) + " match kallsyms_token_table at " + hex(t);
            const std::uint64_t offsets_size = align_up(4 * n, alignment);
            const std::uint64_t offsets_after = tokens.index.value + kTokenIndexSize;  // 6.4+ and 7.0+
            // 4.6-6.3: [offsets][relative_base] num_syms ... [seqs] token_table.
            if (a == 8 && (after_markers == t || (after_markers + 3 * n <= t && align_up(after_markers + 3 * n, 8) == t))) {
                KallsymsLayout old = layout;
                old.seqs_of_names = GuestVirtAddr{after_markers == t ? 0 : after_markers};
                if (s - start < 8 + offsets_size) {
                    state.note(2, found + ", but there is no room for kallsyms_offsets and "
                                          "kallsyms_relative_base before them in the image");
                } else {
                    old.relative_base_var = GuestVirtAddr{s - 8};
                    old.offsets = GuestVirtAddr{s - 8 - offsets_size};
                    if (auto table = try_decode(memory, old, start, end, found, state)) return table;
                }
            }
            if (after_markers == t && offsets_after + offsets_size + 8 <= end) {
                KallsymsLayout late = layout;
                late.offsets = GuestVirtAddr{offsets_after};
                if (a == 8) {
                    // 6.4+: offsets, relative_base, seqs_of_names.
                    late.relative_base_var = GuestVirtAddr{offsets_after + offsets_size};
                    late.seqs_of_names = GuestVirtAddr{offsets_after + offsets_size + 8};
                } else {
                    // 7.0+: offsets (place-relative), seqs_of_names.
                    late.place_relative = true;
                    late.seqs_of_names = GuestVirtAddr{offsets_after + offsets_size};
                }
                if (late.seqs_of_names.value + 3 * n > end) {
                    state.note(2, found + ", but kallsyms_seqs_of_names at " + hex(late.seqs_of_names.value) +
                                      " would run past the image end " + hex(end));
                } else if (auto table = try_decode(memory, late, start, end, found, state)) {
                    return table;
                }
            }
        }
        if (s - floor < a) break;
    }
    state.note(1, "kallsyms_token_table at " + hex(t) + " and kallsyms_token_index at " + hex(tokens.index.value) +
                      ", but no kallsyms_num_syms/names/markers in front of them");
    return std::nullopt;
}

}  // namespace

KallsymsTable KallsymsTable::locate(VirtualMemory& memory, GuestVirtAddr image_start, std::uint64_t image_size) {
    const std::uint64_t start = image_start.value;
    if (image_size == 0 || start + image_size < start)
        throw Error(ErrorKind::Usage, "kallsyms: bad kernel image range " + hex(start) + " + " + hex_short(image_size));
    const std::uint64_t end = start + image_size;
    SearchState state;
    std::size_t candidates = 0;
    for (std::uint64_t chunk = start; chunk < end; chunk += std::min(kScanChunk, end - chunk)) {
        // Overlap the next chunk by the pattern size minus one.
        std::uint64_t size = std::min<std::uint64_t>(kScanChunk + kDigitTokensSize - 1, end - chunk);
        std::vector<std::byte> bytes = read_skipping_holes(memory, GuestVirtAddr{chunk}, size);
        const char* data = reinterpret_cast<const char*>(bytes.data());
        std::uint64_t pos = 0;
        while (pos < std::min(kScanChunk, size)) {
            const void* hit = memmem(data + pos, size - pos, kDigitTokens, kDigitTokensSize);
            if (hit == nullptr) break;
            std::uint64_t found = static_cast<const char*>(hit) - data;
            if (found >= kScanChunk) break;  // the next chunk finds it
            pos = found + 1;
            if (++candidates > kMaxTokenCandidates)
                throw Error(ErrorKind::Guest, "kallsyms: more than " + std::to_string(kMaxTokenCandidates) +
                                                  " token-table candidates in the kernel image " + hex(start) +
                                                  ".." + hex(end) + "; giving up");
            // 8-byte labels (up to 6.x) first, then 4-byte ones (7.0+).
            for (unsigned alignment : {8u, 4u}) {
                std::optional<TokenTablePosition> tokens = token_table_at(memory, chunk + found, start, end, alignment);
                if (!tokens) continue;
                std::optional<KallsymsTable> table = tables_before(memory, *tokens, start, end, alignment, state);
                if (table) return std::move(*table);
            }
        }
        if (end - chunk <= kScanChunk) break;
    }
    if (state.problem_rank == 2)
        throw Error(ErrorKind::Guest,
                    "kallsyms: " + state.problem +
                        ". Not a table of a supported layout (base-relative 4.6-6.3 or 6.4+ order, "
                        "place-relative 7.0+); kernels before 4.6 or without CONFIG_KALLSYMS_BASE_RELATIVE "
                        "(absolute addresses) are not supported");
    if (state.problem_rank == 1) throw Error(ErrorKind::Guest, "kallsyms: " + state.problem);
    throw Error(ErrorKind::Guest, "kallsyms: no kallsyms_token_table (the one-character tokens \"0\"..\"9\" "
                                  "in a row) in the kernel image " +
                                      hex(start) + ".." + hex(end));
}

KallsymsTable KallsymsTable::decode(VirtualMemory& memory, const KallsymsLayout& given) {
    if (!given.base_relative)
        throw Error(ErrorKind::Guest, "kallsyms: absolute kallsyms_addresses tables (kernels before 4.6, or "
                                      "CONFIG_KALLSYMS_BASE_RELATIVE=n) are not supported");
    if (given.label_alignment != 8 && given.label_alignment != 4)
        throw Error(ErrorKind::Usage, "kallsyms: label alignment " + std::to_string(given.label_alignment) +
                                          " (only 8 and 4 exist)");
    KallsymsTable result;
    KallsymsLayout& layout = result.layout_;
    layout = given;
    const unsigned alignment = layout.label_alignment;

    // Counts and the base.
    const std::uint64_t n = load<std::uint32_t>(read_table(memory, layout.num_syms_var, 4, "kallsyms_num_syms"), 0);
    if (n == 0 || n > kMaxSymbols)
        corrupt("kallsyms_num_syms", layout.num_syms_var.value,
                std::to_string(n) + " is not a symbol count (1.." + std::to_string(kMaxSymbols) + ")");
    layout.num_syms = n;
    if (!layout.place_relative)
        layout.relative_base =
            load<std::uint64_t>(read_table(memory, layout.relative_base_var, 8, "kallsyms_relative_base"), 0);

    // Tokens.
    const std::uint64_t tt = layout.token_table.value, ti = layout.token_index.value;
    if (ti <= tt || ti - tt > kTokenTableMax + 7)
        corrupt("kallsyms_token_table", tt,
                "kallsyms_token_index at " + hex(ti) + " does not follow it within " +
                    std::to_string(kTokenTableMax + 7) + " bytes");
    std::vector<std::byte> table_bytes = read_table(memory, layout.token_table, ti - tt, "kallsyms_token_table");
    std::vector<std::byte> index_bytes = read_table(memory, layout.token_index, kTokenIndexSize, "kallsyms_token_index");
    const Tokens tokens = parse_tokens(table_bytes, layout.token_table, index_bytes, layout.token_index);
    if (align_up(tt + tokens.end, alignment) != ti)
        corrupt("kallsyms_token_table", tt,
                "the 256 tokens end at " + hex(tt + tokens.end) + ", but kallsyms_token_index is at " + hex(ti));

    // Names, checked against the markers.
    const std::uint64_t marker_count = (n + 255) / 256;
    std::vector<std::byte> markers = read_table(memory, layout.markers, 4 * marker_count, "kallsyms_markers");
    const std::uint64_t names_addr = layout.names.value;
    if (layout.markers.value <= names_addr || layout.markers.value - names_addr > kMaxNamesSize)
        corrupt("kallsyms_names", names_addr,
                "kallsyms_markers at " + hex(layout.markers.value) + " does not follow it within " +
                    std::to_string(kMaxNamesSize) + " bytes");
    std::vector<std::byte> names = read_table(memory, layout.names, layout.markers.value - names_addr, "kallsyms_names");
    std::span<const std::byte> nb(names);
    result.symbols_.resize(n);
    // One symbol's expansion (type letter + name), with room for a whole
    // token slot past kNameMax.
    std::array<char, kNameMax + kTokenSlot> name_buffer;
    // The tokens again, each short one in a fixed-size slot.
    std::array<std::array<char, kTokenSlot>, 256> token_slot{};
    std::array<std::uint16_t, 256> token_size;
    for (std::size_t c = 0; c < 256; ++c) {
        token_size[c] = static_cast<std::uint16_t>(tokens.text[c].size());
        std::memcpy(token_slot[c].data(), tokens.text[c].data(), std::min(tokens.text[c].size(), kTokenSlot));
    }
    std::uint64_t off = 0;
    std::uint64_t big = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        if (i % 256 == 0) {
            std::uint64_t marker = load<std::uint32_t>(markers, 4 * (i / 256));
            if (marker != off)
                corrupt("kallsyms_markers", layout.markers.value + 4 * (i / 256),
                        "marker " + std::to_string(i / 256) + " is " + std::to_string(marker) + ", but symbol " +
                            std::to_string(i) + " starts at offset " + std::to_string(off) + " of kallsyms_names");
        }
        const std::uint64_t at = names_addr + off;
        auto past_end = [&](const std::string& what) {
            corrupt("kallsyms_names", names_addr,
                    "symbol " + std::to_string(i) + " at " + hex(at) + " " + what + " the table end at " +
                        hex(layout.markers.value) + " (kallsyms_markers)");
        };
        if (off >= nb.size()) past_end("starts at or past");
        std::uint64_t len = byte_at(nb, off), header = 1;
        if (len & 0x80) {
            if (off + 1 >= nb.size()) past_end("has its length byte at");
            len = (len & 0x7f) | (std::uint64_t{byte_at(nb, off + 1)} << 7);
            header = 2;
            ++big;
        }
        if (len == 0) corrupt("kallsyms_names", at, "symbol " + std::to_string(i) + " has length 0");
        if (len > kMaxCompressedLen)
            corrupt("kallsyms_names", at,
                    "symbol " + std::to_string(i) + " has length " + hex_short(len) + ", above the two-byte maximum " +
                        hex_short(kMaxCompressedLen));
        if (len > nb.size() - off - header) past_end("(" + std::to_string(len) + " code bytes) runs past");
        std::size_t expanded = 0;
        for (std::uint64_t k = 0; k < len; ++k) {
            const std::uint8_t code = byte_at(nb, off + header + k);
            const std::size_t size = token_size[code];
            if (expanded + size > kNameMax)
                corrupt("kallsyms_names", at,
                        "symbol " + std::to_string(i) + " expands to more than " + std::to_string(kNameMax) +
                            " characters");
            // A fixed-size copy for short tokens (the buffer has the slack).
            if (size <= kTokenSlot)
                std::memcpy(name_buffer.data() + expanded, token_slot[code].data(), kTokenSlot);
            else
                std::memcpy(name_buffer.data() + expanded, tokens.text[code].data(), size);
            expanded += size;
        }
        if (expanded == 0)
            corrupt("kallsyms_names", at, "symbol " + std::to_string(i) + " expands to nothing (no type letter)");
        KernelSymbol& sym = result.symbols_[i];
        sym.type = name_buffer[0];
        sym.name.assign(name_buffer.data() + 1, expanded - 1);
        off += header + len;
    }
    if (align_up(names_addr + off, alignment) != layout.markers.value)
        corrupt("kallsyms_names", names_addr,
                "the " + std::to_string(n) + " symbols end at " + hex(names_addr + off) +
                    ", but kallsyms_markers is at " + hex(layout.markers.value));
    layout.big_symbols = big;

    // Addresses: sorted, and the lowest relative one is relative_base itself
    // (place-relative: each from its own entry's address).
    std::vector<std::byte> offsets = read_table(memory, layout.offsets, 4 * n, "kallsyms_offsets");
    bool absolute_percpu = false;
    for (std::uint64_t i = 0; i < n && !absolute_percpu && !layout.place_relative; ++i)
        absolute_percpu = load<std::int32_t>(offsets, 4 * i) < 0;
    layout.absolute_percpu = absolute_percpu;
    bool first_relative = true;
    for (std::uint64_t i = 0; i < n; ++i) {
        const std::int32_t v = load<std::int32_t>(offsets, 4 * i);
        std::uint64_t delta = 0;
        bool relative = true;
        if (layout.place_relative) {
            const std::uint64_t entry = layout.offsets.value + 4 * i;
            const std::uint64_t address = entry + static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
            if ((v < 0 && address > entry) || (v > 0 && address < entry))
                corrupt("kallsyms_offsets", entry, "symbol " + std::to_string(i) + " wraps around the address space");
            if (first_relative) layout.relative_base = address;
            first_relative = false;
            relative = false;
            result.symbols_[i].address = GuestVirtAddr{address};
        } else if (!absolute_percpu) {
            delta = static_cast<std::uint32_t>(v);
        } else if (v >= 0) {
            relative = false;
            result.symbols_[i].address = GuestVirtAddr{static_cast<std::uint64_t>(v)};
        } else {
            delta = static_cast<std::uint64_t>(-(static_cast<std::int64_t>(v) + 1));
        }
        if (relative) {
            if (first_relative && delta != 0)
                corrupt("kallsyms_offsets", layout.offsets.value + 4 * i,
                        "the lowest relative symbol ('" + result.symbols_[i].name + "') is " + hex_short(delta) +
                            " above kallsyms_relative_base (" + hex(layout.relative_base) + "), not at it");
            first_relative = false;
            if (layout.relative_base + delta < layout.relative_base)
                corrupt("kallsyms_offsets", layout.offsets.value + 4 * i,
                        "symbol " + std::to_string(i) + " wraps around the address space");
            result.symbols_[i].address = GuestVirtAddr{layout.relative_base + delta};
        }
        if (i > 0 && result.symbols_[i].address < result.symbols_[i - 1].address)
            corrupt("kallsyms_offsets", layout.offsets.value + 4 * i,
                    "symbol " + std::to_string(i) + " ('" + result.symbols_[i].name + "' at " +
                        hex(result.symbols_[i].address.value) + ") is below symbol " + std::to_string(i - 1) + " ('" +
                        result.symbols_[i - 1].name + "' at " + hex(result.symbols_[i - 1].address.value) +
                        "): not sorted");
    }
    if (first_relative)
        corrupt("kallsyms_offsets", layout.offsets.value, "every symbol is absolute; no kernel symbol at all");

    // seqs_of_names: a permutation, in name order (kept: it is most of the
    // work of the by-name index).
    // It is the by-name index itself when it also orders equal names by
    // address (scripts/kallsyms.c does) and has no ".llvm." suffixes that
    // sort differently.
    std::vector<std::uint32_t> seqs_order;
    bool seqs_by_name = false;
    if (layout.seqs_of_names.value != 0) {
        seqs_by_name = true;
        std::vector<std::byte> seqs = read_table(memory, layout.seqs_of_names, 3 * n, "kallsyms_seqs_of_names");
        std::vector<bool> seen(n);
        seqs_order.reserve(n);
        std::uint64_t previous = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
            std::uint64_t seq = (std::uint64_t{byte_at(seqs, 3 * i)} << 16) |
                                (std::uint64_t{byte_at(seqs, 3 * i + 1)} << 8) | byte_at(seqs, 3 * i + 2);
            const std::uint64_t at = layout.seqs_of_names.value + 3 * i;
            if (seq >= n || seen[seq])
                corrupt("kallsyms_seqs_of_names", at,
                        "entry " + std::to_string(i) + " is " + std::to_string(seq) +
                            (seq >= n ? ", not below num_syms" : ", a repeat"));
            seen[seq] = true;
            if (i > 0 && sort_key(result.symbols_[seq].name) < sort_key(result.symbols_[previous].name))
                corrupt("kallsyms_seqs_of_names", at,
                        "entry " + std::to_string(i) + " ('" + result.symbols_[seq].name + "') sorts before entry " +
                            std::to_string(i - 1) + " ('" + result.symbols_[previous].name + "')");
            if (i > 0 && seqs_by_name) {
                const int c = result.symbols_[previous].name.compare(result.symbols_[seq].name);
                seqs_by_name = c < 0 || (c == 0 && previous < seq);
            }
            previous = seq;
            seqs_order.push_back(static_cast<std::uint32_t>(seq));
        }
    }

    const std::uint64_t o = layout.offsets.value, r = layout.relative_base_var.value, s = layout.num_syms_var.value;
    const bool old_order = o < r && r < s && s < names_addr && layout.markers.value < tt;
    const bool new_order = s < names_addr && ti < o && (layout.place_relative || o < r);
    layout.format = std::string(old_order ? "4.6-6.3 order" : new_order ? "6.4+ order" : "tables as given") +
                    (layout.place_relative ? ", place-relative (7.0+)" : ", base-relative") +
                    (alignment == 4 ? ", 4-byte labels" : "") +
                    (absolute_percpu ? ", absolute per-CPU" : "") +
                    (big ? ", " + std::to_string(big) + " two-byte lengths (6.1+)" : "") +
                    (layout.seqs_of_names.value ? ", seqs_of_names (6.2+/6.1.y)" : "");

    // The by-address index is kallsyms order itself (checked non-decreasing
    // above); the by-name one is usually seqs_of_names.
    result.by_name_ = seqs_by_name ? std::move(seqs_order) : sorted_by_name(result.symbols_);
    return result;
}

std::vector<KernelSymbol> KallsymsTable::find_all(std::string_view name) const {
    auto lower = std::partition_point(by_name_.begin(), by_name_.end(),
                                      [&](std::uint32_t i) { return std::string_view(symbols_[i].name) < name; });
    std::vector<KernelSymbol> out;
    for (auto it = lower; it != by_name_.end() && symbols_[*it].name == name; ++it) out.push_back(symbols_[*it]);
    return out;
}

std::optional<KernelSymbol> KallsymsTable::find(std::string_view name, unsigned sympos) const {
    std::vector<KernelSymbol> all = find_all(name);
    if (sympos == 0) {
        if (all.size() != 1) return std::nullopt;
        return all.front();
    }
    if (sympos > all.size()) return std::nullopt;
    return all[sympos - 1];
}

KernelSymbol KallsymsTable::require(std::string_view name, unsigned sympos) const {
    std::vector<KernelSymbol> all = find_all(name);
    const std::string quoted = "symbol '" + std::string(name) + "'";
    if (all.empty()) throw Error(ErrorKind::Guest, quoted + " not found in the guest kernel");
    if (sympos == 0) {
        if (all.size() > 1)
            throw Error(ErrorKind::Guest, quoted + " is ambiguous (" + std::to_string(all.size()) +
                                              " matches in the guest kernel), give a position 1.." +
                                              std::to_string(all.size()));
        return all.front();
    }
    if (sympos > all.size())
        throw Error(ErrorKind::Guest, quoted + " has " + std::to_string(all.size()) +
                                          (all.size() == 1 ? " match" : " matches") +
                                          " in the guest kernel; position " + std::to_string(sympos) +
                                          " does not exist");
    return all[sympos - 1];
}

std::optional<KallsymsTable::Resolved> KallsymsTable::resolve(GuestVirtAddr addr) const {
    // symbols_ is in kallsyms order, which decode() checked is by address.
    if (symbols_.empty() || addr.value < layout_.relative_base) return std::nullopt;
    if (addr > symbols_.back().address) return std::nullopt;
    auto above = std::partition_point(symbols_.begin(), symbols_.end(),
                                      [&](const KernelSymbol& s) { return s.address <= addr; });
    if (above == symbols_.begin()) return std::nullopt;
    const GuestVirtAddr start = (above - 1)->address;
    // The first of several symbols at that address, in kallsyms order.
    auto first = std::partition_point(symbols_.begin(), above,
                                      [&](const KernelSymbol& s) { return s.address < start; });
    Resolved r;
    r.symbol = *first;
    r.offset = addr.value - start.value;
    r.size = above == symbols_.end() ? 0 : above->address.value - start.value;
    return r;
}

}  // namespace hvpatch
