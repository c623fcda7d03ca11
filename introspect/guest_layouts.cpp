// GuestLayouts: one table (visit() below) lists every field with the member
// paths that may hold it; filling from BTF and describing walk the same
// table, so the two cannot disagree.
#include "introspect/guest_layouts.h"

#include "introspect/virtual_memory.h"

#include <cstdio>
#include <initializer_list>

#include "hvpatch/error.h"

namespace hvpatch {

namespace {

using Paths = std::initializer_list<std::string_view>;

// The table. `v` is a Filler or a Describer; `g` a GuestLayouts, const for
// describing.
template <class G, class V>
void visit(G& g, V& v) {
    auto& t = g.task;
    v.begin("task_struct", t.size);
    v.field({"thread_info"}, t.thread_info);
    v.field({"thread_info.flags"}, t.thread_info_flags);
    v.field({"__state", "state"}, t.state);
    v.field({"stack"}, t.stack);
    v.field({"flags"}, t.flags);
    v.optional({"on_cpu"}, t.on_cpu, "CONFIG_SMP");
    v.optional({"thread_info.cpu", "cpu"}, t.cpu, "CONFIG_SMP");
    v.field({"tasks"}, t.tasks);
    v.field({"mm"}, t.mm);
    v.field({"active_mm"}, t.active_mm);
    v.field({"exit_state"}, t.exit_state);
    v.field({"pid"}, t.pid);
    v.field({"tgid"}, t.tgid);
    v.field({"real_parent"}, t.real_parent);
    v.field({"group_leader"}, t.group_leader);
    v.optional({"thread_group"}, t.thread_group, "removed in 6.7");
    v.field({"thread_node"}, t.thread_node);
    v.field({"comm"}, t.comm);
    v.field({"signal"}, t.signal);
    v.optional({"patch_state"}, t.patch_state, "CONFIG_LIVEPATCH");
    v.field({"thread.sp"}, t.thread_sp);

    v.begin("inactive_task_frame", g.frame.size);
    v.field({"bp"}, g.frame.bp);
    v.field({"ret_addr"}, g.frame.ret_addr);

    auto& r = g.regs;
    v.begin("pt_regs", r.size);
    v.field({"r15"}, r.r15);
    v.field({"r14"}, r.r14);
    v.field({"r13"}, r.r13);
    v.field({"r12"}, r.r12);
    v.field({"bp"}, r.bp);
    v.field({"bx"}, r.bx);
    v.field({"r11"}, r.r11);
    v.field({"r10"}, r.r10);
    v.field({"r9"}, r.r9);
    v.field({"r8"}, r.r8);
    v.field({"ax"}, r.ax);
    v.field({"cx"}, r.cx);
    v.field({"dx"}, r.dx);
    v.field({"si"}, r.si);
    v.field({"di"}, r.di);
    v.field({"orig_ax"}, r.orig_ax);
    v.field({"ip"}, r.ip);
    v.field({"cs"}, r.cs);
    v.field({"flags"}, r.flags);
    v.field({"sp"}, r.sp);
    v.field({"ss"}, r.ss);

    v.begin("list_head", g.list_head.size);
    v.field({"next"}, g.list_head.next);
    v.field({"prev"}, g.list_head.prev);

    v.begin("signal_struct", g.signal.size);
    v.field({"thread_head"}, g.signal.thread_head);

    v.begin("mm_struct", g.mm.size);
    v.field({"pgd"}, g.mm.pgd);

    auto& m = g.module;
    v.begin("module", m.size);
    v.field({"state"}, m.state);
    v.field({"list"}, m.list);
    v.field({"name"}, m.name);
    v.field({"core_layout.base", "mem[MOD_TEXT].base"}, m.core.base);
    v.field({"core_layout.size", "mem[MOD_TEXT].size"}, m.core.size);
    v.field({"core_layout.text_size", "mem[MOD_TEXT].size"}, m.core.text_size);
    v.field({"init_layout.base", "mem[MOD_INIT_TEXT].base"}, m.init.base);
    v.field({"init_layout.size", "mem[MOD_INIT_TEXT].size"}, m.init.size);
    v.field({"init_layout.text_size", "mem[MOD_INIT_TEXT].size"}, m.init.text_size);
    v.field({"kallsyms"}, m.kallsyms);
    v.field({"core_kallsyms"}, m.core_kallsyms);
    v.group(m.orc, "module", "arch.num_orcs", "CONFIG_UNWINDER_ORC", [&](auto& orc) {
        v.field({"arch.num_orcs"}, orc.num_orcs);
        v.field({"arch.orc_unwind_ip"}, orc.orc_unwind_ip);
        v.field({"arch.orc_unwind"}, orc.orc_unwind);
    });
    v.optional({"klp"}, m.klp, "CONFIG_LIVEPATCH");
    v.enumerator("MODULE_STATE_LIVE", m.state_live);
    v.enumerator("MODULE_STATE_COMING", m.state_coming);
    v.enumerator("MODULE_STATE_GOING", m.state_going);
    v.enumerator("MODULE_STATE_UNFORMED", m.state_unformed);

    auto& k = g.mod_kallsyms;
    v.begin("mod_kallsyms", k.size);
    v.field({"symtab"}, k.symtab);
    v.field({"num_symtab"}, k.num_symtab);
    v.field({"strtab"}, k.strtab);
    v.optional({"typetab"}, k.typetab, "5.2+");

    v.group(g.livepatch, "klp_patch", "", "CONFIG_LIVEPATCH", [&](auto& lp) {
        auto& p = lp.patch;
        v.begin("klp_patch", p.size);
        v.field({"mod"}, p.mod);
        v.field({"objs"}, p.objs);
        v.field({"states"}, p.states);
        v.field({"replace"}, p.replace);
        v.field({"list"}, p.list);
        v.field({"kobj"}, p.kobj);
        v.field({"obj_list"}, p.obj_list);
        v.field({"enabled"}, p.enabled);
        v.field({"forced"}, p.forced);
        auto& o = lp.object;
        v.begin("klp_object", o.size);
        v.field({"name"}, o.name);
        v.field({"funcs"}, o.funcs);
        v.field({"callbacks"}, o.callbacks);
        v.field({"kobj"}, o.kobj);
        v.field({"func_list"}, o.func_list);
        v.field({"node"}, o.node);
        v.field({"mod"}, o.mod);
        v.field({"dynamic"}, o.dynamic);
        v.field({"patched"}, o.patched);
        auto& f = lp.func;
        v.begin("klp_func", f.size);
        v.field({"old_name"}, f.old_name);
        v.field({"new_func"}, f.new_func);
        v.field({"old_sympos"}, f.old_sympos);
        v.field({"old_func"}, f.old_func);
        v.field({"kobj"}, f.kobj);
        v.field({"node"}, f.node);
        v.field({"stack_node"}, f.stack_node);
        v.field({"old_size"}, f.old_size);
        v.field({"new_size"}, f.new_size);
        v.field({"nop"}, f.nop);
        v.field({"patched"}, f.patched);
        v.field({"transition"}, f.transition);
        auto& st = lp.state;
        v.begin("klp_state", st.size);
        v.field({"id"}, st.id);
        v.field({"version"}, st.version);
        v.field({"data"}, st.data);
    });
}

// 'a'; 'a' or 'b'; 'a', 'b' or 'c'
std::string quoted_alternatives(Paths paths) {
    std::string out;
    std::size_t n = 0;
    for (std::string_view p : paths) {
        if (n > 0) out += n + 1 == paths.size() ? " or " : ", ";
        out += "'" + std::string(p) + "'";
        ++n;
    }
    return out;
}

class Filler {
public:
    explicit Filler(const KernelBtf& btf) : btf_(btf) {}

