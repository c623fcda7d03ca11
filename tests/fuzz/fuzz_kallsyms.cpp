// Fuzz KallsymsTable::locate(). Anything but a decoded table or Error(Guest)
// is a bug (a crash, a sanitizer report, another exception, a hang).
//
// Two modes, chosen by the first byte:
//  - raw: the rest of the input is the kernel image at a kernel address.
//  - structured: the input describes a small symbol table and a layout (the
//    4.6-6.3 order with or without absolute per-CPU offsets and
//    seqs_of_names, the 6.4+ order, or 7.0's place-relative order with
//    4-byte labels); the harness lays the tables out as scripts/kallsyms
//    does, then flips the bytes the rest of the input names. So the fuzzer
//    spends its time inside each layout's decoder rather than on finding the
//    digit tokens by chance.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "hvpatch/error.h"
#include "introspect/kallsyms.h"

namespace {

constexpr std::uint64_t kBase = 0xffffffff81000000ULL;

class FuzzImage : public hvpatch::VirtualMemory {
public:
    FuzzImage(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    void read(hvpatch::GuestVirtAddr addr, std::span<std::byte> out) override {
        if (addr.value < kBase || addr.value - kBase > size_ || out.size() > size_ - (addr.value - kBase))
            throw hvpatch::Error(hvpatch::ErrorKind::Guest, "outside the fuzz image");
        std::memcpy(out.data(), data_ + (addr.value - kBase), out.size());
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
};

struct Input {
    const std::uint8_t* p;
    std::size_t left;
    std::uint8_t u8() {
        if (left == 0) return 0;
        --left;
        return *p++;
    }
    std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
};

template <typename T>
void put(std::vector<std::uint8_t>& v, T value) {
    std::uint8_t b[sizeof(T)];
    std::memcpy(b, &value, sizeof(T));
    v.insert(v.end(), b, b + sizeof(T));
}

struct Symbol {
    std::string name;  // type letter first
    std::uint64_t address;
};

// The tables of `syms` (sorted by address, the first at kBase) in one of the
// four layouts, with identity tokens (every code stands for its own byte).
std::vector<std::uint8_t> build_image(const std::vector<Symbol>& syms, unsigned layout, bool seqs) {
    const bool old_order = layout <= 1, absolute_percpu = layout == 1, place_relative = layout == 3;
    const std::size_t align = place_relative ? 4 : 8;
    const std::uint64_t base = syms.front().address;
    std::vector<std::uint8_t> names, markers, seq_bytes, token_table, token_index, offsets, base_bytes, count;
    for (std::size_t i = 0; i < syms.size(); ++i) {
        if (i % 256 == 0) put(markers, static_cast<std::uint32_t>(names.size()));
        names.push_back(static_cast<std::uint8_t>(syms[i].name.size()));
        names.insert(names.end(), syms[i].name.begin(), syms[i].name.end());
        auto rel = static_cast<std::int32_t>(syms[i].address - base);
        put(offsets, absolute_percpu ? -rel - 1 : rel);
    }
    std::vector<std::size_t> by_name(syms.size());
    for (std::size_t i = 0; i < syms.size(); ++i) by_name[i] = i;
    std::stable_sort(by_name.begin(), by_name.end(),
                     [&](std::size_t a, std::size_t b) { return syms[a].name.substr(1) < syms[b].name.substr(1); });
    for (std::size_t i : by_name) {
        seq_bytes.push_back(static_cast<std::uint8_t>(i >> 16));
        seq_bytes.push_back(static_cast<std::uint8_t>(i >> 8));
        seq_bytes.push_back(static_cast<std::uint8_t>(i));
    }
    for (int c = 0; c < 256; ++c) {
        put(token_index, static_cast<std::uint16_t>(token_table.size()));
        if (c != 0) token_table.push_back(static_cast<std::uint8_t>(c));
        token_table.push_back(0);
    }
    put(base_bytes, base);
    put(count, static_cast<std::uint32_t>(syms.size()));

    std::vector<std::uint8_t> img(4096, 0x90);  // "text" before the tables
    auto emit = [&](const std::vector<std::uint8_t>& table) {
        while (img.size() % align) img.push_back(0);
        img.insert(img.end(), table.begin(), table.end());
        return kBase + img.size() - table.size();
    };
    if (old_order) {
        const std::uint64_t at = emit(offsets);
        (void)at;
        emit(base_bytes);
        emit(count);
        emit(names);
        emit(markers);
        if (seqs) emit(seq_bytes);
        emit(token_table);
        emit(token_index);
    } else {
        if (place_relative) img.push_back(0x5a);
        emit(count);
        emit(names);
        emit(markers);
        emit(token_table);
        emit(token_index);
        const std::uint64_t at = emit(offsets);
        if (place_relative) {
            for (std::size_t i = 0; i < syms.size(); ++i) {
                auto d = static_cast<std::int32_t>(static_cast<std::int64_t>(syms[i].address) -
                                                   static_cast<std::int64_t>(at + 4 * i));
                std::memcpy(&img[at - kBase + 4 * i], &d, 4);
            }
        } else {
            emit(base_bytes);
        }
        if (seqs) emit(seq_bytes);
    }
    while (img.size() % align) img.push_back(0);
    img.resize(img.size() + 256, 0xcc);
    return img;
}

void locate_and_query(const std::uint8_t* data, std::size_t size) {
    FuzzImage image(data, size);
    try {
        hvpatch::KallsymsTable table = hvpatch::KallsymsTable::locate(image, hvpatch::GuestVirtAddr{kBase}, size);
        // A table that decoded must answer queries without trouble.
        for (const hvpatch::KernelSymbol& s : table.symbols()) {
            (void)table.find_all(s.name);
            (void)table.resolve(s.address);
        }
        (void)table.resolve(hvpatch::GuestVirtAddr{kBase + size / 2});
    } catch (const hvpatch::Error& e) {
        if (e.kind() != hvpatch::ErrorKind::Guest) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    if ((data[0] & 1) == 0) {
        locate_and_query(data + 1, size - 1);
        return 0;
    }
    Input in{data + 1, size - 1};
    const std::uint8_t options = in.u8();
    const unsigned layout = options & 3;
    const bool seqs = (options & 4) || layout >= 2;  // 6.4+ always has kallsyms_seqs_of_names
    const std::size_t n = 1 + in.u8() % 64;
    static constexpr char kTypes[] = "TtDdBbRr";
    static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz_0123456789";
    std::vector<Symbol> syms;
    std::uint64_t address = kBase;
    for (std::size_t i = 0; i < n; ++i) {
        Symbol s;
        s.name.push_back(kTypes[in.u8() % 8]);
        const std::size_t len = 1 + in.u8() % 12;
        for (std::size_t k = 0; k < len; ++k) s.name.push_back(kChars[in.u8() % (sizeof kChars - 1)]);
        s.address = address;
        address += in.u16() % 512;
        syms.push_back(std::move(s));
    }
    std::vector<std::uint8_t> img = build_image(syms, layout, seqs);
    // The rest of the input: (offset, xor) flips, somewhere in the tables.
    while (in.left >= 3) {
        const std::size_t at = 4096 + in.u16() % (img.size() - 4096);
        img[at] ^= in.u8();
    }
    locate_and_query(img.data(), img.size());
    return 0;
}
