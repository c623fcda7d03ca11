// The klp_get_prev_state copy (guest-shim/prev_state.S) is plain x86-64
// code: these tests run the very blob hvpatch writes into the guest, here
// on the host (mapped executable), with tables like the ones hvpatch keeps.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <vector>

#include "guest-shim/prev_state.h"
#include "hvpatch/error.h"

namespace hvpatch::test {
namespace {

using PrevState = std::uint64_t (*)(std::uint64_t id);

// The blob built for wherever it is mapped, with `entries` in its table.
class MappedPrevState {
public:
    explicit MappedPrevState(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& entries) {
        size_ = shim::prev_state_size();
        memory_ = mmap(nullptr, size_, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (memory_ == MAP_FAILED) throw std::runtime_error("mmap");
        auto blob = shim::build_prev_state(reinterpret_cast<std::uint64_t>(memory_), 0);
        auto table = shim::prev_state_table(entries);
        std::memcpy(blob.data() + shim::prev_state_table_offset(), table.data(), table.size());
        std::memcpy(memory_, blob.data(), blob.size());
    }
    ~MappedPrevState() { munmap(memory_, size_); }
    std::uint64_t operator()(std::uint64_t id) const { return reinterpret_cast<PrevState>(memory_)(id); }

private:
    void* memory_ = nullptr;
    std::size_t size_ = 0;
};

TEST(PrevState, EmptyTableAnswersNull) {
    MappedPrevState prev({});
    EXPECT_EQ(prev(1), 0u);
    EXPECT_EQ(prev(0), 0u);
}

TEST(PrevState, TheLastPatchWithTheIdWins) {
    // Patch A has states 1 and 2, patch B (applied later) state 1 again.
    MappedPrevState prev({{1, 0xffffffffc0001000}, {2, 0xffffffffc0001018}, {1, 0xffffffffc0202000}});
    EXPECT_EQ(prev(1), 0xffffffffc0202000u);
    EXPECT_EQ(prev(2), 0xffffffffc0001018u);
    EXPECT_EQ(prev(3), 0u);
}

TEST(PrevState, AFullTableWorksAndOneMoreIsRefused) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> entries;
    for (std::uint64_t i = 0; i < shim::prev_state_capacity(); ++i) entries.emplace_back(100 + i, 0x1000 * (i + 1));
    MappedPrevState prev(entries);
    EXPECT_EQ(prev(100), 0x1000u);
    EXPECT_EQ(prev(100 + shim::prev_state_capacity() - 1), 0x1000 * shim::prev_state_capacity());
    entries.emplace_back(1, 1);
    EXPECT_THROW(shim::prev_state_table(entries), Error);
}

TEST(PrevState, ReturnGoesThroughTheThunkWhenTheGuestHasOne) {
    const std::uint64_t at = 0xffffffffc0100000;
    auto plain = shim::build_prev_state(at, 0);
    auto thunk = shim::build_prev_state(at, 0xffffffff82000000);
    EXPECT_NE(plain, thunk);
    EXPECT_EQ(plain.size(), shim::prev_state_size());
    EXPECT_THROW(shim::build_prev_state(0x7f0000000000, 0xffffffff82000000), Error) << "beyond rel32";
}

}  // namespace
}  // namespace hvpatch::test
