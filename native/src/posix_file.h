// Small POSIX helpers shared by regions and files: an owning file descriptor, opening regular
// files only, and a process-wide registry of files that live mappings depend on.
#pragma once

#include <napi.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

namespace bv {

// Owns a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int Get() const { return fd_; }
  bool Valid() const { return fd_ >= 0; }
  int Release();
  void Reset();

 private:
  int fd_ = -1;
};

// Opens `path` with `flags` (plus O_CLOEXEC) and refuses anything but a regular file: opening a
// FIFO must not block and a device must not be mapped. O_NONBLOCK is used only while opening.
UniqueFd OpenRegularFile(Napi::Env env, const std::string& path, int flags, mode_t mode = 0644);

struct FileIdentity {
  dev_t device;
  ino_t inode;
};

FileIdentity IdentityOf(Napi::Env env, int fd, const std::string& path);
uint64_t SizeOf(Napi::Env env, int fd, const std::string& path);

// While a pin lives, the file must keep at least `minimumSize` bytes: a mapping over a range past
// the end of a file raises SIGBUS on access, which would kill the process. HostFile consults the
// registry before shrinking a file (it cannot stop other programs from doing so).
class FilePin {
 public:
  FilePin(FileIdentity identity, uint64_t minimumSize);
  ~FilePin();
  FilePin(const FilePin&) = delete;
  FilePin& operator=(const FilePin&) = delete;

  // The largest size any live pin requires of this file, 0 when none.
  static uint64_t RequiredSize(FileIdentity identity);

 private:
  FileIdentity identity_;
  uint64_t minimumSize_;
};

}  // namespace bv
