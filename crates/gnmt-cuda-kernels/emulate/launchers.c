// One C entry point per kernel for the Rust tests, `emu_NAME(grid, block, the kernel's
// parameters...)`: packs the parameters and launches the kernel on the host emulator. The
// kernels are this crate's .cu files, compiled here as C.
#include "cuda_host.h"

#include "../kernels/adam.cu"
#include "../kernels/attention.cu"
#include "../kernels/dropout.cu"
#include "../kernels/embedding.cu"
#include "../kernels/lstm.cu"
#include "../kernels/softmax.cu"
#include "../kernels/top_tokens.cu"

struct lstm_cell_forward_args {
    unsigned int rows, hidden;
    const float *gates, *c_prev;
    float* out;
};

static void lstm_cell_forward_body(void* p) {
    struct lstm_cell_forward_args* a = p;
    lstm_cell_forward(a->rows, a->hidden, a->gates, a->c_prev, a->out);
}

void emu_lstm_cell_forward(unsigned int grid, unsigned int block, unsigned int rows,
                           unsigned int hidden, const float* gates, const float* c_prev,
                           float* out) {
    struct lstm_cell_forward_args a = {rows, hidden, gates, c_prev, out};
    emu_launch(grid, block, lstm_cell_forward_body, &a);
}

struct lstm_cell_backward_args {
    unsigned int rows, hidden;
    const float *grad, *gates, *c_prev, *out;
    float* joined;
};

static void lstm_cell_backward_body(void* p) {
    struct lstm_cell_backward_args* a = p;
    lstm_cell_backward(a->rows, a->hidden, a->grad, a->gates, a->c_prev, a->out, a->joined);
}

void emu_lstm_cell_backward(unsigned int grid, unsigned int block, unsigned int rows,
                            unsigned int hidden, const float* grad, const float* gates,
                            const float* c_prev, const float* out, float* joined) {
    struct lstm_cell_backward_args a = {rows, hidden, grad, gates, c_prev, out, joined};
    emu_launch(grid, block, lstm_cell_backward_body, &a);
}

// Adam's constants in the order of the kernel's parameters.
struct adam_constants {
    float scale, beta1, beta2, one_minus_beta1, one_minus_beta2, c1, c2, eps, lr;
};

struct adam_update_args {
    unsigned long long n;
    float *p, *m, *v;
    const float* g;
    struct adam_constants k;
};

static void adam_update_body(void* p) {
    struct adam_update_args* a = p;
    struct adam_constants k = a->k;
    adam_update(a->n, a->p, a->m, a->v, a->g, k.scale, k.beta1, k.beta2, k.one_minus_beta1,
                k.one_minus_beta2, k.c1, k.c2, k.eps, k.lr);
}

void emu_adam_update(unsigned int grid, unsigned int block, unsigned long long n, float* p,
                     float* m, float* v, const float* g, const struct adam_constants* k) {
    struct adam_update_args a = {n, p, m, v, g, *k};
    emu_launch(grid, block, adam_update_body, &a);
}

struct token_losses_forward_args {
    unsigned int rows, vocab;
    const float* logits;
    const unsigned int* targets;
    const float* keep;
    float eps, inv_vocab;
    float* out;
};

static void token_losses_forward_body(void* p) {
    struct token_losses_forward_args* a = p;
    token_losses_forward(a->rows, a->vocab, a->logits, a->targets, a->keep, a->eps,
                         a->inv_vocab, a->out);
}

void emu_token_losses_forward(unsigned int grid, unsigned int block, unsigned int rows,
                              unsigned int vocab, const float* logits,
                              const unsigned int* targets, const float* keep, float eps,
                              float inv_vocab, float* out) {
    struct token_losses_forward_args a = {rows, vocab, logits, targets, keep, eps, inv_vocab, out};
    emu_launch(grid, block, token_losses_forward_body, &a);
}

