// Just enough of CUDA's execution model, on the host, to run this crate's kernels as C for
// the tests on every CPU: a launch runs its blocks one after another, and a block's threads
// as real threads (pthreads) that meet at a barrier in __syncthreads(), so kernels that share
// memory within a block run as they would on a GPU. `__shared__` variables are statics: one
// block runs at a time, and launches are serialised.
#ifndef GNMT_CUDA_HOST_H
#define GNMT_CUDA_HOST_H

#include <math.h>
#include <stdlib.h>

typedef struct {
    unsigned int x, y, z;
} emu_dim3;

extern _Thread_local emu_dim3 threadIdx;
extern _Thread_local emu_dim3 blockIdx;
extern emu_dim3 blockDim;
extern emu_dim3 gridDim;

void emu_syncthreads(void);

// __syncthreads_or: a barrier that returns non-zero to every thread when `predicate` is
// non-zero for any thread of the block.
int emu_syncthreads_or(int predicate);

// Runs `body(args)` on a one-dimensional grid of `grid` blocks of `block` threads.
void emu_launch(unsigned int grid, unsigned int block, void (*body)(void*), void* args);

#define __shared__ static
#define __syncthreads() emu_syncthreads()
#define __syncthreads_or(p) emu_syncthreads_or(p)

#endif
