#include "patch/livepatch_module.h"

#include <gelf.h>
#include <libelf.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>

#include "hvpatch/error.h"
#include "introspect/code_inspect.h"

namespace hvpatch {
namespace {

std::string hex(std::uint64_t v) {
    std::ostringstream s;
    s << "0x" << std::hex << v;
    return s.str();
}

[[noreturn]] void refuse(const std::string& path, const std::string& what) {
    throw Error(ErrorKind::Usage, path + ": " + what);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// ---- SHA-256 (FIPS 180-4) ----

constexpr std::array<std::uint32_t, 64> kSha256K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

void sha256_block(std::array<std::uint32_t, 8>& h, const unsigned char* block) {
    std::array<std::uint32_t, 64> w{};
    for (int t = 0; t < 16; ++t) {
        w[t] = std::uint32_t(block[4 * t]) << 24 | std::uint32_t(block[4 * t + 1]) << 16 |
               std::uint32_t(block[4 * t + 2]) << 8 | std::uint32_t(block[4 * t + 3]);
    }
    for (int t = 16; t < 64; ++t) {
        std::uint32_t s0 = std::rotr(w[t - 15], 7) ^ std::rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
        std::uint32_t s1 = std::rotr(w[t - 2], 17) ^ std::rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; ++t) {
        std::uint32_t S1 = std::rotr(e, 6) ^ std::rotr(e, 11) ^ std::rotr(e, 25);
        std::uint32_t ch = (e & f) ^ (~e & g);
        std::uint32_t t1 = hh + S1 + ch + kSha256K[t] + w[t];
        std::uint32_t S0 = std::rotr(a, 2) ^ std::rotr(a, 13) ^ std::rotr(a, 22);
        std::uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        std::uint32_t t2 = S0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

// ---- libelf ----

struct ElfCloser {
    void operator()(Elf* e) const { elf_end(e); }
};
using ElfHandle = std::unique_ptr<Elf, ElfCloser>;

std::string elf_error() {
    const char* m = elf_errmsg(-1);
    return m ? m : "unknown libelf error";
}

struct SpecialKind {
    std::string_view name;
    bool prefix;
    std::string_view handling;
};
constexpr SpecialKind kSpecials[] = {
    {".altinstructions", false, "alternatives: applied for the guest's CPU features (boot_cpu_data)"},
    {".altinstr_replacement", false, "replacement code of .altinstructions"},
    {".parainstructions", false, "paravirt patch sites: applied as the guest kernel did"},
    {".smp_locks", false, "lock-prefix sites (SMP): kept as built"},
    {"__mcount_loc", false, "ftrace call sites: turned into 5-byte NOPs"},
    {"__jump_table", false, "static branches: set to their static keys' current state"},
    {".static_call_sites", false, "static calls: left calling their trampolines, which the guest keeps current"},
    {".call_sites", false, "call-depth-tracking call sites: kept as built (refused if the guest tracks call depth)"},
    {".orc_header", false, "ORC format hash: must equal the guest kernel's"},
    {"__patchable_function_entries", false, "function padding table: loaded, unused on x86"},
    {".retpoline_sites", false, "retpoline call sites: patched as the guest's spectre_v2 mode"},
    {".return_sites", false, "return-thunk sites: patched as the guest's return mitigation"},
    {".orc_unwind", false, "ORC entries: kept so hvpatch can unwind through patch code"},
    {".orc_unwind_ip", false, "ORC addresses: kept so hvpatch can unwind through patch code"},
    {"__bug_table", false, "BUG sites kept (a BUG in patch code oopses as invalid opcode); WARN sites become NOPs (the guest knows no WARN entries of an unregistered module); 7.x WARN()s with arguments are reported by the guest as usual"},
    {"__ex_table", false, ""},
    {".init.", true, "init-only: skipped (hvpatch never runs the module's init)"},
    {".exit.", true, "exit-only: skipped (hvpatch never runs the module's exit)"},
};

}  // namespace

std::string sha256_hex(std::span<const std::byte> data) {
    std::array<std::uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const auto* p = reinterpret_cast<const unsigned char*>(data.data());
    std::size_t n = data.size();
    std::size_t full = n / 64;
    for (std::size_t i = 0; i < full; ++i) sha256_block(h, p + 64 * i);
    // Padding: 0x80, zeros, the length in bits as a big-endian u64.
    std::array<unsigned char, 128> tail{};
    std::size_t rest = n - 64 * full;
    std::memcpy(tail.data(), p + 64 * full, rest);
    tail[rest] = 0x80;
    std::size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
    std::uint64_t bits = std::uint64_t(n) * 8;
    for (int i = 0; i < 8; ++i) tail[tail_len - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
    for (std::size_t off = 0; off < tail_len; off += 64) sha256_block(h, tail.data() + off);
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (std::uint32_t word : h) {
        for (int shift = 28; shift >= 0; shift -= 4) out += digits[(word >> shift) & 0xf];
    }
    return out;
}

KlpSymbolName parse_klp_symbol_name(std::string_view name) {
    auto bad = [&](const std::string& why) -> KlpSymbolName {
        throw Error(ErrorKind::Usage, "malformed livepatch symbol name '" + std::string(name) + "': " + why +
                                          " (expected .klp.sym.<object>.<symbol>,<sympos>)");
    };
    constexpr std::string_view prefix = ".klp.sym.";
    if (!starts_with(name, prefix)) return bad("no .klp.sym. prefix");
    std::string_view rest = name.substr(prefix.size());
    std::size_t dot = rest.find('.');
    if (dot == std::string_view::npos) return bad("no '.' after the object name");
    KlpSymbolName out;
    out.object = rest.substr(0, dot);
    if (out.object.empty()) return bad("empty object name");
    if (out.object.size() > 55) return bad("object name longer than 55 characters");
    rest = rest.substr(dot + 1);
    std::size_t comma = rest.find(',');
    if (comma == std::string_view::npos) return bad("no ',<sympos>'");
    out.name = rest.substr(0, comma);
    if (out.name.empty()) return bad("empty symbol name");
    if (out.name.size() > 511) return bad("symbol name longer than 511 characters");
    std::string_view pos = rest.substr(comma + 1);
    if (pos.empty()) return bad("empty sympos");
    auto [end, ec] = std::from_chars(pos.data(), pos.data() + pos.size(), out.sympos, 10);
    if (ec != std::errc{}) return bad("sympos is not a decimal number");
    if (end != pos.data() + pos.size()) return bad("trailing characters after the sympos");
    return out;
}

KlpRelaName parse_klp_rela_name(std::string_view name) {
    auto bad = [&](const std::string& why) -> KlpRelaName {
        throw Error(ErrorKind::Usage, "malformed livepatch relocation section name '" + std::string(name) +
                                          "': " + why + " (expected .klp.rela.<object>.<section>)");
    };
    constexpr std::string_view prefix = ".klp.rela.";
    if (!starts_with(name, prefix)) return bad("no .klp.rela. prefix");
    std::string_view rest = name.substr(prefix.size());
    std::size_t dot = rest.find('.');
    if (dot == std::string_view::npos) return bad("no '.' after the object name");
    KlpRelaName out;
    out.object = rest.substr(0, dot);
    if (out.object.empty()) return bad("empty object name");
    if (out.object.size() > 55) return bad("object name longer than 55 characters");
    out.section = rest.substr(dot + 1);
    if (out.section.empty()) return bad("empty section name");
    return out;
}

LivepatchModule LivepatchModule::open(const std::string& path) {
    LivepatchModule m;
    m.path_ = path;
    {
        std::ifstream in(path, std::ios::binary);
        if (!in) throw Error(ErrorKind::Internal, path + ": cannot open: " + std::strerror(errno));
        m.bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        if (in.bad()) throw Error(ErrorKind::Internal, path + ": read error");
    }
    m.sha256_ = sha256_hex(std::as_bytes(std::span(m.bytes_.data(), m.bytes_.size())));

    if (elf_version(EV_CURRENT) == EV_NONE) throw Error(ErrorKind::Internal, "libelf: " + elf_error());
    if (m.bytes_.size() < 4 || std::memcmp(m.bytes_.data(), ELFMAG, SELFMAG) != 0) refuse(path, "not an ELF file");
    if (m.bytes_.size() < sizeof(Elf64_Ehdr))
        refuse(path, "truncated or corrupt ELF: " + std::to_string(m.bytes_.size()) +
                         " bytes, shorter than an ELF header");
    ElfHandle elf(elf_memory(m.bytes_.data(), m.bytes_.size()));
    if (!elf) refuse(path, "truncated or corrupt ELF: " + elf_error());
    if (elf_kind(elf.get()) != ELF_K_ELF) refuse(path, "not an ELF file");
    GElf_Ehdr ehdr;
    if (gelf_getehdr(elf.get(), &ehdr) == nullptr)
        refuse(path, "truncated or corrupt ELF: no ELF header (" + elf_error() + ")");
    if (gelf_getclass(elf.get()) != ELFCLASS64 || ehdr.e_ident[EI_DATA] != ELFDATA2LSB ||
        ehdr.e_machine != EM_X86_64 || ehdr.e_type != ET_REL) {
        refuse(path, "not a 64-bit x86-64 relocatable object (class " + std::to_string(gelf_getclass(elf.get())) +
                         ", machine " + std::to_string(ehdr.e_machine) + ", type " +
                         std::to_string(ehdr.e_type) + "; a kernel module is ELFCLASS64 EM_X86_64 ET_REL)");
    }

    if (ehdr.e_shoff != 0 && (ehdr.e_shoff > m.bytes_.size() ||
                              (m.bytes_.size() - ehdr.e_shoff) / std::max<std::uint64_t>(ehdr.e_shentsize, 1) <
                                  std::max<std::uint64_t>(ehdr.e_shnum, 1))) {
        refuse(path, "truncated or corrupt ELF: the section header table (offset " + hex(ehdr.e_shoff) + ", " +
                         std::to_string(ehdr.e_shnum) + " entries) lies beyond the end of the file (" +
                         hex(m.bytes_.size()) + " bytes)");
    }
    std::size_t shnum = 0, shstrndx = 0;
    if (elf_getshdrnum(elf.get(), &shnum) != 0 || elf_getshdrstrndx(elf.get(), &shstrndx) != 0)
        refuse(path, "truncated or corrupt ELF: section headers: " + elf_error());
    if (shnum == 0) refuse(path, "not a kernel module (no .modinfo / .gnu.linkonce.this_module): no sections");

    std::vector<Elf_Scn*> scns(shnum, nullptr);
    for (std::size_t i = 0; i < shnum; ++i) {
        Elf_Scn* scn = elf_getscn(elf.get(), i);
        GElf_Shdr shdr;
        if (!scn || !gelf_getshdr(scn, &shdr))
            refuse(path, "truncated or corrupt ELF: section " + std::to_string(i) + ": " + elf_error());
        scns[i] = scn;
        KoSection s;
        s.index = i;
        if (i != 0) {
            const char* nm = elf_strptr(elf.get(), shstrndx, shdr.sh_name);
            if (!nm) refuse(path, "truncated or corrupt ELF: section " + std::to_string(i) + " has no name");
            s.name = nm;
        }
        s.type = shdr.sh_type;
        s.flags = shdr.sh_flags;
        s.size = shdr.sh_size;
        s.alignment = shdr.sh_addralign;
        s.offset = shdr.sh_offset;
        s.link = shdr.sh_link;
        s.info = shdr.sh_info;
        s.entsize = shdr.sh_entsize;
        if (s.type != SHT_NOBITS && s.type != SHT_NULL &&
            (s.offset > m.bytes_.size() || s.size > m.bytes_.size() - s.offset)) {
            refuse(path, "truncated or corrupt ELF: section " + s.name + " (offset " + hex(s.offset) + ", size " +
                             hex(s.size) + ") lies beyond the end of the file (" + hex(m.bytes_.size()) +
                             " bytes)");
        }
        m.sections_.push_back(std::move(s));
    }

    const KoSection* modinfo = m.find_section(".modinfo");
    if (!modinfo || !m.find_section(".gnu.linkonce.this_module"))
        refuse(path, std::string("not a kernel module (no .modinfo / .gnu.linkonce.this_module): missing ") +
                         (modinfo ? ".gnu.linkonce.this_module" : ".modinfo"));
    {
        auto data = m.section_data(modinfo->index);
        std::string_view text(reinterpret_cast<const char*>(data.data()), data.size());
        while (!text.empty()) {
            std::size_t nul = text.find('\0');
            std::string_view entry = text.substr(0, nul);
            text = nul == std::string_view::npos ? std::string_view{} : text.substr(nul + 1);
            std::size_t eq = entry.find('=');
            if (entry.empty() || eq == std::string_view::npos) continue;
            m.modinfo_.emplace_back(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
        }
    }
    if (m.modinfo_value("livepatch") != "Y")
        refuse(path, "not a livepatch module (no livepatch=Y in .modinfo)");
    m.vermagic_ = m.modinfo_value("vermagic").value_or("");
    if (auto n = m.modinfo_value("name"); n && !n->empty()) {
        m.name_ = *n;
    } else {
        // As kbuild names it: the file's stem with '-' turned into '_'.
        std::string stem = path.substr(path.find_last_of('/') == std::string::npos ? 0 : path.find_last_of('/') + 1);
        if (stem.ends_with(".ko")) stem.resize(stem.size() - 3);
        std::replace(stem.begin(), stem.end(), '-', '_');
        m.name_ = stem;
    }

    // Symbols.
    const KoSection* symtab = nullptr;
    for (const auto& s : m.sections_) {
        if (s.type != SHT_SYMTAB) continue;
        if (symtab) refuse(path, "truncated or corrupt ELF: more than one SHT_SYMTAB section");
        symtab = &s;
    }
    if (!symtab) refuse(path, "not a kernel module: no .symtab");
    {
        Elf_Data* data = elf_getdata(scns[symtab->index], nullptr);
        if (!data || symtab->entsize != sizeof(Elf64_Sym))
            refuse(path, "truncated or corrupt ELF: " + symtab->name + ": " + elf_error());
        std::size_t count = symtab->size / sizeof(Elf64_Sym);
        for (std::size_t i = 0; i < count; ++i) {
            GElf_Sym sym;
            if (!gelf_getsym(data, static_cast<int>(i), &sym))
                refuse(path, "truncated or corrupt ELF: " + symtab->name + " entry " + std::to_string(i));
            KoSymbol s;
            s.index = i;
            const char* nm = elf_strptr(elf.get(), symtab->link, sym.st_name);
            if (!nm) refuse(path, "truncated or corrupt ELF: symbol " + std::to_string(i) + " has no name");
            s.name = nm;
            s.value = sym.st_value;
            s.size = sym.st_size;
            s.type = GELF_ST_TYPE(sym.st_info);
            s.bind = GELF_ST_BIND(sym.st_info);
            s.shndx = sym.st_shndx;
            if (s.type == STT_SECTION && s.name.empty() && s.shndx < m.sections_.size())
                s.name = m.sections_[s.shndx].name;
            bool klp_name = starts_with(s.name, ".klp.sym.");
            if (s.shndx == kShnLivepatch) {
                try {
                    m.klp_symbols_.push_back({i, parse_klp_symbol_name(s.name)});
                } catch (const Error& e) {
                    refuse(path, e.what());
                }
            } else if (klp_name) {
                refuse(path, "symbol " + s.name + " is named like a livepatch symbol but is not marked SHN_LIVEPATCH");
            } else if (s.shndx != SHN_UNDEF && s.shndx < SHN_LORESERVE && s.shndx >= m.sections_.size()) {
                refuse(path, "truncated or corrupt ELF: symbol " + s.name + " in section " + std::to_string(s.shndx) +
                                 " of " + std::to_string(m.sections_.size()));
            }
            m.symbols_.push_back(std::move(s));
        }
    }

    // Relocations.
    for (const auto& s : m.sections_) {
        bool klp_flag = (s.flags & kShfRelaLivepatch) != 0;
        bool klp_name = starts_with(s.name, ".klp.rela.");
        if (klp_flag != klp_name && (s.type == SHT_RELA || klp_name)) {
            refuse(path, "section " + s.name +
                             (klp_flag ? " has SHF_RELA_LIVEPATCH but no .klp.rela. name"
                                       : " is named like a livepatch relocation section but lacks SHF_RELA_LIVEPATCH"));
        }
        if (s.type != SHT_RELA) {
            if (klp_name) refuse(path, "section " + s.name + " is a livepatch relocation section but not SHT_RELA");
            continue;
        }
        if (s.info == 0 || s.info >= m.sections_.size())
            refuse(path, "relocation section " + s.name + " applies to section " + std::to_string(s.info) +
                             ", which does not exist");
        if (s.link != symtab->index)
            refuse(path, "relocation section " + s.name + " does not use .symtab");
        Elf_Data* data = elf_getdata(scns[s.index], nullptr);
        if (!data || s.entsize != sizeof(Elf64_Rela))
            refuse(path, "truncated or corrupt ELF: " + s.name + ": " + elf_error());
        KoRelocationSection r;
        r.index = s.index;
        r.name = s.name;
        r.target = s.info;
        r.livepatch = klp_flag;
        std::size_t count = s.size / sizeof(Elf64_Rela);
        for (std::size_t i = 0; i < count; ++i) {
            GElf_Rela rela;
            if (!gelf_getrela(data, static_cast<int>(i), &rela))
                refuse(path, "truncated or corrupt ELF: " + s.name + " entry " + std::to_string(i));
            KoRelocation e;
            e.offset = rela.r_offset;
            e.type = static_cast<std::uint32_t>(GELF_R_TYPE(rela.r_info));
            e.symbol = static_cast<std::uint32_t>(GELF_R_SYM(rela.r_info));
            e.addend = rela.r_addend;
            if (e.symbol >= m.symbols_.size())
                refuse(path, s.name + " entry " + std::to_string(i) + " names symbol " + std::to_string(e.symbol) +
                                 " of " + std::to_string(m.symbols_.size()));
            if (klp_flag && m.symbols_[e.symbol].shndx != kShnLivepatch)
                refuse(path, s.name + ": symbol " + m.symbols_[e.symbol].name +
                                 " is not marked as a livepatch symbol (SHN_LIVEPATCH)");
            r.entries.push_back(e);
        }
        if (klp_flag) {
            try {
                m.klp_relas_.push_back({s.index, r.target, parse_klp_rela_name(s.name), r.entries.size()});
            } catch (const Error& e) {
                refuse(path, e.what());
            }
        } else if (m.sections_[r.target].flags & SHF_ALLOC) {
            for (std::size_t i = 0; i < r.entries.size(); ++i)
                m.reloc_at_[{r.target, r.entries[i].offset}] = {m.relocations_.size(), i};
        }
        m.relocations_.push_back(std::move(r));
    }
    return m;
}

std::optional<std::string> LivepatchModule::modinfo_value(std::string_view key) const {
    for (const auto& [k, v] : modinfo_)
        if (k == key) return v;
    return std::nullopt;
}

std::string LivepatchModule::license() const { return modinfo_value("license").value_or(""); }

std::vector<std::string> LivepatchModule::depends() const {
    std::vector<std::string> out;
    std::string all = modinfo_value("depends").value_or("");
    std::size_t start = 0;
    while (start <= all.size() && !all.empty()) {
        std::size_t comma = all.find(',', start);
        std::string item = all.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) out.push_back(item);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return out;
}

std::string LivepatchModule::vermagic_release() const {
    std::size_t start = vermagic_.find_first_not_of(' ');
    if (start == std::string::npos) return "";
    std::size_t end = vermagic_.find(' ', start);
    return vermagic_.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

const KoSection* LivepatchModule::find_section(std::string_view name) const {
    for (const auto& s : sections_)
        if (s.index != 0 && s.name == name) return &s;
    return nullptr;
}

const KoSymbol* LivepatchModule::find_symbol(std::string_view name) const {
    for (const auto& s : symbols_)
        if (s.type != STT_SECTION && s.type != STT_FILE && s.name == name) return &s;
    return nullptr;
}

std::span<const std::byte> LivepatchModule::section_data(std::size_t index) const {
    const KoSection& s = sections_.at(index);
    if (s.type == SHT_NOBITS || s.type == SHT_NULL) return {};
    return std::as_bytes(std::span(bytes_.data() + s.offset, s.size));
}

std::vector<SpecialSection> LivepatchModule::special_sections() const {
    std::vector<SpecialSection> out;
    for (const auto& s : sections_) {
        if (s.type == SHT_RELA || s.type == SHT_REL || s.index == 0) continue;
        for (const auto& k : kSpecials) {
            bool match = k.prefix ? starts_with(s.name, k.name) : s.name == k.name;
            if (!match) continue;
            SpecialSection sp{s.index, s.name, s.size, std::string(k.handling), false};
            if (k.name == "__ex_table") {
                if (s.size == 0) {
                    sp.handling = "exception table: empty, nothing to do";
                } else {
                    sp.refused = true;
                    sp.handling =
                        "exception table with " + std::to_string(s.size / 12) +
                        " entries: refused, the guest's fault handler searches only the tables of modules it "
                        "loaded itself, so a fault in this patch's code would not find its fixup";
                }
            }
            out.push_back(std::move(sp));
            break;
        }
    }
    return out;
}

void LivepatchModule::check_compatible(std::string_view guest_release) const {
    if (vermagic_.empty())
        throw Error(ErrorKind::Guest, path_ + ": no vermagic in .modinfo; the guest runs " + std::string(guest_release));
    std::string built_for = vermagic_release();
    if (built_for != guest_release) {
        throw Error(ErrorKind::Guest, path_ + ": vermagic '" + vermagic_ + "' is for kernel " + built_for +
                                          ", the guest runs " + std::string(guest_release) +
                                          " (rebuild the patch against linux-headers-" + std::string(guest_release) +
                                          ")");
    }
}

void LivepatchModule::check_supported() const {
    std::string reasons;
    for (const auto& s : special_sections()) {
        if (!s.refused) continue;
        if (!reasons.empty()) reasons += "; ";
        reasons += "section " + s.name + ": " + s.handling;
    }
    if (!reasons.empty()) throw Error(ErrorKind::Guest, path_ + ": cannot be loaded by hvpatch: " + reasons);
}

std::string LivepatchModule::describe(Place p) const {
    return sections_.at(p.section).name + "+" + hex(p.offset);
}

std::string LivepatchModule::symbol_at(Place p) const {
    const KoSymbol* best = nullptr;
    for (const auto& s : symbols_) {
        if (s.shndx != p.section || s.value != p.offset) continue;
        if (s.type == STT_SECTION || s.type == STT_FILE || s.name.empty()) continue;
        if (!best || (s.type == STT_FUNC && best->type != STT_FUNC)) best = &s;
    }
    return best ? best->name : describe(p);
}

LivepatchModule::Pointer LivepatchModule::read_pointer(Place at, std::string_view what) const {
    const KoSection& sec = sections_.at(at.section);
    if (at.offset > sec.size || sec.size - at.offset < 8)
        refuse(path_, std::string(what) + " at " + describe(at) + " lies outside section " + sec.name);
    Pointer p;
    auto it = reloc_at_.find({at.section, at.offset});
    if (it == reloc_at_.end()) {
        std::uint64_t raw = 0;
        if (sec.type != SHT_NOBITS) std::memcpy(&raw, bytes_.data() + sec.offset + at.offset, 8);
        if (raw != 0)
            refuse(path_, std::string(what) + " at " + describe(at) + " holds " + hex(raw) +
                              " without a relocation (an absolute address in a module)");
        return p;
    }
    const KoRelocation& r = relocations_[it->second.first].entries[it->second.second];
    if (r.type != R_X86_64_64)
        refuse(path_, std::string(what) + " at " + describe(at) + " has relocation type " + std::to_string(r.type) +
                          ", not R_X86_64_64");
    const KoSymbol& sym = symbols_[r.symbol];
    p.null = false;
    if (sym.shndx == SHN_UNDEF || sym.shndx == kShnLivepatch) {
        p.external = sym.name;
        p.addend = r.addend;
    } else if (sym.shndx < sections_.size()) {
        p.place = Place{sym.shndx, sym.value + static_cast<std::uint64_t>(r.addend)};
    } else {
        refuse(path_, std::string(what) + " at " + describe(at) + " points to symbol " + sym.name +
                          " in special section index " + hex(sym.shndx));
    }
    return p;
}

std::uint64_t LivepatchModule::read_integer(Place at, std::uint64_t size, std::string_view what) const {
    const KoSection& sec = sections_.at(at.section);
    if (size == 0 || size > 8 || at.offset > sec.size || sec.size - at.offset < size)
        refuse(path_, std::string(what) + " at " + describe(at) + " lies outside section " + sec.name);
    if (reloc_at_.contains({at.section, at.offset}))
        refuse(path_, std::string(what) + " at " + describe(at) + " has a relocation; expected a plain integer");
    std::uint64_t v = 0;
    if (sec.type != SHT_NOBITS) {
        for (std::uint64_t i = 0; i < size; ++i)
            v |= std::uint64_t(static_cast<unsigned char>(bytes_[sec.offset + at.offset + i])) << (8 * i);
    }
    return v;
}

std::string LivepatchModule::read_string(const Pointer& p, std::string_view what) const {
    if (!p.place)
        refuse(path_, std::string(what) + " points outside the module (to symbol " + p.external + ")");
    const KoSection& sec = sections_.at(p.place->section);
    if (sec.type == SHT_NOBITS || p.place->offset >= sec.size)
        refuse(path_, std::string(what) + " points to " + describe(*p.place) + ", which holds no string");
    std::string_view text(bytes_.data() + sec.offset + p.place->offset, sec.size - p.place->offset);
    std::size_t nul = text.find('\0');
    if (nul == std::string_view::npos)
        refuse(path_, std::string(what) + " at " + describe(*p.place) + " is not NUL-terminated in " + sec.name);
    return std::string(text.substr(0, nul));
}

LivepatchModule::Place LivepatchModule::find_klp_patch(const GuestLayouts::Livepatch& L) const {
    std::vector<Place> candidates;
    for (const auto& [key, where] : reloc_at_) {
        const KoSection& sec = sections_[key.first];
        if (sec.type != SHT_PROGBITS || (sec.flags & (SHF_ALLOC | SHF_WRITE)) != (SHF_ALLOC | SHF_WRITE) ||
            sec.name == ".gnu.linkonce.this_module")
            continue;
        const KoRelocation& r = relocations_[where.first].entries[where.second];
        if (r.type != R_X86_64_64 || r.addend != 0 || symbols_[r.symbol].name != "__this_module") continue;
        if (key.second < L.patch.mod.offset) continue;
        std::uint64_t base = key.second - L.patch.mod.offset;
        if (base > sec.size || sec.size - base < L.patch.size) continue;
        if (!reloc_at_.contains({key.first, base + L.patch.objs.offset})) continue;
        candidates.push_back({key.first, base});
    }
    if (candidates.size() == 1) return candidates[0];
    if (candidates.empty())
        refuse(path_, "no klp_patch found: no writable data holds a pointer to __this_module (klp_patch.mod) "
                      "together with one at klp_patch.objs");

    // Several: the one init_module passes to klp_enable_patch.
    std::string listed;
    for (const auto& c : candidates) listed += (listed.empty() ? "" : ", ") + symbol_at(c);
    const KoSymbol* init = find_symbol("init_module");
    if (init && init->shndx > 0 && init->shndx < sections_.size()) {
        for (const auto& rs : relocations_) {
            if (rs.livepatch || rs.target != init->shndx) continue;
            std::optional<std::uint64_t> call;
            for (const auto& e : rs.entries) {
                if (e.offset >= init->value && e.offset < init->value + init->size &&
                    symbols_[e.symbol].name == "klp_enable_patch")
                    call = e.offset;
            }
            if (!call) continue;
            const KoRelocation* arg = nullptr;
            for (const auto& e : rs.entries) {
                if (e.offset >= init->value && e.offset < *call && (!arg || e.offset > arg->offset)) arg = &e;
            }
            if (!arg) continue;
            const KoSymbol& s = symbols_[arg->symbol];
            if (s.shndx == SHN_UNDEF || s.shndx >= sections_.size()) continue;
            std::int64_t bias = (arg->type == R_X86_64_PC32 || arg->type == R_X86_64_PLT32) ? 4 : 0;
            Place target{s.shndx, s.value + static_cast<std::uint64_t>(arg->addend + bias)};
            for (const auto& c : candidates)
                if (c.section == target.section && c.offset == target.offset) return c;
        }
    }
    refuse(path_, "several klp_patch candidates (" + listed +
                      ") and init_module does not show which one it passes to klp_enable_patch");
}

std::string LivepatchModule::klp_patch_location(const GuestLayouts::Livepatch& layouts) const {
    return symbol_at(find_klp_patch(layouts));
}

std::array<bool, 4> LivepatchModule::object_callbacks(Place object, const GuestLayouts::Livepatch& L) const {
    // struct klp_callbacks: pre_patch, post_patch, pre_unpatch, post_unpatch
    // (function pointers), then post_unpatch_enabled.
    std::array<bool, 4> found{};
    if (L.object.callbacks.size < 32) return found;
    for (std::size_t i = 0; i < 4; ++i) {
        Pointer p = read_pointer({object.section, object.offset + L.object.callbacks.offset + 8 * i},
                                 std::string("klp_object.callbacks.") + kKlpCallbackNames[i]);
        found[i] = !p.null;
    }
    return found;
}

const KoSection* LivepatchModule::klp_build_objects() const {
    if (const KoSection* s = find_section(".init.klp_objects")) return s;
    return find_section("__klp_objects");
}

bool LivepatchModule::klp_build_form() const { return klp_build_objects() != nullptr; }

LivepatchModule::Description LivepatchModule::decode_klp_build(const GuestLayouts::Livepatch&) const {
    // struct klp_object_ext {name; funcs; struct klp_callbacks callbacks
    // (4 pointers + bool); unsigned int nr_funcs;} and struct klp_func_ext
    // {old_name; new_func; unsigned long sympos;}: x86-64 layouts.
    constexpr std::uint64_t kObjectExtSize = 64, kCallbacksOffset = 16, kNrFuncsOffset = 56;
    constexpr std::uint64_t kFuncExtSize = 24;
    constexpr std::uint64_t kMaxFuncs = 1 << 16;
    const KoSection* objects = klp_build_objects();
    if (objects->type == SHT_NOBITS || objects->size == 0 || objects->size % kObjectExtSize != 0)
        refuse(path_, objects->name + " (klp-build) holds " + std::to_string(objects->size) +
                          " bytes, not a whole number of struct klp_object_ext (64 bytes)");
    Description d;
    for (std::uint64_t at = 0; at < objects->size; at += kObjectExtSize) {
        Place o{objects->index, at};
        Pointer name = read_pointer(o, "klp_object_ext.name at " + describe(o));
        Pointer funcs = read_pointer({o.section, at + 8}, "klp_object_ext.funcs at " + describe(o));
        std::string object = name.null ? "" : read_string(name, "klp_object_ext.name at " + describe(o));
        std::string label = "klp_object_ext '" + (object.empty() ? std::string("vmlinux") : object) + "'";
        std::array<bool, 4> callbacks{};
        for (std::size_t i = 0; i < 4; ++i)
            callbacks[i] = !read_pointer({o.section, at + kCallbacksOffset + 8 * i},
                                         label + " callbacks." + kKlpCallbackNames[i]).null;
        if (callbacks[0] || callbacks[1] || callbacks[2] || callbacks[3])
            throw Error(ErrorKind::Guest, path_ + ": " + label +
                                              " (klp-build) has callbacks, which hvpatch does not run for this form "
                                              "yet (they receive the klp_object that only the module's init builds)");
        const std::uint64_t nr = read_integer({o.section, at + kNrFuncsOffset}, 4, label + " .nr_funcs");
        if (nr > kMaxFuncs) refuse(path_, label + " has " + std::to_string(nr) + " functions");
        if (nr == 0 || !funcs.place) refuse(path_, label + " has no functions");
        const KoSection& fsec = sections_[funcs.place->section];
        if (funcs.place->offset > fsec.size || (fsec.size - funcs.place->offset) / kFuncExtSize < nr)
            refuse(path_, label + ": its " + std::to_string(nr) + " klp_func_ext entries run past the end of " + fsec.name);
        d.objects.push_back({object, o.section, o.offset, callbacks});
        for (std::uint64_t j = 0; j < nr; ++j) {
            Place f{funcs.place->section, funcs.place->offset + j * kFuncExtSize};
            std::string fname = label + " klp_func_ext " + describe(f);
            Pointer old_name = read_pointer(f, fname + " .old_name");
            Pointer new_func = read_pointer({f.section, f.offset + 8}, fname + " .new_func");
            if (old_name.null || new_func.null) refuse(path_, fname + " has no old_name or no new_func");
            PatchedFunction pf;
            pf.object = object;
            pf.old_name = read_string(old_name, fname + " .old_name");
            pf.old_sympos = read_integer({f.section, f.offset + 16}, 8, fname + " .sympos");
            pf.has_klp_func = false;
            pf.new_func = new_func.place ? symbol_at(*new_func.place) : new_func.external;
            d.functions.push_back(std::move(pf));
        }
    }
    return d;
}

bool LivepatchModule::klp_build_replace(const GuestLayouts::Livepatch& L) const {
    // The init stores `patch->replace = true` into the kzalloc'ed klp_patch:
    // a byte store of an immediate at klp_patch.replace's offset.
    const KoSymbol* init = find_symbol("init_module");
    if (!init || init->shndx == 0 || init->shndx >= sections_.size() || L.patch.replace.size != 1) return true;
    auto code = section_data(init->shndx);
    if (init->value > code.size() || code.size() - init->value < init->size) return true;
    for (const auto& insn : hvpatch::decode(code.subspan(init->value, init->size), 0, 4096)) {
        if (insn.mnemonic != "mov" || insn.opcode[0] != 0xc6 || insn.imm_size != 1 || insn.disp_size == 0) continue;
        std::int64_t disp = 0;
        for (std::size_t i = insn.disp_size; i-- > 0;)
            disp = (disp << 8) | std::to_integer<std::uint8_t>(insn.bytes[insn.disp_offset + i]);
        if (insn.disp_size == 1) disp = static_cast<std::int8_t>(disp);
        if (insn.disp_size == 4) disp = static_cast<std::int32_t>(disp);
        if (disp == static_cast<std::int64_t>(L.patch.replace.offset))
            return std::to_integer<std::uint8_t>(insn.bytes[insn.imm_offset]) != 0;
    }
    return false;  // built with KLP_NO_REPLACE: nothing stored, kzalloc's zero stays
}

bool LivepatchModule::replaces(const GuestLayouts::Livepatch& L) const {
    if (klp_build_form()) return klp_build_replace(L);
    if (L.patch.replace.size == 0) return false;
    Place patch = find_klp_patch(L);
    return read_integer({patch.section, patch.offset + L.patch.replace.offset}, L.patch.replace.size,
                        "klp_patch.replace") != 0;
}

std::vector<PatchedFunction> LivepatchModule::patched_functions(const GuestLayouts::Livepatch& L) const {
    return decode(L).functions;
}

std::vector<PatchObject> LivepatchModule::patch_objects(const GuestLayouts::Livepatch& L) const {
    return decode(L).objects;
}

std::vector<PatchState> LivepatchModule::patch_states(const GuestLayouts::Livepatch& L) const {
    std::vector<PatchState> out;
    // klp-build's init sets no states ("TODO patch->states" in init.c).
    if (L.patch.states.size != 8 || L.state.size == 0 || klp_build_form()) return out;
    Place patch = find_klp_patch(L);
    Pointer states = read_pointer({patch.section, patch.offset + L.patch.states.offset}, "klp_patch.states");
    if (states.null) return out;
    if (!states.place) refuse(path_, "klp_patch.states points outside the module (" + states.external + ")");
    constexpr std::size_t kMaxStates = 1 << 12;
    for (std::size_t i = 0;; ++i) {
        Place at{states.place->section, states.place->offset + i * L.state.size};
        const KoSection& sec = sections_[at.section];
        if (i >= kMaxStates || at.offset > sec.size || sec.size - at.offset < L.state.size)
            refuse(path_, "klp_state array at " + describe(*states.place) + " has no terminating entry within " +
                              sec.name);
        const std::uint64_t id = read_integer({at.section, at.offset + L.state.id.offset}, L.state.id.size,
                                              "klp_state.id at " + describe(at));
        if (id == 0) break;  // klp_for_each_state()
        const std::uint64_t version = read_integer({at.section, at.offset + L.state.version.offset},
                                                   L.state.version.size, "klp_state.version at " + describe(at));
        out.push_back({id, version, at.section, at.offset});
    }
    return out;
}

LivepatchModule::Description LivepatchModule::decode(const GuestLayouts::Livepatch& L) const {
    if (klp_build_form()) return decode_klp_build(L);
    if (L.object.size == 0 || L.func.size == 0 || L.patch.size == 0)
        throw Error(ErrorKind::Internal, "decoding klp_patch: livepatch layouts are empty");
    Place patch = find_klp_patch(L);
    std::string patch_name = symbol_at(patch);
    Pointer objs = read_pointer({patch.section, patch.offset + L.patch.objs.offset}, "klp_patch.objs");
    if (!objs.place)
        refuse(path_, "klp_patch " + patch_name + ": objs points outside the module (" + objs.external + ")");
    Description d;
    std::vector<PatchedFunction>& out = d.functions;
    constexpr std::size_t kMaxEntries = 1 << 16;
    for (std::size_t i = 0;; ++i) {
        Place o{objs.place->section, objs.place->offset + i * L.object.size};
        const KoSection& osec = sections_[o.section];
        std::string oname = "klp_object " + describe(o);
        if (i >= kMaxEntries || o.offset > osec.size || osec.size - o.offset < L.object.size)
            refuse(path_, "klp_object array of " + patch_name + " at " + describe(*objs.place) +
                              " has no terminating entry within " + osec.name);
        Pointer name = read_pointer({o.section, o.offset + L.object.name.offset}, oname + " .name");
        Pointer funcs = read_pointer({o.section, o.offset + L.object.funcs.offset}, oname + " .funcs");
        // The terminating entry, as klp_for_each_object_static() ends the
        // array (neither name nor funcs).
        if (name.null && funcs.null) break;
        const std::array<bool, 4> callbacks = object_callbacks(o, L);
        const bool any_callback = callbacks[0] || callbacks[1] || callbacks[2] || callbacks[3];
        std::string object = name.null ? "" : read_string(name, oname + " .name");
        std::string label = "klp_object '" + (object.empty() ? std::string("vmlinux") : object) + "'";
        d.objects.push_back({object, o.section, o.offset, callbacks});
        // klp_enable_patch() refuses an object without a funcs array (-EINVAL);
        // an empty one is valid if the object has callbacks.
        if (funcs.null) refuse(path_, label + " at " + describe(o) + " has no funcs");
        if (!funcs.place) refuse(path_, label + ": funcs points outside the module (" + funcs.external + ")");
        std::size_t before = out.size();
        for (std::size_t j = 0;; ++j) {
            Place f{funcs.place->section, funcs.place->offset + j * L.func.size};
            const KoSection& fsec = sections_[f.section];
            std::string fname = label + " klp_func " + describe(f);
            if (j >= kMaxEntries || f.offset > fsec.size || fsec.size - f.offset < L.func.size)
                refuse(path_, "klp_func array of " + label + " at " + describe(*funcs.place) +
                                  " has no terminating entry within " + fsec.name);
            Pointer old_name = read_pointer({f.section, f.offset + L.func.old_name.offset}, fname + " .old_name");
            Pointer new_func = read_pointer({f.section, f.offset + L.func.new_func.offset}, fname + " .new_func");
            std::uint64_t sympos =
                read_integer({f.section, f.offset + L.func.old_sympos.offset}, L.func.old_sympos.size, fname + " .old_sympos");
            if (old_name.null && new_func.null && sympos == 0) break;
            if (old_name.null) refuse(path_, fname + " has no old_name");
            PatchedFunction pf;
            pf.object = object;
            pf.old_name = read_string(old_name, fname + " .old_name");
            pf.old_sympos = sympos;
            pf.func_section = f.section;
            pf.func_offset = f.offset;
            if (new_func.null) refuse(path_, label + " klp_func '" + pf.old_name + "' has no new_func");
            if (new_func.place) {
                pf.new_func = symbol_at(*new_func.place);
            } else {
                pf.new_func = new_func.external;
                if (new_func.addend != 0)
                    pf.new_func += (new_func.addend > 0 ? "+" : "-") +
                                   hex(static_cast<std::uint64_t>(new_func.addend > 0 ? new_func.addend : -new_func.addend));
            }
            out.push_back(std::move(pf));
        }
        if (out.size() == before && !any_callback)
            refuse(path_, label + " at " + describe(o) + " has an empty funcs array");
    }
    if (d.objects.empty()) refuse(path_, "klp_patch " + patch_name + " has no objects");
    return d;
}

}  // namespace hvpatch
