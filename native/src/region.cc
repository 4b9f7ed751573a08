#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>
#include <v8.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <unordered_map>

#include "addon_data.h"
#include "args.h"
#include "errors.h"

namespace bv {

namespace {

// N-API refuses ArrayBuffers above 4 GiB, and node-addon-api aborts the process when asked for
// one, so the limit is enforced before any mapping is made.
constexpr uint64_t kMaxRegionBytes = uint64_t{1} << 32;
// memfd_create accepts at most 249 bytes of name.
constexpr size_t kMaxMemfdName = 249;

const char* KindName(RegionKind kind) {
  switch (kind) {
    case RegionKind::kAnonymous: return "anonymous";
    case RegionKind::kFile: return "file";
    case RegionKind::kMemfd: return "memfd";
  }
  return "?";
}

// madvise(MADV_HUGEPAGE) succeeds even when THP is switched off; report what will really happen.
bool TransparentHugePagesAvailable() {
  static const bool available = [] {
    std::ifstream setting("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string text((std::istreambuf_iterator<char>(setting)), std::istreambuf_iterator<char>());
    return !text.empty() && text.find("[never]") == std::string::npos;
  }();
  return available;
}

int AnonymousFlags(bool noReserve) {
  return MAP_PRIVATE | MAP_ANONYMOUS | (noReserve ? MAP_NORESERVE : 0);
}

uint8_t* MapOrFail(Napi::Env env, uint64_t bytes, int flags, int fd, const std::string& what) {
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (base == MAP_FAILED) FailErrno(env, errno, "mmap", what);
  return static_cast<uint8_t*>(base);
}

// Every mapping that has a SharedArrayBuffer, by base address, for attachShared in any thread.
// Weak: the registry never keeps memory mapped. `mapping` tells a stale entry from a new mapping
// that the kernel placed at the same address after the old one was unmapped.
struct SharedEntry {
  const Mapping* mapping;
  std::weak_ptr<Mapping> weak;
};
std::mutex sharedMappingsMutex;
std::unordered_map<const uint8_t*, SharedEntry>& SharedMappings() {
  // Never destroyed: a backing store's deleter may unmap during process exit.
  static auto* mappings = new std::unordered_map<const uint8_t*, SharedEntry>();
  return *mappings;
}

// A napi_value is a v8::Local's slot pointer in Node (v8impl's V8LocalValueFromJsValue and
// JsValueFromV8LocalValue); N-API in Node 20 has no SharedArrayBuffer calls, so these two
// conversions are how the few V8 calls below meet N-API values.
v8::Local<v8::Value> V8Value(napi_value value) {
  v8::Local<v8::Value> local;
  static_assert(sizeof(local) == sizeof(value), "a v8::Local is one pointer");
  std::memcpy(static_cast<void*>(&local), &value, sizeof(value));
  return local;
}

napi_value NapiValue(v8::Local<v8::Value> local) {
  napi_value value;
  std::memcpy(&value, static_cast<void*>(&local), sizeof(value));
  return value;
}

void ResizeOrFail(Napi::Env env, int fd, uint64_t bytes, const std::string& what) {
  int result;
  do {
    result = ::ftruncate(fd, static_cast<off_t>(bytes));
  } while (result != 0 && errno == EINTR);
  if (result != 0) FailErrno(env, errno, "ftruncate", what);
}

}  // namespace

void Mapping::Unmap() {
  if (base != nullptr) {
    {
      // Before munmap: once the address is free another mapping may land there and register.
      std::lock_guard<std::mutex> guard(sharedMappingsMutex);
      auto entry = SharedMappings().find(base);
      if (entry != SharedMappings().end() && entry->second.mapping == this) {
        SharedMappings().erase(entry);
      }
    }
    ::munmap(base, bytes);
  }
  base = nullptr;
  fd.Reset();
  filePin.reset();
  privateRanges.clear();
  sharedRanges.clear();
}

Napi::Function Region::Define(Napi::Env env) {
  return DefineClass(env, "NativeRegion",
                     {
                         StaticMethod<&Region::AttachShared>("attachShared"),
                         InstanceAccessor<&Region::GetClosed>("closed"),
                         InstanceAccessor<&Region::GetKind>("kind"),
                         InstanceMethod<&Region::Release>("release"),
                         InstanceMethod<&Region::Residency>("residency"),
                         InstanceMethod<&Region::AdviseHugePages>("adviseHugePages"),
                         InstanceMethod<&Region::Populate>("populate"),
                         InstanceMethod<&Region::Flush>("flush"),
                         InstanceMethod<&Region::MapFilePrivate>("mapFilePrivate"),
                         InstanceMethod<&Region::MapFileShared>("mapFileShared"),
                         InstanceMethod<&Region::UnmapPrivate>("unmapPrivate"),
                         InstanceMethod<&Region::Close>("close"),
                         InstanceMethod<&Region::SharedBuffer>("sharedBuffer"),
                     });
}

Region* Region::FromValue(Napi::Env env, const Napi::Value& value, const char* name) {
  void* wrapped = nullptr;
  if (!value.IsObject() ||
      !value.As<Napi::Object>().InstanceOf(DataOf(env).regionConstructor.Value()) ||
      napi_unwrap(env, value, &wrapped) != napi_ok || wrapped == nullptr) {
    Fail(env, code::kBadArgument, std::string(name) + " must be a HostRegion");
  }
  return static_cast<Region*>(wrapped);
}

Region::Region(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Region>(info) {
  Napi::Env env = info.Env();
  std::string kind = ArgString(info, 0, "kind");
  if (kind == "attach") {
    Attach(info);
    ExposeBuffer(info);
    return;
  }
  uint64_t bytes = ArgIndex(info, 1, "bytes");
  if (bytes == 0) Fail(env, code::kBadArgument, "bytes must be greater than zero");
  if (bytes > kMaxRegionBytes) {
    Fail(env, code::kTooLarge,
         "a region holds at most 4 GiB (one ArrayBuffer); " + std::to_string(bytes) +
             " bytes were requested: use several regions");
  }
  RequirePageAligned(env, bytes, "bytes");

  auto mapping = std::make_shared<Mapping>();
  mapping->bytes = bytes;
  if (kind == "anonymous") {
    mapping->kind = RegionKind::kAnonymous;
    mapping->noReserve = ArgFlag(info, 2, "noReserve");
    mapping->base = MapOrFail(env, bytes, AnonymousFlags(mapping->noReserve), -1, "");
  } else if (kind == "file") {
    mapping->kind = RegionKind::kFile;
    std::string path = ArgString(info, 2, "path");
    bool create = ArgFlag(info, 3, "create");
    mapping->fd = OpenRegularFile(env, path, O_RDWR | (create ? O_CREAT : 0));
    if (SizeOf(env, mapping->fd.Get(), path) < bytes) {
      ResizeOrFail(env, mapping->fd.Get(), bytes, path);
    }
    mapping->filePin =
        std::make_unique<FilePin>(IdentityOf(env, mapping->fd.Get(), path), bytes);
    mapping->base = MapOrFail(env, bytes, MAP_SHARED, mapping->fd.Get(), path);
  } else if (kind == "memfd") {
    mapping->kind = RegionKind::kMemfd;
    std::string name = info[2].IsUndefined() ? "bytevisor" : ArgString(info, 2, "name");
    if (name.size() > kMaxMemfdName) {
      Fail(env, code::kBadArgument,
           "name must be at most " + std::to_string(kMaxMemfdName) + " bytes");
    }
    int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
    if (fd < 0) FailErrno(env, errno, "memfd_create", name);
    mapping->fd = UniqueFd(fd);
    ResizeOrFail(env, mapping->fd.Get(), bytes, name);
    mapping->base = MapOrFail(env, bytes, MAP_SHARED, mapping->fd.Get(), name);
  } else {
    Fail(env, code::kBadArgument, "kind must be 'anonymous', 'file' or 'memfd'");
  }
  kind_ = mapping->kind;
  mapping_ = std::move(mapping);
  ExposeBuffer(info);
}

void Region::ExposeBuffer(const Napi::CallbackInfo& info) {
  // The ArrayBuffer's finalizer keeps its own reference to the mapping.
  auto* holder = new std::shared_ptr<Mapping>(mapping_);
  Napi::ArrayBuffer buffer;
  try {
    buffer = Napi::ArrayBuffer::New(
        info.Env(), mapping_->base, mapping_->bytes,
        [](Napi::Env, void*, std::shared_ptr<Mapping>* finalized) { delete finalized; }, holder);
  } catch (...) {
    delete holder;
    throw;
  }
  bufferRef_ = Napi::Reference<Napi::ArrayBuffer>::New(buffer, 0);
  info.This().As<Napi::Object>().DefineProperty(
      Napi::PropertyDescriptor::Value("buffer", buffer, napi_enumerable));
}

Napi::Value Region::AttachShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return DataOf(env).regionConstructor.New({Napi::String::New(env, "attach"), info[0]});
}

void Region::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Value value = info[1];
  v8::Local<v8::Value> local = V8Value(value);
  if (local.IsEmpty() || !local->IsSharedArrayBuffer()) {
    Fail(env, code::kBadArgument,
         "sab must be a SharedArrayBuffer returned by HostRegion.sharedBuffer()");
  }
  std::shared_ptr<v8::BackingStore> store = local.As<v8::SharedArrayBuffer>()->GetBackingStore();
  const auto* data = static_cast<const uint8_t*>(store->Data());
  uint64_t length = store->ByteLength();
  std::shared_ptr<Mapping> mapping;
  {
    std::lock_guard<std::mutex> guard(sharedMappingsMutex);
    auto entry = SharedMappings().find(data);
    if (entry != SharedMappings().end()) mapping = entry->second.weak.lock();
  }
  // Exactly the whole mapping: a slice or a copy of the SAB is other memory, and a SAB over
  // part of a mapping cannot come from sharedBuffer().
  if (!mapping || !mapping->Mapped() || mapping->bytes != length) {
    Fail(env, code::kBadArgument,
         "sab is not a bytevisor region's SharedArrayBuffer (" + std::to_string(length) +
             " bytes): pass the very object HostRegion.sharedBuffer() returned (a slice or copy is other memory)");
  }
  kind_ = mapping->kind;
  mapping_ = std::move(mapping);
  // sharedBuffer() on the attached region returns this same SAB.
  sharedRef_ = Napi::Reference<Napi::Object>::New(value.As<Napi::Object>(), 1);
}

Mapping& Region::Open(Napi::Env env) {
  if (!mapping_ || !mapping_->Mapped()) Fail(env, code::kClosed, "the region is closed");
  return *mapping_;
}

uint8_t* Region::RangePointer(Napi::Env env, uint64_t offset, uint64_t length) {
  Mapping& mapping = Open(env);
  RequireWithin(env, offset, length, mapping.bytes, "region");
  return mapping.base + offset;
}

void Region::ReadAlignedRange(const Napi::CallbackInfo& info, uint64_t* offset,
                              uint64_t* length) {
  Mapping& mapping = Open(info.Env());
  *offset = ArgIndex(info, 0, "offset");
  *length = ArgIndex(info, 1, "length");
  RequirePageAligned(info.Env(), *offset, "offset");
  RequirePageAligned(info.Env(), *length, "length");
  RequireWithin(info.Env(), *offset, *length, mapping.bytes, "region");
}

void Region::CloseNow() {
  if (!bufferRef_.IsEmpty()) {
    Napi::ArrayBuffer buffer = bufferRef_.Value();
    if (!buffer.IsEmpty() && !buffer.IsDetached()) buffer.Detach();
  }
  if (!sharedRef_.IsEmpty()) sharedRef_.Reset();
  if (!mapping_) return;
  // A SharedArrayBuffer cannot be detached and workers may be using it: unmapping now would
  // fault them, so the region lets go and the last holder (a backing store's deleter) unmaps.
  if (mapping_->shared) {
    mapping_.reset();
  } else {
    mapping_->Unmap();
  }
}

void Region::DropPrivateRangesWithin(uint64_t offset, uint64_t length) {
  // A range only partly covered keeps its pin: refusing a truncation too many is harmless.
  auto& ranges = mapping_->privateRanges;
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(),
                              [&](const Mapping::PrivateFileRange& range) {
                                return range.offset >= offset &&
                                       range.offset + range.length <= offset + length;
                              }),
               ranges.end());
}

