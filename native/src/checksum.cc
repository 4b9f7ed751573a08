#include "checksum.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "errors.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define BV_CRC32C_X86 1
#endif

namespace bv {
namespace {

constexpr uint32_t kPolynomial = 0x82f63b78;  // CRC-32C, reflected

struct Table {
  uint32_t entries[256];
  Table() {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t crc = i;
      for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ ((crc & 1) ? kPolynomial : 0);
      entries[i] = crc;
    }
  }
};

uint32_t SoftwareCrc(uint32_t crc, const uint8_t* data, size_t length) {
  static const Table table;
  for (size_t i = 0; i < length; i++) crc = table.entries[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#ifdef BV_CRC32C_X86
bool HasSse42() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
  return (ecx & bit_SSE4_2) != 0;
}

__attribute__((target("sse4.2"))) uint32_t HardwareCrc(uint32_t crc, const uint8_t* data, size_t length) {
  uint64_t crc64 = crc;
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc64 = __builtin_ia32_crc32di(crc64, word);
    data += 8;
    length -= 8;
  }
  uint32_t crc32 = static_cast<uint32_t>(crc64);
  while (length > 0) {
    crc32 = __builtin_ia32_crc32qi(crc32, *data++);
    length--;
  }
  return crc32;
}
#endif

uint32_t Crc(uint32_t seed, const uint8_t* data, size_t length) {
  uint32_t crc = ~seed;
#ifdef BV_CRC32C_X86
  static const bool hardware = HasSse42();
  crc = hardware ? HardwareCrc(crc, data, length) : SoftwareCrc(crc, data, length);
#else
  crc = SoftwareCrc(crc, data, length);
#endif
  return ~crc;
}

}  // namespace

Napi::Value Crc32c(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    Fail(env, code::kBadArgument, "crc32c: bytes must be a Uint8Array");
  }
  uint32_t seed = 0;
  if (info.Length() >= 2 && !info[1].IsUndefined()) {
    if (!info[1].IsNumber()) Fail(env, code::kBadArgument, "crc32c: seed must be a number");
    double value = info[1].As<Napi::Number>().DoubleValue();
    if (!(value >= 0 && value <= 4294967295.0) || value != static_cast<double>(static_cast<uint32_t>(value))) {
      Fail(env, code::kBadArgument, "crc32c: seed must be an integer 0..2^32-1");
    }
    seed = static_cast<uint32_t>(value);
  }
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  // The view's own data pointer and length: both come from V8, never from the caller's numbers.
  uint32_t crc = Crc(seed, bytes.Data(), bytes.ByteLength());
  return Napi::Number::New(env, static_cast<double>(crc));
}

}  // namespace bv
