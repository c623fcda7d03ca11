// KallsymsTable on synthetic kernel images: a test-side encoder writes the
// tables the way scripts/kallsyms.c (6.1) lays them out, locate() must find
// them by shape and decode() must give back exactly what went in; corrupt,
// truncated, unsupported and random images must give Error(Guest), quickly.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include "hvpatch/error.h"
#include "introspect/kallsyms.h"

namespace hvpatch {
namespace {

constexpr std::uint64_t kBase = 0xffffffff81000000ULL;  // _text of the synthetic image

// A kernel image at kBase; reads outside it or touching a "hole" page throw
// Error(Guest) as the real VirtualMemory does for unmapped addresses.
class ImageMemory : public VirtualMemory {
public:
    std::uint64_t base = kBase;
    std::vector<std::byte> bytes;
    std::set<std::uint64_t> holes;  // page addresses
    std::uint64_t bytes_read = 0;

    void read(GuestVirtAddr addr, std::span<std::byte> out) override {
        if (addr.value < base || addr.value - base > bytes.size() || out.size() > bytes.size() - (addr.value - base))
            throw Error(ErrorKind::Guest, hex(addr.value) + " is not mapped");
        auto hole = holes.lower_bound(addr.value & ~std::uint64_t{4095});
        if (hole != holes.end() && *hole < addr.value + out.size())
            throw Error(ErrorKind::Guest, hex(std::max(*hole, addr.value)) + " is not mapped");
        std::memcpy(out.data(), bytes.data() + (addr.value - base), out.size());
        bytes_read += out.size();
    }
};

struct Sym {
    std::string name;
    char type;
    std::uint64_t address;
    bool absolute = false;  // per-CPU symbol made absolute ('A')
};

struct EncodeOptions {
    bool seqs_of_names = true;
    bool absolute_percpu = true;
    bool order_6_4 = false;         // 6.4+: num_syms names markers tokens index offsets base seqs
    // 7.0+: num_syms names markers tokens index offsets seqs, every label
    // 4-aligned, offsets place-relative (implies order_6_4, no absolute per-CPU).
    bool place_relative = false;
    std::size_t text_before = 96 * 1024;  // filler before the tables
    std::size_t after = 8 * 1024;          // filler after them
};

struct Encoded {
    ImageMemory memory;
    KallsymsLayout layout;  // where the encoder put each table
    std::array<std::string, 256> tokens;
    std::uint64_t big_symbols = 0;
};

void align_to(std::vector<std::byte>& v, std::size_t alignment) {
    while (v.size() % alignment) v.push_back(std::byte{0});
}
template <typename T>
void put(std::vector<std::byte>& v, T value) {
    std::byte b[sizeof(T)];
    std::memcpy(b, &value, sizeof(T));
    v.insert(v.end(), b, b + sizeof(T));
}
template <typename T>
void poke(ImageMemory& m, std::uint64_t addr, T value) {
    std::memcpy(m.bytes.data() + (addr - m.base), &value, sizeof(T));
}
template <typename T>
T peek(const ImageMemory& m, std::uint64_t addr) {
    T v;
    std::memcpy(&v, m.bytes.data() + (addr - m.base), sizeof(T));
    return v;
}

void filler(std::vector<std::byte>& v, std::size_t n, std::mt19937_64& rng) {
    for (std::size_t i = 0; i < n; ++i) v.push_back(static_cast<std::byte>(rng() & 0xff));
}

// Table-lookup compression in the spirit of scripts/kallsyms.c: characters
// that occur stand for themselves; every other code, from 255 down, becomes
// the most frequent adjacent pair of codes.
void compress(const std::vector<std::string>& plain, std::array<std::string, 256>& tokens,
              std::vector<std::vector<std::uint8_t>>& codes) {
    std::array<bool, 256> used{};
    codes.clear();
    for (const std::string& s : plain) {
        codes.emplace_back(s.begin(), s.end());
        for (unsigned char c : s) {
            used[c] = true;
            tokens[c] = std::string(1, static_cast<char>(c));
        }
    }
    for (int slot = 255; slot >= 0; --slot) {
        if (used[slot]) continue;
        std::vector<int> count(65536);
        for (const auto& c : codes)
            for (std::size_t i = 0; i + 1 < c.size(); ++i) ++count[c[i] | (c[i + 1] << 8)];
        int best = static_cast<int>(std::max_element(count.begin(), count.end()) - count.begin());
        if (count[best] == 0) break;  // remaining codes stay empty tokens, as in the kernel
        std::uint8_t a = best & 0xff, b = best >> 8;
        tokens[slot] = tokens[a] + tokens[b];
        used[slot] = true;
        for (auto& c : codes) {
            std::vector<std::uint8_t> out;
            for (std::size_t i = 0; i < c.size(); ++i) {
                if (i + 1 < c.size() && c[i] == a && c[i + 1] == b) {
                    out.push_back(static_cast<std::uint8_t>(slot));
                    ++i;
                } else {
                    out.push_back(c[i]);
                }
            }
            c = std::move(out);
        }
    }
}

Encoded encode(const std::vector<Sym>& syms, const EncodeOptions& opt = {}, std::uint64_t seed = 1) {
    Encoded e;
    std::mt19937_64 rng(seed);
    const std::uint64_t n = syms.size();
    std::vector<std::string> plain;
    for (const Sym& s : syms) plain.push_back(std::string(1, s.type) + s.name);
    std::vector<std::vector<std::uint8_t>> codes;
    compress(plain, e.tokens, codes);

    std::vector<std::byte> offsets, names, markers, seqs, token_table, token_index;
    std::uint64_t relative_base = 0;
    for (const Sym& s : syms)
        if (!s.absolute) {
            relative_base = s.address;
            break;
        }
    for (const Sym& s : syms) {
        std::int32_t v;
        if (!opt.absolute_percpu) v = static_cast<std::int32_t>(static_cast<std::uint32_t>(s.address - relative_base));
        else if (s.absolute) v = static_cast<std::int32_t>(s.address);
        else v = static_cast<std::int32_t>(static_cast<std::int64_t>(relative_base - s.address) - 1);
        put(offsets, v);
    }
    for (std::uint64_t i = 0; i < n; ++i) {
        if (i % 256 == 0) put(markers, static_cast<std::uint32_t>(names.size()));
        std::size_t len = codes[i].size();
        if (len <= 0x7f) {
            names.push_back(static_cast<std::byte>(len));
        } else {
            names.push_back(static_cast<std::byte>((len & 0x7f) | 0x80));
            names.push_back(static_cast<std::byte>(len >> 7));
            ++e.big_symbols;
        }
        for (std::uint8_t c : codes[i]) names.push_back(static_cast<std::byte>(c));
    }
    std::vector<std::uint32_t> order(n);
    for (std::uint32_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
        if (syms[a].name != syms[b].name) return syms[a].name < syms[b].name;
        return syms[a].address < syms[b].address;
    });
    for (std::uint32_t i : order) {
        seqs.push_back(static_cast<std::byte>(i >> 16));
        seqs.push_back(static_cast<std::byte>(i >> 8));
        seqs.push_back(static_cast<std::byte>(i));
    }
    for (int i = 0; i < 256; ++i) {
        put(token_index, static_cast<std::uint16_t>(token_table.size()));
        for (char c : e.tokens[i]) token_table.push_back(static_cast<std::byte>(c));
        token_table.push_back(std::byte{0});
    }

