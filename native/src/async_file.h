// Transfers between memory and a file descriptor, free of JavaScript so that they can run on the
// libuv thread pool, and the aligned memory that O_DIRECT needs. HostFile's synchronous and
// asynchronous methods (file.cc, async_file.cc) are both built on them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace bv {

// The largest transfer one preadAsync/pwriteAsync accepts: each one copies through a bounce
// buffer of its own length, so this bounds the memory a single request can pin.
inline constexpr uint64_t kMaxAsyncTransfer = uint64_t{64} << 20;

// Offsets must stay representable as off_t and as a JS number.
inline constexpr uint64_t kMaxFileEnd = (uint64_t{1} << 53) - 1;

// Alignment of every bounce buffer: a page, at least what O_DIRECT asks of memory on Linux.
inline constexpr size_t kBounceAlignment = 4096;

// Heap memory at an aligned address (posix_memalign), freed on destruction.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(AlignedBuffer&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  // `bytes` (at least 1) at a multiple of `alignment` (a power of two ≥ sizeof(void*)); returns
  // 0 or ENOMEM / EINVAL and leaves the buffer empty on failure.
  int Allocate(size_t bytes, size_t alignment);

  uint8_t* Data() const { return data_; }
  size_t Size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// What a transfer did: the bytes moved, and the errno that stopped it (0 when none).
struct IoResult {
  uint64_t bytes = 0;
  int error = 0;
};

// pread until `length` bytes or end of file (a short count), retrying EINTR and partial reads.
// `directAlignment` > 1 means an O_DIRECT descriptor: a partial read that is not a multiple of it
// can only be the end of the file, so it stops there instead of reading on at an unaligned offset.
IoResult ReadFully(int fd, uint8_t* target, uint64_t length, uint64_t fileOffset,
                   uint32_t directAlignment);

// pwrite until all `length` bytes are written; a call that makes no progress is EIO.
IoResult WriteFully(int fd, const uint8_t* source, uint64_t length, uint64_t fileOffset);

}  // namespace bv
