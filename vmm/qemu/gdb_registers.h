// Register layout of a gdbstub, read from its target description.
//
// QEMU describes its registers in target.xml, which includes i386-64bit.xml.
// Register numbers are assigned in document order (a `regnum` attribute
// resets the count), and the `g` packet concatenates the registers in that
// order, each `bitsize / 8` bytes, little-endian. QEMU 7.2's file keeps
// cs_base..es_base inside an XML comment; a real XML parser skips them where
// a regular expression would not, and the `g` packet (608 bytes) indeed does
// not contain them.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hvpatch/machine.h"

namespace hvpatch {

struct GdbRegister {
    std::string name;
    int regnum = 0;
    int bitsize = 0;
    std::size_t offset = 0;  // byte offset in the `g` packet
};

class GdbRegisterMap {
public:
    // Parses the target description. `fetch(annex)` returns the text of an
    // included document (e.g. "i386-64bit.xml"). Throws Error(Protocol) for
    // malformed XML, an include depth over 4, or a missing register hvpatch
    // needs (rax..r15, rip, eflags, cs..gs, fs_base, gs_base, k_gs_base,
    // cr0, cr2, cr3, cr4, cr8, efer).
    static GdbRegisterMap parse(const std::string& target_xml,
                                const std::function<std::string(const std::string&)>& fetch);

    const std::vector<GdbRegister>& registers() const { return registers_; }
    std::optional<GdbRegister> find(std::string_view name) const;
    // Size of a full `g` reply in bytes.
    std::size_t g_packet_size() const { return g_size_; }

    // Decodes a `g` reply (hex). Throws Error(Protocol) when it is shorter
    // than the registers hvpatch needs.
    VcpuRegisters decode(std::string_view g_hex) const;
    // The `P` writes (regnum, little-endian hex value) that turn `from` into
    // `to`; registers that are equal are skipped.
    std::vector<std::pair<int, std::string>> encode_changes(const VcpuRegisters& from,
                                                            const VcpuRegisters& to) const;

private:
    std::vector<GdbRegister> registers_;
    std::size_t g_size_ = 0;
};

}  // namespace hvpatch
