#include "cli/audit_view.h"

#include <cstdio>
#include <regex>

#include "hvpatch/error.h"
#include "patch/host_identity.h"

namespace hvpatch::cli {

namespace {

using nlohmann::json;

// The member `key` of `object` as text: strings as they are, numbers and
// booleans as JSON writes them; "" when absent, null or another type.
std::string text_of(const json& object, const char* key) {
    if (!object.is_object()) return {};
    auto it = object.find(key);
    if (it == object.end()) return {};
    if (it->is_string()) return it->get_ref<const std::string&>();
    if (it->is_number() || it->is_boolean()) return it->dump();
    return {};
}

const json& member(const json& object, const char* key) {
    static const json none;
    if (!object.is_object()) return none;
    auto it = object.find(key);
    return it == object.end() ? none : *it;
}

std::string or_dash(const std::string& text) { return text.empty() ? "-" : printable(text); }

std::string user_text(const json& user) {
    if (user.is_string()) return user.get_ref<const std::string&>();
    std::string name = text_of(user, "name");
    if (name.empty()) {
        std::string uid = text_of(user, "uid");
        if (!uid.empty()) name = "uid " + uid;
    }
    std::string sudo = text_of(user, "sudo_user");
    if (!sudo.empty()) name += "/sudo:" + sudo;
    return name;
}

std::string vm_text(const json& vm) {
    if (vm.is_string()) return vm.get_ref<const std::string&>();
    std::string name = text_of(vm, "name");
    std::string key = text_of(vm, "key");
    if (key.empty()) key = text_of(vm, "id");
    if (!name.empty() && !key.empty()) return name + "/" + key;
    if (!name.empty()) return name;
    if (!key.empty()) return key;
    return text_of(vm, "target");
}

std::string patch_text(const json& patch) {
    if (patch.is_string()) return patch.get_ref<const std::string&>();
    return text_of(patch, "name");
}

std::string error_text(const json& record) {
    std::string error = text_of(record, "error");
    if (!error.empty()) return error;
    const json& refusals = member(record, "refusals");
    if (!refusals.is_array()) return {};
    for (const auto& r : refusals)
        if (r.is_string()) error += (error.empty() ? "" : "; ") + r.get_ref<const std::string&>();
    return error;
}

}  // namespace

std::string printable(const std::string& text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        auto byte = static_cast<unsigned char>(c);
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (byte < 0x20 || byte == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", byte);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

std::string audit_record_line(const json& record) {
    std::string seq = text_of(record, "seq");
    std::string line = or_dash(text_of(record, "time")) + "  #" + (seq.empty() ? "-" : printable(seq)) + "  " +
                       or_dash(user_text(member(record, "user"))) + "  " + or_dash(text_of(record, "operation")) +
                       "  " + or_dash(vm_text(member(record, "vm"))) + "  " +
                       or_dash(patch_text(member(record, "patch"))) + "  " + or_dash(text_of(record, "outcome"));
    std::string error = error_text(record);
    if (!error.empty()) line += "  error: " + printable(error);
    return line;
}

std::string audit_since_bound(const std::string& text, std::chrono::system_clock::time_point now) {
    static const std::regex relative(R"(([0-9]{1,9})([smhd]))");
    static const std::regex absolute(
        R"([0-9]{4}(-[0-9]{2}(-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,3})?)?)?)?)?)?Z?)");
    std::smatch m;
    if (std::regex_match(text, m, relative)) {
        long count = std::stol(m[1].str());
        if (count <= 0) throw Error(ErrorKind::Usage, "--since " + text + ": the span must be positive");
        std::chrono::seconds unit{1};
        switch (m[2].str()[0]) {
            case 'm': unit = std::chrono::minutes(1); break;
            case 'h': unit = std::chrono::hours(1); break;
            case 'd': unit = std::chrono::hours(24); break;
            default: break;
        }
        return format_utc_time(now - count * unit);
    }
    if (std::regex_match(text, absolute)) {
        std::string bound = text;
        if (bound.back() == 'Z') bound.pop_back();
        if (bound.size() > 10 && bound[10] == ' ') bound[10] = 'T';
        return bound;
    }
    throw Error(ErrorKind::Usage, "--since " + text +
                                      ": expected a UTC time such as 2026-11-27 or 2026-11-27T05:40 (the log is "
                                      "in UTC; no offsets), or a span back from now such as 90s, 15m, 2h, 7d");
}

}  // namespace hvpatch::cli
