// KernelBtf: member lookups in the guest kernel's BTF.
//
// libbpf (1.1) checks the BTF header, the string section's termination and
// that every type record lies inside the type section. It does not check
// what the records say: a type id may point past the last type, a name
// offset past the strings, a typedef may point at itself, an anonymous
// struct may contain itself. Every such reference is checked here before it
// is followed, and every walk is bounded (see kernel_btf.h).
#include "introspect/kernel_btf.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "hvpatch/error.h"

namespace hvpatch {

namespace {

[[noreturn]] void malformed(const std::string& what) {
    throw Error(ErrorKind::Guest, "guest BTF: malformed: " + what);
}

struct Component {
    std::string_view name;
    std::vector<std::uint64_t> indexes;
};

bool is_ident_char(char c, bool first) {
    return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (!first && c >= '0' && c <= '9');
}

// "a.b[1][2].c" -> {a}, {b,[1,2]}, {c}. Throws Error(Usage) on bad syntax.
std::vector<Component> parse_path(std::string_view path) {
    auto bad = [&](const char* why) -> Error {
        return Error(ErrorKind::Usage, "bad member path '" + std::string(path) + "': " + why);
    };
    std::vector<Component> out;
    std::size_t i = 0;
    if (path.empty()) throw bad("empty");
    for (;;) {
        Component c;
        std::size_t start = i;
        while (i < path.size() && is_ident_char(path[i], i == start)) ++i;
        if (i == start) throw bad("expected a member name");
        c.name = path.substr(start, i - start);
        while (i < path.size() && path[i] == '[') {
            ++i;
            std::size_t digits = i;
            std::uint64_t v = 0;
            while (i < path.size() && path[i] >= '0' && path[i] <= '9') {
                if (v > (UINT64_MAX - 9) / 10) throw bad("index too large");
                v = v * 10 + static_cast<std::uint64_t>(path[i] - '0');
                ++i;
            }
            if (i == digits || i >= path.size() || path[i] != ']') throw bad("expected [decimal index]");
            ++i;
            c.indexes.push_back(v);
        }
        out.push_back(std::move(c));
        if (i == path.size()) return out;
        if (path[i] != '.') throw bad("expected '.' or '['");
        ++i;
    }
}

// The path up to (not including) component `n`, e.g. "thread" or "a.b[2]".
std::string joined(const std::vector<Component>& components, std::size_t n) {
    std::string out;
    for (std::size_t i = 0; i < n; ++i) {
        if (i) out += '.';
        out += components[i].name;
        for (std::uint64_t index : components[i].indexes) out += "[" + std::to_string(index) + "]";
    }
    return out;
}

bool is_modifier(const btf_type* t) {
    switch (btf_kind(t)) {
    case BTF_KIND_TYPEDEF:
    case BTF_KIND_CONST:
    case BTF_KIND_VOLATILE:
    case BTF_KIND_RESTRICT:
    case BTF_KIND_TYPE_TAG:
        return true;
    default:
        return false;
    }
}

// libbpf explains a rejection only through its print callback (stderr by
// default; the reason for a bad header only at debug level). parse()
// captures every line and puts them in its error message instead.
// The callback is process-global, so parses are serialized.
std::mutex g_parse_mutex;
std::string g_libbpf_messages;

int capture_libbpf(enum libbpf_print_level, const char* format, va_list args) {
    char line[512];
    int n = std::vsnprintf(line, sizeof line, format, args);
    if (n <= 0) return n;
    std::string_view text(line);
    if (text.starts_with("libbpf: ")) text.remove_prefix(8);
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
    if (!text.empty() && g_libbpf_messages.size() < 2048) {
        if (!g_libbpf_messages.empty()) g_libbpf_messages += "; ";
        g_libbpf_messages += text;
    }
    return n;
}

}  // namespace

struct KernelBtf::Impl {
    struct btf* btf = nullptr;
    std::uint32_t type_cnt = 0;  // btf__type_cnt: ids are [1, type_cnt)
    // First type of each name, per kind we look up by name.
    std::unordered_map<std::string, std::uint32_t> structs, unions, typedefs, ints, enums, floats;
    std::unordered_map<std::string, std::int64_t> enumerators;

    ~Impl() { btf__free(btf); }

    const btf_type* type(std::uint32_t id) const {
        if (id == 0 || id >= type_cnt) malformed("type id " + std::to_string(id) + " out of range");
        const btf_type* t = btf__type_by_id(btf, id);
        if (!t) malformed("type id " + std::to_string(id) + " out of range");
        return t;
    }

