#include "patch/kernel_write.h"

#include <algorithm>
#include <vector>

namespace hvpatch {

void write_kernel_memory(GuestKernel& kernel, std::uint64_t address, std::span<const std::byte> bytes) {
    constexpr std::uint64_t kPage = 4096;
    struct Piece {
        GuestPhysAddr phys;
        std::size_t offset, size;
    };
    std::vector<Piece> pieces;
    for (std::size_t done = 0; done < bytes.size();) {
        std::uint64_t at = address + done;
        std::size_t size = std::min<std::size_t>(bytes.size() - done, kPage - (at & (kPage - 1)));
        pieces.push_back({kernel.memory().translate(GuestVirtAddr{at}), done, size});
        done += size;
    }
    for (const Piece& piece : pieces) kernel.machine().write_physical(piece.phys, bytes.subspan(piece.offset, piece.size));
    // Reads after this must see the new bytes.
    kernel.memory().clear_cache();
}

}  // namespace hvpatch