bool Region::OverlapsSharedRange(uint64_t offset, uint64_t length) const {
  for (const auto& range : mapping_->sharedRanges) {
    if (offset < range.second && range.first < offset + length) return true;
  }
  return false;
}

void Region::ForgetSharedWithin(uint64_t offset, uint64_t length) {
  std::vector<std::pair<uint64_t, uint64_t>> kept;
  uint64_t end = offset + length;
  for (const auto& range : mapping_->sharedRanges) {
    if (range.first < offset) kept.emplace_back(range.first, std::min(range.second, offset));
    if (range.second > end) kept.emplace_back(std::max(range.first, end), range.second);
  }
  mapping_->sharedRanges = std::move(kept);
}

Napi::Value Region::GetClosed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !mapping_ || !mapping_->Mapped());
}

Napi::Value Region::GetKind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), KindName(kind_));
}

void Region::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t offset, length;
  ReadAlignedRange(info, &offset, &length);
  if (length == 0) return;
  Mapping& mapping = *mapping_;
  if (mapping.kind == RegionKind::kAnonymous) {
    std::lock_guard<std::mutex> guard(mapping.rangesMutex);
    // MADV_DONTNEED on a shared file range frees nothing and the pages would read the file's
    // bytes again, not zero: the caller wants unmapPrivate there.
    if (OverlapsSharedRange(offset, length)) {
      Fail(env, code::kUnsupported,
           "release over a mapFileShared range: the pages would keep the file's bytes (use unmapPrivate)");
    }
    // Private pages are dropped; a mapFilePrivate range reads the file's bytes again.
    if (::madvise(mapping.base + offset, length, MADV_DONTNEED) != 0) {
      FailErrno(env, errno, "madvise", "");
    }
    return;
  }
  // Shared pages live in the page cache / shmem: DONTNEED would free nothing, so punch a hole.
  // The region maps its file from offset 0, so region and file offsets coincide.
  int result;
  do {
    result = ::fallocate(mapping.fd.Get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         static_cast<off_t>(offset), static_cast<off_t>(length));
  } while (result != 0 && errno == EINTR);
  if (result != 0) FailErrno(env, errno, "fallocate", "");
}