    const char* name(std::uint32_t name_off) const {
        const char* n = btf__name_by_offset(btf, name_off);
        if (!n) malformed("name offset " + std::to_string(name_off) + " outside the string section");
        return n;
    }

    // Follows typedef/const/volatile/restrict/type_tag to the type they name.
    // Returns 0 for void.
    std::uint32_t skip_modifiers(std::uint32_t id) const {
        std::uint32_t start = id;
        for (int hops = 0; hops <= kMaxTypeChain; ++hops) {
            if (id == 0) return 0;
            const btf_type* t = type(id);
            if (!is_modifier(t)) return id;
            id = t->type;
        }
        malformed("type chain from id " + std::to_string(start) + " is longer than " +
                  std::to_string(kMaxTypeChain) + " (a cycle?)");
    }

    std::uint64_t size_of_id(std::uint32_t id) const {
        std::int64_t s = btf__resolve_size(btf, id);
        if (s < 0) malformed("cannot size type id " + std::to_string(id) + " (" + std::strerror(int(-s)) + ")");
        return static_cast<std::uint64_t>(s);
    }

    void build_indexes() {
        for (std::uint32_t id = 1; id < type_cnt; ++id) {
            const btf_type* t = type(id);
            const char* n = name(t->name_off);
            std::uint16_t kind = btf_kind(t);
            if (*n) {
                std::unordered_map<std::string, std::uint32_t>* index = nullptr;
                switch (kind) {
                case BTF_KIND_STRUCT: index = &structs; break;
                case BTF_KIND_UNION: index = &unions; break;
                case BTF_KIND_TYPEDEF: index = &typedefs; break;
                case BTF_KIND_INT: index = &ints; break;
                case BTF_KIND_ENUM:
                case BTF_KIND_ENUM64: index = &enums; break;
                case BTF_KIND_FLOAT: index = &floats; break;
                default: break;
                }
                if (index) index->try_emplace(n, id);
            }
            if (kind == BTF_KIND_ENUM) {
                const struct btf_enum* e = btf_enum(t);
                for (std::uint16_t i = 0; i < btf_vlen(t); ++i) {
                    std::int64_t v = btf_kflag(t) ? std::int64_t(e[i].val)
                                                  : std::int64_t(static_cast<std::uint32_t>(e[i].val));
                    enumerators.try_emplace(name(e[i].name_off), v);
                }
            } else if (kind == BTF_KIND_ENUM64) {
                const struct btf_enum64* e = btf_enum64(t);
                for (std::uint16_t i = 0; i < btf_vlen(t); ++i)
                    enumerators.try_emplace(name(e[i].name_off), static_cast<std::int64_t>(btf_enum64_value(&e[i])));
            }
        }
    }

    static std::uint32_t lookup(const std::unordered_map<std::string, std::uint32_t>& index, std::string_view n) {
        auto it = index.find(std::string(n));
        return it == index.end() ? 0 : it->second;
    }

    struct Root {
        std::uint32_t id = 0;  // the struct/union (after typedefs); 0 if none
        std::string label;     // "struct task_struct", "union x", "atomic_t"
    };

    Root root(std::string_view type_name) const {
        if (std::uint32_t id = lookup(structs, type_name)) return {id, "struct " + std::string(type_name)};
        if (std::uint32_t id = lookup(unions, type_name)) return {id, "union " + std::string(type_name)};
        if (std::uint32_t id = lookup(typedefs, type_name)) {
            std::uint32_t target = skip_modifiers(id);
            if (target && btf_is_composite(type(target))) return {target, std::string(type_name)};
            return {0, std::string(type_name) + " (not a struct or union)"};
        }
        return {0, "struct or union " + std::string(type_name)};
    }

    struct Found {
        const btf_type* parent = nullptr;  // the (possibly anonymous) struct/union holding it
        std::uint16_t index = 0;           // into btf_members(parent)
        std::uint64_t parent_bits = 0;     // where `parent` starts in the outer struct
    };

