// Reading guest RAM out of the QEMU process: the gpa2hva reply parser, the
// checks that pick the process, process_vm_readv with its failures (an
// unmapped address, a process that exited), and QemuMachine choosing the
// path. The "QEMU" here is this test process itself (or a child of it): the
// same system calls a real QEMU gets, on memory the test controls.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "hvpatch/error.h"
#include "vmm/libvirt/libvirt_connection.h"
#include "vmm/qemu/process_memory.h"
#include "vmm/qemu/qemu_machine.h"
#include "vmm/qemu/qemu_process.h"
#include "vmm/qemu/stopped_page_cache.h"

namespace hvpatch {
namespace {

std::uint64_t address_of(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

// --- gpa2hva -------------------------------------------------------------

TEST(Gpa2hvaReply, HostAddressOfRam) {
    EXPECT_EQ(parse_gpa2hva_reply("Host virtual address for 0x1000000 (pc.ram) is 0x7fdb68e00000\r\n"),
              0x7fdb68e00000u);
    EXPECT_EQ(parse_gpa2hva_reply("Host virtual address for 0x0 (ram0) is 0x7f0000000000"), 0x7f0000000000u);
}

TEST(Gpa2hvaReply, NotRamIsNoAddress) {
    EXPECT_FALSE(parse_gpa2hva_reply("No memory is mapped at address 0x30000000\r\n"));
    EXPECT_FALSE(parse_gpa2hva_reply("Memory at address 0xfee00000 is not RAM\r\n"));
}

TEST(Gpa2hvaReply, AnythingElseIsAProtocolError) {
    for (const char* reply : {"unknown command: 'gpa2hva'\r\n", "", "Host virtual address for 0x0 (x) is 0x\r\n",
                              "Host virtual address for 0x0 (x) is 0x12zz\r\n",
                              "Host virtual address for 0x0 (x) is 0x1ffffffffffffffffffff\r\n"}) {
        try {
            parse_gpa2hva_reply(reply);
            ADD_FAILURE() << "accepted '" << reply << "'";
        } catch (const Error& e) {
            EXPECT_EQ(e.kind(), ErrorKind::Protocol) << reply;
        }
    }
}

// --- libvirt URIs --------------------------------------------------------

TEST(LibvirtUri, OnlyUrisWithoutAHostAreLocal) {
    EXPECT_TRUE(libvirt_uri_is_local("qemu:///system"));
    EXPECT_TRUE(libvirt_uri_is_local("qemu:///session"));
    EXPECT_TRUE(libvirt_uri_is_local("qemu+unix:///system?socket=/run/x.sock"));
    EXPECT_TRUE(libvirt_uri_is_local("test:///default"));
    EXPECT_FALSE(libvirt_uri_is_local("qemu+ssh://root@host1/system"));
    EXPECT_FALSE(libvirt_uri_is_local("qemu+tcp://10.0.0.2/system"));
    EXPECT_FALSE(libvirt_uri_is_local("qemu+ssh://localhost/system")) << "through ssh: not provably this host";
    EXPECT_FALSE(libvirt_uri_is_local("qemu://host1/system"));
    EXPECT_FALSE(libvirt_uri_is_local("qemu+unix://host1/system"));
    EXPECT_FALSE(libvirt_uri_is_local("myalias"));
    EXPECT_FALSE(libvirt_uri_is_local(""));
}

// --- which process -------------------------------------------------------

TEST(FindQemuProcess, ThePeerWhoseThreadsAreTheVcpus) {
    QemuProcessClues clues{getpid(), {gettid()}, ""};
    EXPECT_EQ(find_qemu_process(clues, "t"), getpid());
}

TEST(FindQemuProcess, WithoutAPeerTheVcpuThreadsProcess) {
    QemuProcessClues clues{std::nullopt, {gettid()}, "00000000-0000-0000-0000-000000000000"};
    EXPECT_EQ(find_qemu_process(clues, "t"), getpid());
}

TEST(FindQemuProcess, VcpuThreadsOfAnotherProcessAreRefused) {
    // pid 1 is not this test: a QMP socket forwarded from elsewhere, or
    // thread ids from another pid namespace, must never be read.
    QemuProcessClues clues{1, {gettid()}, ""};
    EXPECT_THROW(find_qemu_process(clues, "t"), Error);
    QemuProcessClues no_threads{getpid(), {}, ""};
    EXPECT_THROW(find_qemu_process(no_threads, "t"), Error);
    QemuProcessClues bad_thread{getpid(), {0}, ""};
    EXPECT_THROW(find_qemu_process(bad_thread, "t"), Error);
    QemuProcessClues unknown_thread{std::nullopt, {0x3fffffff}, ""};
    EXPECT_THROW(find_qemu_process(unknown_thread, "t"), Error);
}

TEST(FindQemuProcess, AUuidNotOnTheCommandLineIsRefused) {
    QemuProcessClues clues{getpid(), {gettid()}, "6d1f0c2e-1111-2222-3333-444455556666"};
    try {
        find_qemu_process(clues, "vm1");
        ADD_FAILURE() << "accepted a process without the VM's uuid";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
        EXPECT_NE(std::string(e.what()).find("6d1f0c2e-1111-2222-3333-444455556666"), std::string::npos) << e.what();
    }
}

// --- process_vm_readv ----------------------------------------------------

TEST(ProcessMemory, ReadsAnotherProcessesBytes) {
    std::vector<std::byte> source(3 * 4096 + 17);
    for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<std::byte>(i * 7);
    ProcessMemory memory(getpid(), "t");
    std::vector<std::byte> out(source.size());
    memory.read(address_of(source.data()), out);
    EXPECT_EQ(out, source);
    EXPECT_EQ(memory.probe(address_of(source.data())), "");
    EXPECT_FALSE(memory.exited());
}

TEST(ProcessMemory, AnUnmappedAddressIsAnErrorNotACrash) {
    long page = sysconf(_SC_PAGESIZE);
    void* map = mmap(nullptr, static_cast<std::size_t>(page) * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    ASSERT_NE(map, MAP_FAILED);
    std::memset(map, 0x5a, static_cast<std::size_t>(page) * 2);
    // The second page goes away, as hot-unplugged guest RAM would.
    ASSERT_EQ(munmap(static_cast<char*>(map) + page, static_cast<std::size_t>(page)), 0);
    ProcessMemory memory(getpid(), "vm1");
    std::vector<std::byte> out(static_cast<std::size_t>(page) * 2);
    try {
        memory.read(address_of(map), out);
        ADD_FAILURE() << "read an unmapped page";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
        EXPECT_NE(std::string(e.what()).find("vm1"), std::string::npos) << e.what();
    }
    EXPECT_NE(memory.probe(address_of(map) + static_cast<std::uint64_t>(page)), "");
    munmap(map, static_cast<std::size_t>(page));
}

// A large read is shared among threads: every byte arrives, and a hole in
// any part of it is the same error as in a small read.
TEST(ProcessMemory, LargeReadsAreWholeAndFailWhole) {
    const std::size_t size = (8u << 20) + 12345;
    std::vector<std::byte> source(size);
    for (std::size_t i = 0; i < size; ++i) source[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
    ProcessMemory memory(getpid(), "t");
    std::vector<std::byte> out(size);
    memory.read(address_of(source.data()), out);
    EXPECT_TRUE(out == source);

    const std::size_t map_size = 8u << 20;
    void* map = mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(map, MAP_FAILED);
    // A hole in the last quarter, where a helper thread reads.
    ASSERT_EQ(munmap(static_cast<char*>(map) + map_size - (1u << 20), 4096), 0);
    std::vector<std::byte> big(map_size);
    try {
        memory.read(address_of(map), big);
        ADD_FAILURE() << "read across a hole";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest) << e.what();
    }
    munmap(map, map_size);
}

TEST(ProcessMemory, AProcessThatExitedIsUnreachable) {
    static std::uint64_t value = 0x1122334455667788ULL;
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        pause();
        _exit(0);
    }
    ProcessMemory memory(child, "vm1");
    std::uint64_t out = 0;
    memory.read(address_of(&value), std::as_writable_bytes(std::span(&out, 1)));
    EXPECT_EQ(out, value) << "the child has this process's data at the same address";
    kill(child, SIGKILL);
    // A zombie first (not reaped), then gone: both are "QEMU exited".
    for (int i = 0; i < 200 && !memory.exited(); ++i) usleep(5000);
    EXPECT_TRUE(memory.exited());
    try {
        memory.read(address_of(&value), std::as_writable_bytes(std::span(&out, 1)));
        ADD_FAILURE() << "read from an exited process";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
        EXPECT_NE(std::string(e.what()).find("exited"), std::string::npos) << e.what();
    }
    waitpid(child, nullptr, 0);
    EXPECT_THROW(memory.read(address_of(&value), std::as_writable_bytes(std::span(&out, 1))), Error);
}

// --- QemuMachine choosing the path ----------------------------------------

// A monitor whose "QEMU" is this test process: two adjacent RAM ranges of
// 64 KiB, each in a buffer of its own, as gpa2hva reports them.
class ThisProcessMonitor final : public QemuMonitor {
public:
    static constexpr std::uint64_t kRange = 0x10000;
    std::vector<std::byte> below = std::vector<std::byte>(kRange), above = std::vector<std::byte>(kRange);
    bool say_not_ram = false;
    std::optional<pid_t> hint = getpid();

    nlohmann::json execute(const std::string& command, const nlohmann::json&) override {
        if (command == "query-status") return {{"status", "running"}, {"running", true}};
        if (command == "query-cpus-fast") return nlohmann::json::array({{{"cpu-index", 0}, {"thread-id", gettid()}}});
        if (command == "query-memory-size-summary") return {{"base-memory", 2 * kRange}};
        if (command == "query-uuid") return {{"UUID", "00000000-0000-0000-0000-000000000000"}};
        throw Error(ErrorKind::Guest, "scripted: QMP '" + command + "' failed: CommandNotFound");
    }
    std::string hmp(const std::string& line) override {
        if (line == "info mtree")
            return "    0000000000000000-000000000000ffff (prio 0, ram): alias ram-below-4g @pc.ram "
                   "0000000000000000-000000000000ffff\n"
                   "    0000000000010000-000000000001ffff (prio 0, ram): alias ram-above-4g @pc.ram "
                   "0000000000010000-000000000001ffff\n";
        if (line.rfind("gpa2hva ", 0) == 0) {
            std::uint64_t gpa = std::stoull(line.substr(8), nullptr, 16);
            if (say_not_ram) return "Memory at address " + hex(gpa) + " is not RAM\r\n";
            const std::byte* base = gpa < kRange ? below.data() : above.data();
            return "Host virtual address for " + hex(gpa) + " (pc.ram) is " + hex(address_of(base) + gpa % kRange) +
                   "\r\n";
        }
        throw Error(ErrorKind::Guest, "scripted: HMP '" + line + "'");
    }
    void stop() override {}
    void cont() override {}
    bool qemu_on_this_host() const override { return true; }
    std::optional<pid_t> qemu_process_hint() const override { return hint; }
};

TEST(QemuMachineMemoryPath, ProcessMemoryWhenRamIsNotASharedFile) {
    auto monitor = std::make_unique<ThisProcessMonitor>();
    ThisProcessMonitor& m = *monitor;
    for (std::size_t i = 0; i < m.below.size(); ++i) m.below[i] = static_cast<std::byte>(i);
    for (std::size_t i = 0; i < m.above.size(); ++i) m.above[i] = static_cast<std::byte>(0x80 | (i & 0x7f));
    QemuMachine machine(std::move(monitor), "qmp:/test");
    MemoryAccessInfo info = machine.memory_access();
    EXPECT_EQ(info.path, MemoryAccessInfo::Path::ProcessMemory);
    EXPECT_EQ(info.qemu_pid, getpid());
    EXPECT_EQ(info.notice, "") << "no shared file is the common case, not worth a notice";
    EXPECT_TRUE(info.reads_while_running());

    // The VM "runs": the process path reads without pausing it.
    std::vector<std::byte> out(32);
    machine.read_physical(GuestPhysAddr{ThisProcessMonitor::kRange - 16}, out);
    for (std::size_t i = 0; i < 16; ++i) EXPECT_EQ(out[i], m.below[m.below.size() - 16 + i]) << i;
    for (std::size_t i = 16; i < 32; ++i) EXPECT_EQ(out[i], m.above[i - 16]) << i;
    EXPECT_EQ(machine.run_state(), RunState::Running);

    try {
        machine.read_physical(GuestPhysAddr{2 * ThisProcessMonitor::kRange - 8}, out);
        ADD_FAILURE() << "read past the end of RAM";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Guest);
    }
}

// While hvpatch holds the VM stopped, small reads come from pages read once;
// as soon as the VM may run they are read afresh.
TEST(QemuMachineMemoryPath, PagesReadWhileStoppedAreForgottenWhenTheVmRuns) {
    auto monitor = std::make_unique<ThisProcessMonitor>();
    ThisProcessMonitor& m = *monitor;
    QemuMachine machine(std::move(monitor), "qmp:/test");
    std::uint64_t value = 0;
    auto word = std::as_writable_bytes(std::span(&value, 1));

    m.below[0x100] = std::byte{1};
    machine.read_physical(GuestPhysAddr{0x100}, word);
    EXPECT_EQ(static_cast<int>(word[0]), 1) << "running: read as it is";
    m.below[0x100] = std::byte{2};
    machine.read_physical(GuestPhysAddr{0x100}, word);
    EXPECT_EQ(static_cast<int>(word[0]), 2) << "running: nothing kept";

    machine.pause();
    machine.read_physical(GuestPhysAddr{0x100}, word);
    EXPECT_EQ(static_cast<int>(word[0]), 2);
    m.below[0x100] = std::byte{3};  // (a stopped guest cannot do this; the test can)
    machine.read_physical(GuestPhysAddr{0x108}, word);
    machine.read_physical(GuestPhysAddr{0x100}, word);
    EXPECT_EQ(static_cast<int>(word[0]), 2) << "stopped: the page read first serves later reads";

    machine.resume();
    machine.pause();
    machine.read_physical(GuestPhysAddr{0x100}, word);
    EXPECT_EQ(static_cast<int>(word[0]), 3) << "the VM ran in between: read afresh";
    machine.resume();
}

TEST(QemuMachineMemoryPath, FallsBackToTheStubWithANoticeSayingWhy) {
    auto monitor = std::make_unique<ThisProcessMonitor>();
    monitor->say_not_ram = true;
    QemuMachine machine(std::move(monitor), "qmp:/test");
    MemoryAccessInfo info = machine.memory_access();
    EXPECT_EQ(info.path, MemoryAccessInfo::Path::GdbStub);
    EXPECT_FALSE(info.reads_while_running());
    EXPECT_NE(info.notice.find("is not RAM"), std::string::npos) << info.notice;
    EXPECT_NE(info.notice.find("gdbstub"), std::string::npos) << info.notice;
}

TEST(QemuMachineMemoryPath, APathAskedForThatCannotWorkIsAnError) {
    QemuMachineOptions file;
    file.memory_path = MemoryAccessInfo::Path::MappedFile;
    EXPECT_THROW(QemuMachine(std::make_unique<ThisProcessMonitor>(), "qmp:/test", file), Error)
        << "there is no RAM file";

    QemuMachineOptions process;
    process.memory_path = MemoryAccessInfo::Path::ProcessMemory;
    auto elsewhere = std::make_unique<ThisProcessMonitor>();
    elsewhere->hint = 1;  // the socket's peer is not the process of the vCPU threads
    try {
        QemuMachine machine(std::move(elsewhere), "qmp:/test", process);
        ADD_FAILURE() << "read a process that is not the VM's";
    } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::Unreachable);
        EXPECT_NE(std::string(e.what()).find("process-memory"), std::string::npos) << e.what();
    }

