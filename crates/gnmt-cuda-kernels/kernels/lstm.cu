// The LSTM cell, forward and backward, for rows of a batch (gnmt-kernels' lstm/mod.rs and
// gnmt-ops' lstm/cell.rs): gates in PyTorch's order i, f, g, o. One thread per unit of a row
// (a grid-stride loop over rows x hidden), so a row's result never depends on the other rows.
#include "common.cuh"

// Unit j of a row whose pre-activation gates start at `g`: the new h and c from c_prev.
DEVICE void step_unit(const float* g, unsigned long long j, unsigned int hidden, float c_prev,
                      float* h, float* c) {
    float i = sigmoid(g[j]);
    float f = sigmoid(g[hidden + j]);
    float gg = fast_tanh(g[2 * hidden + j]);
    float o = sigmoid(g[3 * hidden + j]);
    *c = f * c_prev + i * gg;
    *h = o * fast_tanh(*c);
}

// The gradient of unit j's step: the gates' gradients into the row's `dg`, and the one
// reaching c_prev returned. `c` is the step's new cell, dh and dc_in the gradients reaching
// h and c; the activations are recomputed from the gates.
DEVICE float step_unit_backward(const float* g, unsigned long long j, unsigned int hidden,
                                float c_prev, float c, float dh, float dc_in, float* dg) {
    float i = sigmoid(g[j]);
    float f = sigmoid(g[hidden + j]);
    float gg = fast_tanh(g[2 * hidden + j]);
    float o = sigmoid(g[3 * hidden + j]);
    float tc = fast_tanh(c);
    float dc = dc_in + dh * o * (1.0f - tc * tc);
    float d_o = dh * tc;
    dg[j] = dc * gg * i * (1.0f - i);
    dg[hidden + j] = dc * c_prev * f * (1.0f - f);
    dg[2 * hidden + j] = dc * i * (1.0f - gg * gg);
    dg[3 * hidden + j] = d_o * o * (1.0f - o);
    return dc * f;
}

// gates [rows, 4H] (pre-activations), c_prev [rows, H] -> out [rows, 2H] = [h | c].
KERNEL lstm_cell_forward(unsigned int rows, unsigned int hidden, const float* gates,
                         const float* c_prev, float* out) {
    unsigned long long n = (unsigned long long)rows * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        float* o = out + r * 2 * hidden;
        step_unit(gates + r * 4 * hidden, j, hidden, c_prev[k], &o[j], &o[hidden + j]);
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
        const float* d = grad + r * 2 * hidden;
        float c = out[r * 2 * hidden + hidden + j];
        dc_prev[k] = step_unit_backward(gates + r * 4 * hidden, j, hidden, c_prev[k], c, d[j],
                                        d[hidden + j], joined + r * 4 * hidden);
    }
}

// The cell of a layer's step over a padded batch: rows whose `keep` is 0 (past their
// sentence's end) carry their state through unchanged, h_prev [rows, H] and c_prev into
// out = [h | c]; the others step as lstm_cell_forward. One launch instead of the step's cell
// and two masked blends.
KERNEL lstm_cell_carry_forward(unsigned int rows, unsigned int hidden, const float* gates,
                               const float* c_prev, const float* h_prev, const float* keep,
                               float* out) {
    unsigned long long n = (unsigned long long)rows * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        float* o = out + r * 2 * hidden;
        if (keep[r] == 0.0f) {
            o[j] = h_prev[k];
            o[hidden + j] = c_prev[k];
        } else {
            step_unit(gates + r * 4 * hidden, j, hidden, c_prev[k], &o[j], &o[hidden + j]);
        }
    }
}

// Its gradient: `joined` = [dgates [rows, 4H] | dc_prev [rows, H] | dh_prev [rows, H]]. A
// carried row passes its gradient to the previous state (dgates 0); a stepped row's is
// lstm_cell_backward's (dh_prev 0: h_prev reaches it through the gates' product only).
KERNEL lstm_cell_carry_backward(unsigned int rows, unsigned int hidden, const float* grad,
                                const float* gates, const float* c_prev, const float* out,
                                const float* keep, float* joined) {
    unsigned long long n = (unsigned long long)rows * hidden;
    float* dc_prev = joined + n * 4;
    float* dh_prev = joined + n * 5;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        const float* d = grad + r * 2 * hidden;
        float* dg = joined + r * 4 * hidden;
        if (keep[r] == 0.0f) {
            for (int q = 0; q < 4; q++) dg[q * hidden + j] = 0.0f;
            dc_prev[k] = d[hidden + j];
            dh_prev[k] = d[j];
        } else {
            float c = out[r * 2 * hidden + hidden + j];
            dc_prev[k] = step_unit_backward(gates + r * 4 * hidden, j, hidden, c_prev[k], c,
                                            d[j], d[hidden + j], dg);
            dh_prev[k] = 0.0f;
        }
    }
}
