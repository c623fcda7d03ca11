// The state element of a VM record store (patch/vm_state_xml.h) and the
// choice between it and the state file (patch/vm_state_store.h), with an
// in-memory VmRecordStore standing in for libvirt's domain metadata.
#include <gtest/gtest.h>

#include <functional>

#include "hvpatch/error.h"
#include "patch/patcher.h"
#include "patch/vm_state_store.h"
#include "patch/vm_state_xml.h"
#include "sample_applied_patch.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using test::TempDir;

class FakeRecordStore : public VmRecordStore {
public:
    std::string location() const override { return "<metadata> of domain web-01 (test:///default)"; }
    std::optional<std::string> read() override {
        ++reads;
        return element;
    }
    void write(const std::string& element_xml) override {
        ++writes;
        element = element_xml;
    }
    void remove() override {
        ++removes;
        element.reset();
    }
    std::optional<std::string> element;
    int reads = 0, writes = 0, removes = 0;
};

// Only what open_vm_state_store asks of a Machine.
class FakeMachine : public Machine {
public:
    explicit FakeMachine(VmRecordStore* records) : records_(records) {}
    std::string name() const override { return "fake"; }
    std::string accelerator() override { return "tcg"; }
    MachineIdentity identity() override { return {kUuid, "web-01", "web-01", "test:///default"}; }
    VmRecordStore* record_store() override { return records_; }
    RunState run_state() override { return RunState::Running; }
    void pause() override {}
    void resume() override {}
    StopStats stop_stats() const override { return {}; }
    void reset_stop_stats() override {}
    std::vector<int> vcpus() override { return {0}; }
    VcpuRegisters read_registers(int) override { throw Error(ErrorKind::Internal, "not in this test"); }
    void write_registers(int, const VcpuRegisters&) override { throw Error(ErrorKind::Internal, "not in this test"); }
    MemoryAccessInfo memory_access() override { return {}; }
    void read_physical(GuestPhysAddr, std::span<std::byte>) override { throw Error(ErrorKind::Internal, "not in this test"); }
    void write_physical(GuestPhysAddr, std::span<const std::byte>) override { throw Error(ErrorKind::Internal, "not in this test"); }
    void set_breakpoint(GuestVirtAddr) override {}
    void clear_breakpoint(GuestVirtAddr) override {}
    std::optional<BreakpointHit> run_until_breakpoint(std::chrono::milliseconds) override { return std::nullopt; }
    static constexpr const char* kUuid = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";

private:
    VmRecordStore* records_;
};

const std::string kKey = std::string("uuid-") + FakeMachine::kUuid;
const std::string kWhere = "<metadata> of domain web-01 (test:///default)";

VmState sample_state() {
    VmState state;
    state.vm_key = kKey;
    state.vm_uuid = FakeMachine::kUuid;
    state.vm_name = "web-01";
    state.target = "web-01";
    state.boot_id = "0123456789abcdef0123456789abcdef";
    state.kernel_release = "6.1.0-28-amd64";
    AppliedPatch p = test::sample_applied_patch();
    p.module_path = "/srv/patches/a<b>&\"c'.ko";  // XML's special characters
    p.updated_at = "2026-11-27T06:00:05Z";
    state.patches = {p};
    AppliedPatch q = p;
    q.name = "livepatch_sleeper";
    q.phase = PatchPhase::Patching;
    q.functions[0].name = "do_nanosleep";
    state.patches.push_back(q);
    return state;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    for (std::size_t at = 0; (at = text.find(from, at)) != std::string::npos; at += to.size())
        text.replace(at, from.size(), to);
    return text;
}

// The element as libvirt's dumpxml shows it: every element in hvpatch's
// namespace with its prefix, indented.
std::string as_libvirt_shows_it(const std::string& xml) {
    std::string out = xml;
    for (const char* tag : {"state", "patch", "function", "record"}) {
        out = replace_all(out, std::string("<") + tag + " ", std::string("<hvpatch:") + tag + " ");
        out = replace_all(out, std::string("<") + tag + ">", std::string("<hvpatch:") + tag + ">");
        out = replace_all(out, std::string("</") + tag + ">", std::string("</hvpatch:") + tag + ">");
    }
    out = replace_all(out, "<hvpatch:state ", std::string("<hvpatch:state xmlns:hvpatch=\"") + kVmRecordNamespace + "\" ");
    return replace_all(out, "><", ">\n      <");
}

std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

TEST(VmStateXml, RoundTripsTheWholeState) {
    VmState state = sample_state();
    VmState back = vm_state_from_xml(vm_state_to_xml(state), kWhere);
    EXPECT_EQ(to_json(back), to_json(state));
    EXPECT_EQ(back.patches.at(0).module_path, "/srv/patches/a<b>&\"c'.ko");
}