    std::vector<std::byte>& img = e.memory.bytes;
    filler(img, opt.text_before, rng);
    auto here = [&] { return GuestVirtAddr{kBase + img.size()}; };
    const std::size_t alignment = opt.place_relative ? 4 : 8;
    auto emit = [&](GuestVirtAddr& where, const std::vector<std::byte>& table) {
        align_to(img, alignment);
        where = here();
        img.insert(img.end(), table.begin(), table.end());
    };
    std::vector<std::byte> base_bytes, count_bytes;
    put(base_bytes, relative_base);
    put(count_bytes, static_cast<std::uint32_t>(n));
    KallsymsLayout& l = e.layout;
    if (!opt.order_6_4 && !opt.place_relative) {
        emit(l.offsets, offsets);
        emit(l.relative_base_var, base_bytes);
        emit(l.num_syms_var, count_bytes);
        emit(l.names, names);
        emit(l.markers, markers);
        if (opt.seqs_of_names) emit(l.seqs_of_names, seqs);
        emit(l.token_table, token_table);
        emit(l.token_index, token_index);
    } else {
        // Odd filler so that 4- and 8-alignment differ somewhere.
        if (opt.place_relative) img.push_back(std::byte{0x5a});
        emit(l.num_syms_var, count_bytes);
        emit(l.names, names);
        emit(l.markers, markers);
        emit(l.token_table, token_table);
        emit(l.token_index, token_index);
        emit(l.offsets, offsets);
        if (opt.place_relative) {
            for (std::uint64_t i = 0; i < n; ++i)  // offsets[i] = symbol - &offsets[i]
                poke<std::int32_t>(e.memory, l.offsets.value + 4 * i,
                                   static_cast<std::int32_t>(static_cast<std::int64_t>(syms[i].address) -
                                                             static_cast<std::int64_t>(l.offsets.value + 4 * i)));
            l.place_relative = true;
            l.label_alignment = 4;
            relative_base = syms.front().address;
        } else {
            emit(l.relative_base_var, base_bytes);
        }
        if (opt.seqs_of_names) emit(l.seqs_of_names, seqs);
    }
    align_to(img, alignment);
    filler(img, opt.after, rng);
    l.num_syms = n;
    l.relative_base = relative_base;
    return e;
}

// A symbol table shaped like a kernel's: per-CPU symbols first, then text
// and data in address order, aliases, duplicate static names, every digit,
// and one name long enough for a two-byte length.
std::vector<Sym> kernel_like_symbols(std::size_t count = 3000, std::uint64_t seed = 7) {
    std::mt19937_64 rng(seed);
    std::vector<Sym> out;
    const char* percpu[] = {"fixed_percpu_data", "irq_stack_backing_store", "cpu_tss_rw", "gdt_page",
                            "exception_stacks", "current_task", "__preempt_count", "cpu_number"};
    std::uint64_t pa = 0;
    for (const char* p : percpu) {
        out.push_back({p, 'A', pa, true});
        pa += 0x1000;
    }
    const char* prefixes[] = {"ext4_", "tcp_v4_", "do_sys_", "__x64_sys_", "kmem_cache_", "vfs_", "sched_",
                              "klp_", "ftrace_", "bpf_prog_", "__func_", "arch_"};
    const char* words[] = {"open", "read", "write", "alloc", "free", "init", "exit", "lookup", "insert",
                           "remove", "handler", "work", "poll", "create", "destroy"};
    const char types[] = {'T', 't', 'T', 't', 'D', 'd', 'b', 'B', 'R', 'r', 'W'};
    std::uint64_t addr = kBase;
    out.push_back({"_text", 'T', addr});
    out.push_back({"startup_64", 'T', addr});
    for (std::size_t i = 0; i < count; ++i) {
        std::string name = std::string(prefixes[rng() % std::size(prefixes)]) + words[rng() % std::size(words)];
        if (rng() % 3 == 0) name += "_" + std::to_string(rng() % 100000);
        if (i % 97 == 5) name = "show_stat";  // a static function in many files
        if (i == count / 2) {              // a Rust-style long symbol
            name = "_RNvXs0_NtNtCs";
            for (int k = 0; name.size() < 400; ++k) name += static_cast<char>('a' + rng() % 26) + std::to_string(k % 10);
        }
        if (rng() % 11 != 0) addr += 16 * (1 + rng() % 64);  // else an alias of the previous one
        out.push_back({name, types[rng() % std::size(types)], addr});
    }
    for (int d = 0; d < 10; ++d) out.push_back({"digit" + std::to_string(d) + "x", 'd', addr += 8});
    out.push_back({"_end", 'B', addr += 0x1000});
    return out;
}

std::vector<Sym> without_absolute(std::vector<Sym> syms) {
    syms.erase(std::remove_if(syms.begin(), syms.end(), [](const Sym& s) { return s.absolute; }), syms.end());
    return syms;
}

void expect_round_trip(const KallsymsTable& table, const std::vector<Sym>& syms) {
    ASSERT_EQ(table.symbols().size(), syms.size());
    for (std::size_t i = 0; i < syms.size(); ++i) {
        const KernelSymbol& s = table.symbols()[i];
        ASSERT_EQ(s.name, syms[i].name) << i;
        ASSERT_EQ(s.type, syms[i].type) << i << " " << s.name;
        ASSERT_EQ(s.address.value, syms[i].address) << i << " " << s.name;
        ASSERT_EQ(s.module, "");
    }
}

void expect_same_layout(const KallsymsLayout& a, const KallsymsLayout& b) {
    EXPECT_EQ(a.offsets, b.offsets);
    EXPECT_EQ(a.relative_base_var, b.relative_base_var);
    EXPECT_EQ(a.num_syms_var, b.num_syms_var);
    EXPECT_EQ(a.names, b.names);
    EXPECT_EQ(a.markers, b.markers);
    EXPECT_EQ(a.seqs_of_names, b.seqs_of_names);
    EXPECT_EQ(a.token_table, b.token_table);
    EXPECT_EQ(a.token_index, b.token_index);
    EXPECT_EQ(a.num_syms, b.num_syms);
    EXPECT_EQ(a.relative_base, b.relative_base);
    EXPECT_EQ(a.place_relative, b.place_relative);
    EXPECT_EQ(a.label_alignment, b.label_alignment);
}

// The Error(Guest) message of `f`, or a test failure.
template <typename F>
std::string guest_error(F&& f) {
    try {
        f();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        return e.what();
    }
    ADD_FAILURE() << "no error";
    return "";
}

std::uint64_t image_size(const Encoded& e) { return e.memory.bytes.size(); }

TEST(Kallsyms, LocateAndDecodeRoundTrip61) {
    std::vector<Sym> syms = kernel_like_symbols();
    Encoded e = encode(syms);
    ASSERT_GE(e.big_symbols, 1u) << "the long name must need a two-byte length";
    auto t0 = std::chrono::steady_clock::now();
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    auto elapsed = std::chrono::steady_clock::now() - t0;
    EXPECT_LT(elapsed, std::chrono::seconds(2));
    expect_same_layout(table.layout(), e.layout);
    EXPECT_TRUE(table.layout().absolute_percpu);
    EXPECT_EQ(table.layout().big_symbols, e.big_symbols);
    EXPECT_NE(table.layout().format.find("4.6-6.3 order"), std::string::npos) << table.layout().format;
    EXPECT_NE(table.layout().format.find("seqs_of_names"), std::string::npos) << table.layout().format;
    expect_round_trip(table, syms);

    KallsymsTable direct = KallsymsTable::decode(e.memory, e.layout);
    expect_round_trip(direct, syms);
}

TEST(Kallsyms, WithoutSeqsOfNamesOrAbsolutePercpu) {
    std::vector<Sym> syms = without_absolute(kernel_like_symbols(1500, 11));
    EncodeOptions opt;
    opt.seqs_of_names = false;
    opt.absolute_percpu = false;
    Encoded e = encode(syms, opt);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    expect_same_layout(table.layout(), e.layout);
    EXPECT_EQ(table.layout().seqs_of_names.value, 0u);
    EXPECT_FALSE(table.layout().absolute_percpu);
    expect_round_trip(table, syms);
}

TEST(Kallsyms, PerCpuSymbolsAreAbsolute) {
    std::vector<Sym> syms = kernel_like_symbols(300);
    Encoded e = encode(syms);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    KernelSymbol pc = table.require("__preempt_count");
    EXPECT_EQ(pc.type, 'A');
    EXPECT_EQ(pc.address.value, 0x6000u);
    EXPECT_EQ(table.require("fixed_percpu_data").address.value, 0u);
    EXPECT_EQ(table.layout().relative_base, kBase);
    // Per-CPU offsets are not kernel addresses.
    EXPECT_FALSE(table.resolve(GuestVirtAddr{0x6000}).has_value());
}

TEST(Kallsyms, SmallTableNoMarkerPastTheFirst) {
    std::vector<Sym> syms;
    syms.push_back({"_text", 'T', kBase});
    for (int i = 0; i < 10; ++i) syms.push_back({"f" + std::to_string(i), 't', kBase + 0x100 * (i + 1)});
    Encoded e = encode(syms, {}, 3);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    expect_round_trip(table, syms);
}

TEST(Kallsyms, HolesInTheImageAreSkipped) {
    std::vector<Sym> syms = kernel_like_symbols(800);
    EncodeOptions opt;
    opt.text_before = 3 * 1024 * 1024;  // the tables start in the second scan chunk
    Encoded e = encode(syms, opt);
    for (std::uint64_t page = kBase + 0x10000; page < kBase + 0x30000; page += 4096) e.memory.holes.insert(page);
    e.memory.holes.insert(kBase + 0x200000);  // at the scan-chunk boundary
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e) + 0x100000);
    expect_round_trip(table, syms);
}

