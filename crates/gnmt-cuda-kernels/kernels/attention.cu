// Additive attention scores (gnmt-kernels' attention.rs and gnmt-ops' additive.rs):
// out[b, t, s] = sum_a v[a] tanh(q[b, t, a] + k[b, s, a]), q [B, T, A], k [B, S, A], and the
// gradients of sum(g * out) with respect to q, k and v. Every sum runs in the CPU kernels'
// order (the forward's over 16 lanes as `lane_sum`, the gradients' over positions in order),
// so each result has the CPU's bits, and no thread's result depends on the batch.
#include "common.cuh"

// One score, sum_a v[a] tanh(q[a] + k[a]) over `width`, as the CPU's `lane_sum`: 16 lanes
// over whole chunks, the tail first into the total, then the lanes.
DEVICE float additive_score(const float* q, const float* k, const float* v, unsigned int width) {
    float lanes[16];
    for (int l = 0; l < 16; l++) lanes[l] = 0.0f;
    unsigned int full = width / 16 * 16;
    for (unsigned int a = 0; a < full; a += 16)
        for (int l = 0; l < 16; l++) lanes[l] = lanes[l] + v[a + l] * fast_tanh(q[a + l] + k[a + l]);
    float total = 0.0f;
    for (unsigned int a = full; a < width; a++) total = total + v[a] * fast_tanh(q[a] + k[a]);
    for (int l = 0; l < 16; l++) total = total + lanes[l];
    return total;
}

// One thread per score: out[(b T + t) S + s].
KERNEL additive_scores_forward(unsigned int batch, unsigned int steps, unsigned int sources,
                               unsigned int width, const float* q, const float* k,
                               const float* v, float* out) {
    unsigned long long n = (unsigned long long)batch * steps * sources;
    for (unsigned long long i = GLOBAL_INDEX; i < n; i += GLOBAL_STRIDE) {
        unsigned long long s = i % sources, bt = i / sources, b = bt / steps;
        out[i] = additive_score(q + bt * width, k + (b * sources + s) * width, v, width);
    }
}

// gnmt-kernels' masked_softmax_row, by one thread: the scores w [S] turned in place into
// their softmax over the positions where real [S] is non-zero (exactly 0 elsewhere; all 0
// when none is), the sum in source order.
DEVICE void masked_softmax_row(float* w, const float* real, unsigned int sources) {
    int any = 0;
    float max = 0.0f;
    for (unsigned int s = 0; s < sources; s++) {
        if (real[s] == 0.0f) continue;
        max = any ? fmaxf(max, w[s]) : w[s];
        any = 1;
    }
    float sum = 0.0f;
    for (unsigned int s = 0; s < sources; s++) {
        w[s] = any && real[s] != 0.0f ? fast_exp(w[s] - max) : 0.0f;
        sum = sum + w[s];
    }
    for (unsigned int s = 0; s < sources; s++)
        if (real[s] != 0.0f) w[s] = w[s] / sum;
}

// Decoding's attention step (gnmt-kernels' attend_row), one block of ROW_BLOCK threads per
// query row r, over memory row m = memory_rows[r]: the scores of q [rows, A] against
// keys [B, S, A] (threads over positions), their softmax over the positions where
// mask [B, S] is non-zero (exactly 0 elsewhere; all 0 when none is), by one thread in source
// order, and the context [rows, H] of values [B, S, H] (threads over units, positions in
// order). Sums run in the CPU's order over the real positions only: a row's bits do not
// depend on its batch, the padding after it, or the launch.
KERNEL attend_step(unsigned int rows, unsigned int sources, unsigned int width,
                   unsigned int hidden, const float* q, const float* keys, const float* v,
                   const float* mask, const float* values, const unsigned int* memory_rows,
                   float* weights, float* context) {
    if (blockDim.x != ROW_BLOCK) TRAP();
    unsigned int t = threadIdx.x;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        unsigned long long m = memory_rows[r];
        const float* real = mask + m * sources;
        float* w = weights + r * sources;
        for (unsigned int s = t; s < sources; s += ROW_BLOCK)
            w[s] = additive_score(q + r * width, keys + (m * sources + s) * width, v, width);
        __syncthreads();
        if (t == 0) masked_softmax_row(w, real, sources);
        __syncthreads();
        for (unsigned int h = t; h < hidden; h += ROW_BLOCK) {
            const float* column = values + m * sources * hidden + h;
            float c = 0.0f;
            for (unsigned int s = 0; s < sources; s++)
                if (real[s] != 0.0f) c = c + w[s] * column[(unsigned long long)s * hidden];
            context[r * hidden + h] = c;
        }
    }
}

// The gradients of sum(g * out), g [B, T, S], into `joined` = [dq [B, T, A] | dk [B, S, A] |
// dv [A]]; `partials [B, A]` is scratch for dv. Four launches, in this order: dq, dk, the
// per-batch-row parts of dv, their sum. Positions whose g is exactly 0 (padding) add nothing.

