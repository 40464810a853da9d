// One Adam update of an f32 parameter, its moments and its gradient (gnmt-kernels' adam.rs):
// the arithmetic of AdamConstants::element in the same order, one thread per element.
#include "common.cuh"

KERNEL adam_update(unsigned long long n, float* p, float* m, float* v, const float* g,
                   float scale, float beta1, float beta2, float one_minus_beta1,
                   float one_minus_beta2, float c1, float c2, float eps, float lr) {
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        float gk = g[k] * scale;
        float mk = m[k] * beta1 + gk * one_minus_beta1;
        float vk = v[k] * beta2 + (gk * gk) * one_minus_beta2;
        m[k] = mk;
        v[k] = vk;
        p[k] = p[k] - (mk / c1) / (sqrtf(vk / c2) + eps) * lr;
    }
}
