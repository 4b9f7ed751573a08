// Typed failures thrown to JavaScript. Every error carries a stable `code` property that the TS
// face (native/errors.ts) turns into a NativeError; I/O errors also carry the errno name, the
// system call and the path involved.
#pragma once

#include <napi.h>

#include <string>

namespace bv {

namespace code {
inline constexpr const char* kBadArgument = "BV_NATIVE_BAD_ARGUMENT";
inline constexpr const char* kOutOfRange = "BV_NATIVE_OUT_OF_RANGE";
inline constexpr const char* kUnaligned = "BV_NATIVE_UNALIGNED";
inline constexpr const char* kTooLarge = "BV_NATIVE_TOO_LARGE";
inline constexpr const char* kClosed = "BV_NATIVE_CLOSED";
inline constexpr const char* kUnsupported = "BV_NATIVE_UNSUPPORTED";
inline constexpr const char* kBusy = "BV_NATIVE_BUSY";
inline constexpr const char* kIo = "BV_NATIVE_IO";
}  // namespace code

// The errors Fail and FailErrno throw, built without throwing: asynchronous operations reject
// their promise with them.
Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message);
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path,
                       const std::string& detail = "");

// Throws a JS Error with `code` set (as a C++ exception that node-addon-api converts).
[[noreturn]] void Fail(Napi::Env env, const char* code, const std::string& message);

// Throws BV_NATIVE_IO for errno `err` raised by `syscall` on `path` (path may be empty);
// `detail`, when given, ends the message (what exactly was refused).
[[noreturn]] void FailErrno(Napi::Env env, int err, const char* syscall, const std::string& path,
                            const std::string& detail = "");

}  // namespace bv
