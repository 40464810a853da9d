//! Decoding's attention step as one fused pass per row: for projected queries `q [B, A]` and
//! the scorer's `v [A]`, softmax over the real source positions of `v . tanh(q + k)` and the
//! context those weights average, reading the encoder side in place.
//!
//! Row `r` attends over memory row `memory_rows[r]` (row `r` without a map): beam search
//! follows its hypotheses with a map instead of copying the memory. Unlike candle's softmax
//! and batched matmul, whose sums are split into lanes by the padded source length, every sum
//! here runs over the row's real positions in order, so a sentence translates to the same
//! bits whatever batch it is in. No gradient: decoding only.

use candle::{Result, Tensor};
use rayon::prelude::*;

use gnmt_kernels::attention::attend_row;

use crate::storage::tensor_slice;
use crate::Float;

/// The encoder side attention reads: `keys [B, S, A]` (the key projection with the
/// scorer's bias), `values [B, S, H]` (what the context averages), `mask [B, S]` (1 real,
/// 0 pad).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub mask: &'a Tensor,
}

/// (context `[B, H]`, weights `[B, S]`) for `q [B, A]`, in `q`'s dtype (f32 or f64).
pub fn attend(
    q: &Tensor,
    v: &Tensor,
    source: Source,
    memory_rows: Option<&[u32]>,
) -> Result<(Tensor, Tensor)> {
    match q.dtype() {
        candle::DType::F32 => attend_rows::<f32>(q, v, source, memory_rows),
        candle::DType::F64 => attend_rows::<f64>(q, v, source, memory_rows),
        other => candle::bail!("attention step: no kernel for {other:?}"),
    }
}

fn attend_rows<T: Float>(
    q: &Tensor,
    v: &Tensor,
    source: Source,
    memory_rows: Option<&[u32]>,
) -> Result<(Tensor, Tensor)> {
    let (b, a) = q.dims2()?;
    let (bv, s, h) = source.values.dims3()?;
    let rows_fit = match memory_rows {
        Some(map) => map.len() == b && map.iter().all(|&m| (m as usize) < bv),
        None => b == bv,
    };
    if !rows_fit || source.keys.dims3()? != (bv, s, a) || source.mask.dims2()? != (bv, s) {
        candle::bail!(
            "attention step: queries {:?} do not fit the memory {:?}",
            q.shape(),
            source.values.shape()
        )
    }
    let (q, v) = (q.contiguous()?, v.contiguous()?);
    let (keys, values, mask) = (
        source.keys.contiguous()?,
        source.values.contiguous()?,
        source.mask.contiguous()?,
    );
    let guards = [&q, &v, &keys, &values, &mask].map(|t| t.storage_and_layout());
    let [q, v, keys, values, mask] =
        [0, 1, 2, 3, 4].map(|i| tensor_slice::<T>(&guards[i].0, guards[i].1, "attention step"));
    let (q, v, keys, values, mask) = (q?, v?, keys?, values?, mask?);
    let mut weights = vec![T::default(); b * s];
    let mut context = vec![T::default(); b * h];
    weights
        .par_chunks_mut(s.max(1))
        .zip(context.par_chunks_mut(h.max(1)))
        .enumerate()
        .for_each(|(r, (w, c))| {
            let m = memory_rows.map_or(r, |map| map[r] as usize);
            attend_row(
                &q[r * a..][..a],
                &keys[m * s * a..][..s * a],
                v,
                &mask[m * s..][..s],
                &values[m * s * h..][..s * h],
                w,
                c,
            )
        });
    let device = source.values.device();
    Ok((
        Tensor::from_vec(context, (b, h), device)?,
        Tensor::from_vec(weights, (b, s), device)?,
    ))
}
