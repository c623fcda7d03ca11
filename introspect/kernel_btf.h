// Structure layouts of the guest kernel from its own BTF
// (__start_BTF..__stop_BTF in the kernel image, the same bytes as the
// guest's /sys/kernel/btf/vmlinux), parsed with libbpf. No offset is
// hard-coded anywhere in hvpatch: every one comes from here.
//
// The bytes are untrusted guest data. libbpf checks the header and that
// every type record fits its section; everything libbpf does not check
// (type ids referenced by other types, name offsets, cycles through
// typedefs or anonymous members, array bounds, offset overflow) is checked
// here, and a violation throws Error(Guest) naming what is wrong. All walks
// are bounded: at most kMaxTypeChain hops through typedef/const/volatile/
// restrict/type_tag, at most kMaxAnonDepth nested anonymous members, each
// anonymous struct/union searched at most once per path component.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace hvpatch {

struct MemberInfo {
    std::uint64_t offset = 0;      // bytes from the start of the outer struct
    std::uint64_t size = 0;        // bytes (for bitfields: of the storage unit)
    std::uint32_t bit_offset = 0;  // bits within `offset` (bitfields; 0 otherwise)
    std::uint32_t bit_size = 0;    // 0 unless a bitfield

    // For a bitfield the storage unit is the member's declared type (e.g. 4
    // bytes for `unsigned int x:3`), placed at the naturally aligned offset
    // that contains the field: reading `size` bytes little-endian at
    // `offset` and taking bits [bit_offset, bit_offset + bit_size) gives the
    // value. In packed structs, where that unit would straddle the field or
    // reach past the enclosing struct (struct orc_entry), `offset` is the
    // byte holding the field's first bit and `size` the bytes it spans (up
    // to 9).
    bool is_bitfield() const { return bit_size != 0; }
};

class KernelBtf {
public:
    static constexpr int kMaxTypeChain = 32;
    static constexpr int kMaxAnonDepth = 32;

    // Parses raw BTF bytes (untrusted guest data; copied, `raw` need not
    // outlive the result). Throws Error(Guest) "guest BTF: <libbpf's
    // reason>" when the bytes are not valid BTF.
    static KernelBtf parse(std::span<const std::byte> raw);
    ~KernelBtf();
    KernelBtf(KernelBtf&&) noexcept;
    KernelBtf& operator=(KernelBtf&&) noexcept;

    // Member of a struct or union by dotted path through nested (also
    // anonymous) structs/unions, e.g. ("task_struct", "thread.sp"),
    // ("task_struct", "thread_info.flags"). Members of anonymous structs and
    // unions are named directly, as in C. Arrays: "name[3]" (and
    // "name[1][2]") index them, bounds-checked. `type_name` is a struct,
    // else a union, else a typedef of either (e.g. "atomic_t").
    // nullopt when the type or any member on the path does not exist, when
    // the path goes through something that is not a struct/union (a
    // pointer, say) or indexes out of bounds. Throws Error(Guest) only
    // when the BTF itself is malformed, Error(Usage) when `path` is not
    // syntactically a member path.
    std::optional<MemberInfo> find_member(std::string_view type_name, std::string_view path) const;
    // As find_member; throws Error(Guest) "guest BTF: struct task_struct
    // has no member 'x'" (with the reason appended when it is more
    // specific, e.g. "(index 9 out of bounds, 'x' has 4 elements)").
    MemberInfo member(std::string_view type_name, std::string_view path) const;
    std::uint64_t offset_of(std::string_view type_name, std::string_view path) const {
        return member(type_name, path).offset;
    }
    // sizeof(struct/union/typedef/int/enum/float name), looked up in that
    // order ("long unsigned int" is how BTF spells unsigned long). Throws
    // Error(Guest) "guest BTF: no type 'x'" if unknown.
    std::uint64_t size_of(std::string_view type_name) const;
    // A complete (not just forward-declared) type of one of those kinds.
    bool has_type(std::string_view type_name) const;
    // Value of an enumerator of any enum (BTF_KIND_ENUM and ENUM64), e.g.
    // "TASK_COMM_LEN" or "MODULE_STATE_LIVE". #defines are not in BTF.
    // Unsigned 64-bit values above INT64_MAX come back as their two's
    // complement bit pattern. The first enum defining the name wins.
    std::optional<std::int64_t> enum_value(std::string_view enumerator) const;

    // Number of types, not counting void (type id 0).
    std::size_t type_count() const;

private:
    struct Impl;
    explicit KernelBtf(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace hvpatch
