#include "vmm/qemu/gdb_registers.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "hvpatch/error.h"
#include "vmm/qemu/gdb_packet.h"

namespace hvpatch {
namespace {

constexpr int kMaxIncludeDepth = 4;

// Where each VcpuRegisters field comes from, by the stub's register name.
struct FieldBinding {
    const char* name;
    std::uint64_t VcpuRegisters::*wide;   // for 64-bit fields
    std::uint16_t VcpuRegisters::*narrow; // for segment selectors
};

const std::array<FieldBinding, 33> kBindings = {{
    {"rax", &VcpuRegisters::rax, nullptr}, {"rbx", &VcpuRegisters::rbx, nullptr},
    {"rcx", &VcpuRegisters::rcx, nullptr}, {"rdx", &VcpuRegisters::rdx, nullptr},
    {"rsi", &VcpuRegisters::rsi, nullptr}, {"rdi", &VcpuRegisters::rdi, nullptr},
    {"rbp", &VcpuRegisters::rbp, nullptr}, {"rsp", &VcpuRegisters::rsp, nullptr},
    {"r8", &VcpuRegisters::r8, nullptr},   {"r9", &VcpuRegisters::r9, nullptr},
    {"r10", &VcpuRegisters::r10, nullptr}, {"r11", &VcpuRegisters::r11, nullptr},
    {"r12", &VcpuRegisters::r12, nullptr}, {"r13", &VcpuRegisters::r13, nullptr},
    {"r14", &VcpuRegisters::r14, nullptr}, {"r15", &VcpuRegisters::r15, nullptr},
    {"rip", &VcpuRegisters::rip, nullptr}, {"eflags", &VcpuRegisters::rflags, nullptr},
    {"cs", nullptr, &VcpuRegisters::cs},   {"ss", nullptr, &VcpuRegisters::ss},
    {"ds", nullptr, &VcpuRegisters::ds},   {"es", nullptr, &VcpuRegisters::es},
    {"fs", nullptr, &VcpuRegisters::fs},   {"gs", nullptr, &VcpuRegisters::gs},
    {"fs_base", &VcpuRegisters::fs_base, nullptr},
    {"gs_base", &VcpuRegisters::gs_base, nullptr},
    {"k_gs_base", &VcpuRegisters::kernel_gs_base, nullptr},
    {"cr0", &VcpuRegisters::cr0, nullptr}, {"cr2", &VcpuRegisters::cr2, nullptr},
    {"cr3", &VcpuRegisters::cr3, nullptr}, {"cr4", &VcpuRegisters::cr4, nullptr},
    {"cr8", &VcpuRegisters::cr8, nullptr}, {"efer", &VcpuRegisters::efer, nullptr},
}};

struct XmlDocFree {
    void operator()(xmlDoc* doc) const { xmlFreeDoc(doc); }
};

std::string attribute(xmlNode* node, const char* name) {
    xmlChar* value = xmlGetProp(node, reinterpret_cast<const xmlChar*>(name));
    if (!value) return {};
    std::string out(reinterpret_cast<const char*>(value));
    xmlFree(value);
    return out;
}

bool is_element(xmlNode* node, const char* name) {
    return node->type == XML_ELEMENT_NODE &&
           std::strcmp(reinterpret_cast<const char*>(node->name), name) == 0;
}

int parse_int(const std::string& text, const std::string& what) {
    try {
        std::size_t used = 0;
        int v = std::stoi(text, &used, 0);
        if (used != text.size() || v < 0 || v > 100000) throw std::invalid_argument(text);
        return v;
    } catch (const std::exception&) {
        throw Error(ErrorKind::Protocol, "target description: bad " + what + " '" + text + "'");
    }
}

class DescriptionParser {
public:
    explicit DescriptionParser(const std::function<std::string(const std::string&)>& fetch)
        : fetch_(fetch) {}

