#include "patch/applied_state.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "hvpatch/error.h"
#include "guest-shim/trampoline.h"
#include "patch/state_file.h"

namespace hvpatch {

namespace {

using nlohmann::json;

std::vector<std::uint8_t> hex_to_bytes(const std::string& text, const char* field) {
    std::vector<std::uint8_t> bytes;
    std::size_t i = 0;
    while (i < text.size()) {
        if (text[i] == ' ') {
            ++i;
            continue;
        }
        if (i + 2 > text.size()) throw Error(ErrorKind::Internal, std::string("state: bad hex in ") + field);
        bytes.push_back(static_cast<std::uint8_t>(std::stoul(text.substr(i, 2), nullptr, 16)));
        i += 2;
    }
    return bytes;
}

json function_to_json(const RedirectedFunction& f) {
    return {{"object", f.object},
            {"name", f.name},
            {"sympos", f.sympos},
            {"new_symbol", f.new_symbol},
            {"entry", f.entry},
            {"size", f.size},
            {"site", f.site},
            {"new_address", f.new_address},
            {"new_size", f.new_size},
            {"trampoline", f.trampoline},
            {"original", bytes_to_hex(f.original)},
            {"to_trampoline", bytes_to_hex(f.to_trampoline)},
            {"to_new", bytes_to_hex(f.to_new)},
            {"nop", f.nop}};
}

RedirectedFunction function_from_json(const json& j) {
    RedirectedFunction f;
    f.object = j.at("object").get<std::string>();
    f.name = j.at("name").get<std::string>();
    f.sympos = j.at("sympos").get<std::uint64_t>();
    f.new_symbol = j.at("new_symbol").get<std::string>();
    f.entry = j.at("entry").get<std::uint64_t>();
    f.size = j.at("size").get<std::uint64_t>();
    f.site = j.at("site").get<std::uint64_t>();
    f.new_address = j.at("new_address").get<std::uint64_t>();
    f.new_size = j.at("new_size").get<std::uint64_t>();
    f.trampoline = j.at("trampoline").get<std::uint64_t>();
    f.original = hex_to_bytes(j.at("original").get<std::string>(), "original");
    f.to_trampoline = hex_to_bytes(j.at("to_trampoline").get<std::string>(), "to_trampoline");
    f.to_new = hex_to_bytes(j.at("to_new").get<std::string>(), "to_new");
    f.nop = j.value("nop", false);  // records before stacked patches have none
    return f;
}

json code_to_json(const std::vector<AppliedPatch::Function>& code) {
    json out = json::array();
    for (const auto& f : code) out.push_back(json::array({f.name, f.begin, f.end}));
    return out;
}

}  // namespace

std::vector<ForeignCode> foreign_code_of(const VmState& state) {
    std::vector<ForeignCode> out;
    for (const auto& p : state.patches) {
        if (!p.base || !p.text_size) continue;
        ForeignCode code;
        code.name = "hvpatch:" + p.name;
        code.text_begin = p.base;
        code.text_end = p.base + p.text_size;
        code.orc_ip_table = p.orc_ip_table;
        code.orc_table = p.orc_table;
        code.orc_entries = p.orc_entries;
        for (const auto& f : p.code) code.functions.push_back({f.name, f.begin, f.end});
        for (const auto& f : p.functions)
            if (f.trampoline) code.functions.push_back(
                    {"hvpatch_trampoline:" + f.name, f.trampoline, f.trampoline + shim::trampoline_size()});
        out.push_back(std::move(code));
    }
    return out;
}

const char* to_string(PatchPhase phase) {
    switch (phase) {
        case PatchPhase::Loading: return "loading";
        case PatchPhase::Patching: return "patching";
        case PatchPhase::Applied: return "applied";
        case PatchPhase::Unpatching: return "unpatching";
        case PatchPhase::Freeing: return "freeing";
    }
    return "?";
}

PatchPhase patch_phase_from_string(const std::string& text) {
    for (PatchPhase p : {PatchPhase::Loading, PatchPhase::Patching, PatchPhase::Applied, PatchPhase::Unpatching,
                         PatchPhase::Freeing})
        if (text == to_string(p)) return p;
    throw Error(ErrorKind::Internal, "state: unknown patch phase '" + text + "'");
}

bool is_live(const AppliedPatch& patch) {
    return patch.phase == PatchPhase::Patching || patch.phase == PatchPhase::Applied ||
           patch.phase == PatchPhase::Unpatching;
}

AppliedPatch* VmState::find(const std::string& name) {
    for (auto& patch : patches)
        if (patch.name == name) return &patch;
    return nullptr;
}

json to_json(const VmState& state) {
    json patches = json::array();
    for (const auto& p : state.patches) {
        json functions = json::array();
        for (const auto& f : p.functions) functions.push_back(function_to_json(f));
        json states = json::array();
        for (const auto& st : p.states) states.push_back(json::array({st.id, st.version, st.address}));
        json objects = json::array();
        for (const auto& o : p.objects)
            objects.push_back({{"name", o.name},
                               {"address", o.address},
                               {"callbacks", o.callbacks},
                               {"loaded", o.loaded},
                               {"post_unpatch_enabled", o.post_unpatch_enabled}});
        patches.push_back({{"name", p.name},
                           {"sha256", p.sha256},
                           {"module_path", p.module_path},
                           {"phase", to_string(p.phase)},
                           {"base", p.base},
                           {"size", p.size},
                           {"text_size", p.text_size},
                           {"rodata_size", p.rodata_size},
                           {"data_size", p.data_size},
                           {"text_protected", p.text_protected},
                           {"orc", {{"ip_table", p.orc_ip_table}, {"table", p.orc_table}, {"entries", p.orc_entries}}},
                           {"code", code_to_json(p.code)},
                           {"functions", functions},
                           {"objects", objects},
                           {"states", states},
                           {"prev_state", p.prev_state},
                           {"log_buffer", p.log_buffer},
                           {"replace", p.replace},
                           {"replaces", p.replaces},
                           {"applied_at", p.applied_at},
                           {"updated_at", p.updated_at}});
    }
    return {{"format", 1},
            {"vm_key", state.vm_key},
            {"vm_uuid", state.vm_uuid},
            {"vm_name", state.vm_name},
            {"target", state.target},
            {"boot_id", state.boot_id},
            {"kernel_release", state.kernel_release},
            {"patches", patches}};
}

VmState vm_state_from_json(const json& j) {
    try {
        if (j.at("format").get<int>() != 1)
            throw Error(ErrorKind::Internal, "state: unknown format " + j.at("format").dump());
        VmState state;
        state.vm_key = j.at("vm_key").get<std::string>();
        state.vm_uuid = j.at("vm_uuid").get<std::string>();
        state.vm_name = j.at("vm_name").get<std::string>();
        state.target = j.at("target").get<std::string>();
        state.boot_id = j.at("boot_id").get<std::string>();
        state.kernel_release = j.at("kernel_release").get<std::string>();
        for (const auto& pj : j.at("patches")) {
            AppliedPatch p;
            p.name = pj.at("name").get<std::string>();
            p.sha256 = pj.at("sha256").get<std::string>();
            p.module_path = pj.at("module_path").get<std::string>();
            p.phase = patch_phase_from_string(pj.at("phase").get<std::string>());
            p.base = pj.at("base").get<std::uint64_t>();
            p.size = pj.at("size").get<std::uint64_t>();
            p.text_size = pj.at("text_size").get<std::uint64_t>();
            p.rodata_size = pj.at("rodata_size").get<std::uint64_t>();
            p.data_size = pj.at("data_size").get<std::uint64_t>();
            p.text_protected = pj.at("text_protected").get<bool>();
            p.orc_ip_table = pj.at("orc").at("ip_table").get<std::uint64_t>();
            p.orc_table = pj.at("orc").at("table").get<std::uint64_t>();
            p.orc_entries = pj.at("orc").at("entries").get<std::uint64_t>();
            for (const auto& cj : pj.at("code"))
                p.code.push_back({cj.at(0).get<std::string>(), cj.at(1).get<std::uint64_t>(), cj.at(2).get<std::uint64_t>()});
            for (const auto& fj : pj.at("functions")) p.functions.push_back(function_from_json(fj));
            for (const auto& oj : pj.value("objects", json::array())) {
                AppliedPatch::Object o;
                o.name = oj.at("name").get<std::string>();
                o.address = oj.at("address").get<std::uint64_t>();
                o.callbacks = oj.at("callbacks").get<std::array<std::uint64_t, 4>>();
                o.loaded = oj.at("loaded").get<bool>();
                o.post_unpatch_enabled = oj.at("post_unpatch_enabled").get<bool>();
                p.objects.push_back(std::move(o));
            }
            for (const auto& sj : pj.value("states", json::array()))
                p.states.push_back({sj.at(0).get<std::uint64_t>(), sj.at(1).get<std::uint64_t>(), sj.at(2).get<std::uint64_t>()});
            p.prev_state = pj.value("prev_state", std::uint64_t{0});
            p.log_buffer = pj.value("log_buffer", std::uint64_t{0});
            p.replace = pj.value("replace", false);
            p.replaces = pj.value("replaces", std::vector<std::string>{});
            p.applied_at = pj.at("applied_at").get<std::string>();
            p.updated_at = pj.at("updated_at").get<std::string>();
            state.patches.push_back(std::move(p));
        }
        return state;
    } catch (const json::exception& e) {
        throw Error(ErrorKind::Internal, std::string("state: malformed record: ") + e.what());
    }
}

std::string vm_state_path(const std::string& state_dir, const std::string& vm_key) {
    return state_dir + "/" + vm_key + ".json";
}

std::optional<VmState> load_vm_state(const std::string& state_dir, const std::string& vm_key) {
    std::string path = vm_state_path(state_dir, vm_key);
    auto json = read_json_file(path);
    if (!json) return std::nullopt;
    try {
        return vm_state_from_json(*json);
    } catch (const Error& e) {
        throw Error(ErrorKind::Internal, path + ": " + e.what());
    }
}

void save_vm_state(const std::string& state_dir, const VmState& state) {
    std::string path = vm_state_path(state_dir, state.vm_key);
    if (state.patches.empty()) {
        std::error_code ec;
        std::filesystem::remove(path, ec);
        return;
    }
    write_json_atomically(path, to_json(state));
}

std::string bytes_to_hex(const std::vector<std::uint8_t>& bytes) {
    std::string text;
    char buffer[4];
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        std::snprintf(buffer, sizeof buffer, "%02x", bytes[i]);
        if (i) text += ' ';
        text += buffer;
    }
    return text;
}

std::string utc_now_iso8601() {
    auto now = std::chrono::system_clock::now();
    std::time_t seconds = std::chrono::system_clock::to_time_t(now);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buffer[32];
    std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buffer;
}

}  // namespace hvpatch
