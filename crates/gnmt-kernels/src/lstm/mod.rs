//! The LSTM cell of one row, forward and backward, and ([`sequence`]) the recurrence of a
//! whole layer over time-major buffers.

pub mod sequence;

use crate::real::Real;

/// One LSTM cell update of one row: pre-activation gates `g [4H]` (i, f, g, o) -> their
/// activations into `acts [4H]`; the cell `c [H]` and hidden state `h [H]` updated in place.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn lstm_cell_row<T: Real>(g: &[T], acts: &mut [T], c: &mut [T], h: &mut [T]) {
    let n = c.len();
    let (gi, rest) = g.split_at(n);
    let (gf, rest) = rest.split_at(n);
    let (gg, go) = rest.split_at(n);
    let (ai, rest) = acts.split_at_mut(n);
    let (af, rest) = rest.split_at_mut(n);
    let (ag, ao) = rest.split_at_mut(n);
    for j in 0..n {
        let (i, f, g, o) = (
            gi[j].sigmoid(),
            gf[j].sigmoid(),
            gg[j].tanh_(),
            go[j].sigmoid(),
        );
        ai[j] = i;
        af[j] = f;
        ag[j] = g;
        ao[j] = o;
        let cj = f * c[j] + i * g;
        c[j] = cj;
        h[j] = o * cj.tanh_();
    }
}

/// The backward pass of [`lstm_cell_row`] for one row, given its activations `acts [4H]`, the
/// new cell `c [H]` and the previous one `c_prev [H]`, and the gradient `dh [H]` reaching the
/// new hidden state. `dc [H]` holds the gradient reaching the new cell and leaves holding the
/// one reaching `c_prev`; `dg [4H]` receives the gradient of the pre-activation gates.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn lstm_cell_row_backward<T: Real>(
    acts: &[T],
    c: &[T],
    c_prev: &[T],
    dh: &[T],
    dc: &mut [T],
    dg: &mut [T],
) {
    let n = c.len();
    let (ai, rest) = acts.split_at(n);
    let (af, rest) = rest.split_at(n);
    let (ag, ao) = rest.split_at(n);
    let (di, rest) = dg.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dgg, dgo) = rest.split_at_mut(n);
    for j in 0..n {
        let (i, f, g, o) = (ai[j], af[j], ag[j], ao[j]);
        let tc = c[j].tanh_();
        let dcj = dc[j] + dh[j] * o * (T::ONE - tc * tc);
        di[j] = dcj * g * i * (T::ONE - i);
        df[j] = dcj * c_prev[j] * f * (T::ONE - f);
        dgg[j] = dcj * i * (T::ONE - g * g);
        dgo[j] = dh[j] * tc * o * (T::ONE - o);
        dc[j] = dcj * f;
    }
}
