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

// A whole layer over a padded batch, one step per launch (src/layer.rs runs the steps and the
// cuBLAS products between them). Batch-major like the layer's input and output: the values of
// row r at time s live at row `r * steps + s` of the [B*T, width] buffers. A row whose `keep`
// is 0 at s (padding; `keep` may be null: every step real) carries its state through; `prev`
// is the time of the step processed before s, or -1 at the first.

// Step s: `gates` holds the input projection x W_ih^T [B*T, 4H] on entry, and the step's
// pre-activation gates (plus rec and the bias) on exit, which the backward pass reads;
// rec [B, 4H] = h_prev W_hh^T, read only when prev >= 0; the bias of gate k at
// bias[k * bias_stride]; h and c [B, T, H] receive the state after the step.
KERNEL lstm_layer_step_forward(unsigned int batch, unsigned int steps, unsigned int hidden,
                               unsigned int s, int prev, const float* rec, const float* bias,
                               unsigned int bias_stride, const float* keep, float* gates,
                               float* h, float* c) {
    unsigned long long n = (unsigned long long)batch * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        unsigned long long here = r * steps + s;
        float h_prev = 0.0f, c_prev = 0.0f;
        if (prev >= 0) {
            unsigned long long there = (r * steps + (unsigned long long)prev) * hidden + j;
            h_prev = h[there];
            c_prev = c[there];
        }
        if (keep != 0 && keep[here] == 0.0f) {
            h[here * hidden + j] = h_prev;
            c[here * hidden + j] = c_prev;
            continue;
        }
        float* g = gates + here * 4 * hidden;
        for (unsigned int q = 0; q < 4; q++) {
            unsigned long long u = (unsigned long long)q * hidden + j;
            float v = g[u];
            // In the CPU's order: the recurrent product added onto the input's, then the bias.
            if (prev >= 0) v = v + rec[r * 4 * hidden + u];
            g[u] = v + bias[u * bias_stride];
        }
        step_unit(g, j, hidden, c_prev, &h[here * hidden + j], &c[here * hidden + j]);
    }
}

// The gradient of step s, processed in the reverse order of the forward pass. grad [B, T, H]
// reaches the layer's outputs; dh_rec [B, H] = dgates_next W_hh reaches h through the next
// step's gates (read when has_next); dh_carry [B, H] and dc [B, H] carry what reaches the
// state past the step (both start at 0, and leave holding what reaches the state before it).
// gates are the forward pass's pre-activations; dgates [B*T, 4H] receives their gradient (0
// where the row carried).
KERNEL lstm_layer_step_backward(unsigned int batch, unsigned int steps, unsigned int hidden,
                                unsigned int s, int prev, int has_next, const float* grad,
                                const float* dh_rec, const float* gates, const float* c,
                                const float* keep, float* dgates, float* dh_carry, float* dc) {
    unsigned long long n = (unsigned long long)batch * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long r = k / hidden, j = k % hidden;
        unsigned long long here = r * steps + s;
        float dh = grad[here * hidden + j];
        if (has_next) dh = dh + dh_rec[k];
        dh = dh + dh_carry[k];
        float* dg = dgates + here * 4 * hidden;
        if (keep != 0 && keep[here] == 0.0f) {
            for (unsigned int q = 0; q < 4; q++) dg[(unsigned long long)q * hidden + j] = 0.0f;
            dh_carry[k] = dh;
            continue;
        }
        float c_prev = 0.0f;
        if (prev >= 0) c_prev = c[(r * steps + (unsigned long long)prev) * hidden + j];
        dc[k] = step_unit_backward(gates + here * 4 * hidden, j, hidden, c_prev,
                                   c[here * hidden + j], dh, dc[k], dg);
        dh_carry[k] = 0.0f;
    }
}

// h_prev [B, T, H] of every step for the gradient of W_hh: the state before it in processing
// order (the previous time, or the next with `reverse`), 0 before the first.
KERNEL lstm_layer_previous_states(unsigned int batch, unsigned int steps, unsigned int hidden,
                                  int reverse, const float* h, float* h_prev) {
    unsigned long long n = (unsigned long long)batch * steps * hidden;
    for (unsigned long long k = GLOBAL_INDEX; k < n; k += GLOBAL_STRIDE) {
        unsigned long long row = k / hidden;
        unsigned int s = (unsigned int)(row % steps);
        int first = reverse ? s + 1 == steps : s == 0;
        h_prev[k] = first ? 0.0f : reverse ? h[k + hidden] : h[k - hidden];
    }
}

// out[col * out_stride] = the sum of column col of m [rows, cols], rows in order (the bias's
// gradient: the gates' gradients summed over every (row, step)).
KERNEL column_sums(unsigned int rows, unsigned int cols, const float* m, float* out,
                   unsigned int out_stride) {
    for (unsigned long long col = GLOBAL_INDEX; col < cols; col += GLOBAL_STRIDE) {
        float sum = 0.0f;
        for (unsigned long long r = 0; r < rows; r++) sum = sum + m[r * cols + col];
        out[col * out_stride] = sum;
    }
}
