//! The recurrence of an LSTM layer over a whole sequence, forward and backward, on plain
//! time-major buffers (`gnmt-ops`' LSTM layer wraps it, with the input projection, as one autograd
//! operation).
//!
//! Through autograd, a layer run step by step records a dozen ops per step; worse, the
//! gradient of each step's slice of the precomputed input gates is a zero-padded tensor of the
//! full sequence, so the backward pass costs O(T^2) memory traffic. Here:
//!
//! - forward: per step one `gemm` call (`h_prev W_hh^T` added onto that step's input gates) and
//!   one fused pass for the bias, gate nonlinearities, cell and hidden update, and padding mask;
//! - backward: backpropagation through time by hand, per step one `gemm` for the gradient
//!   reaching `h_prev`; the gradients of `W_hh` and the bias are then one pass over all steps.
//!
//! Batch rows never interact in a recurrence, so rows are split into chunks that run their whole
//! sequence on separate threads, with no synchronisation per step. Only the rows still running
//! at a step are multiplied out. Values of the real `(step, row)` pairs only (input gates,
//! gate activations, their gradients) are kept compact ([`Compact`]), never padded out.

use rayon::prelude::*;

use super::{lstm_cell_row, lstm_cell_row_backward};
use crate::buffers::{column_sums, zeros};
use crate::gemm::PackedB;
use crate::matmul::{matmul_rhs, product, Rhs};
use crate::{Compute, Precision, Real};

/// Sizes, direction and precision of one call.
#[derive(Clone, Copy)]
pub struct Dims {
    pub t: usize,
    pub b: usize,
    pub h: usize,
    pub reverse: bool,
    pub precision: Precision,
}

impl Dims {
    /// The time index of processing step `k`.
    fn time(&self, k: usize) -> usize {
        if self.reverse {
            self.t - 1 - k
        } else {
            k
        }
    }

    /// Rows per chunk: one chunk per thread.
    fn chunks(&self) -> Vec<std::ops::Range<usize>> {
        let n = rayon::current_num_threads().clamp(1, self.b.max(1));
        (0..n)
            .map(|i| (i * self.b / n)..((i + 1) * self.b / n))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// One chunk's part of the forward results: per time step, its rows of the hidden states and
/// cell states (slices of the whole batch's time-major buffers) and its real rows' gate
/// activations (slices of the compact buffer, see [`Compact`]).
struct ChunkForward<'a, T> {
    h: Vec<&'a mut [T]>,
    acts: Vec<&'a mut [T]>,
    cells: Vec<&'a mut [T]>,
}

fn forward_chunk<T: 'static + Real>(
    x_gates: &[T],
    bias: &[T],
    w_hh_t: &Rhs<T>,
    keep: Option<&[bool]>,
    d: Dims,
    (rows, first_real): (std::ops::Range<usize>, &[usize]),
    mut out: ChunkForward<T>,
) {
    let (h, m) = (d.h, rows.len());
    let zero = T::default();
    let mut h_prev = vec![zero; m * h];
    let mut c_prev = vec![zero; m * h];
    let mut gates = vec![zero; m * 4 * h];
    let mut h_live = vec![zero; m * h];
    for k in 0..d.t {
        let s = d.time(k);
        // The rows still running at this step: only they are multiplied out. Their input
        // gates are consecutive rows of the compact projection.
        let live = live_rows(keep, s, d.b, &rows);
        let n = live.len();
        let x = &x_gates[first_real[s] * 4 * h..][..n * 4 * h];
        for (g, x) in gates.chunks_mut(4 * h).zip(x.chunks(4 * h)) {
            for ((g, &x), &b) in g.iter_mut().zip(x).zip(bias) {
                *g = x + b;
            }
        }
        let h_rows = if n == m {
            &h_prev[..]
        } else {
            for (dst, &r) in h_live.chunks_mut(h).zip(&live) {
                dst.copy_from_slice(&h_prev[r * h..][..h]);
            }
            &h_live[..n * h]
        };
        matmul_rhs(
            (n, 4 * h, h),
            &mut gates[..n * 4 * h],
            true,
            (h_rows, false),
            w_hh_t,
            Compute::new(d.precision, 1),
        );
        for ((g, a), &r) in gates
            .chunks(4 * h)
            .zip(out.acts[s].chunks_mut(4 * h))
            .zip(&live)
        {
            let (hp, cp) = (&mut h_prev[r * h..][..h], &mut c_prev[r * h..][..h]);
            lstm_cell_row(g, a, cp, hp);
        }
        // Padded rows keep their state, and output it again.
        out.h[s].copy_from_slice(&h_prev);
        out.cells[s].copy_from_slice(&c_prev);
    }
}