TEST(Kallsyms, FindAllFindRequireWithSympos) {
    std::vector<Sym> syms = kernel_like_symbols();
    Encoded e = encode(syms);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));

    std::vector<std::uint64_t> expected;
    for (const Sym& s : syms)
        if (s.name == "show_stat") expected.push_back(s.address);
    std::sort(expected.begin(), expected.end());
    ASSERT_GT(expected.size(), 2u);
    std::vector<KernelSymbol> all = table.find_all("show_stat");
    ASSERT_EQ(all.size(), expected.size());
    for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].address.value, expected[i]);

    EXPECT_FALSE(table.find("show_stat").has_value());
    EXPECT_EQ(table.find("show_stat", 2)->address.value, expected[1]);
    EXPECT_FALSE(table.find("show_stat", static_cast<unsigned>(expected.size() + 1)).has_value());
    EXPECT_EQ(table.require("show_stat", 1).address.value, expected[0]);
    EXPECT_NE(guest_error([&] { table.require("show_stat"); }).find("ambiguous"), std::string::npos);
    EXPECT_NE(guest_error([&] { table.require("show_stat", 99); }).find("position 99 does not exist"),
              std::string::npos);
    EXPECT_EQ(guest_error([&] { table.require("no_such_symbol"); }),
              "symbol 'no_such_symbol' not found in the guest kernel");
    EXPECT_FALSE(table.find("no_such_symbol").has_value());
    EXPECT_TRUE(table.find_all("show_sta").empty());
    EXPECT_EQ(table.require("startup_64").address.value, kBase);
    EXPECT_EQ(table.require("_end").type, 'B');
}