    QemuMachineOptions stub;
    stub.memory_path = MemoryAccessInfo::Path::GdbStub;
    QemuMachine machine(std::make_unique<ThisProcessMonitor>(), "qmp:/test", stub);
    EXPECT_EQ(machine.memory_access().path, MemoryAccessInfo::Path::GdbStub);
    EXPECT_EQ(machine.memory_access().notice, "") << "the operator chose it";
}

TEST(StoppedPageCache, ReadsWholePagesOnceAndDropsWhatIsWritten) {
    std::vector<std::uint64_t> fetched;
    std::vector<std::byte> memory(4 * StoppedPageCache::kPageSize);
    for (std::size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<std::byte>(i / 7);
    auto reader = [&](std::uint64_t page, std::span<std::byte> out) {
        fetched.push_back(page);
        std::memcpy(out.data(), memory.data() + page, out.size());
    };
    StoppedPageCache cache(3);
    std::vector<std::byte> out(32);
    cache.read(0x1ff0, out, reader);  // across the seam of pages 1 and 2
    EXPECT_EQ(fetched, (std::vector<std::uint64_t>{0x1000, 0x2000}));
    for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], memory[0x1ff0 + i]) << i;
    cache.read(0x2000, std::span(out).first(8), reader);
    EXPECT_EQ(fetched.size(), 2u) << "page 2 was kept";

    cache.drop(0x2004, 1);
    cache.read(0x2000, std::span(out).first(8), reader);
    EXPECT_EQ(fetched.size(), 3u) << "a dropped page is read again";
    cache.drop(0, 1ULL << 40);
    EXPECT_EQ(cache.size(), 0u);

    // Bounded: a fourth page starts the cache over instead of growing it.
    for (std::uint64_t page = 0; page < 4; ++page) cache.read(page * 0x1000, std::span(out).first(1), reader);
    EXPECT_LE(cache.size(), 3u);
}

TEST(MemoryPathNames, RoundTripAndRefuseOthers) {
    for (auto path : {MemoryAccessInfo::Path::MappedFile, MemoryAccessInfo::Path::ProcessMemory,
                      MemoryAccessInfo::Path::GdbStub})
        EXPECT_EQ(memory_path_from_name(memory_path_name(path)), path);
    EXPECT_FALSE(memory_path_from_name("auto"));
    EXPECT_FALSE(memory_path_from_name(""));
    EXPECT_THROW(memory_path_from_name("ptrace"), Error);
}

}  // namespace
}  // namespace hvpatch
