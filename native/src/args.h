// Validation of everything JavaScript hands the addon. Order of checks, everywhere: the object is
// open (BV_NATIVE_CLOSED), each argument has the right type and is a non-negative safe integer
// (BV_NATIVE_BAD_ARGUMENT), alignment (BV_NATIVE_UNALIGNED), then bounds (BV_NATIVE_OUT_OF_RANGE).
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace bv {

// sysconf(_SC_PAGESIZE), read once.
size_t HostPageSize();

// A JS number that is a non-negative safe integer (≤ 2^53 - 1), else BV_NATIVE_BAD_ARGUMENT.
uint64_t ArgIndex(const Napi::CallbackInfo& info, size_t index, const char* name);

// A Uint8Array (any view, any offset), else BV_NATIVE_BAD_ARGUMENT.
Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t index, const char* name);

// A boolean; `undefined` reads as false.
bool ArgFlag(const Napi::CallbackInfo& info, size_t index, const char* name);

// A non-empty string without NUL characters (paths, names).
std::string ArgString(const Napi::CallbackInfo& info, size_t index, const char* name);

void RequirePageAligned(Napi::Env env, uint64_t value, const char* name);

// [offset, offset + length) must lie within [0, limit); computed without overflow.
void RequireWithin(Napi::Env env, uint64_t offset, uint64_t length, uint64_t limit,
                   const char* what);

}  // namespace bv