    void begin(std::string_view type, std::uint64_t& size) {
        if (!btf_.has_type(type)) throw Error(ErrorKind::Guest, "guest BTF: no struct " + std::string(type));
        type_ = std::string(type);
        size = type_size_ = btf_.size_of(type);
    }

    void field(Paths paths, LayoutField& out) {
        if (auto f = lookup(paths)) {
            out = *f;
            return;
        }
        throw Error(ErrorKind::Guest,
                    "guest BTF: struct " + type_ + " has no member " + quoted_alternatives(paths));
    }

    void optional(Paths paths, std::optional<LayoutField>& out, std::string_view) { out = lookup(paths); }

    void enumerator(std::string_view name, std::int64_t& out) {
        auto v = btf_.enum_value(name);
        if (!v) throw Error(ErrorKind::Guest, "guest BTF: no enumerator " + std::string(name));
        out = *v;
    }

    // A set of fields present together or not at all: present when the
    // struct `probe_type` exists (and has member `probe_path` if given).
    template <class T, class Fn>
    void group(std::optional<T>& out, std::string_view probe_type, std::string_view probe_path, std::string_view,
               Fn&& fill) {
        bool present = probe_path.empty() ? btf_.has_type(probe_type)
                                          : btf_.find_member(probe_type, probe_path).has_value();
        out.reset();
        if (!present) return;
        std::string saved_type = type_;
        std::uint64_t saved_size = type_size_;
        T value{};
        fill(value);
        out = value;
        type_ = saved_type;
        type_size_ = saved_size;
    }

private:
    std::optional<LayoutField> lookup(Paths paths) {
        for (std::string_view p : paths) {
            auto concrete = substitute_enumerators(p);
            if (!concrete) continue;
            auto m = btf_.find_member(type_, *concrete);
            if (!m) continue;
            std::string where = type_ + "." + std::string(p);
            if (m->is_bitfield()) throw Error(ErrorKind::Guest, "guest BTF: " + where + " is a bitfield");
            if (m->size > type_size_ || m->offset > type_size_ - m->size)
                throw Error(ErrorKind::Guest, "guest BTF: " + where + " (offset " + std::to_string(m->offset) +
                                                  ", " + std::to_string(m->size) + " bytes) lies outside struct " +
                                                  type_ + " (" + std::to_string(type_size_) + " bytes)");
            return LayoutField{m->offset, m->size, p};
        }
        return std::nullopt;
    }

