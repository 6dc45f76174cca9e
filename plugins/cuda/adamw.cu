/* adamw.cu: one fused AdamW kernel (decoupled weight decay) over n elements.
 *
 * Per element, all in fp32: g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * master -= lr * ((m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + weight_decay * master);
 * then param (pdt: F32 or BF16, optional) = master rounded once. master, m, v are fp32; grad is
 * F32 or BF16. Bias corrections are computed on the host in double. param may alias master
 * (fp32 training) or be NULL. Each element is read and written by one thread only.
 */
#include <math.h>

#include "cuda_common.cuh"

template <typename TP, typename TG>
__global__ void zpc_adamw_kernel(TP* param, float* master, const TG* grad, float* m, float* v,
                                 size_t n, float lr, float beta1, float beta2, float eps,
                                 float wd, float grad_scale, float bc1, float bc2) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = zpc_ld<float>(grad + i) * grad_scale;
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    float p = master[i];
    float mhat = mi / bc1, vhat = vi / bc2;
    p -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (param) zpc_st(param + i, p);
  }
}

int zpc_adamw(zp_backend* b, void* param, zp_dtype pdt, float* master, const void* grad,
              zp_dtype gdt, float* m, float* v, size_t n, float lr, float beta1, float beta2,
              float eps, float weight_decay, float grad_scale, int step_t) {
  if (step_t < 1 || !master || !grad || !m || !v)
    return ZPC_INVALID(b, "cuda backend: adamw: bad arguments (step_t=%d)", step_t);
  if ((param && pdt != ZP_F32 && pdt != ZP_BF16) || (gdt != ZP_F32 && gdt != ZP_BF16))
    return zpc_err(b->host, ZP_E_NOT_IMPLEMENTED,
                   "cuda backend: adamw: param dtype %d / grad dtype %d not supported (F32, BF16)",
                   (int)pdt, (int)gdt);
  if (n == 0) return ZP_OK;
  float bc1 = (float)(1.0 - pow((double)beta1, (double)step_t));
  float bc2 = (float)(1.0 - pow((double)beta2, (double)step_t));
  unsigned grid = zpc_grid(b, n, 256);
  const bool pbf = param && pdt == ZP_BF16;
  if (gdt == ZP_BF16) {
    if (pbf)
      zpc_adamw_kernel<bf16, bf16><<<grid, 256, 0, b->stream>>>(
          (bf16*)param, master, (const bf16*)grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
          grad_scale, bc1, bc2);
    else
      zpc_adamw_kernel<float, bf16><<<grid, 256, 0, b->stream>>>(
          (float*)param, master, (const bf16*)grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
          grad_scale, bc1, bc2);
  } else {
    if (pbf)
      zpc_adamw_kernel<bf16, float><<<grid, 256, 0, b->stream>>>(
          (bf16*)param, master, (const float*)grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
          grad_scale, bc1, bc2);
    else
      zpc_adamw_kernel<float, float><<<grid, 256, 0, b->stream>>>(
          (float*)param, master, (const float*)grad, m, v, n, lr, beta1, beta2, eps, weight_decay,
          grad_scale, bc1, bc2);
  }
  ZPC_LAUNCHED(b, "adamw");
  return ZP_OK;
}
