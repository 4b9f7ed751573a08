#include "async_file.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "args.h"
#include "errors.h"
#include "file.h"

namespace bv {

namespace {

// Linux transfers at most ~2 GiB per read/write call; loop in chunks below that.
constexpr uint64_t kMaxChunk = uint64_t{1} << 30;

}  // namespace

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

int AlignedBuffer::Allocate(size_t bytes, size_t alignment) {
  std::free(data_);
  data_ = nullptr;
  size_ = 0;
  void* memory = nullptr;
  int result = ::posix_memalign(&memory, alignment, std::max<size_t>(bytes, 1));
  if (result != 0) return result;
  data_ = static_cast<uint8_t*>(memory);
  size_ = bytes;
  return 0;
}

IoResult ReadFully(int fd, uint8_t* target, uint64_t length, uint64_t fileOffset,
                   uint32_t directAlignment) {
  IoResult result;
  while (result.bytes < length) {
    size_t chunk = static_cast<size_t>(std::min(length - result.bytes, kMaxChunk));
    ssize_t got = ::pread(fd, target + result.bytes, chunk,
                          static_cast<off_t>(fileOffset + result.bytes));
    if (got < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      return result;
    }
    if (got == 0) break;  // end of file: a short read
    result.bytes += static_cast<uint64_t>(got);
    if (directAlignment > 1 && static_cast<size_t>(got) < chunk &&
        result.bytes % directAlignment != 0) {
      break;  // O_DIRECT stops short only at the end of the file
    }
  }
  return result;
}

IoResult WriteFully(int fd, const uint8_t* source, uint64_t length, uint64_t fileOffset) {
  IoResult result;
  while (result.bytes < length) {
    size_t chunk = static_cast<size_t>(std::min(length - result.bytes, kMaxChunk));
    ssize_t put = ::pwrite(fd, source + result.bytes, chunk,
                           static_cast<off_t>(fileOffset + result.bytes));
    if (put < 0) {
      if (errno == EINTR) continue;
      result.error = errno;
      return result;
    }
    if (put == 0) {  // no progress: never spin
      result.error = EIO;
      return result;
    }
    result.bytes += static_cast<uint64_t>(put);
  }
  return result;
}

namespace {

// One asynchronous transfer or sync. Everything it needs is captured on the JS thread before it
// is queued: the descriptor (kept open by the shared OpenFile), the range, and a bounce buffer
// aligned for O_DIRECT. Execute() on a pool thread touches only those; the caller's Uint8Array
// is copied into the bounce buffer when a write is queued, and out of it when a read settles,
// both on the JS thread, so the caller's memory (which close() of a HostRegion may unmap, or a
// transfer may detach) is never touched from the pool.
class FileIoWorker final : public Napi::AsyncWorker {
 public:
  enum class Kind { kRead, kWrite, kSync };

  FileIoWorker(Napi::Env env, std::shared_ptr<OpenFile> file, Kind kind, uint64_t fileOffset,
               uint64_t length)
      : Napi::AsyncWorker(env, "bytevisor.HostFile"),
        file_(std::move(file)),
        fd_(file_->fd.Get()),
        kind_(kind),
        fileOffset_(fileOffset),
        length_(length) {}

  // The read target, referenced until the read settles so that it outlives the operation.
  void HoldTarget(Napi::Uint8Array target) { target_ = Napi::Persistent(target); }

  // The bytes to write, copied now.
  void CopySource(Napi::Env env, Napi::Uint8Array source) {
    int err = bounce_.Allocate(static_cast<size_t>(length_), file_->BounceAlignment());
    if (err != 0) FailErrno(env, err, "posix_memalign", file_->path, "bounce buffer for pwriteAsync");
    if (length_ > 0) memcpy(bounce_.Data(), source.Data(), static_cast<size_t>(length_));
  }

  // Counts the operation as pending, queues it and returns its promise.
  Napi::Value Start(Napi::Env env) {
    napi_value promise;
    if (napi_create_promise(env, &deferred_, &promise) != napi_ok) {
      throw Napi::Error::New(env);
    }
    Queue();
    ++file_->pending;
    return Napi::Value(env, promise);
  }

  // Replaces node-addon-api's completion, which turns a failing N-API call into a C++ exception
  // it cannot throw on (std::terminate). That happens when a worker_threads Worker is stopped
  // with operations in flight: its environment still runs their completions, but can no longer
  // run JavaScript, so settling a promise fails. Here any failure is swallowed: the promise's
  // thread is going away, and the descriptor bookkeeping never depends on JavaScript.
  void OnWorkComplete(Napi::Env env, napi_status status) override {
    file_->Settled();
    if (status != napi_cancelled) {
      napi_handle_scope scope;
      if (napi_open_handle_scope(env, &scope) == napi_ok) {
        try {
          Settle(env);
        } catch (const Napi::Error& error) {
          try {
            napi_reject_deferred(env, deferred_, error.Value());  // best effort
          } catch (const Napi::Error&) {
          }
        }
        napi_close_handle_scope(env, scope);
      }
    }
    Destroy();
  }