/// The chunk-local indices of the rows of `rows` that are real at step `s`.
fn live_rows(
    keep: Option<&[bool]>,
    s: usize,
    b: usize,
    rows: &std::ops::Range<usize>,
) -> Vec<usize> {
    rows.clone()
        .enumerate()
        .filter(|&(_, row)| keep.is_none_or(|k| k[s * b + row]))
        .map(|(r, _)| r)
        .collect()
}

/// Backpropagation through time for one chunk: the gradient of its real rows' input gates,
/// into `d_gates` (per time step, the chunk's real rows in the compact layout).
fn backward_chunk<T: 'static + Real>(
    grad_h: &[T],
    Saved { acts, cells, .. }: Saved<T>,
    w_hh: &Rhs<T>,
    keep: Option<&[bool]>,
    d: Dims,
    (rows, first_real): (std::ops::Range<usize>, &[usize]),
    mut d_gates: Vec<&mut [T]>,
) {
    let (h, m) = (d.h, rows.len());
    let zero = T::default();
    let mut dh_next = vec![zero; m * h]; // gradient reaching h from later steps
    let mut dc_next = vec![zero; m * h];
    let mut dh_from_gates = vec![zero; m * h];
    let zeros = vec![zero; h]; // the cell state before the first step
                               // The hidden and cell states are laid out [T, B, .] for the whole batch.
    let at = |s: usize, r: usize, width: usize| (s * d.b + rows.start + r) * width;
    for k in (0..d.t).rev() {
        let s = d.time(k);
        let prev = (k > 0).then(|| d.time(k - 1));
        let dg = &mut *d_gates[s];
        for (r, dh) in dh_next.chunks_mut(h).enumerate() {
            for (x, g) in dh.iter_mut().zip(&grad_h[at(s, r, h)..][..h]) {
                *x += *g;
            }
        }
        // Padded rows passed their state through unchanged: so do its gradients.
        let live = live_rows(keep, s, d.b, &rows);
        let n = live.len();
        let step_acts = &acts[first_real[s] * 4 * h..][..n * 4 * h];
        for ((a, dgr), &r) in step_acts.chunks(4 * h).zip(dg.chunks_mut(4 * h)).zip(&live) {
            let c = &cells[at(s, r, h)..][..h];
            let c_prev = prev.map_or(&zeros[..], |p| &cells[at(p, r, h)..][..h]);
            let dh = &mut dh_next[r * h..][..h];
            let dc = &mut dc_next[r * h..][..h];
            lstm_cell_row_backward(a, c, c_prev, dh, dc, dgr);
        }
        // dh_prev = dgates W_hh for the real rows only (consecutive in `dg`).
        matmul_rhs(
            (n, h, 4 * h),
            &mut dh_from_gates[..n * h],
            false,
            (&dg[..], false),
            w_hh,
            Compute::new(d.precision, 1),
        );
        for (src, &r) in dh_from_gates.chunks(h).zip(&live) {
            dh_next[r * h..][..h].copy_from_slice(src);
        }
    }
}

/// The compact layout of the `(step, row)` pairs that are real: step by step in time order,
/// each step's real rows in row order (the input projection is computed in this order, over
/// the real pairs only). Per-step values that are `[T, B, width]` for the whole batch would
/// hold padding that is zeroed, scattered into and gathered out of, and never used: the input
/// gates, the gate activations and their gradients are kept compact instead.
struct Compact {
    /// Per chunk, per time step: the compact index of the chunk's first real row at that
    /// step (its real rows there follow it).
    first_real: Vec<Vec<usize>>,
    /// Per chunk, per time step: how many of its rows are real.
    real: Vec<Vec<usize>>,
    /// All real pairs.
    total: usize,
}