TEST(VmStateXml, SummaryShowsPatchesAndFunctionsToPeople) {
    std::string xml = vm_state_to_xml(sample_state());
    EXPECT_EQ(xml.rfind("<state format=\"1\" boot-id=\"0123456789abcdef0123456789abcdef\" "
                        "kernel-release=\"6.1.0-28-amd64\" updated=\"",
                        0),
              0u)
        << xml;
    EXPECT_NE(xml.find("<patch name=\"livepatch_cmdline\" sha256=\"" + std::string(64, 'a') +
                       "\" phase=\"applied\" applied-at=\"2026-11-27T06:00:00Z\" "
                       "updated-at=\"2026-11-27T06:00:05Z\" memory=\"0xffffffffc0400000+0x3000\">"),
              std::string::npos)
        << xml;
    EXPECT_NE(xml.find("<function name=\"cmdline_proc_show\" object=\"vmlinux\" address=\"0xffffffff81399d60\" "
                       "new-function=\"livepatch_cmdline_proc_show\" new-address=\"0xffffffffc0400030\"/>"),
              std::string::npos)
        << xml;
    EXPECT_NE(xml.find("phase=\"patching\""), std::string::npos);
    EXPECT_NE(xml.find("<record encoding=\"json\">{"), std::string::npos);
    // No whitespace of ours: libvirt indents the element in dumpxml.
    EXPECT_EQ(xml.find('\n'), std::string::npos) << xml;
}

TEST(VmStateXml, ReadsTheElementAsLibvirtGivesItInItsNamespace) {
    VmState state = sample_state();
    std::string shown = as_libvirt_shows_it(vm_state_to_xml(state));
    ASSERT_NE(shown.find("<hvpatch:function "), std::string::npos) << shown;
    EXPECT_EQ(to_json(vm_state_from_xml(shown, kWhere)), to_json(state));
}

TEST(VmStateXml, RefusesAnotherNamespace) {
    std::string xml = replace_all(vm_state_to_xml(sample_state()), "<state ", "<state xmlns=\"http://example.com/x\" ");
    std::string e = error_of([&] { vm_state_from_xml(xml, kWhere); });
    EXPECT_NE(e.find(kWhere), std::string::npos) << e;
    EXPECT_NE(e.find("namespace 'http://example.com/x'"), std::string::npos) << e;
}

TEST(VmStateXml, MalformedInputIsAnErrorNamingTheDomain) {
    const std::string good = vm_state_to_xml(sample_state());
    auto rejects = [&](const std::string& xml, const std::string& why) {
        std::string e = error_of([&] { vm_state_from_xml(xml, kWhere); });
        EXPECT_NE(e.find(kWhere + ": hvpatch's state element is malformed"), std::string::npos) << why << ": " << e;
        EXPECT_NE(e.find(why), std::string::npos) << e;
    };
    rejects(good.substr(0, good.size() / 2), "not XML");
    rejects("", "not XML");
    rejects("<domain/>", "expected <state>");
    rejects(replace_all(good, "format=\"1\"", "format=\"2\""), "format '2'");
    rejects("<!DOCTYPE state [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;\">]>" + good,
            "DOCTYPE");
    std::string no_record = good.substr(0, good.find("<record")) + "</state>";
    rejects(no_record, "no <record>");
    std::size_t r = good.find("<record");
    std::string record = good.substr(r, good.find("</record>") + 9 - r);
    rejects(replace_all(good, record, record + record), "more than one <record>");
    rejects(replace_all(good, "encoding=\"json\"", "encoding=\"base64\""), "expected json");
    rejects(replace_all(good, "{\"boot_id\"", "[\"boot_id\""), "not a JSON object");
    rejects(replace_all(good, "\"phase\":\"applied\"", "\"phase\":\"done\""), "unknown patch phase 'done'");
    rejects(std::string(kMaxVmStateXmlBytes + 1, ' '), "more than");
}

TEST(VmStateXml, ASummaryEditedByHandIsNotActedOn) {
    std::string xml = vm_state_to_xml(sample_state());
    std::string edited = replace_all(xml, "phase=\"applied\"", "phase=\"freeing\"");
    std::string e = error_of([&] { vm_state_from_xml(edited, kWhere); });
    EXPECT_NE(e.find("patch 1's phase is 'freeing' in the summary but 'applied' in <record>"), std::string::npos) << e;
    std::string other_boot = replace_all(xml, "boot-id=\"0123", "boot-id=\"9999");
    e = error_of([&] { vm_state_from_xml(other_boot, kWhere); });
    EXPECT_NE(e.find("boot-id is '9999"), std::string::npos) << e;
    std::size_t p = xml.find("<patch name=\"livepatch_sleeper\"");
    std::string one_patch_less = xml.substr(0, p) + xml.substr(xml.find("</patch>", p) + 8);
    e = error_of([&] { vm_state_from_xml(one_patch_less, kWhere); });
    EXPECT_NE(e.find("the number of patches is '1' in the summary but '2'"), std::string::npos) << e;
}

