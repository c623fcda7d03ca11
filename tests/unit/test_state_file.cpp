#include "patch/state_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "hvpatch/error.h"
#include "patch/posix_file.h"
#include "temp_dir.h"

namespace hvpatch {
namespace {

using json = nlohmann::json;
using test::TempDir;
using test::write_text;

mode_t file_mode(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

TEST(StateFile, WriteThenReadRoundTripsWithMode0600AndNoTempFileLeft) {
    TempDir dir;
    std::string path = dir.file("vm1.json");
    json state = {{"vm", "vm1"}, {"applied", json::array({{{"patch", "fix.ko"}, {"sha256", std::string(64, 'a')}}})}};
    write_json_atomically(path, state);
    EXPECT_EQ(read_json_file(path), state);
    EXPECT_EQ(file_mode(path), 0600u);
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"vm1.json"});
}

TEST(StateFile, OverwriteReplacesTheWholeContent) {
    TempDir dir;
    std::string path = dir.file("vm1.json");
    write_json_atomically(path, json{{"big", std::string(10000, 'x')}});
    write_json_atomically(path, json{{"small", 1}});
    EXPECT_EQ(read_json_file(path), (json{{"small", 1}}));
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"vm1.json"});
}

TEST(StateFile, MissingFileIsNullopt) {
    TempDir dir;
    EXPECT_FALSE(read_json_file(dir.file("absent.json")).has_value());
}

TEST(StateFile, CorruptFileIsAnInternalErrorNamingFileAndParseError) {
    TempDir dir;
    std::string path = dir.file("vm1.json");
    write_text(path, "{\"applied\": [1, 2");
    try {
        (void)read_json_file(path);
        FAIL() << "corrupt file accepted";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Internal);
        std::string what = e.what();
        EXPECT_NE(what.find(path), std::string::npos) << what;
        EXPECT_NE(what.find("parse error"), std::string::npos) << what;
    }
    write_text(path, "");
    EXPECT_THROW((void)read_json_file(path), Error);
}

TEST(StateFile, FailedRenameLeavesNoTempFileAndTheOldTargetUntouched) {
    TempDir dir;
    // A directory in the way: rename() of a file over it fails (EISDIR).
    std::string path = dir.file("vm1.json");
    ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
    try {
        write_json_atomically(path, json{{"a", 1}});
        FAIL() << "rename over a directory succeeded";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Internal);
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    EXPECT_EQ(dir.entries(), std::vector<std::string>{"vm1.json"});
}

TEST(StateFile, MissingDirectoryIsAnErrorNamingIt) {
    TempDir dir;
    try {
        write_json_atomically(dir.file("no/such/dir/vm1.json"), json{{"a", 1}});
        FAIL() << "write into a missing directory succeeded";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Internal);
        EXPECT_NE(std::string(e.what()).find(dir.file("no/such/dir")), std::string::npos) << e.what();
    }
}

TEST(StateFile, InvalidUtf8IsStoredReplacedNotRefused) {
    TempDir dir;
    std::string path = dir.file("vm1.json");
    write_json_atomically(path, json{{"name", std::string("guest\xff")}});
    auto back = read_json_file(path);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ((*back)["name"], "guest\xef\xbf\xbd");
}

TEST(StateFile, MakePrivateDirectoriesCreatesParentsWithMode0700) {
    TempDir dir;
    std::string deep = dir.file("a/b/c");
    make_private_directories(deep);
    EXPECT_EQ(file_mode(dir.file("a")), 0700u);
    EXPECT_EQ(file_mode(deep), 0700u);
    make_private_directories(deep);  // existing: fine
    write_text(dir.file("plain"), "x");
    EXPECT_THROW(make_private_directories(dir.file("plain/sub")), Error);
}

}  // namespace
}  // namespace hvpatch