Napi::Value Region::Residency(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t offset, length;
  ReadAlignedRange(info, &offset, &length);
  size_t pages = length / HostPageSize();
  Napi::Uint8Array result = Napi::Uint8Array::New(env, pages);
  if (pages == 0) return result;
  uint8_t* out = result.Data();
  if (::mincore(mapping_->base + offset, length, out) != 0) FailErrno(env, errno, "mincore", "");
  for (size_t page = 0; page < pages; page++) out[page] &= 1;  // other bits are reserved
  return result;
}

Napi::Value Region::AdviseHugePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t offset, length;
  ReadAlignedRange(info, &offset, &length);
  // Shared (file, memfd) mappings are not backed by anonymous huge pages; see docs/native.md.
  if (mapping_->kind != RegionKind::kAnonymous || !TransparentHugePagesAvailable()) {
    return Napi::Boolean::New(env, false);
  }
  if (length == 0) return Napi::Boolean::New(env, true);
  if (::madvise(mapping_->base + offset, length, MADV_HUGEPAGE) != 0) {
    if (errno == EINVAL) return Napi::Boolean::New(env, false);
    FailErrno(env, errno, "madvise", "");
  }
  return Napi::Boolean::New(env, true);
}

// MADV_POPULATE_WRITE: maps every page of the range writable now, in one call, instead of one
// page fault per page when it is first written (a lazy restore's block read lands there next).
// False when the kernel has no MADV_POPULATE_WRITE (before Linux 5.14): the caller just goes on.
Napi::Value Region::Populate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t offset, length;
  ReadAlignedRange(info, &offset, &length);
  if (length == 0) return Napi::Boolean::New(env, true);