impl Compact {
    fn new(keep: Option<&[bool]>, d: Dims, chunks: &[std::ops::Range<usize>]) -> Self {
        let mut first_real = vec![vec![0; d.t]; chunks.len()];
        let mut real = vec![vec![0; d.t]; chunks.len()];
        let mut total = 0;
        for s in 0..d.t {
            for (c, rows) in chunks.iter().enumerate() {
                let n = rows
                    .clone()
                    .filter(|&row| keep.is_none_or(|k| k[s * d.b + row]))
                    .count();
                first_real[c][s] = total;
                real[c][s] = n;
                total += n;
            }
        }
        Self {
            first_real,
            real,
            total,
        }
    }

    /// Splits a compact buffer of `width` values per pair into each chunk's rows of every
    /// step (indexed by time step), so that the chunks write in place, in parallel.
    fn parts<'a, T>(&self, all: &'a mut [T], width: usize) -> Vec<Vec<&'a mut [T]>> {
        let chunks = self.real.len();
        let steps = self.real.first().map_or(0, Vec::len);
        let mut parts: Vec<Vec<&mut [T]>> = (0..chunks).map(|_| Vec::new()).collect();
        let mut rest = all;
        for s in 0..steps {
            for (part, real) in parts.iter_mut().zip(&self.real) {
                let (mine, tail) = std::mem::take(&mut rest).split_at_mut(real[s] * width);
                part.push(mine);
                rest = tail;
            }
        }
        parts
    }
}

/// Splits a time-major `[T, B, width]` buffer into each chunk's rows of every step, so that
/// the chunks write their results in place, in parallel (chunk-local buffers copied together
/// afterwards cost a copy and a zeroing pass of every output).
fn rows_of_chunks<'a, T>(
    all: &'a mut [T],
    chunks: &[std::ops::Range<usize>],
    b: usize,
    width: usize,
) -> Vec<Vec<&'a mut [T]>> {
    let mut parts: Vec<Vec<&mut [T]>> = chunks.iter().map(|_| Vec::new()).collect();
    if b * width == 0 {
        return parts;
    }
    for step in all.chunks_mut(b * width) {
        // The chunks are consecutive ranges covering 0..b, in order.
        let mut rest = step;
        for (part, rows) in parts.iter_mut().zip(chunks) {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * width);
            part.push(mine);
            rest = tail;
        }
    }
    parts
}

/// `W_hh [4H, H]`, row `g` at `data[g * row_stride..][..H]` (`row_stride` H + 1 inside the
/// layer's `[W_hh | bias]`).
#[derive(Clone, Copy)]
pub struct RecurrentWeight<'a, T> {
    pub data: &'a [T],
    pub row_stride: usize,
}

/// Runs the recurrence over `x_gates`, the input projection of the real `(step, row)` pairs in
/// the compact layout ([`Compact`]: `[real pairs, 4H]`); returns the hidden states and cell
/// states, time-major `[T, B, H]`, and the real pairs' gate activations, compact.
pub fn forward<'w, T: 'static + Real>(
    x_gates: &[T],
    w_hh: RecurrentWeight<'w, T>,
    w_hh_t_packed: Option<&'w PackedB>,
    bias: &[T],
    keep: Option<&[bool]>,
    d: Dims,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let chunks = d.chunks();
    let compact = Compact::new(keep, d, &chunks);
    assert_eq!(
        x_gates.len(),
        compact.total * 4 * d.h,
        "lstm: input gates of other pairs"
    );
    // W_hh^T [H, 4H], read from W_hh's storage: f32 is packed once here for every step (a
    // transposed copy first was serial work on the calling thread), unless it comes packed.
    let w_hh_t = Rhs::strided_prepacked(
        w_hh.data,
        (d.h, 4 * d.h),
        (1, w_hh.row_stride),
        d.precision,
        w_hh_t_packed,
    );
    let (mut h, mut acts, mut cells) = (
        zeros(d.t * d.b * d.h),
        zeros(compact.total * 4 * d.h),
        zeros(d.t * d.b * d.h),
    );
    let parts: Vec<_> = rows_of_chunks(&mut h, &chunks, d.b, d.h)
        .into_iter()
        .zip(compact.parts(&mut acts, 4 * d.h))
        .zip(rows_of_chunks(&mut cells, &chunks, d.b, d.h))
        .zip(chunks.iter().cloned().zip(&compact.first_real))
        .map(|(((h, acts), cells), rows)| (rows, ChunkForward { h, acts, cells }))
        .collect();
    parts.into_par_iter().for_each(|((rows, first_real), out)| {
        forward_chunk(x_gates, bias, &w_hh_t, keep, d, (rows, first_real), out)
    });
    (h, acts, cells)
}