    void parse_document(const std::string& text, const std::string& name, int depth) {
        if (depth > kMaxIncludeDepth)
            throw Error(ErrorKind::Protocol, "target description: includes nested too deep at " + name);
        // No network, no DTD loading, no entity expansion: the text comes
        // from the VMM and is treated as untrusted.
        std::unique_ptr<xmlDoc, XmlDocFree> doc(
            xmlReadMemory(text.data(), static_cast<int>(text.size()), name.c_str(), nullptr,
                          XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
        if (!doc) throw Error(ErrorKind::Protocol, "target description: " + name + " is not valid XML");
        walk(xmlDocGetRootElement(doc.get()), depth);
    }

    std::vector<GdbRegister> take() { return std::move(registers_); }

private:
    void walk(xmlNode* node, int depth) {
        for (; node; node = node->next) {
            if (node->type != XML_ELEMENT_NODE) continue;  // comments, text
            // gdb's files use the xi: prefix without declaring it, so the
            // parser may keep it as part of the name.
            if (is_element(node, "include") || is_element(node, "xi:include")) {
                std::string href = attribute(node, "href");
                if (href.empty()) throw Error(ErrorKind::Protocol, "target description: include without href");
                parse_document(fetch_(href), href, depth + 1);
            } else if (is_element(node, "reg")) {
                add_register(node);
            } else {
                walk(node->children, depth);
            }
        }
    }

    void add_register(xmlNode* node) {
        GdbRegister reg;
        reg.name = attribute(node, "name");
        reg.bitsize = parse_int(attribute(node, "bitsize"), "bitsize of " + reg.name);
        if (reg.bitsize == 0 || reg.bitsize % 8 != 0 || reg.bitsize > 1024)
            throw Error(ErrorKind::Protocol, "target description: bitsize of " + reg.name + " unusable");
        std::string regnum = attribute(node, "regnum");
        reg.regnum = regnum.empty() ? next_regnum_ : parse_int(regnum, "regnum of " + reg.name);
        next_regnum_ = reg.regnum + 1;
        if (registers_.size() > 4096) throw Error(ErrorKind::Protocol, "target description: too many registers");
        registers_.push_back(reg);
    }

    const std::function<std::string(const std::string&)>& fetch_;
    std::vector<GdbRegister> registers_;
    int next_regnum_ = 0;
};

std::uint64_t read_le(const std::vector<std::byte>& bytes, std::size_t offset, std::size_t size) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < size && i < 8; ++i)
        v |= static_cast<std::uint64_t>(bytes[offset + i]) << (8 * i);
    return v;
}

std::string le_hex(std::uint64_t value, int bytes) {
    std::vector<std::byte> raw(static_cast<std::size_t>(bytes));
    for (int i = 0; i < bytes; ++i) raw[static_cast<std::size_t>(i)] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
    return gdb::to_hex(raw);
}

std::uint64_t field_value(const VcpuRegisters& regs, const FieldBinding& b) {
    return b.wide ? regs.*(b.wide) : regs.*(b.narrow);
}

}  // namespace

GdbRegisterMap GdbRegisterMap::parse(const std::string& target_xml,
                                     const std::function<std::string(const std::string&)>& fetch) {
    DescriptionParser parser(fetch);
    parser.parse_document(target_xml, "target.xml", 0);
    GdbRegisterMap map;
    map.registers_ = parser.take();
    // The `g` packet holds registers in regnum order.
    std::stable_sort(map.registers_.begin(), map.registers_.end(),
                     [](const GdbRegister& a, const GdbRegister& b) { return a.regnum < b.regnum; });
    std::size_t offset = 0;
    for (auto& reg : map.registers_) {
        reg.offset = offset;
        offset += static_cast<std::size_t>(reg.bitsize / 8);
    }
    map.g_size_ = offset;
    for (const auto& b : kBindings) {
        auto reg = map.find(b.name);
        if (!reg) throw Error(ErrorKind::Protocol, std::string("target description lacks register ") + b.name);
        if (reg->bitsize > 64)
            throw Error(ErrorKind::Protocol, std::string("target description: register ") + b.name + " wider than 64 bits");
    }
    return map;
}

std::optional<GdbRegister> GdbRegisterMap::find(std::string_view name) const {
    for (const auto& reg : registers_)
        if (reg.name == name) return reg;
    return std::nullopt;
}

VcpuRegisters GdbRegisterMap::decode(std::string_view g_hex) const {
    std::vector<std::byte> bytes = gdb::from_hex(g_hex);
    VcpuRegisters regs;
    for (const auto& b : kBindings) {
        GdbRegister reg = *find(b.name);
        std::size_t size = static_cast<std::size_t>(reg.bitsize / 8);
        if (reg.offset + size > bytes.size())
            throw Error(ErrorKind::Protocol, "gdbstub 'g' reply of " + std::to_string(bytes.size()) +
                                                 " bytes lacks register " + reg.name);
        std::uint64_t v = read_le(bytes, reg.offset, size);
        if (b.wide) regs.*(b.wide) = v;
        else regs.*(b.narrow) = static_cast<std::uint16_t>(v);
    }
    return regs;
}

std::vector<std::pair<int, std::string>> GdbRegisterMap::encode_changes(const VcpuRegisters& from,
                                                                        const VcpuRegisters& to) const {
    std::vector<std::pair<int, std::string>> writes;
    for (const auto& b : kBindings) {
        std::uint64_t old_value = field_value(from, b), new_value = field_value(to, b);
        if (old_value == new_value) continue;
        GdbRegister reg = *find(b.name);
        writes.emplace_back(reg.regnum, le_hex(new_value, reg.bitsize / 8));
    }
    return writes;
}

}  // namespace hvpatch
