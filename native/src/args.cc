#include "args.h"

#include <unistd.h>

#include <cmath>

#include "errors.h"

namespace bv {

namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

std::string Describe(const Napi::Value& value) {
  switch (value.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return value.ToBoolean().Value() ? "true" : "false";
    case napi_number: return value.ToString().Utf8Value();
    case napi_string: return "a string";
    case napi_symbol: return "a symbol";
    case napi_bigint: return "a bigint";
    case napi_function: return "a function";
    default: return "an object";
  }
}

}  // namespace

size_t HostPageSize() {
  static const size_t pageSize = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return pageSize;
}

uint64_t ArgIndex(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Value value = info[index];
  if (!value.IsNumber()) {
    Fail(info.Env(), code::kBadArgument,
         std::string(name) + " must be a number, got " + Describe(value));
  }
  double number = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(number) || number != std::trunc(number) || number < 0 ||
      number > kMaxSafeInteger) {
    Fail(info.Env(), code::kBadArgument,
         std::string(name) + " must be a non-negative safe integer, got " + Describe(value));
  }
  return static_cast<uint64_t>(number);
}

Napi::Uint8Array ArgBytes(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Value value = info[index];
  if (!value.IsTypedArray() ||
      value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(info.Env(), code::kBadArgument,
         std::string(name) + " must be a Uint8Array, got " + Describe(value));
  }
  return value.As<Napi::Uint8Array>();
}

bool ArgFlag(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Value value = info[index];
  if (value.IsUndefined()) return false;
  if (!value.IsBoolean()) {
    Fail(info.Env(), code::kBadArgument,
         std::string(name) + " must be a boolean, got " + Describe(value));
  }
  return value.As<Napi::Boolean>().Value();
}

std::string ArgString(const Napi::CallbackInfo& info, size_t index, const char* name) {
  Napi::Value value = info[index];
  if (!value.IsString()) {
    Fail(info.Env(), code::kBadArgument,
         std::string(name) + " must be a string, got " + Describe(value));
  }
  std::string text = value.As<Napi::String>().Utf8Value();
  if (text.empty()) Fail(info.Env(), code::kBadArgument, std::string(name) + " must not be empty");
  if (text.find('\0') != std::string::npos) {
    Fail(info.Env(), code::kBadArgument, std::string(name) + " must not contain NUL characters");
  }
  return text;
}

void RequirePageAligned(Napi::Env env, uint64_t value, const char* name) {
  if (value % HostPageSize() != 0) {
    Fail(env, code::kUnaligned,
         std::string(name) + " " + std::to_string(value) + " is not a multiple of the host page size " +
             std::to_string(HostPageSize()));
  }
}

void RequireWithin(Napi::Env env, uint64_t offset, uint64_t length, uint64_t limit,
                   const char* what) {
  if (offset > limit || length > limit - offset) {
    Fail(env, code::kOutOfRange,
         "range [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
             ") lies outside the " + what + " of " + std::to_string(limit) + " bytes");
  }
}

}  // namespace bv
