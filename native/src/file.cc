#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <string.h>
#include <sys/stat.h>

#include <algorithm>

#include "args.h"
#include "async_file.h"
#include "errors.h"
#include "region.h"

namespace bv {

namespace {

// A synchronous O_DIRECT transfer copies through an aligned buffer of at most this many bytes.
constexpr uint64_t kDirectChunk = uint64_t{1} << 20;

}  // namespace

void OpenFile::Settled() {
  if (pending > 0) --pending;
  if (closed && pending == 0) fd.Reset();
}

Napi::Function File::Define(Napi::Env env) {
  return DefineClass(env, "NativeFile",
                     {
                         InstanceAccessor<&File::GetSize>("size"),
                         InstanceAccessor<&File::GetClosed>("closed"),
                         InstanceAccessor<&File::GetDirect>("direct"),
                         InstanceAccessor<&File::GetDirectAlignment>("directAlignment"),
                         InstanceAccessor<&File::GetPendingOperations>("pendingOperations"),
                         InstanceMethod<&File::Pread>("pread"),
                         InstanceMethod<&File::Pwrite>("pwrite"),
                         InstanceMethod<&File::PreadToRegion>("preadToRegion"),
                         InstanceMethod<&File::PwriteFromRegion>("pwriteFromRegion"),
                         InstanceMethod<&File::PreadAsync>("preadAsync"),
                         InstanceMethod<&File::PwriteAsync>("pwriteAsync"),
                         InstanceMethod<&File::SyncAsync>("syncAsync"),
                         InstanceMethod<&File::Truncate>("truncate"),
                         InstanceMethod<&File::Sync>("sync"),
                         InstanceMethod<&File::Close>("close"),
                     });
}

File::File(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<File>(info), file_(std::make_shared<OpenFile>()) {
  Napi::Env env = info.Env();
  file_->path = ArgString(info, 0, "path");
  std::string mode = ArgString(info, 1, "mode");
  bool direct = ArgFlag(info, 2, "direct");
  int flags;
  if (mode == "r") {
    flags = O_RDONLY;
  } else if (mode == "rw") {
    flags = O_RDWR;
  } else if (mode == "create") {
    flags = O_RDWR | O_CREAT;
  } else {
    Fail(env, code::kBadArgument, "mode must be 'r', 'rw' or 'create'");
  }
  file_->fd = OpenRegularFile(env, file_->path, flags);
  if (direct) EnableDirect(env);
  if (mode == "create") {
    // O_TRUNC is applied only after checking that no live mapping depends on the contents.
    RefuseShrinkingMappedFile(env, 0);
    if (::ftruncate(file_->fd.Get(), 0) != 0) FailErrno(env, errno, "ftruncate", file_->path);
  }
}

void File::EnableDirect(Napi::Env env) {
  int fd = file_->fd.Get();
  // O_DIRECT is set after opening, so that a file system without it is told apart from every
  // other reason open() fails: setting it is EINVAL exactly when the file cannot do direct I/O.
  int status = ::fcntl(fd, F_GETFL);
  if (status < 0) FailErrno(env, errno, "fcntl", file_->path);
  if (::fcntl(fd, F_SETFL, status | O_DIRECT) != 0) {
    if (errno == EINVAL) {
      Fail(env, code::kUnsupported,
           "O_DIRECT is not supported on the file system of '" + file_->path + "'");
    }
    FailErrno(env, errno, "fcntl", file_->path, "setting O_DIRECT");
  }
  // Linux 6.1+ reports the alignment direct I/O needs (STATX_DIOALIGN); older kernels, and file
  // systems that do not say, get 512, the logical block size of nearly every disk.
  uint32_t offsetAlignment = 512;
  uint32_t memoryAlignment = 512;
  struct statx extended;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &extended) == 0 &&
      (extended.stx_mask & STATX_DIOALIGN) != 0) {
    if (extended.stx_dio_offset_align == 0) {
      Fail(env, code::kUnsupported,
           "O_DIRECT is not supported on the file system of '" + file_->path +
               "' (statx reports no direct I/O alignment)");
    }
    offsetAlignment = extended.stx_dio_offset_align;
    memoryAlignment = extended.stx_dio_mem_align;
  }
  file_->direct = true;
  file_->offsetAlignment = offsetAlignment;
  file_->memoryAlignment = std::max<uint32_t>(memoryAlignment, 1);
}

int File::OpenFd(Napi::Env env) {
  if (file_->closed) Fail(env, code::kClosed, "the file '" + file_->path + "' is closed");
  return file_->fd.Get();
}

void File::RequireDirectAligned(Napi::Env env, uint64_t fileOffset, uint64_t length) {
  uint32_t alignment = file_->offsetAlignment;
  if (fileOffset % alignment != 0 || length % alignment != 0) {
    Fail(env, code::kUnaligned,
         "O_DIRECT transfers on '" + file_->path + "' need a file offset and a length that are " +
             "multiples of " + std::to_string(alignment) + " bytes, got offset " +
             std::to_string(fileOffset) + " and length " + std::to_string(length));
  }
}

void File::RefuseShrinkingMappedFile(Napi::Env env, uint64_t bytes) {
  uint64_t required = FilePin::RequiredSize(IdentityOf(env, file_->fd.Get(), file_->path));
  if (required > bytes) {
    Fail(env, code::kBusy,
         "'" + file_->path + "' is mapped by a live region up to " + std::to_string(required) +
             " bytes; shrinking it to " + std::to_string(bytes) +
             " would crash the process on access");
  }
}

