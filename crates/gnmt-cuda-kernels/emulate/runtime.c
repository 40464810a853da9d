// The host emulator's launches (see cuda_host.h).
// Barriers are POSIX, not plain C11.
#define _POSIX_C_SOURCE 200112L

#include <pthread.h>
#include <stdio.h>

#include "cuda_host.h"

_Thread_local emu_dim3 threadIdx;
_Thread_local emu_dim3 blockIdx;
emu_dim3 blockDim;
emu_dim3 gridDim;

static pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t block_barrier;

void emu_syncthreads(void) {
    pthread_barrier_wait(&block_barrier);
}

static int block_or;
static pthread_mutex_t block_or_lock = PTHREAD_MUTEX_INITIALIZER;

int emu_syncthreads_or(int predicate) {
    // Everyone has read the previous call's result before it is cleared, and it is cleared
    // before anyone adds to it.
    emu_syncthreads();
    if (threadIdx.x == 0) block_or = 0;
    emu_syncthreads();
    if (predicate) {
        pthread_mutex_lock(&block_or_lock);
        block_or = 1;
        pthread_mutex_unlock(&block_or_lock);
    }
    emu_syncthreads();
    return block_or;
}

struct emu_thread {
    unsigned int block, thread;
    void (*body)(void*);
    void* args;
};

static void* emu_thread_main(void* p) {
    struct emu_thread* t = p;
    blockIdx = (emu_dim3){t->block, 0, 0};
    threadIdx = (emu_dim3){t->thread, 0, 0};
    t->body(t->args);
    return NULL;
}

void emu_launch(unsigned int grid, unsigned int block, void (*body)(void*), void* args) {
    pthread_mutex_lock(&launch_lock);
    gridDim = (emu_dim3){grid, 1, 1};
    blockDim = (emu_dim3){block, 1, 1};
    pthread_t* threads = malloc(sizeof(pthread_t) * block);
    struct emu_thread* states = malloc(sizeof(struct emu_thread) * block);
    if (!threads || !states) abort();
    for (unsigned int b = 0; b < grid; b++) {
        pthread_barrier_init(&block_barrier, NULL, block);
        for (unsigned int t = 0; t < block; t++) {
            states[t] = (struct emu_thread){b, t, body, args};
            if (pthread_create(&threads[t], NULL, emu_thread_main, &states[t]) != 0) {
                fprintf(stderr, "emulated launch: cannot start thread %u of block %u\n", t, b);
                abort();
            }
        }
        for (unsigned int t = 0; t < block; t++) pthread_join(threads[t], NULL);
        pthread_barrier_destroy(&block_barrier);
    }
    free(threads);
    free(states);
    pthread_mutex_unlock(&launch_lock);
}