TEST(Kallsyms, ResolveLikePercentPS) {
    std::vector<Sym> syms = kernel_like_symbols();
    Encoded e = encode(syms);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    // _text and startup_64 share kBase: the first in kallsyms order wins.
    auto r = table.resolve(GuestVirtAddr{kBase + 3});
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->symbol.name, "_text");
    EXPECT_EQ(r->offset, 3u);
    // Check every symbol against a brute-force oracle.
    for (std::size_t i = 0; i < syms.size(); ++i) {
        if (syms[i].absolute) continue;
        std::size_t first = i;
        while (first > 0 && syms[first - 1].address == syms[i].address) --first;
        std::uint64_t next = 0;
        for (std::size_t j = i + 1; j < syms.size(); ++j)
            if (syms[j].address > syms[i].address) {
                next = syms[j].address;
                break;
            }
        std::uint64_t probe = syms[i].address + (next ? (next - syms[i].address) / 2 : 0);
        auto got = table.resolve(GuestVirtAddr{probe});
        ASSERT_TRUE(got.has_value()) << syms[i].name;
        EXPECT_EQ(got->symbol.name, syms[first].name);
        EXPECT_EQ(got->symbol.address.value, syms[i].address);
        EXPECT_EQ(got->offset, probe - syms[i].address);
        EXPECT_EQ(got->size, next ? next - syms[i].address : 0);
    }
    EXPECT_FALSE(table.resolve(GuestVirtAddr{kBase - 1}).has_value());
    EXPECT_FALSE(table.resolve(GuestVirtAddr{syms.back().address + 1}).has_value());
    EXPECT_TRUE(table.resolve(GuestVirtAddr{syms.back().address}).has_value());
}

