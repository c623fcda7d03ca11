// Structure layouts of the guest kernel from its own BTF
// (__start_BTF..__stop_BTF in the kernel image, the same bytes as the
// guest's /sys/kernel/btf/vmlinux), parsed with libbpf. No offset is
// hard-coded anywhere in hvpatch: every one comes from here.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

struct btf;

namespace hvpatch {

struct MemberInfo {
    std::uint64_t offset = 0;      // bytes from the start of the outer struct
    std::uint64_t size = 0;        // bytes (for bitfields: of the storage unit)
    std::uint32_t bit_offset = 0;  // bits within `offset` (bitfields)
    std::uint32_t bit_size = 0;    // 0 unless a bitfield
};

class KernelBtf {
public:
    // Parses raw BTF bytes (untrusted guest data). Throws Error(Guest) with
    // libbpf's reason when the bytes are not valid BTF.
    static KernelBtf parse(std::span<const std::byte> raw);
    ~KernelBtf();
    KernelBtf(KernelBtf&&) noexcept;
    KernelBtf& operator=(KernelBtf&&) noexcept;

    // Member of a struct or union by dotted path through nested (also
    // anonymous) structs/unions, e.g. ("task_struct", "thread.sp"),
    // ("task_struct", "thread_info.flags"). Arrays: "name[3]" is allowed.
    std::optional<MemberInfo> find_member(std::string_view type_name, std::string_view path) const;
    // Throws Error(Guest): "guest BTF: struct task_struct has no member 'x'".
    MemberInfo member(std::string_view type_name, std::string_view path) const;
    std::uint64_t offset_of(std::string_view type_name, std::string_view path) const {
        return member(type_name, path).offset;
    }
    // sizeof(struct/union/typedef/int name). Throws Error(Guest) if unknown.
    std::uint64_t size_of(std::string_view type_name) const;
    bool has_type(std::string_view type_name) const;
    // Value of an enumerator (e.g. "KLP_UNDEFINED" is a #define, but
    // enumerators like "TASK_COMM_LEN" are not; use for real enums).
    std::optional<std::int64_t> enum_value(std::string_view enumerator) const;

    std::size_t type_count() const;

private:
    explicit KernelBtf(struct btf* handle);
    struct btf* btf_ = nullptr;
};

}  // namespace hvpatch
