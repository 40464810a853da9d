// The gradient of an embedding table (gnmt-kernels' embedding.rs): row v of d_table is the
// sum, in position order, of the gradients of the positions whose id is v. One block of
// ROW_BLOCK threads per table row: the block reads the ids in chunks of ROW_BLOCK, skips a
// chunk that holds no v (__syncthreads_or), and otherwise each thread adds the chunk's
// matching rows, in order, into the columns it owns. Every element is one thread's sum in the
// CPU's order, starting from zero: the CPU kernel's bits, on any grid, without atomics.
#include "common.cuh"

// grad [n, dim], ids [n] -> d_table [vocab, dim] (written in full). Ids at or beyond vocab
// add nowhere.
KERNEL embedding_backward(unsigned int vocab, unsigned int n, unsigned int dim,
                          const float* grad, const unsigned int* ids, float* d_table) {
    __shared__ unsigned char hit[ROW_BLOCK];
    if (blockDim.x != ROW_BLOCK) TRAP();
    unsigned int t = threadIdx.x;
    for (unsigned long long v = blockIdx.x; v < vocab; v += gridDim.x) {
        float* row = d_table + v * dim;
        for (unsigned int d = t; d < dim; d += ROW_BLOCK) row[d] = 0.0f;
        for (unsigned long long base = 0; base < n; base += ROW_BLOCK) {
            unsigned long long p = base + t;
            int mine = p < n && ids[p] == v;
            // The barrier also keeps every thread's reads of the last chunk's flags before
            // this chunk's writes.
            int any = __syncthreads_or(mine);
            hit[t] = (unsigned char)mine;
            __syncthreads();
            if (!any) continue;
            unsigned long long end = n - base < ROW_BLOCK ? n - base : ROW_BLOCK;
            for (unsigned int d = t; d < dim; d += ROW_BLOCK) {
                float sum = row[d];
                for (unsigned long long j = 0; j < end; j++) {
                    if (hit[j]) sum += grad[(base + j) * dim + d];
                }
                row[d] = sum;
            }
        }
    }
}