struct token_losses_backward_args {
    unsigned int rows, vocab;
    const float* logits;
    const unsigned int* targets;
    const float* g;
    float eps, uniform;
    float* dlogits;
};

static void token_losses_backward_body(void* p) {
    struct token_losses_backward_args* a = p;
    token_losses_backward(a->rows, a->vocab, a->logits, a->targets, a->g, a->eps, a->uniform,
                          a->dlogits);
}

void emu_token_losses_backward(unsigned int grid, unsigned int block, unsigned int rows,
                               unsigned int vocab, const float* logits,
                               const unsigned int* targets, const float* g, float eps,
                               float uniform, float* dlogits) {
    struct token_losses_backward_args a = {rows, vocab, logits, targets, g, eps, uniform, dlogits};
    emu_launch(grid, block, token_losses_backward_body, &a);
}

// The attention kernels share their leading dimensions.
struct attention_args {
    unsigned int batch, steps, sources, width;
    const float *g, *q, *k, *v, *partials;
    float* out;
    int which;
};

static void attention_body(void* p) {
    struct attention_args* a = p;
    switch (a->which) {
        case 0:
            additive_scores_forward(a->batch, a->steps, a->sources, a->width, a->q, a->k, a->v,
                                    a->out);
            break;
        case 1:
            additive_scores_dq(a->batch, a->steps, a->sources, a->width, a->g, a->q, a->k, a->v,
                               a->out);
            break;
        case 2:
            additive_scores_dk(a->batch, a->steps, a->sources, a->width, a->g, a->q, a->k, a->v,
                               a->out);
            break;
        case 3:
            additive_scores_dv_rows(a->batch, a->steps, a->sources, a->width, a->g, a->q, a->k,
                                    a->out);
            break;
        default:
            additive_scores_dv_sum(a->batch, a->steps, a->sources, a->width, a->partials, a->out);
    }
}

// Kernel `which` of attention.cu: 0 forward (q, k, v -> out), 1 dq and 2 dk (g, q, k, v ->
// joined), 3 dv's rows (g, q, k -> partials, as `out`), 4 dv's sum (partials -> joined).
void emu_attention(unsigned int grid, unsigned int block, int which, unsigned int batch,
                   unsigned int steps, unsigned int sources, unsigned int width, const float* g,
                   const float* q, const float* k, const float* v, const float* partials,
                   float* out) {
    struct attention_args a = {batch, steps, sources, width, g, q, k, v, partials, out, which};
    emu_launch(grid, block, attention_body, &a);
}

struct top_tokens_args {
    unsigned int rows, vocab, k;
    int normalise;
    const float* logits;
    unsigned int* tokens;
    float* log_probs;
};

static void top_tokens_body(void* p) {
    struct top_tokens_args* a = p;
    top_tokens(a->rows, a->vocab, a->k, a->normalise, a->logits, a->tokens, a->log_probs);
}

void emu_top_tokens(unsigned int grid, unsigned int block, unsigned int rows, unsigned int vocab,
                    unsigned int k, int normalise, const float* logits, unsigned int* tokens,
                    float* log_probs) {
    struct top_tokens_args a = {rows, vocab, k, normalise, logits, tokens, log_probs};
    emu_launch(grid, block, top_tokens_body, &a);
}

// The dropout kernel's stream position and constants.
struct dropout_stream {
    unsigned int key[8];
    unsigned long long stream, first_block;
    unsigned int offset;
    float threshold, scale;
};

struct dropout_args {
    unsigned long long n, repeat;
    const float* x;
    float* out;
    struct dropout_stream s;
};

static void dropout_body(void* p) {
    struct dropout_args* a = p;
    const unsigned int* k = a->s.key;
    dropout(a->n, a->repeat, a->x, a->out, k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], a->s.stream,
            a->s.first_block, a->s.offset, a->s.threshold, a->s.scale);
}

void emu_dropout(unsigned int grid, unsigned int block, unsigned long long n,
                 unsigned long long repeat, const float* x, float* out,
                 const struct dropout_stream* s) {
    struct dropout_args a = {n, repeat, x, out, *s};
    emu_launch(grid, block, dropout_body, &a);
}

