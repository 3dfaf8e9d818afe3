// Multi-host training through libtorch's own c10d, the engine under PyTorch DDP: a TCPStore for
// the rendezvous and ProcessGroupGloo for the collectives. libtorch_cpu.so exports both; tch
// binds neither.
//
// Handles are opaque heap objects owned by Rust. Every call returns NULL on success or a
// malloc'd message (the caller frees it): no C++ exception crosses the FFI boundary. gloo's own
// types are only held through shared_ptr, so the gloo headers need not match libtorch's gloo
// build exactly.

#include "shim.h"

#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

}  // namespace

extern "C" {

char* smtrain_store_new(const char* host, int port, int is_server, int world, int64_t timeout_ms,
                        void** out) {
  try {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    // We wait for the peers ourselves, so that the message can name the ones missing.
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("smtrain", tcp);
    *out = new Store{prefixed};
    return nullptr;
  }
  SMTRAIN_CATCH
}

char* smtrain_store_set(void* store, const char* key, const char* value) {
  try {
    std::string v(value);
    static_cast<Store*>(store)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    return nullptr;
  }
  SMTRAIN_CATCH
}

char* smtrain_store_check(void* store, const char* key, int* present) {
  try {
    *present = static_cast<Store*>(store)->store->check({std::string(key)}) ? 1 : 0;
    return nullptr;
  }
  SMTRAIN_CATCH
}

// `value` receives a malloc'd copy of the key's value (freed by the caller), waiting for the key
// up to the store's timeout.
char* smtrain_store_get(void* store, const char* key, char** value) {
  try {
    auto v = static_cast<Store*>(store)->store->get(std::string(key));
    std::string text(v.begin(), v.end());
    *value = strdup(text.c_str());
    if (*value == nullptr) throw std::bad_alloc();
    return nullptr;
  }
  SMTRAIN_CATCH
}

void smtrain_store_free(void* store) { delete static_cast<Store*>(store); }

// `interface` (e.g. eth0) wins over `hostname` when given: SageMaker names the interface the
// hosts share in resourceconfig.json.
char* smtrain_group_new(void* store, int rank, int world, const char* interface,
                        const char* hostname, int64_t timeout_ms, void** out) {
  try {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (interface != nullptr && interface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(static_cast<Store*>(store)->store, rank,
                                                          world, opts);
    *out = new Group{pg};
    return nullptr;
  }
  SMTRAIN_CATCH
}

char* smtrain_group_allreduce_sum(void* group, at::Tensor* t) {
  try {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    static_cast<Group*>(group)->pg->allreduce(ts, opts)->wait();
    return nullptr;
  }
  SMTRAIN_CATCH
}

char* smtrain_group_broadcast(void* group, at::Tensor* t, int root) {
  try {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    static_cast<Group*>(group)->pg->broadcast(ts, opts)->wait();
    return nullptr;
  }
  SMTRAIN_CATCH
}

void smtrain_group_free(void* group) { delete static_cast<Group*>(group); }

}  // extern "C"
