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

// One lane: the crc32 instruction's 3-cycle latency bounds it to 8 bytes per 3 cycles.
__attribute__((target("sse4.2"))) uint32_t HardwareCrcOneLane(uint32_t crc, const uint8_t* data, size_t length) {
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

// Three lanes at once keep the crc32 unit busy every cycle (about 3x one lane). A block of
// 3 * L bytes is hashed as three independent lanes A, B, C (B and C from a zero register), and
// the registers are joined with reg(A || B) = shift_L(reg(A)) ^ reg(B): the CRC is linear, and
// shift_L (appending L zero bytes) is a fixed 32x32 GF(2) matrix, applied through 4 byte tables.
constexpr size_t kLongLane = 8192;
constexpr size_t kShortLane = 256;

// Column n of a GF(2) matrix is the image of bit n.
uint32_t MatrixTimes(const uint32_t* matrix, uint32_t vector) {
  uint32_t sum = 0;
  for (int n = 0; vector != 0; n++, vector >>= 1) {
    if (vector & 1) sum ^= matrix[n];
  }
  return sum;
}

void MatrixSquare(uint32_t* out, const uint32_t* matrix) {
  for (int n = 0; n < 32; n++) out[n] = MatrixTimes(matrix, matrix[n]);
}

struct ShiftTable {
  uint32_t byteTables[4][256];
  // The operator that appends `bytes` zero bytes to a (reflected) CRC register.
  explicit ShiftTable(size_t bytes) {
    uint32_t op[32];
    uint32_t next[32];
    op[0] = kPolynomial;  // one zero bit: shift right, fold the polynomial in when bit 0 was set
    for (int n = 1; n < 32; n++) op[n] = 1u << (n - 1);
    for (int i = 0; i < 3; i++) {  // 1 bit -> 2 -> 4 -> 8 bits: one zero byte
      MatrixSquare(next, op);
      std::memcpy(op, next, sizeof op);
    }
    uint32_t result[32];
    for (int n = 0; n < 32; n++) result[n] = 1u << n;
    for (size_t left = bytes; left != 0; left >>= 1) {
      if (left & 1) {
        for (int n = 0; n < 32; n++) next[n] = MatrixTimes(op, result[n]);
        std::memcpy(result, next, sizeof result);
      }
      MatrixSquare(next, op);
      std::memcpy(op, next, sizeof op);
    }
    for (int k = 0; k < 4; k++) {
      for (uint32_t b = 0; b < 256; b++) byteTables[k][b] = MatrixTimes(result, b << (8 * k));
    }
  }
  uint32_t Shift(uint32_t crc) const {
    return byteTables[0][crc & 0xff] ^ byteTables[1][(crc >> 8) & 0xff] ^ byteTables[2][(crc >> 16) & 0xff] ^ byteTables[3][crc >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t HardwareCrcThreeLanes(uint32_t crc, const uint8_t* data, size_t length, size_t lane, const ShiftTable& shift) {
  uint64_t a = crc;
  while (length >= 3 * lane) {
    uint64_t b = 0, c = 0;
    const uint8_t* end = data + lane;
    while (data < end) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, data, 8);
      std::memcpy(&wb, data + lane, 8);
      std::memcpy(&wc, data + 2 * lane, 8);
      a = __builtin_ia32_crc32di(a, wa);
      b = __builtin_ia32_crc32di(b, wb);
      c = __builtin_ia32_crc32di(c, wc);
      data += 8;
    }
    a = shift.Shift(static_cast<uint32_t>(a)) ^ b;
    a = shift.Shift(static_cast<uint32_t>(a)) ^ c;
    data += 2 * lane;
    length -= 3 * lane;
  }
  return static_cast<uint32_t>(a);
}

uint32_t HardwareCrc(uint32_t crc, const uint8_t* data, size_t length) {
  static const ShiftTable longShift(kLongLane);
  static const ShiftTable shortShift(kShortLane);
  if (length >= 3 * kLongLane) {
    size_t whole = length - length % (3 * kLongLane);
    crc = HardwareCrcThreeLanes(crc, data, whole, kLongLane, longShift);
    data += whole;
    length -= whole;
  }
  if (length >= 3 * kShortLane) {
    size_t whole = length - length % (3 * kShortLane);
    crc = HardwareCrcThreeLanes(crc, data, whole, kShortLane, shortShift);
    data += whole;
    length -= whole;
  }
  return HardwareCrcOneLane(crc, data, length);
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