#ifdef MADV_POPULATE_WRITE
  int result;
  do {
    result = ::madvise(mapping_->base + offset, length, MADV_POPULATE_WRITE);
  } while (result != 0 && errno == EINTR);
  if (result != 0) {
    if (errno == EINVAL) return Napi::Boolean::New(env, false);
    FailErrno(env, errno, "madvise", "");
  }
  return Napi::Boolean::New(env, true);
#else
  return Napi::Boolean::New(env, false);
#endif
}

void Region::Flush(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping& mapping = Open(env);
  uint64_t offset = ArgIndex(info, 0, "offset");
  uint64_t length = ArgIndex(info, 1, "length");
  RequireWithin(env, offset, length, mapping.bytes, "region");
  if (length == 0) return;
  // An anonymous region has file-backed pages only where mapFileShared placed them; msync over
  // a range that mixes them with anonymous pages syncs the shared ones and skips the rest.
  if (mapping.kind == RegionKind::kAnonymous) {
    // Only the check is guarded: an msync racing an unmapPrivate just syncs anonymous pages.
    std::lock_guard<std::mutex> guard(mapping.rangesMutex);
    if (!OverlapsSharedRange(offset, length)) return;
  }
  // Any byte range is accepted: it is widened to the pages it touches (msync needs that).
  uint64_t page = HostPageSize();
  uint64_t start = offset / page * page;
  uint64_t end = (offset + length + page - 1) / page * page;
  if (::msync(mapping.base + start, end - start, MS_SYNC) != 0) {
    FailErrno(env, errno, "msync", "");
  }
}

