// CRC-32C (Castagnoli) over a byte range: with the SSE4.2 crc32 instruction where the CPU has it
// (several GB/s), else a table-driven fallback. Checkpoint blocks are checksummed with it, which
// keeps the checksum off the critical path of a save (zlib's CRC-32 cost half as much as the disk
// write itself).
#pragma once

#include <napi.h>

namespace bv {

// crc32c(bytes: Uint8Array, seed?: number): number — seed is a previous result, to continue.
Napi::Value Crc32c(const Napi::CallbackInfo& info);

}  // namespace bv