 protected:
  void Execute() override {
    switch (kind_) {
      case Kind::kRead: {
        int err = bounce_.Allocate(static_cast<size_t>(length_), file_->BounceAlignment());
        if (err != 0) {
          result_.error = err;
          syscall_ = "posix_memalign";
          return;
        }
        syscall_ = "pread";
        result_ = ReadFully(fd_, bounce_.Data(), length_, fileOffset_, file_->offsetAlignment);
        return;
      }
      case Kind::kWrite:
        syscall_ = "pwrite";
        result_ = WriteFully(fd_, bounce_.Data(), length_, fileOffset_);
        return;
      case Kind::kSync: {
        syscall_ = "fdatasync";
        int status;
        do {
          status = ::fdatasync(fd_);
        } while (status != 0 && errno == EINTR);
        if (status != 0) result_.error = errno;
        return;
      }
    }
  }

  // Execute() reports every failure in result_, so OnOK and OnError are never called.
  void OnOK() override {}
  void OnError(const Napi::Error&) override {}

 private:
  void Resolve(Napi::Env env, napi_value value) {
    if (napi_resolve_deferred(env, deferred_, value) != napi_ok) throw Napi::Error::New(env);
  }
  void Reject(Napi::Env env, napi_value value) {
    if (napi_reject_deferred(env, deferred_, value) != napi_ok) throw Napi::Error::New(env);
  }

  // On the JS thread: copies a read's bytes out and resolves, or rejects.
  void Settle(Napi::Env env) {
    if (result_.error != 0) {
      Reject(env, ErrnoError(env, result_.error, syscall_, file_->path, Describe()).Value());
      return;
    }
    switch (kind_) {
      case Kind::kRead: {
        Napi::Uint8Array target = target_.Value();
        if (target.ByteLength() < result_.bytes) {
          Reject(env, CodedError(env, code::kBadArgument,
                                 "the target of preadAsync on '" + file_->path +
                                     "' was detached or shrunk before the read settled")
                          .Value());
          return;
        }
        if (result_.bytes > 0) {
          memcpy(target.Data(), bounce_.Data(), static_cast<size_t>(result_.bytes));
        }
        Resolve(env, Napi::Number::New(env, static_cast<double>(result_.bytes)));
        return;
      }
      case Kind::kWrite:
        Resolve(env, Napi::Number::New(env, static_cast<double>(result_.bytes)));
        return;
      case Kind::kSync:
        Resolve(env, env.Undefined());
        return;
    }
  }

  std::string Describe() const {
    if (kind_ == Kind::kSync) return "syncAsync";
    return std::string(kind_ == Kind::kRead ? "preadAsync of " : "pwriteAsync of ") +
           std::to_string(length_) + " bytes at " + std::to_string(fileOffset_) +
           (file_->direct ? " (O_DIRECT)" : "");
  }

  napi_deferred deferred_ = nullptr;
  std::shared_ptr<OpenFile> file_;
  const int fd_;
  const Kind kind_;
  const uint64_t fileOffset_;
  const uint64_t length_;
  Napi::Reference<Napi::Uint8Array> target_;
  AlignedBuffer bounce_;
  IoResult result_;
  const char* syscall_ = "";
};

}  // namespace

void File::RequireAsyncTransfer(Napi::Env env, uint64_t fileOffset, uint64_t length) {
  RequireDirectAligned(env, fileOffset, length);
  if (length > kMaxAsyncTransfer) {
    Fail(env, code::kTooLarge,
         "an asynchronous transfer moves at most " + std::to_string(kMaxAsyncTransfer) +
             " bytes, got " + std::to_string(length));
  }
  RequireWithin(env, fileOffset, length, kMaxFileEnd, "file offset range");
}

Napi::Value File::PreadAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Napi::Uint8Array target = ArgBytes(info, 0, "target");
  uint64_t fileOffset = ArgIndex(info, 1, "fileOffset");
  uint64_t length = target.ByteLength();
  RequireAsyncTransfer(env, fileOffset, length);
  auto worker = std::make_unique<FileIoWorker>(env, file_, FileIoWorker::Kind::kRead, fileOffset,
                                               length);
  worker->HoldTarget(target);
  Napi::Value promise = worker->Start(env);
  worker.release();  // napi owns it now: deleted after it settles
  return promise;
}

Napi::Value File::PwriteAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  Napi::Uint8Array source = ArgBytes(info, 0, "source");
  uint64_t fileOffset = ArgIndex(info, 1, "fileOffset");
  uint64_t length = source.ByteLength();
  RequireAsyncTransfer(env, fileOffset, length);
  auto worker = std::make_unique<FileIoWorker>(env, file_, FileIoWorker::Kind::kWrite, fileOffset,
                                               length);
  worker->CopySource(env, source);
  Napi::Value promise = worker->Start(env);
  worker.release();
  return promise;
}

Napi::Value File::SyncAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  OpenFd(env);
  auto worker = std::make_unique<FileIoWorker>(env, file_, FileIoWorker::Kind::kSync, 0, 0);
  Napi::Value promise = worker->Start(env);
  worker.release();
  return promise;
}

}  // namespace bv
