#include "vmm/libvirt/dac_label.h"

#include <grp.h>
#include <pwd.h>

#include <charconv>
#include <memory>
#include <vector>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "hvpatch/error.h"

namespace hvpatch {
namespace {

struct XmlDocFree {
    void operator()(xmlDoc* doc) const { xmlFreeDoc(doc); }
};

bool named(const xmlNode* node, const char* name) {
    return node->type == XML_ELEMENT_NODE && xmlStrcmp(node->name, reinterpret_cast<const xmlChar*>(name)) == 0;
}

std::string attribute(xmlNode* node, const char* name) {
    xmlChar* value = xmlGetProp(node, reinterpret_cast<const xmlChar*>(name));
    if (!value) return "";
    std::string text(reinterpret_cast<const char*>(value));
    xmlFree(value);
    return text;
}

std::string content(xmlNode* node) {
    xmlChar* value = xmlNodeGetContent(node);
    if (!value) return "";
    std::string text(reinterpret_cast<const char*>(value));
    xmlFree(value);
    return text;
}

// "+107" → 107; "libvirt-qemu" → looked up with `by_name`.
template <typename Id, typename Lookup>
Id parse_id(const std::string& text, Lookup by_name, const std::string& who, const char* what) {
    if (!text.empty() && text[0] == '+') {
        unsigned long long value = 0;
        auto [end, ec] = std::from_chars(text.data() + 1, text.data() + text.size(), value);
        if (ec != std::errc() || end != text.data() + text.size() || text.size() == 1 || value > 0xfffffffeULL)
            throw Error(ErrorKind::Protocol, who + ": DAC label has a bad " + what + " '" + text + "'");
        return static_cast<Id>(value);
    }
    std::optional<Id> id = by_name(text);
    if (!id) throw Error(ErrorKind::Protocol, who + ": DAC label names unknown " + what + " '" + text + "'");
    return *id;
}

std::optional<uid_t> uid_of(const std::string& name) {
    std::vector<char> buf(16384);
    passwd pw{}, *found = nullptr;
    if (getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) return std::nullopt;
    return found->pw_uid;
}

std::optional<gid_t> gid_of(const std::string& name) {
    std::vector<char> buf(16384);
    group gr{}, *found = nullptr;
    if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || !found) return std::nullopt;
    return found->gr_gid;
}

}  // namespace

std::optional<std::pair<uid_t, gid_t>> dac_label_owner(const std::string& domain_xml, const std::string& who) {
    // The definition comes from the VMM: no network, no entities.
    std::unique_ptr<xmlDoc, XmlDocFree> doc(xmlReadMemory(domain_xml.data(), static_cast<int>(domain_xml.size()),
                                                          "domain.xml", nullptr,
                                                          XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
    xmlNode* root = doc ? xmlDocGetRootElement(doc.get()) : nullptr;
    if (!root || !named(root, "domain")) throw Error(ErrorKind::Protocol, who + ": its definition is not domain XML");
    for (xmlNode* sec = root->children; sec; sec = sec->next) {
        if (!named(sec, "seclabel") || attribute(sec, "model") != "dac") continue;
        for (xmlNode* label = sec->children; label; label = label->next) {
            if (!named(label, "label")) continue;
            std::string text = content(label);
            auto colon = text.find(':');
            if (colon == std::string::npos || text.find(':', colon + 1) != std::string::npos)
                throw Error(ErrorKind::Protocol, who + ": DAC label '" + text + "' is not USER:GROUP");
            uid_t uid = parse_id<uid_t>(text.substr(0, colon), uid_of, who, "user");
            gid_t gid = parse_id<gid_t>(text.substr(colon + 1), gid_of, who, "group");
            return std::pair{uid, gid};
        }
    }
    return std::nullopt;
}

}  // namespace hvpatch
