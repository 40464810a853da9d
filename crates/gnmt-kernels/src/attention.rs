//! Additive attention (Bahdanau et al. 2015) of one query row: scores, the masked softmax and
//! the context, and the scores' backward pass.

use crate::real::Real;
use crate::reduce::lane_sum;

/// Additive attention scores of one query `q [A]` against `keys [S, A]`:
/// `out[s] = sum_a v[a] tanh(q[a] + keys[s, a])`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn additive_row<T: Real>(q: &[T], keys: &[T], v: &[T], out: &mut [T]) {
    let a = q.len();
    // q + k first (vectorised), then the weighted tanh sum over lanes.
    let mut pre = vec![T::default(); a];
    for (s, o) in out.iter_mut().enumerate() {
        let k = &keys[s * a..][..a];
        for ((p, &x), &y) in pre.iter_mut().zip(q).zip(k) {
            *p = x + y;
        }
        *o = lane_sum(v, &pre, |w, x| w * x.tanh_());
    }
}

/// Attention of one query over one sentence's memory: the additive scores of the projected
/// query `q [A]` against `keys [S, A]`, softmax over the positions where `mask [S]` is non-zero
/// (exactly 0 elsewhere) into `weights [S]`, and `context [H] = sum_s weights[s] values[s]`.
/// Every sum runs over the real positions in source order, so the result does not depend on
/// how much padding follows them.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn attend_row<T: Real>(
    q: &[T],
    keys: &[T],
    v: &[T],
    mask: &[T],
    values: &[T],
    weights: &mut [T],
    context: &mut [T],
) {
    let h = context.len();
    additive_row(q, keys, v, weights);
    masked_softmax_row(mask, weights);
    context.fill(T::default());
    for (s, &w) in weights.iter().enumerate() {
        if mask[s] == T::default() {
            continue;
        }
        for (c, &x) in context.iter_mut().zip(&values[s * h..][..h]) {
            *c += w * x;
        }
    }
}

/// The softmax of a row of scores `weights [S]`, in place, over the positions where
/// `mask [S]` is non-zero: exactly 0 elsewhere, and all 0 when no position is real (nothing
/// to attend to). The sum runs in source order, so a row's weights do not depend on the
/// padding after it. Decoding's step ([`attend_row`]) and training's attention weights
/// (gnmt-ops' `attention_weights`) both take their weights from here.
#[inline]
pub fn masked_softmax_row<T: Real>(mask: &[T], weights: &mut [T]) {
    let real = |s: &usize| mask[*s] != T::default();
    let max = (0..mask.len())
        .filter(real)
        .map(|s| weights[s])
        .reduce(|a, b| a.max_(b));
    let Some(max) = max else {
        weights.fill(T::default());
        return;
    };
    let mut sum = T::default();
    for (s, w) in weights.iter_mut().enumerate() {
        *w = if real(&s) {
            (*w - max).exp_()
        } else {
            T::default()
        };
        sum += *w;
    }
    for (s, w) in weights.iter_mut().enumerate() {
        if real(&s) {
            *w = *w / sum;
        }
    }
}

/// The gradient of `sum_s g[s] weights[s]` with respect to the scores of
/// [`masked_softmax_row`], from its `weights [S]`: `weights[s] (g[s] - sum_r weights[r] g[r])`
/// at the real positions (the sum in source order), exactly 0 elsewhere, into `dz [S]`.
#[inline]
pub fn masked_softmax_row_backward<T: Real>(mask: &[T], weights: &[T], g: &[T], dz: &mut [T]) {
    let real = |s: usize| mask[s] != T::default();
    let mut dot = T::default();
    for s in 0..mask.len() {
        if real(s) {
            dot += weights[s] * g[s];
        }
    }
    for (s, d) in dz.iter_mut().enumerate() {
        *d = if real(s) {
            weights[s] * (g[s] - dot)
        } else {
            T::default()
        };
    }
}

/// The gradient of `g * sum_a v[a] tanh(q[a] + k[a])` added into `dq`, `dk` and `dv`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn additive_row_backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    for i in 0..q.len() {
        let th = (q[i] + k[i]).tanh_();
        let dpre = g * v[i] * (T::ONE - th * th);
        dq[i] += dpre;
        dk[i] += dpre;
        dv[i] += g * th;
    }
}
