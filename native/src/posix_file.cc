#include "posix_file.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "errors.h"

namespace bv {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = other.Release();
  }
  return *this;
}

int UniqueFd::Release() {
  int fd = fd_;
  fd_ = -1;
  return fd;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

UniqueFd OpenRegularFile(Napi::Env env, const std::string& path, int flags, mode_t mode) {
  int raw;
  do {
    raw = ::open(path.c_str(), flags | O_CLOEXEC | O_NONBLOCK, mode);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) FailErrno(env, errno, "open", path);
  UniqueFd fd(raw);
  struct stat info;
  if (::fstat(fd.Get(), &info) != 0) FailErrno(env, errno, "fstat", path);
  if (!S_ISREG(info.st_mode)) {
    Fail(env, code::kBadArgument, "'" + path + "' is not a regular file");
  }
  int status = ::fcntl(fd.Get(), F_GETFL);
  if (status < 0 || ::fcntl(fd.Get(), F_SETFL, status & ~O_NONBLOCK) != 0) {
    FailErrno(env, errno, "fcntl", path);
  }
  return fd;
}

FileIdentity IdentityOf(Napi::Env env, int fd, const std::string& path) {
  struct stat info;
  if (::fstat(fd, &info) != 0) FailErrno(env, errno, "fstat", path);
  return FileIdentity{info.st_dev, info.st_ino};
}

uint64_t SizeOf(Napi::Env env, int fd, const std::string& path) {
  struct stat info;
  if (::fstat(fd, &info) != 0) FailErrno(env, errno, "fstat", path);
  return static_cast<uint64_t>(info.st_size);
}

namespace {

// Shared by every JS environment (main thread and workers) in the process.
std::mutex pinsMutex;
std::map<std::pair<dev_t, ino_t>, std::multiset<uint64_t>>& Pins() {
  static auto* pins = new std::map<std::pair<dev_t, ino_t>, std::multiset<uint64_t>>();
  return *pins;
}

}  // namespace

FilePin::FilePin(FileIdentity identity, uint64_t minimumSize)
    : identity_(identity), minimumSize_(minimumSize) {
  std::lock_guard<std::mutex> lock(pinsMutex);
  Pins()[{identity_.device, identity_.inode}].insert(minimumSize_);
}

FilePin::~FilePin() {
  std::lock_guard<std::mutex> lock(pinsMutex);
  auto entry = Pins().find({identity_.device, identity_.inode});
  if (entry == Pins().end()) return;
  auto size = entry->second.find(minimumSize_);
  if (size != entry->second.end()) entry->second.erase(size);
  if (entry->second.empty()) Pins().erase(entry);
}

uint64_t FilePin::RequiredSize(FileIdentity identity) {
  std::lock_guard<std::mutex> lock(pinsMutex);
  auto entry = Pins().find({identity.device, identity.inode});
  if (entry == Pins().end() || entry->second.empty()) return 0;
  return *entry->second.rbegin();
}

}  // namespace bv
