// The shim's one error convention, shared by every file here: an `extern "C"` function returns
// NULL on success or a malloc'd message that the Rust caller frees (native.rs, take_message).
// Every such function's body is `try { ... } SMTRAIN_CATCH`, so no C++ exception, of any type,
// unwinds into Rust.

#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace smtrain {

// c10 errors carry a C++ backtrace after the first line; the first line is the message.
inline char* fail(const char* what) {
  std::string msg = what;
  auto nl = msg.find('\n');
  if (nl != std::string::npos) msg.resize(nl);
  return strdup(msg.c_str());
}

}  // namespace smtrain

#define SMTRAIN_CATCH                                           \
  catch (const std::exception& e) {                             \
    return smtrain::fail(e.what());                             \
  }                                                             \
  catch (...) {                                                 \
    return smtrain::fail("unknown C++ exception from libtorch"); \
  }
