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
use crate::{Float, Kernels};

/// The encoder side attention reads: `keys [B, S, A]` (the key projection with the
/// scorer's bias), `values [B, S, H]` (what the context averages), `mask [B, S]` (1 real,
/// 0 pad).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    pub mask: &'a Tensor,
}

/// Whether [`attend`] is the step `kernels` run for queries `q`: the fused kernels on the CPU,
/// or on a GPU in f32; otherwise the composite (scores, masked softmax, weighted sum).
pub fn runs_fused(q: &Tensor, kernels: Kernels) -> bool {
    kernels.fused_on(q.device()).is_some()
        || (kernels.cuda_on(q.device()) && q.dtype() == candle::DType::F32)
}

/// (context `[B, H]`, weights `[B, S]`) for `q [B, A]`, in `q`'s dtype: f32 or f64 on the
/// CPU, f32 on a GPU (`gnmt-cuda-kernels`' `attend_step`, the same arithmetic in the same
/// order: one launch per step, and a row's bits independent of its batch there too).
pub fn attend(
    q: &Tensor,
    v: &Tensor,
    source: Source,
    memory_rows: Option<&[u32]>,
) -> Result<(Tensor, Tensor)> {
    let dims = dims(q, source, memory_rows)?;
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() {
        return on_gpu::attend(q, v, source, memory_rows, dims);
    }
    match q.dtype() {
        candle::DType::F32 => attend_rows::<f32>(q, v, source, memory_rows, dims),
        candle::DType::F64 => attend_rows::<f64>(q, v, source, memory_rows, dims),
        other => candle::bail!("attention step: no kernel for {other:?}"),
    }
}

/// The sizes of a step: queries, and the memory's sentences, positions and units.
#[derive(Clone, Copy)]
struct Dims {
    /// Query rows `B`.
    rows: usize,
    /// The scorer's width `A`.
    a: usize,
    /// The memory's positions `S` and the values' width `H`.
    s: usize,
    h: usize,
}

fn dims(q: &Tensor, source: Source, memory_rows: Option<&[u32]>) -> Result<Dims> {
    let (rows, a) = q.dims2()?;
    let (memory, s, h) = source.values.dims3()?;
    let rows_fit = match memory_rows {
        Some(map) => map.len() == rows && map.iter().all(|&m| (m as usize) < memory),
        None => rows == memory,
    };
    if !rows_fit || source.keys.dims3()? != (memory, s, a) || source.mask.dims2()? != (memory, s) {
        candle::bail!(
            "attention step: queries {:?} do not fit the memory {:?}",
            q.shape(),
            source.values.shape()
        )
    }
    Ok(Dims { rows, a, s, h })
}

fn attend_rows<T: Float>(
    q: &Tensor,
    v: &Tensor,
    source: Source,
    memory_rows: Option<&[u32]>,
    Dims { rows: b, a, s, h }: Dims,
) -> Result<(Tensor, Tensor)> {
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

/// The step on a GPU: one launch of `attend_step` over every query row, its weights and
/// context written into one buffer and split.
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
    use gnmt_cuda_kernels::{attention, Launch};

    use super::{Dims, Source};
    use crate::cuda::{config, dim, function, output, read_tensor, view};
    use crate::storage::split;

    const OP: &str = "attention step";

    pub(super) fn attend(
        q: &Tensor,
        v: &Tensor,
        source: Source,
        memory_rows: Option<&[u32]>,
        d: Dims,
    ) -> Result<(Tensor, Tensor)> {
        let map: Vec<u32> = match memory_rows {
            Some(map) => map.to_vec(),
            None => (0..d.rows as u32).collect(),
        };
        let step = Step {
            v: v.contiguous()?,
            keys: source.keys.contiguous()?,
            values: source.values.contiguous()?,
            mask: source.mask.contiguous()?,
            memory_rows: Tensor::from_vec(map, d.rows, q.device())?,
            d,
        };
        let joined = q.contiguous()?.apply_op1_no_bwd(&step)?;
        let [weights, context] = split(
            &joined,
            [Shape::from((d.rows, d.s)), Shape::from((d.rows, d.h))],
        )?;
        Ok((context, weights))
    }

    /// `q [rows, A]` -> `[weights [rows, S] | context [rows, H]]`, flat.
    struct Step {
        v: Tensor,
        keys: Tensor,
        values: Tensor,
        mask: Tensor,
        memory_rows: Tensor,
        d: Dims,
    }

    impl CustomOp1 for Step {
        fn name(&self) -> &'static str {
            "attention-step"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle::bail!("{OP}: the GPU's kernel was given a CPU tensor")
        }

        fn cuda_fwd(&self, q: &CudaStorage, lq: &Layout) -> Result<(CudaStorage, Shape)> {
            let d = self.d;
            let device = q.device.clone();
            let q = view::<f32>(q, lq, OP)?;
            let n = d.rows * (d.s + d.h);
            let mut joined = output::<f32>(&device, n)?;
            let sizes = [
                dim(d.rows, OP)?,
                dim(d.s, OP)?,
                dim(d.a, OP)?,
                dim(d.h, OP)?,
            ];
            let func = function(&device, attention::MODULE, attention::STEP)?;
            read_tensor::<f32, _>(&self.v, OP, |v| {
                read_tensor::<f32, _>(&self.keys, OP, |keys| {
                    read_tensor::<f32, _>(&self.values, OP, |values| {
                        read_tensor::<f32, _>(&self.mask, OP, |mask| {
                            read_tensor::<u32, _>(&self.memory_rows, OP, |memory_rows| {
                                let (mut weights, mut context) = joined.split_at_mut(d.rows * d.s);
                                let stream = device.cuda_stream();
                                let mut args = stream.launch_builder(&func);
                                for size in &sizes {
                                    args.arg(size);
                                }
                                args.arg(&q)
                                    .arg(&keys)
                                    .arg(&v)
                                    .arg(&mask)
                                    .arg(&values)
                                    .arg(&memory_rows)
                                    .arg(&mut weights)
                                    .arg(&mut context);
                                // SAFETY: q [rows, A], keys [B', S, A], v [A], mask [B', S],
                                // values [B', S, H], memory_rows [rows] within B' (checked),
                                // weights [rows, S] and context [rows, H], written in full.
                                unsafe { args.launch(config(Launch::rows(d.rows))) }.w()?;
                                Ok(())
                            })
                        })
                    })
                })
            })?;
            Ok((CudaStorage::wrap_cuda_slice(joined, device), Shape::from(n)))
        }
    }
}