// ---- later layouts: 6.4+ order, 6.15 without absolute per-CPU, 7.0 place-relative ----

TEST(Kallsyms, LocatesThe64Order) {
    std::vector<Sym> syms = kernel_like_symbols(1000);
    EncodeOptions opt;
    opt.order_6_4 = true;
    Encoded e = encode(syms, opt);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    expect_same_layout(table.layout(), e.layout);
    EXPECT_TRUE(table.layout().absolute_percpu);
    EXPECT_NE(table.layout().format.find("6.4+ order"), std::string::npos) << table.layout().format;
    EXPECT_NE(table.layout().format.find("base-relative"), std::string::npos) << table.layout().format;
    expect_round_trip(table, syms);
}

TEST(Kallsyms, LocatesThe615OrderWithoutAbsolutePercpu) {
    std::vector<Sym> syms = without_absolute(kernel_like_symbols(1000, 3));
    EncodeOptions opt;
    opt.order_6_4 = true;
    opt.absolute_percpu = false;
    Encoded e = encode(syms, opt);
    KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
    expect_same_layout(table.layout(), e.layout);
    EXPECT_FALSE(table.layout().absolute_percpu);
    expect_round_trip(table, syms);
}

TEST(Kallsyms, LocatesThe70PlaceRelativeTables) {
    // Several seeds and sizes, so that the 4-aligned labels land both on and
    // off 8-byte boundaries.
    for (std::uint64_t seed : {1u, 2u, 3u, 4u}) {
        std::vector<Sym> syms = without_absolute(kernel_like_symbols(700 + 131 * seed, seed));
        EncodeOptions opt;
        opt.place_relative = true;
        opt.text_before += seed * 4;
        Encoded e = encode(syms, opt, seed);
        KallsymsTable table = KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e));
        expect_same_layout(table.layout(), e.layout);
        EXPECT_TRUE(table.layout().place_relative);
        EXPECT_EQ(table.layout().relative_base_var.value, 0u);
        EXPECT_EQ(table.layout().label_alignment, 4u);
        EXPECT_NE(table.layout().format.find("place-relative"), std::string::npos) << table.layout().format;
        expect_round_trip(table, syms);
        EXPECT_EQ(table.resolve(GuestVirtAddr{syms[5].address + 1})->offset, 1u);
    }
}

TEST(Kallsyms, PlaceRelativeOffsetsOutOfOrderAreCorrupt) {
    std::vector<Sym> syms = without_absolute(kernel_like_symbols(600));
    EncodeOptions opt;
    opt.place_relative = true;
    Encoded e = encode(syms, opt);
    // Symbol 100 now points 64 KiB below its predecessor.
    const std::uint64_t entry = e.layout.offsets.value + 4 * 100;
    poke<std::int32_t>(e.memory, entry, peek<std::int32_t>(e.memory, entry) - 0x10000);
    std::string msg = guest_error([&] { KallsymsTable::decode(e.memory, e.layout); });
    EXPECT_NE(msg.find("kallsyms_offsets at " + hex(entry)), std::string::npos) << msg;
    EXPECT_NE(msg.find("not sorted"), std::string::npos) << msg;
    // locate() finds the shape but refuses it, saying why.
    msg = guest_error([&] { KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e)); });
    EXPECT_NE(msg.find("not sorted"), std::string::npos) << msg;
}

// ---- unsupported layouts ----

