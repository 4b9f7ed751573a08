// Placeholder translation unit so that `npm install` can build before the addon lands.
#include <napi.h>
static Napi::Object Init(Napi::Env env, Napi::Object exports) { return exports; }
NODE_API_MODULE(bytevisor_native, Init)
