#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>

#include "args.h"
#include "errors.h"
#include "region.h"

namespace bv {

namespace {

// Linux transfers at most ~2 GiB per read/write call; loop in chunks below that.
constexpr uint64_t kMaxChunk = uint64_t{1} << 30;
// Offsets must stay representable as off_t and as a JS number.
constexpr uint64_t kMaxFileEnd = (uint64_t{1} << 53) - 1;

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Value value = info[index];
  if (!value.IsTypedArray() ||
      value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(info.Env(), code::kBadArgument, std::string(name) + " must be a Uint8Array");
  }
  return value.As<Napi::Uint8Array>();
}

}  // namespace

Napi::Function File::Define(Napi::Env env) {
  return DefineClass(env, "NativeFile",
                     {
                         InstanceAccessor<&File::GetSize>("size"),
                         InstanceAccessor<&File::GetClosed>("closed"),
                         InstanceMethod<&File::Pread>("pread"),
                         InstanceMethod<&File::Pwrite>("pwrite"),
                         InstanceMethod<&File::PreadToRegion>("preadToRegion"),
                         InstanceMethod<&File::PwriteFromRegion>("pwriteFromRegion"),
                         InstanceMethod<&File::Truncate>("truncate"),
                         InstanceMethod<&File::Sync>("sync"),
                         InstanceMethod<&File::Close>("close"),
                     });
}

File::File(const Napi::CallbackInfo& info) : Napi::ObjectWrap<File>(info) {
  Napi::Env env = info.Env();
  path_ = ArgString(info, 0, "path");
  std::string mode = ArgString(info, 1, "mode");
  if (mode == "r") {
    fd_ = OpenRegularFile(env, path_, O_RDONLY);
  } else if (mode == "rw") {
    fd_ = OpenRegularFile(env, path_, O_RDWR);
  } else if (mode == "create") {
    // O_TRUNC is applied only after checking that no live mapping depends on the contents.
    fd_ = OpenRegularFile(env, path_, O_RDWR | O_CREAT);
    RefuseShrinkingMappedFile(env, 0);
    if (::ftruncate(fd_.Get(), 0) != 0) FailErrno(env, errno, "ftruncate", path_);
  } else {
    Fail(env, code::kBadArgument, "mode must be 'r', 'rw' or 'create'");
  }
}

int File::OpenFd(Napi::Env env) {
  if (!fd_.Valid()) Fail(env, code::kClosed, "the file '" + path_ + "' is closed");
  return fd_.Get();
}

void File::RefuseShrinkingMappedFile(Napi::Env env, uint64_t bytes) {
  uint64_t required = FilePin::RequiredSize(IdentityOf(env, fd_.Get(), path_));
  if (required > bytes) {
    Fail(env, code::kBusy,
         "'" + path_ + "' is mapped by a live region up to " + std::to_string(required) +
             " bytes; shrinking it to " + std::to_string(bytes) +
             " would crash the process on access");
  }
}

uint64_t File::ReadAt(Napi::Env env, uint8_t* target, uint64_t length, uint64_t fileOffset) {
  RequireWithin(env, fileOffset, length, kMaxFileEnd, "file offset range");
  uint64_t total = 0;
  while (total < length) {
    size_t chunk = static_cast<size_t>(std::min(length - total, kMaxChunk));
    ssize_t got = ::pread(fd_.Get(), target + total, chunk, static_cast<off_t>(fileOffset + total));
    if (got < 0) {
      if (errno == EINTR) continue;
      FailErrno(env, errno, "pread", path_);
    }
    if (got == 0) break;  // end of file: a short read
    total += static_cast<uint64_t>(got);
  }
  return total;
}

uint64_t File::WriteAt(Napi::Env env, const uint8_t* source, uint64_t length,
                       uint64_t fileOffset) {
  RequireWithin(env, fileOffset, length, kMaxFileEnd, "file offset range");
  uint64_t total = 0;
  while (total < length) {
    size_t chunk = static_cast<size_t>(std::min(length - total, kMaxChunk));
    ssize_t put =
        ::pwrite(fd_.Get(), source + total, chunk, static_cast<off_t>(fileOffset + total));
    if (put < 0) {
      if (errno == EINTR) continue;
      FailErrno(env, errno, "pwrite", path_);
    }
    if (put == 0) FailErrno(env, EIO, "pwrite", path_);  // no progress: never spin
    total += static_cast<uint64_t>(put);
  }
  return total;
}

Napi::Value File::GetSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return Napi::Number::New(env, static_cast<double>(SizeOf(env, OpenFd(env), path_)));
}

Napi::Value File::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !fd_.Valid());
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
  if (result != 0) FailErrno(env, errno, "ftruncate", path_);
}

void File::Sync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (::fsync(OpenFd(env)) != 0) FailErrno(env, errno, "fsync", path_);
}

void File::Close(const Napi::CallbackInfo&) { fd_.Reset(); }

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
