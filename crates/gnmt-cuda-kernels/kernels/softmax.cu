// The training loss of the output layer over rows of logits (gnmt-kernels' softmax.rs and
// gnmt-ops' softmax_loss.rs): per row with target y and smoothing eps,
// nll = logsumexp(z) - z_y and smoothed = (1 - eps) nll + eps (logsumexp(z) - mean(z)).
// One block of ROW_BLOCK threads per row (a grid-stride loop over rows); the row's maximum
// and sums are trees over the block's threads in a fixed order, so a row's result depends on
// nothing but the row: not on the batch, the grid or the other rows.
#include "common.cuh"
#include "rows.cuh"

// logits [rows, vocab], targets [rows], keep [rows] (1 real, 0 padding) -> out [rows, 2] =
// [smoothed, nll] (0 for padding). `inv_vocab` is 1 / vocab and `eps` the smoothing, both
// rounded to f32 from f64 as the CPU kernel does.
KERNEL token_losses_forward(unsigned int rows, unsigned int vocab, const float* logits,
                            const unsigned int* targets, const float* keep, float eps,
                            float inv_vocab, float* out) {
    __shared__ float scratch[ROW_BLOCK];
    if (blockDim.x != ROW_BLOCK) TRAP();
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* z = logits + r * vocab;
        float sum;
        float lse = row_logsumexp(z, vocab, scratch, &sum);
        if (threadIdx.x == 0) {
            float nll = lse - z[targets[r]];
            float smoothed = (1.0f - eps) * nll + eps * (lse - sum * inv_vocab);
            int real = keep[r] != 0.0f;
            out[2 * r] = real ? smoothed : 0.0f;
            out[2 * r + 1] = real ? nll : 0.0f;
        }
    }
}

// The gradient of sum(g * out) with respect to the logits: per row
// (g0 + g1) softmax(z) - g0 q - g1 onehot(y), q the smoothed target; `g [rows, 2]` must be 0
// on padded rows. `uniform` is eps / vocab rounded to f32 from f64, as the CPU kernel has it.
KERNEL token_losses_backward(unsigned int rows, unsigned int vocab, const float* logits,
                             const unsigned int* targets, const float* g, float eps,
                             float uniform, float* dlogits) {
    __shared__ float scratch[ROW_BLOCK];
    if (blockDim.x != ROW_BLOCK) TRAP();
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* z = logits + r * vocab;
        float* dz = dlogits + r * vocab;
        float sum;
        float lse = row_logsumexp(z, vocab, scratch, &sum);
        float g0 = g[2 * r], g1 = g[2 * r + 1];
        float scale = g0 + g1, spread = g0 * uniform;
        unsigned int y = targets[r];
        for (unsigned int j = threadIdx.x; j < vocab; j += ROW_BLOCK) {
            float d = scale * fast_exp(z[j] - lse) - spread;
            if (j == y) d = d - g0 * (1.0f - eps) - g1;
            dz[j] = d;
        }
    }
}
