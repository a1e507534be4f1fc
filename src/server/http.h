// The one include of cpp-httplib for kvserve (server and tests).
//
// Debian's libcpp-httplib-dev ships httplib.h as declarations only, with the implementation
// compiled into libcpp-httplib.so built with the feature macros below (see `pkg-config
// --cflags cpp-httplib`). They change the layout of httplib::Request, ClientImpl and Client, so
// every translation unit that includes httplib.h must define exactly the same ones: include this
// header, never <httplib.h> directly. The server serves plain HTTP only; TLS, gzip and brotli
// are merely compiled into the shared library. Keep this header out of widely included headers
// (it is large): only .cpp files of src/server and the tests include it.
#pragma once

#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
#define CPPHTTPLIB_OPENSSL_SUPPORT
#endif
#ifndef CPPHTTPLIB_ZLIB_SUPPORT
#define CPPHTTPLIB_ZLIB_SUPPORT
#endif
#ifndef CPPHTTPLIB_BROTLI_SUPPORT
#define CPPHTTPLIB_BROTLI_SUPPORT
#endif

#include <httplib.h>
