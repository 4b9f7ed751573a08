{
  "targets": [
    {
      "target_name": "bytevisor_native",
      "sources": [
        "native/src/addon.cc", "native/src/async_file.cc", "native/src/checksum.cc",
        "native/src/args.cc",
        "native/src/errors.cc",
        "native/src/file.cc",
        "native/src/posix_file.cc",
        "native/src/region.cc",
        "native/src/thread.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_ADDON_API_CPP_EXCEPTIONS",
        # A worker thread stopped in the middle of an addon call: the error node-addon-api then
        # cannot throw into the dying environment is dropped instead of aborting the process.
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "_GNU_SOURCE"
      ],
      "cflags!": [
        "-fno-exceptions"
      ],
      "cflags_cc!": [
        "-fno-exceptions"
      ],
      "cflags_cc": [
        "-std=c++17",
        "-O2",
        "-Wall",
        "-Wextra"
      ]
    }
  ]
}