    // "mem[MOD_TEXT].base" -> "mem[0].base"; nullopt if an enumerator is
    // unknown (or negative).
    std::optional<std::string> substitute_enumerators(std::string_view path) const {
        std::string out;
        std::size_t i = 0;
        while (i < path.size()) {
            std::size_t open = path.find('[', i);
            bool symbolic = open != std::string_view::npos && open + 1 < path.size() && path[open + 1] >= 'A' &&
                            path[open + 1] <= 'Z';
            if (!symbolic) {
                std::size_t stop = open == std::string_view::npos ? path.size() : open + 1;
                out.append(path.substr(i, stop - i));
                i = stop;
                continue;
            }
            std::size_t close = path.find(']', open);
            if (close == std::string_view::npos) return std::nullopt;
            auto value = btf_.enum_value(path.substr(open + 1, close - open - 1));
            if (!value || *value < 0) return std::nullopt;
            out.append(path.substr(i, open + 1 - i));
            out += std::to_string(*value);
            i = close;
        }
        return out;
    }

    const KernelBtf& btf_;
    std::string type_;
    std::uint64_t type_size_ = 0;
};

class Describer {
public:
    void begin(std::string_view type, const std::uint64_t& size) {
        line("struct " + std::string(type), std::to_string(size) + " bytes");
    }
    void field(Paths, const LayoutField& f) { member(f, ""); }
    void optional(Paths paths, const std::optional<LayoutField>& f, std::string_view why) {
        if (f) member(*f, "  (optional: " + std::string(why) + ")");
        else line("  " + std::string(*paths.begin()), "absent (optional: " + std::string(why) + ")");
    }
    void enumerator(std::string_view name, const std::int64_t& v) {
        line("  " + std::string(name), "= " + std::to_string(v));
    }
    template <class T, class Fn>
    void group(const std::optional<T>& g, std::string_view probe_type, std::string_view probe_path,
               std::string_view why, Fn&& describe) {
        if (g) {
            describe(*g);
            return;
        }
        std::string what = probe_path.empty() ? "struct " + std::string(probe_type) : "  " + std::string(probe_path);
        line(what, "absent (optional: " + std::string(why) + ")");
    }
    std::string text;

private:
    void member(const LayoutField& f, const std::string& note) {
        char offset[48];
        std::snprintf(offset, sizeof offset, "@%-5llu (0x%llx)", static_cast<unsigned long long>(f.offset),
                      static_cast<unsigned long long>(f.offset));
        char padded[48];
        std::snprintf(padded, sizeof padded, "%-18s", offset);
        line("  " + std::string(f.path),
             std::string(padded) + std::to_string(f.size) + (f.size == 1 ? " byte" : " bytes") + note);
    }
    void line(const std::string& left, const std::string& right) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%-30s ", left.c_str());
        text += left.size() < 30 ? std::string(buf) : left + " ";
        text += right;
        text += '\n';
    }
};

}  // namespace

GuestLayouts GuestLayouts::from_btf(const KernelBtf& btf) {
    GuestLayouts g;
    Filler filler(btf);
    visit(g, filler);
    if (g.task.thread_info.offset != 0)
        throw Error(ErrorKind::Guest, "guest BTF: task_struct.thread_info is at offset " +
                                          std::to_string(g.task.thread_info.offset) +
                                          ", not first (kernel without CONFIG_THREAD_INFO_IN_TASK?)");
    return g;
}

std::string GuestLayouts::describe() const {
    Describer d;
    visit(*this, d);
    return d.text;
}

std::uint64_t read_layout_field(VirtualMemory& memory, std::uint64_t base, const LayoutField& field) {
    GuestVirtAddr at{base + field.offset};
    switch (field.size) {
        case 1: return memory.read_u8(at);
        case 2: return memory.read_u16(at);
        case 4: return memory.read_u32(at);
        case 8: return memory.read_u64(at);
        default:
            throw Error(ErrorKind::Guest, "field " + std::string(field.path) + " has unsupported size " +
                                              std::to_string(field.size));
    }
}

}  // namespace hvpatch
