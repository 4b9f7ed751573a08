#include "errors.h"

#include <string.h>

namespace bv {

Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

void Fail(Napi::Env env, const char* code, const std::string& message) {
  throw CodedError(env, code, message);
}

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path,
                       const std::string& detail) {
  const char* name = strerrorname_np(err);
  std::string errnoName = name != nullptr ? name : "E" + std::to_string(err);
  std::string message = std::string(syscall);
  if (!path.empty()) message += " '" + path + "'";
  message += " failed: " + std::string(strerror(err)) + " (" + errnoName + ")";
  if (!detail.empty()) message += ": " + detail;
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code::kIo));
  error.Set("errnoName", Napi::String::New(env, errnoName));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) error.Set("path", Napi::String::New(env, path));
  return error;
}

void FailErrno(Napi::Env env, int err, const char* syscall, const std::string& path,
               const std::string& detail) {
  throw ErrnoError(env, err, syscall, path, detail);
}

}  // namespace bv