AlignedBuffer File::DirectChunk(Napi::Env env, uint64_t length) {
  uint64_t chunk = std::min(length, kDirectChunk / file_->offsetAlignment * file_->offsetAlignment);
  AlignedBuffer bounce;
  int err = bounce.Allocate(static_cast<size_t>(chunk), file_->BounceAlignment());
  if (err != 0) FailErrno(env, err, "posix_memalign", file_->path, "O_DIRECT bounce buffer");
  return bounce;
}

uint64_t File::ReadAt(Napi::Env env, uint8_t* target, uint64_t length, uint64_t fileOffset) {
  RequireDirectAligned(env, fileOffset, length);
  RequireWithin(env, fileOffset, length, kMaxFileEnd, "file offset range");
  int fd = file_->fd.Get();
  if (!file_->direct) {
    IoResult result = ReadFully(fd, target, length, fileOffset, 1);
    if (result.error != 0) FailErrno(env, result.error, "pread", file_->path);
    return result.bytes;
  }
  // O_DIRECT needs aligned memory too: copy through an aligned buffer, a chunk at a time.
  AlignedBuffer bounce = DirectChunk(env, length);
  uint64_t chunk = bounce.Size();
  uint64_t total = 0;
  while (total < length) {
    uint64_t want = std::min(length - total, chunk);
    IoResult result = ReadFully(fd, bounce.Data(), want, fileOffset + total, file_->offsetAlignment);
    if (result.error != 0) FailErrno(env, result.error, "pread", file_->path, "O_DIRECT");
    memcpy(target + total, bounce.Data(), static_cast<size_t>(result.bytes));
    total += result.bytes;
    if (result.bytes < want) break;  // end of file
  }
  return total;
}

uint64_t File::WriteAt(Napi::Env env, const uint8_t* source, uint64_t length,
                       uint64_t fileOffset) {
  RequireDirectAligned(env, fileOffset, length);
  RequireWithin(env, fileOffset, length, kMaxFileEnd, "file offset range");
  int fd = file_->fd.Get();
  if (!file_->direct) {
    IoResult result = WriteFully(fd, source, length, fileOffset);
    if (result.error != 0) FailErrno(env, result.error, "pwrite", file_->path);
    return result.bytes;
  }
  AlignedBuffer bounce = DirectChunk(env, length);
  uint64_t chunk = bounce.Size();
  uint64_t total = 0;
  while (total < length) {
    uint64_t want = std::min(length - total, chunk);
    memcpy(bounce.Data(), source + total, static_cast<size_t>(want));
    IoResult result = WriteFully(fd, bounce.Data(), want, fileOffset + total);
    if (result.error != 0) FailErrno(env, result.error, "pwrite", file_->path, "O_DIRECT");
    total += result.bytes;
  }
  return total;
}

Napi::Value File::GetSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::Number::New(env, static_cast<double>(SizeOf(env, OpenFd(env), file_->path)));
}

Napi::Value File::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), file_->closed);
}

Napi::Value File::GetDirect(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), file_->direct);
}

Napi::Value File::GetDirectAlignment(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), file_->offsetAlignment);
}

Napi::Value File::GetPendingOperations(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), file_->pending);
}

Napi::Value File::Pread(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Napi::Uint8Array target = ArgBytes(info, 0, "target");
  uint64_t fileOffset = ArgIndex(info, 1, "fileOffset");
  uint64_t got = ReadAt(env, target.Data(), target.ByteLength(), fileOffset);
  return Napi::Number::New(env, static_cast<double>(got));
}

Napi::Value File::Pwrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Napi::Uint8Array source = ArgBytes(info, 0, "source");
  uint64_t fileOffset = ArgIndex(info, 1, "fileOffset");
  uint64_t put = WriteAt(env, source.Data(), source.ByteLength(), fileOffset);
  return Napi::Number::New(env, static_cast<double>(put));
}

Napi::Value File::PreadToRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Region* region = Region::FromValue(env, info[0], "region");
  uint64_t regionOffset = ArgIndex(info, 1, "regionOffset");
  uint64_t length = ArgIndex(info, 2, "length");
  uint64_t fileOffset = ArgIndex(info, 3, "fileOffset");
  uint8_t* target = region->RangePointer(env, regionOffset, length);
  return Napi::Number::New(env, static_cast<double>(ReadAt(env, target, length, fileOffset)));
}

Napi::Value File::PwriteFromRegion(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Region* region = Region::FromValue(env, info[0], "region");
  uint64_t regionOffset = ArgIndex(info, 1, "regionOffset");
  uint64_t length = ArgIndex(info, 2, "length");
  uint64_t fileOffset = ArgIndex(info, 3, "fileOffset");
  const uint8_t* source = region->RangePointer(env, regionOffset, length);
  return Napi::Number::New(env, static_cast<double>(WriteAt(env, source, length, fileOffset)));
}

void File::Truncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = OpenFd(env);
  uint64_t bytes = ArgIndex(info, 0, "bytes");
  RefuseShrinkingMappedFile(env, bytes);
  int result;
  do {
    result = ::ftruncate(fd, static_cast<off_t>(bytes));
  } while (result != 0 && errno == EINTR);
  if (result != 0) FailErrno(env, errno, "ftruncate", file_->path);
}

void File::Sync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (::fsync(OpenFd(env)) != 0) FailErrno(env, errno, "fsync", file_->path);
}

void File::Close(const Napi::CallbackInfo&) {
  // With operations in flight the descriptor stays open until the last settles (OpenFile).
  file_->closed = true;
  if (file_->pending == 0) file_->fd.Reset();
}

void SyncDirectory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  int raw;
  do {
    raw = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) FailErrno(env, errno, "open", path);
  UniqueFd fd(raw);
  if (::fsync(fd.Get()) != 0) FailErrno(env, errno, "fsync", path);
}

}  // namespace bv