struct lstm_carry_args {
    unsigned int rows, hidden;
    const float *grad, *gates, *c_prev, *h_prev, *out, *keep;
    float* result;
    int backward;
};

static void lstm_carry_body(void* p) {
    struct lstm_carry_args* a = p;
    if (a->backward) {
        lstm_cell_carry_backward(a->rows, a->hidden, a->grad, a->gates, a->c_prev, a->out,
                                 a->keep, a->result);
    } else {
        lstm_cell_carry_forward(a->rows, a->hidden, a->gates, a->c_prev, a->h_prev, a->keep,
                                a->result);
    }
}

// lstm_cell_carry_forward (backward 0: gates, c_prev, h_prev, keep -> result = [h | c]) or
// lstm_cell_carry_backward (backward 1: grad, gates, c_prev, out, keep -> result = joined).
void emu_lstm_cell_carry(unsigned int grid, unsigned int block, int backward, unsigned int rows,
                         unsigned int hidden, const float* grad, const float* gates,
                         const float* c_prev, const float* h_prev, const float* out,
                         const float* keep, float* result) {
    struct lstm_carry_args a = {rows, hidden, grad, gates, c_prev, h_prev, out, keep, result,
                                backward};
    emu_launch(grid, block, lstm_carry_body, &a);
}

struct embedding_backward_args {
    unsigned int vocab, n, dim;
    const float* grad;
    const unsigned int* ids;
    float* d_table;
};

static void embedding_backward_body(void* p) {
    struct embedding_backward_args* a = p;
    embedding_backward(a->vocab, a->n, a->dim, a->grad, a->ids, a->d_table);
}

void emu_embedding_backward(unsigned int grid, unsigned int block, unsigned int vocab,
                            unsigned int n, unsigned int dim, const float* grad,
                            const unsigned int* ids, float* d_table) {
    struct embedding_backward_args a = {vocab, n, dim, grad, ids, d_table};
    emu_launch(grid, block, embedding_backward_body, &a);
}

struct attend_step_args {
    unsigned int rows, sources, width, hidden;
    const float *q, *keys, *v, *mask, *values;
    const unsigned int* memory_rows;
    float *weights, *context;
};

static void attend_step_body(void* p) {
    struct attend_step_args* a = p;
    attend_step(a->rows, a->sources, a->width, a->hidden, a->q, a->keys, a->v, a->mask,
                a->values, a->memory_rows, a->weights, a->context);
}

// The sizes first, then the kernel's pointers in its order.
void emu_attend_step(unsigned int grid, unsigned int block, const unsigned int* sizes,
                     const float* q, const float* keys, const float* v, const float* mask,
                     const float* values, const unsigned int* memory_rows, float* weights,
                     float* context) {
    struct attend_step_args a = {sizes[0], sizes[1], sizes[2], sizes[3], q,      keys,
                                 v,        mask,     values,   memory_rows, weights, context};
    emu_launch(grid, block, attend_step_body, &a);
}

struct attention_softmax_args {
    int backward;
    unsigned int batch, steps, sources;
    const float *scores_or_weights, *g, *mask;
    float* out;
};

static void attention_softmax_body(void* p) {
    struct attention_softmax_args* a = p;
    if (a->backward)
        attention_softmax_backward(a->batch, a->steps, a->sources, a->scores_or_weights, a->g,
                                   a->mask, a->out);
    else
        attention_softmax_forward(a->batch, a->steps, a->sources, a->scores_or_weights, a->mask,
                                  a->out);
}

// The forward kernel (backward 0: scores, mask -> weights; g unused) or its gradient
// (backward 1: weights, g, mask -> dz).
void emu_attention_softmax(unsigned int grid, unsigned int block, int backward,
                           unsigned int batch, unsigned int steps, unsigned int sources,
                           const float* scores_or_weights, const float* g, const float* mask,
                           float* out) {
    struct attention_softmax_args a = {backward, batch, steps, sources, scores_or_weights, g,
                                       mask, out};
    emu_launch(grid, block, attention_softmax_body, &a);
}

