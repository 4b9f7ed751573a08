#include "thread.h"

#include <errno.h>

#include <string>
#include <vector>

#include "errors.h"

#ifdef __linux__
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace bv {

namespace {

[[maybe_unused]] constexpr double kMaxSafeInteger = 9007199254740991.0;

#ifdef __linux__

std::string ListOf(const std::vector<int>& cpus) {
  std::string text;
  for (int cpu : cpus) text += (text.empty() ? "" : ", ") + std::to_string(cpu);
  return "[" + text + "]";
}

std::vector<int> CpusOf(const cpu_set_t& set) {
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

cpu_set_t CurrentAffinity(Napi::Env env) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) FailErrno(env, errno, "sched_getaffinity", "");
  return set;
}

#else

[[noreturn]] void Unsupported(Napi::Env env, const char* what) {
  Fail(env, code::kUnsupported, std::string(what) + " needs Linux (sched_setaffinity, gettid)");
}

#endif

}  // namespace

void SetThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) Fail(env, code::kBadArgument, "cpus must be an array of CPU numbers");
  Napi::Array list = info[0].As<Napi::Array>();
  if (list.Length() == 0) Fail(env, code::kBadArgument, "cpus must name at least one CPU");
#ifdef __linux__
  cpu_set_t wanted;
  CPU_ZERO(&wanted);
  std::vector<int> cpus;
  // Each CPU below CPU_SETSIZE and named once, so this loop ends within CPU_SETSIZE + 1 steps.
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value value = list.Get(i);
    double number = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
    if (!value.IsNumber() || !(number >= 0) || number > kMaxSafeInteger ||
        number != static_cast<double>(static_cast<uint64_t>(number))) {
      Fail(env, code::kBadArgument,
           "cpus[" + std::to_string(i) + "] must be a non-negative integer");
    }
    if (number >= CPU_SETSIZE) {
      Fail(env, code::kBadArgument,
           "cpus[" + std::to_string(i) + "] = " + std::to_string(static_cast<uint64_t>(number)) +
               " is not below CPU_SETSIZE (" + std::to_string(CPU_SETSIZE) + ")");
    }
    int cpu = static_cast<int>(number);
    if (CPU_ISSET(cpu, &wanted)) {
      Fail(env, code::kBadArgument, "cpus names CPU " + std::to_string(cpu) + " twice");
    }
    CPU_SET(cpu, &wanted);
    cpus.push_back(cpu);
  }
  cpu_set_t before = CurrentAffinity(env);
  if (::sched_setaffinity(0, sizeof(wanted), &wanted) != 0) {
    FailErrno(env, errno, "sched_setaffinity", "",
              "no CPU of " + ListOf(cpus) + " is online and allowed to this process");
  }
  // The kernel silently drops the offline or disallowed CPUs of a set that still has a usable
  // one: read back, and undo and refuse rather than run on fewer CPUs than asked.
  cpu_set_t after = CurrentAffinity(env);
  if (!CPU_EQUAL(&after, &wanted)) {
    ::sched_setaffinity(0, sizeof(before), &before);
    std::vector<int> missing;
    for (int cpu : cpus) {
      if (!CPU_ISSET(cpu, &after)) missing.push_back(cpu);
    }
    FailErrno(env, EINVAL, "sched_setaffinity", "",
              "CPU " + ListOf(missing) + " is not online or not allowed to this process");
  }
#else
  Unsupported(env, "setThreadAffinity");
#endif
}

Napi::Value ThreadAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef __linux__
  std::vector<int> cpus = CpusOf(CurrentAffinity(env));
  Napi::Array result = Napi::Array::New(env, cpus.size());
  for (uint32_t i = 0; i < cpus.size(); i++) result.Set(i, Napi::Number::New(env, cpus[i]));
  return result;
#else
  Unsupported(env, "threadAffinity");
#endif
}

Napi::Value ThreadId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#ifdef __linux__
  return Napi::Number::New(env, static_cast<double>(::syscall(SYS_gettid)));
#else
  Unsupported(env, "threadId");
#endif
}

}  // namespace bv
