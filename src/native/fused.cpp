// Fused optimizer steps through ATen's own kernels, which libtorch exports but tch does not
// bind: one vectorised, multi-threaded pass over the flat parameters instead of nine whole-buffer
// operations (the Adam update was 60% of a training step before this; see bench/step.rs).
//
// Tensors arrive as tch's handles, which are `at::Tensor*`. Errors come back as a malloc'd
// message (the caller frees it), never as a C++ exception across the FFI boundary.

#include "shim.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>


extern "C" char* smtrain_fused_adam(at::Tensor* params, at::Tensor* grads, at::Tensor* exp_avg,
                                    at::Tensor* exp_avg_sq, at::Tensor* step, double lr,
                                    double beta1, double beta2, double weight_decay, double eps,
                                    int decoupled) {
  try {
    step->add_(1);
    if (decoupled) {
      at::_fused_adamw_({*params}, {*grads}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1,
                        beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adam_({*params}, {*grads}, {*exp_avg}, {*exp_avg_sq}, {}, {*step}, lr, beta1,
                       beta2, weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    }
    return nullptr;
  }
  SMTRAIN_CATCH
}