TEST(Kallsyms, RefusesAbsoluteAddressTables) {
    std::vector<Sym> syms = kernel_like_symbols(600);
    Encoded e = encode(syms);
    // Turn the offsets into the pre-4.6 kallsyms_addresses shape: u64 absolute
    // addresses right before num_syms (no relative_base).
    std::uint64_t n = syms.size();
    std::uint64_t start = e.layout.num_syms_var.value - 8 * n;
    ASSERT_GE(start, kBase);
    for (std::uint64_t i = 0; i < n; ++i) poke<std::uint64_t>(e.memory, start + 8 * i, syms[i].address);
    std::string msg = guest_error([&] { KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e)); });
    EXPECT_NE(msg.find("not supported"), std::string::npos) << msg;
    KallsymsLayout l = e.layout;
    l.base_relative = false;
    EXPECT_NE(guest_error([&] { KallsymsTable::decode(e.memory, l); }).find("not supported"), std::string::npos);
}

// ---- corrupt tables ----

struct Corruption : ::testing::Test {
    std::vector<Sym> syms = kernel_like_symbols(1200);
    Encoded e = encode(syms);
    std::string decode_error() {
        auto t0 = std::chrono::steady_clock::now();
        std::string msg = guest_error([&] { KallsymsTable::decode(e.memory, e.layout); });
        EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
        return msg;
    }
    std::string locate_error() {
        auto t0 = std::chrono::steady_clock::now();
        std::string msg = guest_error([&] { KallsymsTable::locate(e.memory, GuestVirtAddr{kBase}, image_size(e)); });
        EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
        return msg;
    }
};

TEST_F(Corruption, TokenIndexOutOfOrder) {
    poke<std::uint16_t>(e.memory, e.layout.token_index.value + 2 * 0x61, 3);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_token_index at " + hex(e.layout.token_index.value + 2 * 0x61)), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("entry 97 is 3"), std::string::npos) << msg;
    // locate() skips the broken token table and says what it saw.
    EXPECT_NE(locate_error().find("kallsyms"), std::string::npos);
}

TEST_F(Corruption, TokenIndexPastTheTable) {
    poke<std::uint16_t>(e.memory, e.layout.token_index.value, 0xfff0);
    EXPECT_NE(decode_error().find("kallsyms_token_index"), std::string::npos);
}

TEST_F(Corruption, TokenWithoutNul) {
    // The last token runs into the index (no NUL before the table ends).
    std::uint64_t last = e.layout.token_table.value + peek<std::uint16_t>(e.memory, e.layout.token_index.value + 510);
    for (std::uint64_t a = last; a < e.layout.token_index.value; ++a) poke<std::uint8_t>(e.memory, a, 'x');
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_token_table at " + hex(last)), std::string::npos) << msg;
    EXPECT_NE(msg.find("no NUL"), std::string::npos) << msg;
}

TEST_F(Corruption, MarkerOutOfRange) {
    poke<std::uint32_t>(e.memory, e.layout.markers.value + 8, 0x7fffffff);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_markers at " + hex(e.layout.markers.value + 8)), std::string::npos) << msg;
    EXPECT_NE(msg.find("marker 2 is 2147483647, but symbol 512 starts at offset"), std::string::npos) << msg;
}

TEST_F(Corruption, NumSymsHuge) {
    poke<std::uint32_t>(e.memory, e.layout.num_syms_var.value, 0xfffffff0u);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_num_syms at " + hex(e.layout.num_syms_var.value) + ": 4294967280 is not a symbol count"),
              std::string::npos)
        << msg;
    locate_error();
}

TEST_F(Corruption, NumSymsOffByOne) {
    poke<std::uint32_t>(e.memory, e.layout.num_syms_var.value, static_cast<std::uint32_t>(syms.size() - 1));
    EXPECT_NE(decode_error().find("kallsyms_names"), std::string::npos);
    poke<std::uint32_t>(e.memory, e.layout.num_syms_var.value, static_cast<std::uint32_t>(syms.size() + 1));
    EXPECT_NE(decode_error().find("kallsyms_"), std::string::npos);
    locate_error();
}

TEST_F(Corruption, NameLengthZeroAndPastTheEnd) {
    // Symbol 1's length byte.
    std::uint64_t first_len = peek<std::uint8_t>(e.memory, e.layout.names.value);
    std::uint64_t second = e.layout.names.value + 1 + first_len;
    poke<std::uint8_t>(e.memory, second, 0);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_names at " + hex(second) + ": symbol 1 has length 0"), std::string::npos) << msg;
    // The last symbol claims a huge two-byte length.
    Encoded f = encode(syms);
    std::uint64_t off = 0, last = 0;
    for (std::size_t i = 0; i < syms.size(); ++i) {
        last = off;
        std::uint64_t len = peek<std::uint8_t>(f.memory, f.layout.names.value + off);
        std::uint64_t header = 1;
        if (len & 0x80) {
            len = (len & 0x7f) | (std::uint64_t{peek<std::uint8_t>(f.memory, f.layout.names.value + off + 1)} << 7);
            header = 2;
        }
        off += header + len;
    }
    poke<std::uint8_t>(f.memory, f.layout.names.value + last, 0xff);
    poke<std::uint8_t>(f.memory, f.layout.names.value + last + 1, 0x7f);
    msg = guest_error([&] { KallsymsTable::decode(f.memory, f.layout); });
    EXPECT_NE(msg.find("runs past the table end"), std::string::npos) << msg;
    // A second length byte with its MSB set is not two-byte ULEB128.
    poke<std::uint8_t>(f.memory, f.layout.names.value + last + 1, 0x80);
    msg = guest_error([&] { KallsymsTable::decode(f.memory, f.layout); });
    EXPECT_NE(msg.find("above the two-byte maximum 0x3fff"), std::string::npos) << msg;
}