/// What [`backward`] reads of [`forward`]'s results: the hidden and cell states after each
/// step, `[T, B, H]` time-major, and the gate activations of the real pairs (compact).
#[derive(Clone, Copy)]
pub struct Saved<'a, T> {
    pub h: &'a [T],
    pub acts: &'a [T],
    pub cells: &'a [T],
}

/// Writes the gradients of the input projection at the real `(step, row)` pairs `real` (the
/// indices `s * B + b` where `keep` holds, increasing: the compact layout) into `dg_real`
/// (`[real pairs, 4H]`, zeroed: the caller's buffer, so the gradients can go out as one
/// tensor without a copy), and returns those of `W_hh` `[4H, H]` and of the bias, from what
/// [`forward`] returned.
pub fn backward<T: 'static + Real>(
    grad_h: &[T],
    saved: Saved<T>,
    w_hh: RecurrentWeight<T>,
    keep: Option<&[bool]>,
    real: &[usize],
    d: Dims,
    dg_real: &mut [T],
) -> (Vec<T>, Vec<T>) {
    let chunks = d.chunks();
    let compact = Compact::new(keep, d, &chunks);
    assert_eq!(
        real.len(),
        compact.total,
        "lstm: real pairs differ from the mask"
    );
    let w_hh = Rhs::strided(w_hh.data, (4 * d.h, d.h), (w_hh.row_stride, 1), d.precision);
    assert_eq!(
        dg_real.len(),
        compact.total * 4 * d.h,
        "lstm: gate gradients for {} real pairs",
        compact.total
    );
    let parts: Vec<_> = chunks
        .iter()
        .cloned()
        .zip(&compact.first_real)
        .zip(compact.parts(dg_real, 4 * d.h))
        .collect();
    parts
        .into_par_iter()
        .for_each(|((rows, first_real), d_gates)| {
            backward_chunk(grad_h, saved, &w_hh, keep, d, (rows, first_real), d_gates)
        });
    // h_prev of every real pair: the output of the previous processing step (zero before the
    // first), gathered straight into the compact order.
    let (t, bh) = (d.t, d.b * d.h);
    let mut previous_step = vec![None; t];
    for k in 1..t {
        previous_step[d.time(k)] = Some(d.time(k - 1));
    }
    let mut h_prev_real = zeros(real.len() * d.h);
    h_prev_real
        .par_chunks_mut(d.h.max(1))
        .zip(real.par_iter())
        .for_each(|(dst, &pair)| {
            let (s, row) = (pair / d.b, pair % d.b);
            if let Some(p) = previous_step[s] {
                dst.copy_from_slice(&saved.h[p * bh + row * d.h..][..d.h]);
            }
        });
    // dW_hh = sum over the real (step, row) pairs of dgates^T h_prev: one [4H, pairs] x
    // [pairs, H] product (the gradient of a padded step's gates is 0).
    let d_w = product(
        (4 * d.h, d.h, real.len()),
        (&*dg_real, true),
        (&h_prev_real, false),
        None,
        Compute::all_threads(d.precision),
    );
    let d_bias = column_sums(dg_real, 4 * d.h);
    (d_w, d_bias)
}
