// The LSTM cell, forward and backward, for rows of a batch (gnmt-kernels' lstm/mod.rs and
// gnmt-ops' lstm/cell.rs): gates in PyTorch's order i, f, g, o. One thread per unit of a row
// (a grid-stride loop over rows x hidden), so a row's result never depends on the other rows.
#include "common.cuh"

// gates [rows, 4H] (pre-activations), c_prev [rows, H] -> out [rows, 2H] = [h | c].
KERNEL lstm_cell_forward(unsigned int rows, unsigned int hidden, const float* gates,
                         const float* c_prev, float* out) {
    unsigned long long n = (unsigned long long)rows * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        const float* g = gates + r * 4 * hidden;
        float i = sigmoid(g[j]);
        float f = sigmoid(g[hidden + j]);
        float gg = fast_tanh(g[2 * hidden + j]);
        float o = sigmoid(g[3 * hidden + j]);
        float c = f * c_prev[k] + i * gg;
        out[r * 2 * hidden + j] = o * fast_tanh(c);
        out[r * 2 * hidden + hidden + j] = c;
    }
}

// The gradient `grad [rows, 2H]` of [h | c] -> `joined` = [dgates [rows, 4H] | dc_prev
// [rows, H]], the activations recomputed from the gates; `out` is the forward's [h | c].
KERNEL lstm_cell_backward(unsigned int rows, unsigned int hidden, const float* grad,
                          const float* gates, const float* c_prev, const float* out,
                          float* joined) {
    unsigned long long n = (unsigned long long)rows * hidden;
    float* dc_prev = joined + n * 4;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        const float* g = gates + r * 4 * hidden;
        float* dg = joined + r * 4 * hidden;
        float i = sigmoid(g[j]);
        float f = sigmoid(g[hidden + j]);
        float gg = fast_tanh(g[2 * hidden + j]);
        float o = sigmoid(g[3 * hidden + j]);
        float tc = fast_tanh(out[r * 2 * hidden + hidden + j]);
        float dh = grad[r * 2 * hidden + j];
        float dc = grad[r * 2 * hidden + hidden + j] + dh * o * (1.0f - tc * tc);
        float d_o = dh * tc;
        dg[j] = dc * gg * i * (1.0f - i);
        dg[hidden + j] = dc * c_prev[k] * f * (1.0f - f);
        dg[2 * hidden + j] = dc * i * (1.0f - gg * gg);
        dg[3 * hidden + j] = d_o * o * (1.0f - o);
        dc_prev[k] = dc * f;
    }
}
