// The k best next tokens of each decoder row, straight from the logits (gnmt-kernels'
// top_tokens.rs): each row's log-sum-exp, then its k largest `logit - lse`, best first, the
// lower token id first among equal values. One block of ROW_BLOCK threads per row; only
// rows x k tokens and log-probabilities are written (and copied to the host), never the
// [rows, V] log-probabilities.
#include "common.cuh"
#include "rows.cuh"

// The largest k a launch may ask for (src/lib.rs's MAX_TOP; larger k is ranked on the host).
#define MAX_TOP 32

// Whether (va, ia) ranks before (vb, ib).
DEVICE int ranks_before(float va, unsigned int ia, float vb, unsigned int ib) {
    return va > vb || (va == vb && ia < ib);
}

// logits [rows, vocab] -> tokens [rows, k], log_probs [rows, k]. With `normalise` 0 the
// values are ranked and returned as they are (scores that are already log-probabilities).
KERNEL top_tokens(unsigned int rows, unsigned int vocab, unsigned int k, int normalise,
                  const float* logits, unsigned int* tokens, float* log_probs) {
    __shared__ float scratch[ROW_BLOCK];
    __shared__ float best_value[ROW_BLOCK];
    __shared__ unsigned int best_index[ROW_BLOCK];
    __shared__ unsigned int best_thread[ROW_BLOCK];
    if (blockDim.x != ROW_BLOCK || k > MAX_TOP || k > vocab) TRAP();
    if (k == 0) return;
    unsigned int t = threadIdx.x;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* z = logits + r * vocab;
        float lse = 0.0f;
        if (normalise) {
            float sum;
            lse = row_logsumexp(z, vocab, scratch, &sum);
        }
        // This thread's k best of its elements (indices in increasing order, so a later
        // element enters only if strictly better), best first.
        float value[MAX_TOP];
        unsigned int index[MAX_TOP];
        unsigned int held = 0;
        for (unsigned int j = t; j < vocab; j += ROW_BLOCK) {
            float x = z[j] - lse;
            if (held == k && !(x > value[k - 1])) continue;
            unsigned int at = held < k ? held : k - 1;
            while (at > 0 && x > value[at - 1]) {
                value[at] = value[at - 1];
                index[at] = index[at - 1];
                at--;
            }
            value[at] = x;
            index[at] = j;
            if (held < k) held++;
        }
        // k rounds: the block's best unconsumed candidate, by a tree over the threads.
        unsigned int taken = 0;
        for (unsigned int round = 0; round < k; round++) {
            best_value[t] = taken < held ? value[taken] : NEG_INFINITY;
            best_index[t] = taken < held ? index[taken] : 0xffffffffu;
            best_thread[t] = t;
            __syncthreads();
            for (unsigned int s = ROW_BLOCK / 2; s > 0; s >>= 1) {
                if (t < s && ranks_before(best_value[t + s], best_index[t + s], best_value[t],
                                          best_index[t])) {
                    best_value[t] = best_value[t + s];
                    best_index[t] = best_index[t + s];
                    best_thread[t] = best_thread[t + s];
                }
                __syncthreads();
            }
            unsigned int winner = best_thread[0];
            if (t == 0) {
                tokens[r * k + round] = best_index[0];
                log_probs[r * k + round] = best_value[0];
            }
            __syncthreads();
            if (t == winner) taken++;
        }
    }
}
