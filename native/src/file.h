// HostFile: positional reads and writes on a regular file, including straight into a region.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "posix_file.h"

namespace bv {

class File : public Napi::ObjectWrap<File> {
 public:
  static Napi::Function Define(Napi::Env env);

  // new File(path, mode) with mode 'r' | 'rw' | 'create'
  explicit File(const Napi::CallbackInfo& info);

 private:
  int OpenFd(Napi::Env env);
  uint64_t ReadAt(Napi::Env env, uint8_t* target, uint64_t length, uint64_t fileOffset);
  uint64_t WriteAt(Napi::Env env, const uint8_t* source, uint64_t length, uint64_t fileOffset);
  void RefuseShrinkingMappedFile(Napi::Env env, uint64_t bytes);

  Napi::Value GetSize(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value Pread(const Napi::CallbackInfo& info);
  Napi::Value Pwrite(const Napi::CallbackInfo& info);
  Napi::Value PreadToRegion(const Napi::CallbackInfo& info);
  Napi::Value PwriteFromRegion(const Napi::CallbackInfo& info);
  void Truncate(const Napi::CallbackInfo& info);
  void Sync(const Napi::CallbackInfo& info);
  void Close(const Napi::CallbackInfo& info);

  UniqueFd fd_;
  std::string path_;
};

// syncDirectory(path): fsync a directory so that a rename inside it is durable.
void SyncDirectory(const Napi::CallbackInfo& info);

}  // namespace bv