    // Finds `want` among the members of composite `id`, looking inside
    // anonymous struct/union members as C does. `bits` is the offset of `id`
    // in the outer struct; on success it becomes the member's offset.
    bool find_in(std::uint32_t id, std::string_view want, std::uint64_t& bits, Found& found,
                 std::unordered_set<std::uint32_t>& visited, int depth) const {
        if (depth > kMaxAnonDepth)
            malformed("anonymous members nested deeper than " + std::to_string(kMaxAnonDepth));
        if (!visited.insert(id).second) return false;
        const btf_type* t = type(id);
        const struct btf_member* m = btf_members(t);
        for (std::uint16_t i = 0; i < btf_vlen(t); ++i) {
            const char* n = name(m[i].name_off);
            std::uint64_t member_bits = btf_member_bit_offset(t, i);
            if (*n) {
                if (want == n) {
                    found = {t, i, bits};
                    if (__builtin_add_overflow(bits, member_bits, &bits)) malformed("member offset overflows");
                    return true;
                }
                continue;
            }
            std::uint32_t inner = skip_modifiers(m[i].type);
            if (!inner || !btf_is_composite(type(inner))) continue;
            std::uint64_t inner_bits = 0;
            if (__builtin_add_overflow(bits, member_bits, &inner_bits)) malformed("member offset overflows");
            if (find_in(inner, want, inner_bits, found, visited, depth + 1)) {
                bits = inner_bits;
                return true;
            }
        }
        return false;
    }

