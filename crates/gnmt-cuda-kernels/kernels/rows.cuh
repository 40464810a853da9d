// Reductions of one row by one block of ROW_BLOCK threads, in a fixed order (a tree over
// the threads' partial results): softmax.cu and top_tokens.cu share them.
#ifndef GNMT_ROWS_CUH
#define GNMT_ROWS_CUH

#include "common.cuh"

// The maximum of every thread's `x` over the block, in every thread.
DEVICE float block_max(float x, float* scratch) {
    unsigned int t = threadIdx.x;
    scratch[t] = x;
    __syncthreads();
    for (unsigned int s = ROW_BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) scratch[t] = fmaxf(scratch[t], scratch[t + s]);
        __syncthreads();
    }
    float all = scratch[0];
    __syncthreads();
    return all;
}

// The sum of every thread's `x` over the block (a fixed tree), in every thread.
DEVICE float block_sum(float x, float* scratch) {
    unsigned int t = threadIdx.x;
    scratch[t] = x;
    __syncthreads();
    for (unsigned int s = ROW_BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) scratch[t] = scratch[t] + scratch[t + s];
        __syncthreads();
    }
    float all = scratch[0];
    __syncthreads();
    return all;
}

// logsumexp(z) of a row of `vocab` logits, in every thread of the block; `*sum` gets sum(z).
DEVICE float row_logsumexp(const float* z, unsigned int vocab, float* scratch, float* sum) {
    float m = NEG_INFINITY;
    for (unsigned int j = threadIdx.x; j < vocab; j += ROW_BLOCK) m = fmaxf(m, z[j]);
    m = block_max(m, scratch);
    float s = 0.0f, total = 0.0f;
    for (unsigned int j = threadIdx.x; j < vocab; j += ROW_BLOCK) {
        s = s + z[j];
        total = total + fast_exp(z[j] - m);
    }
    *sum = block_sum(s, scratch);
    return m + logf(block_sum(total, scratch));
}

#endif