void Region::MapFilePrivate(const Napi::CallbackInfo& info) { MapFileRange(info, false); }

// Shared: the range's pages are the file's page cache, so stores reach the file (durable after
// flush/msync) and other mappings of the file see them.
void Region::MapFileShared(const Napi::CallbackInfo& info) { MapFileRange(info, true); }

void Region::MapFileRange(const Napi::CallbackInfo& info, bool shared) {
  const char* name = shared ? "mapFileShared" : "mapFilePrivate";
  Napi::Env env = info.Env();
  Mapping& mapping = Open(env);
  uint64_t offset = ArgIndex(info, 0, "offset");
  uint64_t length = ArgIndex(info, 1, "length");
  std::string path = ArgString(info, 2, "path");
  uint64_t fileOffset = ArgIndex(info, 3, "fileOffset");
  if (mapping.kind != RegionKind::kAnonymous) {
    Fail(env, code::kUnsupported,
         std::string(name) + " needs an anonymous region, this one is " +
             KindName(mapping.kind));
  }
  RequirePageAligned(env, offset, "offset");
  RequirePageAligned(env, length, "length");
  RequirePageAligned(env, fileOffset, "fileOffset");
  RequireWithin(env, offset, length, mapping.bytes, "region");
  UniqueFd fd = OpenRegularFile(env, path, shared ? O_RDWR : O_RDONLY);
  uint64_t fileSize = SizeOf(env, fd.Get(), path);
  if (fileOffset > fileSize || length > fileSize - fileOffset) {
    // Touching a mapped page past the end of the file raises SIGBUS.
    Fail(env, code::kOutOfRange,
         "file range [" + std::to_string(fileOffset) + ", " +
             std::to_string(fileOffset + length) + ") extends past the end of '" + path + "' (" +
             std::to_string(fileSize) + " bytes)");
  }
  if (length == 0) return;
  auto pin = std::make_unique<FilePin>(IdentityOf(env, fd.Get(), path), fileOffset + length);
  void* target = mapping.base + offset;
  int err = 0;
  bool hole = false;
  {
    std::lock_guard<std::mutex> guard(mapping.rangesMutex);
    void* placed = ::mmap(target, length, PROT_READ | PROT_WRITE,
                          (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED, fd.Get(),
                          static_cast<off_t>(fileOffset));
    if (placed == MAP_FAILED) {
      err = errno;
      // A failed MAP_FIXED may already have unmapped the range: put zero pages back, and if
      // even that fails close the region rather than leave a hole that JS could fault on.
      hole = ::mmap(target, length, PROT_READ | PROT_WRITE,
                    AnonymousFlags(mapping.noReserve) | MAP_FIXED, -1, 0) == MAP_FAILED;
    } else {
      DropPrivateRangesWithin(offset, length);
      mapping.privateRanges.push_back({offset, length, std::move(pin)});
      ForgetSharedWithin(offset, length);
      if (shared) mapping.sharedRanges.emplace_back(offset, offset + length);
    }
  }
  if (err != 0) {
    if (hole) CloseNow();  // after unlocking: it may drop the last reference to the mapping
    FailErrno(env, err, "mmap", path);
  }
}

void Region::UnmapPrivate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping& mapping = Open(env);
  uint64_t offset = ArgIndex(info, 0, "offset");
  uint64_t length = ArgIndex(info, 1, "length");
  if (mapping.kind != RegionKind::kAnonymous) {
    Fail(env, code::kUnsupported,
         std::string("unmapPrivate needs an anonymous region, this one is ") +
             KindName(mapping.kind));
  }
  RequirePageAligned(env, offset, "offset");
  RequirePageAligned(env, length, "length");
  RequireWithin(env, offset, length, mapping.bytes, "region");
  if (length == 0) return;
  int err = 0;
  {
    std::lock_guard<std::mutex> guard(mapping.rangesMutex);
    if (::mmap(mapping.base + offset, length, PROT_READ | PROT_WRITE,
               AnonymousFlags(mapping.noReserve) | MAP_FIXED, -1, 0) == MAP_FAILED) {
      err = errno;
    } else {
      DropPrivateRangesWithin(offset, length);
      ForgetSharedWithin(offset, length);
    }
  }
  if (err != 0) {
    CloseNow();  // the range may be a hole now
    FailErrno(env, err, "mmap", "");
  }
}