    // The lookup behind find_member/member: the member, or why there is none.
    std::optional<MemberInfo> resolve(std::string_view type_name, std::string_view path, std::string& why) const {
        std::vector<Component> components = parse_path(path);
        Root r = root(type_name);
        if (!r.id) {
            why = "no " + r.label;
            return std::nullopt;
        }
        std::uint32_t current = r.id;  // composite to search next
        std::uint64_t bits = 0;
        MemberInfo info;
        for (std::size_t ci = 0; ci < components.size(); ++ci) {
            const Component& c = components[ci];
            if (ci > 0) {
                if (!current || !btf_is_composite(type(current))) {
                    why = "'" + joined(components, ci) + "' is not a struct or union";
                    return std::nullopt;
                }
            }
            Found f;
            std::unordered_set<std::uint32_t> visited;
            if (!find_in(current, c.name, bits, f, visited, 0)) {
                if (ci > 0) why = "no '" + std::string(c.name) + "' in '" + joined(components, ci) + "'";
                return std::nullopt;
            }
            std::uint32_t member_type = btf_members(f.parent)[f.index].type;
            std::uint32_t resolved = skip_modifiers(member_type);
            std::uint32_t bitfield_size = btf_member_bitfield_size(f.parent, f.index);
            // Legacy bitfields (struct without kind_flag): the int type
            // carries the bit offset and width.
            if (!btf_kflag(f.parent) && resolved && btf_is_int(type(resolved))) {
                const btf_type* it = type(resolved);
                std::uint32_t int_bits = btf_int_bits(it), int_off = btf_int_offset(it);
                if (int_off != 0 || int_bits != it->size * 8u) {
                    if (__builtin_add_overflow(bits, std::uint64_t{int_off}, &bits))
                        malformed("member offset overflows");
                    bitfield_size = int_bits;
                }
            }
            if (bitfield_size != 0) {
                if (!c.indexes.empty()) {
                    why = "'" + std::string(c.name) + "' is a bitfield, not an array";
                    return std::nullopt;
                }
                if (ci + 1 != components.size()) {
                    why = "'" + std::string(c.name) + "' is a bitfield, not a struct or union";
                    return std::nullopt;
                }
                if (bitfield_size > 64) malformed("bitfield '" + std::string(c.name) + "' is wider than 64 bits");
                std::uint64_t unit = size_of_id(member_type);
                if (unit == 0 || unit > 8) malformed("bitfield '" + std::string(c.name) + "' has a storage unit of " +
                                                     std::to_string(unit) + " bytes");
                std::uint64_t unit_bits = unit * 8;
                std::uint64_t start = bits / unit_bits * unit_bits;
                std::uint64_t parent_end = f.parent_bits + std::uint64_t{f.parent->size} * 8;
                if (bits - start + bitfield_size <= unit_bits && start >= f.parent_bits &&
                    start + unit_bits <= parent_end) {
                    info.offset = start / 8;
                    info.size = unit;
                    info.bit_offset = static_cast<std::uint32_t>(bits - start);
                } else {  // packed: the natural unit straddles the field or the struct's end
                    info.offset = bits / 8;
                    info.bit_offset = static_cast<std::uint32_t>(bits % 8);
                    info.size = (info.bit_offset + bitfield_size + 7) / 8;
                }
                info.bit_size = bitfield_size;
                return info;
            }
            if (bits % 8 != 0) malformed("member '" + std::string(c.name) + "' is not byte-aligned");
            for (std::uint64_t index : c.indexes) {
                if (!resolved || !btf_is_array(type(resolved))) {
                    why = "'" + std::string(c.name) + "' is not an array";
                    return std::nullopt;
                }
                const struct btf_array* a = btf_array(type(resolved));
                if (index >= a->nelems) {
                    why = "index " + std::to_string(index) + " out of bounds, '" + std::string(c.name) + "' has " +
                          std::to_string(a->nelems) + " elements";
                    return std::nullopt;
                }
                std::uint64_t elem_bits = 0, step = 0;
                if (__builtin_mul_overflow(size_of_id(a->type), std::uint64_t{8}, &elem_bits) ||
                    __builtin_mul_overflow(elem_bits, index, &step) || __builtin_add_overflow(bits, step, &bits))
                    malformed("array element offset overflows");
                member_type = a->type;
                resolved = skip_modifiers(member_type);
            }
            info.offset = bits / 8;
            info.size = size_of_id(member_type);
            current = resolved;
        }
        return info;
    }
};

KernelBtf::KernelBtf(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelBtf::~KernelBtf() = default;
KernelBtf::KernelBtf(KernelBtf&&) noexcept = default;
KernelBtf& KernelBtf::operator=(KernelBtf&&) noexcept = default;

KernelBtf KernelBtf::parse(std::span<const std::byte> raw) {
    if (raw.empty()) throw Error(ErrorKind::Guest, "guest BTF: no data");
    if (raw.size() > UINT32_MAX)
        throw Error(ErrorKind::Guest, "guest BTF: " + std::to_string(raw.size()) + " bytes is too large");
    // btf__new copies the bytes.
    struct btf* handle = nullptr;
    int err = 0;
    std::string reason;
    {
        std::lock_guard lock(g_parse_mutex);
        g_libbpf_messages.clear();
        libbpf_print_fn_t previous = libbpf_set_print(capture_libbpf);
        errno = 0;
        handle = btf__new(raw.data(), static_cast<std::uint32_t>(raw.size()));
        err = errno;
        libbpf_set_print(previous);
        reason = std::move(g_libbpf_messages);
        g_libbpf_messages.clear();
    }
    if (!handle) {
        std::string msg = "guest BTF: not valid BTF (" + std::string(std::strerror(err ? err : EINVAL)) + ")";
        if (!reason.empty()) msg += ": " + reason;
        throw Error(ErrorKind::Guest, msg);
    }
    auto impl = std::make_unique<Impl>();
    impl->btf = handle;
    impl->type_cnt = btf__type_cnt(handle);
    impl->build_indexes();
    return KernelBtf(std::move(impl));
}

std::optional<MemberInfo> KernelBtf::find_member(std::string_view type_name, std::string_view path) const {
    std::string why;
    return impl_->resolve(type_name, path, why);
}

MemberInfo KernelBtf::member(std::string_view type_name, std::string_view path) const {
    std::string why;
    if (auto m = impl_->resolve(type_name, path, why)) return *m;
    Impl::Root r = impl_->root(type_name);
    if (!r.id) throw Error(ErrorKind::Guest, "guest BTF: " + why);
    std::string msg = "guest BTF: " + r.label + " has no member '" + std::string(path) + "'";
    if (!why.empty()) msg += " (" + why + ")";
    throw Error(ErrorKind::Guest, msg);
}

std::uint64_t KernelBtf::size_of(std::string_view type_name) const {
    for (const auto* index : {&impl_->structs, &impl_->unions, &impl_->typedefs, &impl_->ints, &impl_->enums,
                              &impl_->floats})
        if (std::uint32_t id = Impl::lookup(*index, type_name)) return impl_->size_of_id(id);
    throw Error(ErrorKind::Guest, "guest BTF: no type '" + std::string(type_name) + "'");
}

bool KernelBtf::has_type(std::string_view type_name) const {
    for (const auto* index : {&impl_->structs, &impl_->unions, &impl_->typedefs, &impl_->ints, &impl_->enums,
                              &impl_->floats})
        if (Impl::lookup(*index, type_name)) return true;
    return false;
}

std::optional<std::int64_t> KernelBtf::enum_value(std::string_view enumerator) const {
    auto it = impl_->enumerators.find(std::string(enumerator));
    if (it == impl_->enumerators.end()) return std::nullopt;
    return it->second;
}

std::size_t KernelBtf::type_count() const { return impl_->type_cnt ? impl_->type_cnt - 1 : 0; }

}  // namespace hvpatch