TEST(VmStateStore, RecordStoreKeepsTheStateAndRemovesTheElementWhenNothingIsLeft) {
    TempDir dir;
    FakeRecordStore records;
    FakeMachine machine(&records);
    auto store = open_vm_state_store(machine, dir.path(), kKey);
    EXPECT_EQ(store->location(), kWhere);
    EXPECT_FALSE(store->load());

    VmState state = sample_state();
    store->save(state);
    ASSERT_TRUE(records.element);
    EXPECT_EQ(records.writes, 1);
    EXPECT_TRUE(dir.entries().empty()) << "no state file beside the record store";

    // A fresh hvpatch (new store, empty state directory) reads it back.
    TempDir empty;
    auto fresh = open_vm_state_store(machine, empty.path(), kKey);
    auto loaded = fresh->load();
    ASSERT_TRUE(loaded);
    EXPECT_EQ(to_json(*loaded), to_json(state));

    state.patches.clear();
    fresh->save(state);
    EXPECT_FALSE(records.element);
    EXPECT_EQ(records.removes, 1);
    EXPECT_FALSE(fresh->load());
}

TEST(VmStateStore, WithoutARecordStoreTheStateDirectoryFileIsUsed) {
    TempDir dir;
    FakeMachine machine(nullptr);
    auto store = open_vm_state_store(machine, dir.path(), kKey);
    EXPECT_EQ(store->location(), vm_state_path(dir.path(), kKey));
    VmState state = sample_state();
    store->save(state);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{kKey + ".json"});
    EXPECT_EQ(to_json(*store->load()), to_json(state));
    state.patches.clear();
    store->save(state);
    EXPECT_TRUE(dir.entries().empty());
}

TEST(VmStateStore, AStateFileFromBeforeMovesIntoTheRecordStore) {
    TempDir dir;
    VmState state = sample_state();
    FileVmStateStore(dir.path(), kKey).save(state);
    FakeRecordStore records;
    FakeMachine machine(&records);
    auto store = open_vm_state_store(machine, dir.path(), kKey);
    auto loaded = store->load();
    ASSERT_TRUE(loaded) << "the file is read while the record store holds nothing";
    EXPECT_EQ(to_json(*loaded), to_json(state));
    EXPECT_EQ(store->location(), vm_state_path(dir.path(), kKey) + " (moves to the " + kWhere + " on the next write)");
    state.patches.pop_back();
    store->save(state);
    EXPECT_EQ(store->location(), kWhere);
    EXPECT_TRUE(dir.entries().empty()) << "the file is gone once the record store has the state";
    ASSERT_TRUE(records.element);
    EXPECT_EQ(vm_state_from_xml(*records.element, kWhere).patches.size(), 1u);
}

TEST(VmStateStore, TheRecordStoreWinsOverAnOldFile) {
    TempDir dir;
    VmState in_file = sample_state();
    FileVmStateStore(dir.path(), kKey).save(in_file);
    FakeRecordStore records;
    VmState in_record = sample_state();
    in_record.patches.resize(1);
    records.element = vm_state_to_xml(in_record);
    FakeMachine machine(&records);
    EXPECT_EQ(open_vm_state_store(machine, dir.path(), kKey)->load()->patches.size(), 1u);
}

TEST(VmStateStore, AnUnreadableRecordNamesTheDomainAndHowToSeeIt) {
    TempDir dir;
    FakeRecordStore records;
    records.element = "<state format=\"1\"><patch";
    FakeMachine machine(&records);
    auto store = open_vm_state_store(machine, dir.path(), kKey);
    std::string e = error_of([&] { store->load(); });
    EXPECT_NE(e.find(kWhere), std::string::npos) << e;
    EXPECT_NE(e.find(std::string("virsh metadata DOMAIN --uri ") + kVmRecordNamespace), std::string::npos) << e;
}

TEST(VmStateStore, ARecordIsCurrentOnlyForThisVmAndThisBoot) {
    VmState state = sample_state();
    EXPECT_TRUE(is_current_record(state, kKey, state.boot_id));
    EXPECT_FALSE(is_current_record(state, kKey, "another boot"));
    // A domain copied with its metadata carries its origin's record.
    EXPECT_FALSE(is_current_record(state, "uuid-00000000-1111-2222-3333-444444444444", state.boot_id));
}

}  // namespace
}  // namespace hvpatch
