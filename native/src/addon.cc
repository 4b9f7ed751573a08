// bytevisor_native: host memory regions and file primitives for the hypervisor runtime.
// The typed TypeScript face is native/index.ts; docs/native.md explains what and why.
#include <napi.h>

#include "addon_data.h"
#include "args.h"
#include "checksum.h"
#include "file.h"
#include "region.h"
#include "thread.h"

namespace bv {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function region = Region::Define(env);
  data->regionConstructor = Napi::Persistent(region);
  exports.Set("Region", region);
  exports.Set("File", File::Define(env));
  exports.Set("syncDirectory", Napi::Function::New<SyncDirectory>(env, "syncDirectory"));
  exports.Set("crc32c", Napi::Function::New<Crc32c>(env, "crc32c"));
  exports.Set("setThreadAffinity", Napi::Function::New<SetThreadAffinity>(env, "setThreadAffinity"));
  exports.Set("threadAffinity", Napi::Function::New<ThreadAffinity>(env, "threadAffinity"));
  exports.Set("threadId", Napi::Function::New<ThreadId>(env, "threadId"));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(HostPageSize())));
  return exports;
}

}  // namespace bv

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return bv::Init(env, exports); }

NODE_API_MODULE(bytevisor_native, InitModule)
