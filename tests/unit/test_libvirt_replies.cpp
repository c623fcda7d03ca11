// What hvpatch reads from libvirt, on synthetic inputs: the DAC label of a
// live domain definition (who QEMU runs as) and QMP replies passed through
// virDomainQemuMonitorCommand; and the URI choice (as virsh).
#include <gtest/gtest.h>

#include <cstdlib>

#include "hvpatch/error.h"
#include "vmm/libvirt/dac_label.h"
#include "vmm/libvirt/libvirt_connection.h"
#include "vmm/libvirt/libvirt_monitor.h"

namespace hvpatch {
namespace {

std::string domain_with(const std::string& seclabels) {
    return "<domain type='qemu' id='7'><name>web-01</name>" + seclabels + "</domain>";
}

TEST(DacLabel, DynamicLabelGivesUidAndGid) {
    auto owner = dac_label_owner(
        domain_with("<seclabel type='dynamic' model='selinux' relabel='yes'><label>system_u:x</label></seclabel>"
                    "<seclabel type='dynamic' model='dac' relabel='yes'><label>+107:+114</label>"
                    "<imagelabel>+107:+114</imagelabel></seclabel>"),
        "domain web-01");
    ASSERT_TRUE(owner.has_value());
    EXPECT_EQ(owner->first, 107u);
    EXPECT_EQ(owner->second, 114u);
}

TEST(DacLabel, RootAndNamesResolve) {
    auto owner = dac_label_owner(domain_with("<seclabel model='dac'><label>root:root</label></seclabel>"), "d");
    ASSERT_TRUE(owner.has_value());
    EXPECT_EQ(owner->first, 0u);
    EXPECT_EQ(owner->second, 0u);
}

TEST(DacLabel, NoDacLabelIsNone) {
    EXPECT_EQ(dac_label_owner(domain_with(""), "d"), std::nullopt);
    EXPECT_EQ(dac_label_owner(domain_with("<seclabel type='none' model='dac'/>"), "d"), std::nullopt);
}

TEST(DacLabel, MalformedInputIsAProtocolErrorNamingTheDomain) {
    for (const std::string& xml :
         {std::string("<not-a-domain/>"), std::string("garbage <<"),
          domain_with("<seclabel model='dac'><label>+107</label></seclabel>"),
          domain_with("<seclabel model='dac'><label>+107:+x</label></seclabel>"),
          domain_with("<seclabel model='dac'><label>+99999999999:+1</label></seclabel>"),
          domain_with("<seclabel model='dac'><label>no-such-user-hvpt:root</label></seclabel>")}) {
        try {
            dac_label_owner(xml, "domain web-01 (qemu:///system)");
            ADD_FAILURE() << "accepted: " << xml;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Protocol) << xml;
            EXPECT_NE(std::string(e.what()).find("domain web-01 (qemu:///system)"), std::string::npos) << e.what();
        }
    }
}

TEST(QmpThroughLibvirt, ReturnValueAndErrors) {
    EXPECT_EQ(qmp_return_value(R"({"return": {"status": "running"}, "id": "libvirt-12"})", "d", "query-status"),
              nlohmann::json({{"status", "running"}}));
    try {
        qmp_return_value(R"({"id":"libvirt-3","error":{"class":"GenericError","desc":"Property 'x' not found"}})",
                         "domain web-01 (qemu:///system)", "qom-get");
        ADD_FAILURE();
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_STREQ(e.what(), "domain web-01 (qemu:///system): QMP 'qom-get' failed: GenericError: Property 'x' not found");
    }
    for (const char* reply : {"", "not json", "[1]", R"({"id": 1})"}) {
        try {
            qmp_return_value(reply, "d", "query-kvm");
            ADD_FAILURE() << reply;
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Protocol) << reply;
        }
    }
}

TEST(LibvirtUri, ChosenAsVirshChoosesIt) {
    const char* saved = std::getenv("LIBVIRT_DEFAULT_URI");
    std::string keep = saved ? saved : "";
    ::unsetenv("LIBVIRT_DEFAULT_URI");
    EXPECT_EQ(choose_libvirt_uri(""), "qemu:///system");
    EXPECT_EQ(choose_libvirt_uri("qemu+ssh://h/system"), "qemu+ssh://h/system");
    ::setenv("LIBVIRT_DEFAULT_URI", "test:///default", 1);
    EXPECT_EQ(choose_libvirt_uri(""), "test:///default");
    EXPECT_EQ(choose_libvirt_uri("qemu:///session"), "qemu:///session");
    if (saved) ::setenv("LIBVIRT_DEFAULT_URI", keep.c_str(), 1);
    else ::unsetenv("LIBVIRT_DEFAULT_URI");
}

}  // namespace
}  // namespace hvpatch
