// HostFile: positional reads and writes on a regular file, including straight into a region,
// synchronous or on the libuv thread pool (async_file.cc), buffered or O_DIRECT.
#pragma once

#include <napi.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "async_file.h"
#include "posix_file.h"

namespace bv {

// The open descriptor and what every operation on it needs. Asynchronous operations hold a
// shared_ptr to it, so the state outlives a garbage-collected File; `pending` and `closed` are
// only touched on the file's JS thread. close() while operations are pending marks the file
// closed and leaves the descriptor open: the last operation to settle closes it, so a pool
// thread never uses a closed (or reused) descriptor.
struct OpenFile {
  UniqueFd fd;
  std::string path;
  bool direct = false;
  // File offsets and lengths must be multiples of this (1 unless direct).
  uint32_t offsetAlignment = 1;
  // Memory addresses handed to the kernel must be multiples of this (1 unless direct).
  uint32_t memoryAlignment = 1;
  uint32_t pending = 0;
  bool closed = false;

  // Called by each settling operation (on the JS thread): the last one closes a closed file.
  void Settled();

  // Alignment of the bounce buffers transfers copy through.
  size_t BounceAlignment() const { return std::max<size_t>(kBounceAlignment, memoryAlignment); }
};

class File : public Napi::ObjectWrap<File> {
 public:
  static Napi::Function Define(Napi::Env env);

  // new File(path, mode, direct) with mode 'r' | 'rw' | 'create'; direct (optional) asks O_DIRECT.
  explicit File(const Napi::CallbackInfo& info);

 private:
  int OpenFd(Napi::Env env);
  void EnableDirect(Napi::Env env);
  // BV_NATIVE_UNALIGNED unless both are multiples of offsetAlignment (direct files only).
  void RequireDirectAligned(Napi::Env env, uint64_t fileOffset, uint64_t length);
  // Alignment, then at most kMaxAsyncTransfer bytes (BV_NATIVE_TOO_LARGE), then within 2^53 - 1.
  void RequireAsyncTransfer(Napi::Env env, uint64_t fileOffset, uint64_t length);
  // An aligned buffer of min(length, ~1 MiB) bytes, a multiple of offsetAlignment: the chunk in
  // which synchronous O_DIRECT transfers copy.
  AlignedBuffer DirectChunk(Napi::Env env, uint64_t length);
  uint64_t ReadAt(Napi::Env env, uint8_t* target, uint64_t length, uint64_t fileOffset);
  uint64_t WriteAt(Napi::Env env, const uint8_t* source, uint64_t length, uint64_t fileOffset);
  void RefuseShrinkingMappedFile(Napi::Env env, uint64_t bytes);

  Napi::Value GetSize(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value GetDirect(const Napi::CallbackInfo& info);
  Napi::Value GetDirectAlignment(const Napi::CallbackInfo& info);
  Napi::Value GetPendingOperations(const Napi::CallbackInfo& info);
  // async_file.cc: the same transfers on the libuv pool, each returning a Promise.
  Napi::Value PreadAsync(const Napi::CallbackInfo& info);
  Napi::Value PwriteAsync(const Napi::CallbackInfo& info);
  Napi::Value SyncAsync(const Napi::CallbackInfo& info);
  Napi::Value Pread(const Napi::CallbackInfo& info);
  Napi::Value Pwrite(const Napi::CallbackInfo& info);
  Napi::Value PreadToRegion(const Napi::CallbackInfo& info);
  Napi::Value PwriteFromRegion(const Napi::CallbackInfo& info);
  void Truncate(const Napi::CallbackInfo& info);
  void Sync(const Napi::CallbackInfo& info);
  void Close(const Napi::CallbackInfo& info);

  std::shared_ptr<OpenFile> file_;
};

// syncDirectory(path): fsync a directory so that a rename inside it is durable.
void SyncDirectory(const Napi::CallbackInfo& info);

}  // namespace bv
