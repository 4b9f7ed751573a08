// Per-environment state (the main thread and every worker load their own instance).
#pragma once

#include <napi.h>

namespace bv {

struct AddonData {
  Napi::FunctionReference regionConstructor;
};

inline AddonData& DataOf(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace bv
