// HostRegion: one host memory mapping exposed to JavaScript as an external ArrayBuffer.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "posix_file.h"

namespace bv {

enum class RegionKind { kAnonymous, kFile, kMemfd };

// The mapping itself. Shared by the Region object, by the ArrayBuffer's finalizer and by the
// backing store of the SharedArrayBuffer (sharedBuffer()), so memory is unmapped by close() or
// when the last holder goes away — never while a live ArrayBuffer still points at it. Once a
// SharedArrayBuffer exists (it cannot be detached, and other threads may hold it) close() only
// drops the region's hold and the last holder unmaps, on whichever thread frees it.
// Regions attached in other threads (HostRegion.attachShared) hold the same Mapping, so its
// mutable state is guarded by `rangesMutex` (docs/native.md, "What may run at once").
struct Mapping {
  struct PrivateFileRange {
    uint64_t offset;
    uint64_t length;
    std::unique_ptr<FilePin> pin;
  };

  uint8_t* base = nullptr;
  uint64_t bytes = 0;
  RegionKind kind = RegionKind::kAnonymous;
  bool noReserve = false;
  std::atomic<bool> shared{false};               // a SharedArrayBuffer was made over it
  UniqueFd fd;                                   // file and memfd regions
  std::unique_ptr<FilePin> filePin;              // file regions: the file must keep `bytes`
  std::vector<PrivateFileRange> privateRanges;   // mapFilePrivate/mapFileShared ranges of anonymous regions
  // The byte ranges [first, second) of an anonymous region that are mapFileShared now (exact:
  // cut by unmapPrivate and by later mappings), for flush and release.
  std::vector<std::pair<uint64_t, uint64_t>> sharedRanges;
  // Held while privateRanges/sharedRanges are read or changed, and across the MAP_FIXED (or
  // madvise) that goes with them, so a check and the remap it guards are one step for every thread.
  std::mutex rangesMutex;

  bool Mapped() const { return base != nullptr; }
  void Unmap();
  ~Mapping() { Unmap(); }
};

class Region : public Napi::ObjectWrap<Region> {
 public:
  static Napi::Function Define(Napi::Env env);

  // The Region behind a JS value, or BV_NATIVE_BAD_ARGUMENT if it is not one.
  static Region* FromValue(Napi::Env env, const Napi::Value& value, const char* name);

  // new Region('anonymous', bytes, noReserve) | ('file', bytes, path, create) | ('memfd', bytes, name)
  //   | ('attach', sharedArrayBuffer): the mapping behind a sharedBuffer(), in any thread.
  explicit Region(const Napi::CallbackInfo& info);

  // Pointer to [offset, offset + length) after checking the region is open and the range fits.
  uint8_t* RangePointer(Napi::Env env, uint64_t offset, uint64_t length);

 private:
  // Region.attachShared(sab): new Region('attach', sab).
  static Napi::Value AttachShared(const Napi::CallbackInfo& info);
  // Finds the live mapping a SharedArrayBuffer from sharedBuffer() covers, or BV_NATIVE_BAD_ARGUMENT.
  void Attach(const Napi::CallbackInfo& info);
  // Makes the external ArrayBuffer `buffer` over mapping_ (its finalizer holds the mapping).
  void ExposeBuffer(const Napi::CallbackInfo& info);
  Mapping& Open(Napi::Env env);
  // Unmaps and detaches; used by close() and when a failed remap leaves a hole in the region.
  void CloseNow();
  void DropPrivateRangesWithin(uint64_t offset, uint64_t length);
  void ReadAlignedRange(const Napi::CallbackInfo& info, uint64_t* offset, uint64_t* length);
  bool OverlapsSharedRange(uint64_t offset, uint64_t length) const;
  void ForgetSharedWithin(uint64_t offset, uint64_t length);
  // mapFilePrivate (MAP_PRIVATE) and mapFileShared (MAP_SHARED): the same checks, one mmap.
  void MapFileRange(const Napi::CallbackInfo& info, bool shared);

  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value GetKind(const Napi::CallbackInfo& info);
  void Release(const Napi::CallbackInfo& info);
  Napi::Value Residency(const Napi::CallbackInfo& info);
  Napi::Value AdviseHugePages(const Napi::CallbackInfo& info);
  Napi::Value Populate(const Napi::CallbackInfo& info);
  void Flush(const Napi::CallbackInfo& info);
  void MapFilePrivate(const Napi::CallbackInfo& info);
  void MapFileShared(const Napi::CallbackInfo& info);
  void UnmapPrivate(const Napi::CallbackInfo& info);
  void Close(const Napi::CallbackInfo& info);
  Napi::Value SharedBuffer(const Napi::CallbackInfo& info);

  std::shared_ptr<Mapping> mapping_;
  RegionKind kind_ = RegionKind::kAnonymous;      // kept after close() drops mapping_
  Napi::Reference<Napi::ArrayBuffer> bufferRef_;  // weak: only used to detach on close
  Napi::Reference<Napi::Object> sharedRef_;       // strong: sharedBuffer() returns one SAB
};

}  // namespace bv
