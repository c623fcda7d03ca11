// Fuzz KallsymsTable::locate(): arbitrary bytes are the kernel image at a
// kernel address. Anything but a decoded table or Error(Guest) is a bug
// (a crash, a sanitizer report, another exception, a hang).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "hvpatch/error.h"
#include "introspect/kallsyms.h"

namespace {

constexpr std::uint64_t kBase = 0xffffffff81000000ULL;

class FuzzImage : public hvpatch::VirtualMemory {
public:
    FuzzImage(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    void read(hvpatch::GuestVirtAddr addr, std::span<std::byte> out) override {
        if (addr.value < kBase || addr.value - kBase > size_ || out.size() > size_ - (addr.value - kBase))
            throw hvpatch::Error(hvpatch::ErrorKind::Guest, "outside the fuzz image");
        std::memcpy(out.data(), data_ + (addr.value - kBase), out.size());
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    FuzzImage image(data, size);
    try {
        hvpatch::KallsymsTable table = hvpatch::KallsymsTable::locate(image, hvpatch::GuestVirtAddr{kBase}, size);
        // A table that decoded must answer queries without trouble.
        for (const hvpatch::KernelSymbol& s : table.symbols()) {
            (void)table.find_all(s.name);
            (void)table.resolve(s.address);
        }
        (void)table.resolve(hvpatch::GuestVirtAddr{kBase + size / 2});
    } catch (const hvpatch::Error& e) {
        if (e.kind() != hvpatch::ErrorKind::Guest) std::abort();
    }
    return 0;
}