// One thread per (b, t, a): the sum over s in order.
KERNEL additive_scores_dq(unsigned int batch, unsigned int steps, unsigned int sources,
                          unsigned int width, const float* g, const float* q, const float* k,
                          const float* v, float* joined) {
    unsigned long long n = (unsigned long long)batch * steps * width;
    for (unsigned long long i = GLOBAL_INDEX; i < n; i += GLOBAL_STRIDE) {
        unsigned long long a = i % width, bt = i / width, b = bt / steps;
        float qa = q[i], va = v[a], dq = 0.0f;
        for (unsigned int s = 0; s < sources; s++) {
            float gg = g[bt * sources + s];
            if (gg == 0.0f) continue;
            float th = fast_tanh(qa + k[(b * sources + s) * width + a]);
            dq = dq + gg * va * (1.0f - th * th);
        }
        joined[i] = dq;
    }
}

// One thread per (b, s, a): the sum over t in order.
KERNEL additive_scores_dk(unsigned int batch, unsigned int steps, unsigned int sources,
                          unsigned int width, const float* g, const float* q, const float* k,
                          const float* v, float* joined) {
    unsigned long long n = (unsigned long long)batch * sources * width;
    float* dk = joined + (unsigned long long)batch * steps * width;
    for (unsigned long long i = GLOBAL_INDEX; i < n; i += GLOBAL_STRIDE) {
        unsigned long long a = i % width, bs = i / width, b = bs / sources, s = bs % sources;
        float ka = k[i], va = v[a], d = 0.0f;
        for (unsigned int t = 0; t < steps; t++) {
            float gg = g[(b * steps + t) * sources + s];
            if (gg == 0.0f) continue;
            float th = fast_tanh(q[(b * steps + t) * width + a] + ka);
            d = d + gg * va * (1.0f - th * th);
        }
        dk[i] = d;
    }
}

// One thread per (b, a): batch row b's part of dv[a], over t then s in order.
KERNEL additive_scores_dv_rows(unsigned int batch, unsigned int steps, unsigned int sources,
                               unsigned int width, const float* g, const float* q,
                               const float* k, float* partials) {
    unsigned long long n = (unsigned long long)batch * width;
    for (unsigned long long i = GLOBAL_INDEX; i < n; i += GLOBAL_STRIDE) {
        unsigned long long a = i % width, b = i / width;
        float d = 0.0f;
        for (unsigned int t = 0; t < steps; t++) {
            float qa = q[(b * steps + t) * width + a];
            for (unsigned int s = 0; s < sources; s++) {
                float gg = g[(b * steps + t) * sources + s];
                if (gg == 0.0f) continue;
                d = d + gg * fast_tanh(qa + k[(b * sources + s) * width + a]);
            }
        }
        partials[i] = d;
    }
}

// One thread per a: dv[a], the batch rows' parts summed in batch order.
KERNEL additive_scores_dv_sum(unsigned int batch, unsigned int steps, unsigned int sources,
                              unsigned int width, const float* partials, float* joined) {
    float* dv = joined + (unsigned long long)batch * (steps + sources) * width;
    for (unsigned long long a = GLOBAL_INDEX; a < width; a += GLOBAL_STRIDE) {
        float d = 0.0f;
        for (unsigned int b = 0; b < batch; b++) d = d + partials[(unsigned long long)b * width + a];
        dv[a] = d;
    }
}

// Training's attention weights (gnmt-ops' attention_weights): one block of ROW_BLOCK threads
// per row (b, t) of scores [B, T, S]; the threads copy the row, one thread takes its softmax
// over the positions where mask [B, S] is non-zero (masked_softmax_row, the CPU's order).
KERNEL attention_softmax_forward(unsigned int batch, unsigned int steps, unsigned int sources,
                                 const float* scores, const float* mask, float* weights) {
    if (blockDim.x != ROW_BLOCK) TRAP();
    unsigned long long rows = (unsigned long long)batch * steps;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        float* w = weights + r * sources;
        for (unsigned int s = threadIdx.x; s < sources; s += ROW_BLOCK) w[s] = scores[r * sources + s];
        __syncthreads();
        if (threadIdx.x == 0) masked_softmax_row(w, mask + (r / steps) * sources, sources);
        __syncthreads();
    }
}

// Its gradient (gnmt-kernels' masked_softmax_row_backward): for each row, one thread sums
// weights[s] g[s] over the real positions in source order, then the threads write
// dz[s] = weights[s] (g[s] - that sum) there and exactly 0 on padding.
KERNEL attention_softmax_backward(unsigned int batch, unsigned int steps, unsigned int sources,
                                  const float* weights, const float* g, const float* mask,
                                  float* dz) {
    if (blockDim.x != ROW_BLOCK) TRAP();
    __shared__ float row_dot[1];
    unsigned long long rows = (unsigned long long)batch * steps;
    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* real = mask + (r / steps) * sources;
        const float* w = weights + r * sources;
        const float* gr = g + r * sources;
        if (threadIdx.x == 0) {
            float dot = 0.0f;
            for (unsigned int s = 0; s < sources; s++)
                if (real[s] != 0.0f) dot = dot + w[s] * gr[s];
            row_dot[0] = dot;
        }
        __syncthreads();
        float dot = row_dot[0];
        for (unsigned int s = threadIdx.x; s < sources; s += ROW_BLOCK)
            dz[r * sources + s] = real[s] != 0.0f ? w[s] * (gr[s] - dot) : 0.0f;
        __syncthreads();
    }
}
