// The calling thread's CPU affinity and kernel thread id, for pinning worker threads to host CPUs.
#pragma once

#include <napi.h>

namespace bv {

// setThreadAffinity(cpus: number[]): sched_setaffinity(0, …) — the calling thread only.
void SetThreadAffinity(const Napi::CallbackInfo& info);
// threadAffinity(): the calling thread's CPUs (sched_getaffinity(0, …)), ascending.
Napi::Value ThreadAffinity(const Napi::CallbackInfo& info);
// threadId(): gettid(), the id /proc/self/task/<id> shows.
Napi::Value ThreadId(const Napi::CallbackInfo& info);

}  // namespace bv