TEST(Kallsyms, NameExpandingPast512IsCorrupt) {
    std::vector<Sym> syms = kernel_like_symbols(1000);
    Encoded g = encode(syms);
    std::size_t longest = 0;
    for (int i = 0; i < 256; ++i)
        if (g.tokens[i].size() > g.tokens[longest].size()) longest = i;
    ASSERT_GE(g.tokens[longest].size(), 5u);
    // Point every code of the long (two-byte length, >= 128 codes) name at
    // the longest token.
    std::uint64_t at = g.layout.names.value;
    std::size_t index = 0;
    for (;; ++index) {
        std::uint64_t len = peek<std::uint8_t>(g.memory, at);
        if (len & 0x80) break;
        at += 1 + len;
        ASSERT_LT(at, g.layout.markers.value);
    }
    std::uint64_t len = (peek<std::uint8_t>(g.memory, at) & 0x7f) |
                        (std::uint64_t{peek<std::uint8_t>(g.memory, at + 1)} << 7);
    for (std::uint64_t k = 0; k < len; ++k) poke<std::uint8_t>(g.memory, at + 2 + k, static_cast<std::uint8_t>(longest));
    std::string msg = guest_error([&] { KallsymsTable::decode(g.memory, g.layout); });
    EXPECT_NE(msg.find("kallsyms_names at " + hex(at) + ": symbol " + std::to_string(index) +
                       " expands to more than 512 characters"),
              std::string::npos)
        << msg;
}

TEST_F(Corruption, OffsetsNotSorted) {
    std::uint64_t at = e.layout.offsets.value + 4 * 100;
    std::int32_t v = peek<std::int32_t>(e.memory, at);
    poke<std::int32_t>(e.memory, at, v - 0x100000);  // far above its neighbours
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_offsets at " + hex(at + 4)), std::string::npos) << msg;
    EXPECT_NE(msg.find("not sorted"), std::string::npos) << msg;
    EXPECT_NE(locate_error().find("not supported"), std::string::npos);
}

TEST_F(Corruption, LowestRelativeSymbolNotAtTheBase) {
    // Symbol 8 (_text) is the first relative one: its offset must be -1.
    ASSERT_FALSE(syms[8].absolute);
    std::uint64_t at = e.layout.offsets.value + 4 * 8;
    poke<std::int32_t>(e.memory, at, -5);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_offsets at " + hex(at)), std::string::npos) << msg;
    EXPECT_NE(msg.find("not at it"), std::string::npos) << msg;
}

TEST_F(Corruption, RelativeBaseOutsideTheImage) {
    // decode() cannot tell (every address moves with the base); locate()
    // knows the image.
    poke<std::uint64_t>(e.memory, e.layout.relative_base_var.value, 0xffff888000000000ULL);
    std::string msg = locate_error();
    EXPECT_NE(msg.find("kallsyms_relative_base at " + hex(e.layout.relative_base_var.value)), std::string::npos) << msg;
}

TEST_F(Corruption, SeqsOfNamesNotAPermutation) {
    std::uint64_t at = e.layout.seqs_of_names.value + 3 * 10;
    poke<std::uint8_t>(e.memory, at, 0x7f);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_seqs_of_names at " + hex(at)), std::string::npos) << msg;
    Encoded f = encode(syms);
    // Swap two entries: still a permutation, but out of name order.
    std::uint64_t a = f.layout.seqs_of_names.value;
    for (int k = 0; k < 3; ++k) {
        auto x = peek<std::uint8_t>(f.memory, a + k);
        poke<std::uint8_t>(f.memory, a + k, peek<std::uint8_t>(f.memory, a + 3 * 500 + k));
        poke<std::uint8_t>(f.memory, a + 3 * 500 + k, x);
    }
    msg = guest_error([&] { KallsymsTable::decode(f.memory, f.layout); });
    EXPECT_NE(msg.find("sorts before"), std::string::npos) << msg;
}

TEST_F(Corruption, TruncatedTables) {
    // The image ends in the middle of kallsyms_names: every table after it
    // is unreadable.
    std::uint64_t cut = e.layout.names.value + 5000 - kBase;
    e.memory.bytes.resize(cut);
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_"), std::string::npos) << msg;
    EXPECT_NE(msg.find("not readable"), std::string::npos) << msg;
    locate_error();
}

