#include "patch/vm_state_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <cstring>
#include <memory>
#include <vector>

#include "hvpatch/address.h"
#include "hvpatch/error.h"
#include "hvpatch/machine.h"

namespace hvpatch {
namespace {

struct DocFree {
    void operator()(xmlDoc* doc) const { xmlFreeDoc(doc); }
};
struct ParserFree {
    void operator()(xmlParserCtxt* ctxt) const { xmlFreeParserCtxt(ctxt); }
};
struct BufferFree {
    void operator()(xmlBuffer* buffer) const { xmlBufferFree(buffer); }
};
struct XmlCharFree {
    void operator()(xmlChar* text) const { xmlFree(text); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

const xmlChar* x(const char* text) { return reinterpret_cast<const xmlChar*>(text); }
const char* c(const xmlChar* text) { return reinterpret_cast<const char*>(text); }

void set(xmlNode* node, const char* name, const std::string& value) {
    xmlNewProp(node, x(name), x(value.c_str()));
}

xmlNode* add_child(xmlNode* parent, const char* name) { return xmlNewChild(parent, nullptr, x(name), nullptr); }

std::string memory_summary(const AppliedPatch& p) { return hex(p.base) + "+" + hex_short(p.size); }

[[noreturn]] void malformed(const std::string& where, const std::string& what) {
    throw Error(ErrorKind::Internal, where + ": hvpatch's state element is malformed: " + what);
}

bool is_element(const xmlNode* node, const char* name) {
    return node->type == XML_ELEMENT_NODE && std::strcmp(c(node->name), name) == 0;
}

// Unprefixed (as libvirt gives it back) or in hvpatch's namespace, nothing else.
void check_namespace(const xmlNode* node, const std::string& where) {
    if (node->ns && (!node->ns->href || std::strcmp(c(node->ns->href), kVmRecordNamespace) != 0))
        malformed(where, "element <" + std::string(c(node->name)) + "> is in namespace '" +
                             (node->ns->href ? c(node->ns->href) : "") + "', expected none or " + kVmRecordNamespace);
}

std::string attribute(const xmlNode* node, const char* name) {
    std::unique_ptr<xmlChar, XmlCharFree> value(xmlGetNoNsProp(node, x(name)));
    return value ? c(value.get()) : "";
}

}  // namespace

std::string vm_state_to_xml(const VmState& state) {
    Doc doc(xmlNewDoc(x("1.0")));
    xmlNode* root = xmlNewDocNode(doc.get(), nullptr, x("state"), nullptr);
    xmlDocSetRootElement(doc.get(), root);
    set(root, "format", "1");
    set(root, "boot-id", state.boot_id);
    set(root, "kernel-release", state.kernel_release);
    set(root, "updated", utc_now_iso8601());
    for (const auto& p : state.patches) {
        xmlNode* patch = add_child(root, "patch");
        set(patch, "name", p.name);
        set(patch, "sha256", p.sha256);
        set(patch, "phase", to_string(p.phase));
        set(patch, "applied-at", p.applied_at);
        set(patch, "updated-at", p.updated_at);
        set(patch, "memory", memory_summary(p));
        for (const auto& f : p.functions) {
            xmlNode* function = add_child(patch, "function");
            set(function, "name", f.name);
            set(function, "object", f.object);
            set(function, "address", hex(f.entry));
            set(function, "new-function", f.new_symbol);
            set(function, "new-address", hex(f.new_address));
        }
    }
    // Compact JSON: the text is escaped by libxml2, and the state file's
    // error handler keeps invalid UTF-8 (a guest-provided string) out of the XML.
    std::string record = to_json(state).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    xmlNode* record_node = xmlNewTextChild(root, nullptr, x("record"), x(record.c_str()));
    set(record_node, "encoding", "json");

    std::unique_ptr<xmlBuffer, BufferFree> buffer(xmlBufferCreate());
    // Unindented: libvirt indents the element itself when it formats the
    // domain XML; whitespace of ours would shift its indentation.
    if (!buffer || xmlNodeDump(buffer.get(), doc.get(), root, 0, 0) < 0)
        throw Error(ErrorKind::Internal, "cannot format hvpatch's state element for " + state.vm_key);
    std::string text(c(xmlBufferContent(buffer.get())), static_cast<std::size_t>(xmlBufferLength(buffer.get())));
    if (text.size() > kMaxVmStateXmlBytes)
        throw Error(ErrorKind::Internal, "hvpatch's state element for " + state.vm_key + " would be " +
                                             std::to_string(text.size()) + " bytes, more than " +
                                             std::to_string(kMaxVmStateXmlBytes));
    return text;
}

VmState vm_state_from_xml(const std::string& xml, const std::string& where) {
    if (xml.size() > kMaxVmStateXmlBytes)
        malformed(where, std::to_string(xml.size()) + " bytes, more than " + std::to_string(kMaxVmStateXmlBytes));
    std::unique_ptr<xmlParserCtxt, ParserFree> ctxt(xmlNewParserCtxt());
    if (!ctxt) throw Error(ErrorKind::Internal, where + ": cannot create an XML parser");
    // No network, no entity substitution, no DTD loading; errors are
    // collected, not printed.
    const int options = XML_PARSE_NONET | XML_PARSE_NOBLANKS | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    Doc doc(xmlCtxtReadMemory(ctxt.get(), xml.data(), static_cast<int>(xml.size()), "hvpatch-state.xml", nullptr,
                              options));
    if (!doc) {
        const xmlError* e = xmlCtxtGetLastError(ctxt.get());
        std::string message = e && e->message ? e->message : "unknown error";
        while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
        malformed(where, "not XML (line " + std::to_string(e ? e->line : 0) + ": " + message + ")");
    }
    if (doc->intSubset || doc->extSubset) malformed(where, "it carries a DOCTYPE");
    xmlNode* root = xmlDocGetRootElement(doc.get());
    if (!root || !is_element(root, "state"))
        malformed(where, "the root element is <" + std::string(root ? c(root->name) : "") + ">, expected <state>");
    check_namespace(root, where);
    if (std::string format = attribute(root, "format"); format != "1")
        malformed(where, "format '" + format + "' (this hvpatch reads format 1)");

    std::vector<const xmlNode*> patches;
    const xmlNode* record = nullptr;
    for (const xmlNode* child = root->children; child; child = child->next) {
        if (child->type != XML_ELEMENT_NODE) continue;
        check_namespace(child, where);
        if (is_element(child, "patch")) {
            patches.push_back(child);
        } else if (is_element(child, "record")) {
            if (record) malformed(where, "more than one <record>");
            record = child;
        }
        // Other elements: a later hvpatch's additions to the summary.
    }
    if (!record) malformed(where, "no <record> (the machine-readable state)");
    if (std::string encoding = attribute(record, "encoding"); encoding != "json")
        malformed(where, "<record encoding='" + encoding + "'>, expected json");
    std::unique_ptr<xmlChar, XmlCharFree> content(xmlNodeGetContent(record));
    nlohmann::json json = nlohmann::json::parse(content ? c(content.get()) : "", nullptr, false);
    if (json.is_discarded() || !json.is_object()) malformed(where, "<record> is not a JSON object");
    VmState state;
    try {
        state = vm_state_from_json(json);
    } catch (const Error& e) {
        malformed(where, std::string("<record>: ") + e.what());
    }

    // The summary people read must say what the record says.
    auto disagree = [&](const std::string& what, const std::string& summary, const std::string& recorded) {
        malformed(where, what + " is '" + summary + "' in the summary but '" + recorded +
                             "' in <record> (edited by hand?); hvpatch acts on neither");
    };
    if (attribute(root, "boot-id") != state.boot_id) disagree("boot-id", attribute(root, "boot-id"), state.boot_id);
    if (attribute(root, "kernel-release") != state.kernel_release)
        disagree("kernel-release", attribute(root, "kernel-release"), state.kernel_release);
    if (patches.size() != state.patches.size())
        disagree("the number of patches", std::to_string(patches.size()), std::to_string(state.patches.size()));
    for (std::size_t i = 0; i < patches.size(); ++i) {
        const AppliedPatch& p = state.patches[i];
        for (auto [name, value] : {std::pair<const char*, std::string>{"name", p.name},
                                   {"sha256", p.sha256},
                                   {"phase", to_string(p.phase)}})
            if (attribute(patches[i], name) != value)
                disagree("patch " + std::to_string(i + 1) + "'s " + name, attribute(patches[i], name), value);
    }
    return state;
}

}  // namespace hvpatch