void Region::Close(const Napi::CallbackInfo&) { CloseNow(); }

// N-API (node 20) cannot make a SharedArrayBuffer over external memory, so this one call uses
// V8 directly (see V8Value/NapiValue above).
Napi::Value Region::SharedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Mapping& mapping = Open(env);
  if (!sharedRef_.IsEmpty()) return sharedRef_.Value();
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  // The backing store (and so the deleter) may outlive this isolate and be freed on any thread
  // that held the buffer last: the deleter only drops a reference, which shared_ptr makes safe.
  auto* holder = new std::shared_ptr<Mapping>(mapping_);
  std::unique_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      mapping.base, static_cast<size_t>(mapping.bytes),
      [](void*, size_t, void* deleterData) {
        delete static_cast<std::shared_ptr<Mapping>*>(deleterData);
      },
      holder);
  v8::Local<v8::SharedArrayBuffer> buffer =
      v8::SharedArrayBuffer::New(isolate, std::shared_ptr<v8::BackingStore>(std::move(store)));
  mapping.shared = true;
  {
    std::lock_guard<std::mutex> guard(sharedMappingsMutex);
    SharedMappings()[mapping.base] = SharedEntry{&mapping, mapping_};
  }
  Napi::Object result(env, NapiValue(buffer));
  sharedRef_ = Napi::Reference<Napi::Object>::New(result, 1);
  return result;
}

}  // namespace bv