TEST_F(Corruption, UnmappedPageInsideNames) {
    e = encode(kernel_like_symbols(8000));
    ASSERT_GT(e.layout.markers.value - e.layout.names.value, 3 * 4096u);
    e.memory.holes.insert((e.layout.names.value + 0x1000) & ~std::uint64_t{4095});
    std::string msg = decode_error();
    EXPECT_NE(msg.find("kallsyms_names at " + hex(e.layout.names.value)), std::string::npos) << msg;
    EXPECT_NE(msg.find("not readable"), std::string::npos) << msg;
    locate_error();
}

TEST_F(Corruption, LayoutAddressesNonsense) {
    KallsymsLayout l = e.layout;
    std::swap(l.token_table, l.token_index);
    EXPECT_NE(guest_error([&] { KallsymsTable::decode(e.memory, l); }).find("kallsyms_token_table"), std::string::npos);
    l = e.layout;
    std::swap(l.names, l.markers);
    EXPECT_NE(guest_error([&] { KallsymsTable::decode(e.memory, l); }).find("kallsyms_"), std::string::npos);
    l = e.layout;
    l.names = GuestVirtAddr{0xfffffffffffffff0ULL};
    EXPECT_NE(guest_error([&] { KallsymsTable::decode(e.memory, l); }).find("kallsyms_"), std::string::npos);
}

TEST(Kallsyms, NoTablesAtAll) {
    ImageMemory m;
    std::mt19937_64 rng(5);
    filler(m.bytes, 1 << 20, rng);
    std::string msg = guest_error([&] { KallsymsTable::locate(m, GuestVirtAddr{kBase}, m.bytes.size()); });
    EXPECT_NE(msg.find("no kallsyms_token_table"), std::string::npos) << msg;
    // A lone digit run that is not a token table.
    std::memcpy(m.bytes.data() + 0x1001, "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9", 20);
    m.bytes[0x1000] = std::byte{0};
    msg = guest_error([&] { KallsymsTable::locate(m, GuestVirtAddr{kBase}, m.bytes.size()); });
    EXPECT_NE(msg.find("kallsyms"), std::string::npos) << msg;
    EXPECT_THROW(KallsymsTable::locate(m, GuestVirtAddr{kBase}, 0), Error);
}

TEST(Kallsyms, ManyDigitRunsAreBounded) {
    ImageMemory m;
    m.bytes.assign(4 << 20, std::byte{0});
    for (std::size_t at = 64; at + 32 < m.bytes.size(); at += 64)
        std::memcpy(m.bytes.data() + at, "0\0" "1\0" "2\0" "3\0" "4\0" "5\0" "6\0" "7\0" "8\0" "9", 20);
    auto t0 = std::chrono::steady_clock::now();
    std::string msg = guest_error([&] { KallsymsTable::locate(m, GuestVirtAddr{kBase}, m.bytes.size()); });
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
    EXPECT_NE(msg.find("kallsyms"), std::string::npos) << msg;
}

TEST(Kallsyms, RandomImagesNeverCrash) {
    std::mt19937_64 rng(0x6b616c6c);
    for (int round = 0; round < 20; ++round) {
        ImageMemory m;
        filler(m.bytes, 256 * 1024 + rng() % 4096, rng);
        if (round % 2) m.holes.insert(kBase + 4096 * (rng() % 64));
        try {
            KallsymsTable::locate(m, GuestVirtAddr{kBase}, m.bytes.size());
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Guest);
        }
    }
}

TEST(Kallsyms, MutatedTablesNeverCrash) {
    // Random byte flips inside real tables: locate() either still decodes a
    // consistent table or throws Error(Guest); never anything else.
    std::vector<Sym> syms = kernel_like_symbols(600, 3);
    const Encoded pristine = encode(syms);
    std::mt19937_64 rng(42);
    const std::uint64_t lo = pristine.layout.offsets.value - kBase;
    const std::uint64_t hi = pristine.layout.token_index.value + 512 - kBase;
    auto t0 = std::chrono::steady_clock::now();
    int decoded = 0;
    for (int round = 0; round < 300; ++round) {
        ImageMemory m = pristine.memory;
        int flips = 1 + static_cast<int>(rng() % 8);
        for (int k = 0; k < flips; ++k) m.bytes[lo + rng() % (hi - lo)] ^= static_cast<std::byte>(1 + rng() % 255);
        try {
            KallsymsTable t = KallsymsTable::locate(m, GuestVirtAddr{kBase}, m.bytes.size());
            ++decoded;
            EXPECT_EQ(t.symbols().size(), syms.size());
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
        }
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
    RecordProperty("decoded_despite_flips", decoded);
}

}  // namespace
}  // namespace hvpatch