struct lstm_layer_step_forward_args {
    unsigned int batch, steps, hidden, s;
    int prev;
    const float *rec, *bias;
    unsigned int bias_stride;
    const float* keep;
    float *gates, *h, *c;
};

static void lstm_layer_step_forward_body(void* p) {
    struct lstm_layer_step_forward_args* a = p;
    lstm_layer_step_forward(a->batch, a->steps, a->hidden, a->s, a->prev, a->rec, a->bias,
                            a->bias_stride, a->keep, a->gates, a->h, a->c);
}

void emu_lstm_layer_step_forward(unsigned int grid, unsigned int block, unsigned int batch,
                                 unsigned int steps, unsigned int hidden, unsigned int s,
                                 int prev, const float* rec, const float* bias,
                                 unsigned int bias_stride, const float* keep, float* gates,
                                 float* h, float* c) {
    struct lstm_layer_step_forward_args a = {batch, steps, hidden, s,     prev, rec, bias,
                                             bias_stride, keep, gates, h, c};
    emu_launch(grid, block, lstm_layer_step_forward_body, &a);
}

struct lstm_layer_step_backward_args {
    unsigned int batch, steps, hidden, s;
    int prev, has_next;
    const float *grad, *dh_rec, *gates, *c, *keep;
    float *dgates, *dh_carry, *dc;
};

static void lstm_layer_step_backward_body(void* p) {
    struct lstm_layer_step_backward_args* a = p;
    lstm_layer_step_backward(a->batch, a->steps, a->hidden, a->s, a->prev, a->has_next,
                             a->grad, a->dh_rec, a->gates, a->c, a->keep, a->dgates,
                             a->dh_carry, a->dc);
}

void emu_lstm_layer_step_backward(unsigned int grid, unsigned int block, unsigned int batch,
                                  unsigned int steps, unsigned int hidden, unsigned int s,
                                  int prev, int has_next, const float* grad,
                                  const float* dh_rec, const float* gates, const float* c,
                                  const float* keep, float* dgates, float* dh_carry,
                                  float* dc) {
    struct lstm_layer_step_backward_args a = {batch, steps,  hidden, s,    prev,   has_next,
                                              grad,  dh_rec, gates,  c,    keep,   dgates,
                                              dh_carry, dc};
    emu_launch(grid, block, lstm_layer_step_backward_body, &a);
}

struct lstm_layer_previous_states_args {
    unsigned int batch, steps, hidden;
    int reverse;
    const float* h;
    float* h_prev;
};

static void lstm_layer_previous_states_body(void* p) {
    struct lstm_layer_previous_states_args* a = p;
    lstm_layer_previous_states(a->batch, a->steps, a->hidden, a->reverse, a->h, a->h_prev);
}

void emu_lstm_layer_previous_states(unsigned int grid, unsigned int block, unsigned int batch,
                                    unsigned int steps, unsigned int hidden, int reverse,
                                    const float* h, float* h_prev) {
    struct lstm_layer_previous_states_args a = {batch, steps, hidden, reverse, h, h_prev};
    emu_launch(grid, block, lstm_layer_previous_states_body, &a);
}

struct column_sums_args {
    unsigned int rows, cols;
    const float* m;
    float* out;
    unsigned int out_stride;
};

static void column_sums_body(void* p) {
    struct column_sums_args* a = p;
    column_sums(a->rows, a->cols, a->m, a->out, a->out_stride);
}

void emu_column_sums(unsigned int grid, unsigned int block, unsigned int rows, unsigned int cols,
                     const float* m, float* out, unsigned int out_stride) {
    struct column_sums_args a = {rows, cols, m, out, out_stride};
    emu_launch(grid, block, column_sums_body, &a);
}
