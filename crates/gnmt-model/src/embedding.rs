//! Token embeddings: a lookup whose backward pass builds the table's gradient in one parallel
//! pass.
//!
//! candle's `index_select` backward copies a zero table, adds the looked-up rows' gradients
//! into the copy, and the backward engine then adds that into another zero table: for an
//! `[8000, 256]` table, five full passes on the calling thread, where one zero fill and the
//! rows' additions are needed. Here the table's gradient is zeroed and filled in parallel
//! (each thread owns a range of table rows and adds, in position order, the gradients of the
//! positions that looked a row of it up: candle's order, so the same bits) and handed to
//! [`crate::param_grads`] when a collector is open.

use candle::backend::BackendStorage;
use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gnmt_kernels::buffers::{gather_rows, zeros};
use gnmt_kernels::Real;

use crate::storage::{contiguous_slice, tensor_slice};

/// Table rows one parallel task of the backward pass owns.
const ROWS_PER_TASK: usize = 64;

/// A `[vocab, dim]` embedding table.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    table: Tensor,
}

impl TokenEmbedding {
    pub fn new(table: Tensor) -> Result<Self> {
        table.dims2()?;
        Ok(Self { table })
    }

    /// `ids [..]` (u32) -> `[.., dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        let ids = ids.flatten_all()?;
        let rows = match self.table.dtype() {
            DType::F32 | DType::F64 => self.table.contiguous()?.apply_op2(&ids, Lookup)?,
            // Half-precision tables (inference only) keep candle's lookup.
            _ => self.table.index_select(&ids, 0)?,
        };
        rows.reshape(dims)
    }
}

/// `table [V, E]`, `ids [N]` (u32) -> `[N, E]`.
struct Lookup;

/// The ids as a slice, each checked against the vocabulary size.
fn checked_ids<'a>(s: &'a CpuStorage, l: &Layout, vocab: usize) -> Result<&'a [u32]> {
    let CpuStorage::U32(ids) = s else {
        candle::bail!("embedding: token ids must be u32, got {:?}", s.dtype())
    };
    let ids = contiguous_slice(ids, l, "embedding")?;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        candle::bail!("embedding: token id {bad} outside the vocabulary of {vocab}")
    }
    Ok(ids)
}

fn lookup<T: Copy + Default + Send + Sync>(table: &[T], ids: &[u32], dim: usize) -> Vec<T> {
    let rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
    gather_rows(table, dim, &rows)
}

/// The table's gradient: row `v` is the sum, in position order, of the gradients of the
/// positions that looked up `v`.
fn table_gradient<T: Real>(grad: &[T], ids: &[u32], (vocab, dim): (usize, usize)) -> Vec<T> {
    let mut d_table = zeros(vocab * dim);
    if dim == 0 {
        return d_table;
    }
    d_table
        .par_chunks_mut(ROWS_PER_TASK * dim)
        .enumerate()
        .for_each(|(task, block)| {
            let first = task * ROWS_PER_TASK;
            let rows = first..first + block.len() / dim;
            for (position, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if rows.contains(&id) {
                    let dst = &mut block[(id - first) * dim..][..dim];
                    for (d, &g) in dst.iter_mut().zip(&grad[position * dim..][..dim]) {
                        *d += g;
                    }
                }
            }
        });
    d_table
}

impl CustomOp2 for Lookup {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (vocab, dim) = l1.shape().dims2()?;
        let ids = checked_ids(s2, l2, vocab)?;
        let rows = match s1 {
            CpuStorage::F32(t) => {
                CpuStorage::F32(lookup(contiguous_slice(t, l1, "embedding")?, ids, dim))
            }
            CpuStorage::F64(t) => {
                CpuStorage::F64(lookup(contiguous_slice(t, l1, "embedding")?, ids, dim))
            }
            other => candle::bail!("embedding: f32 or f64 tables only, got {:?}", other.dtype()),
        };
        Ok((rows, Shape::from((ids.len(), dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (vocab, dim) = table.dims2()?;
        let (ids_c, grad_c) = (ids.contiguous()?, grad.contiguous()?);
        let (is, gs) = (ids_c.storage_and_layout(), grad_c.storage_and_layout());
        let ids = match &*is.0 {
            candle::Storage::Cpu(s) => checked_ids(s, is.1, vocab)?,
            _ => candle::bail!("embedding: CPU tensors only"),
        };
        let d_table = match grad.dtype() {
            DType::F32 => Tensor::from_vec(
                table_gradient::<f32>(tensor_slice(&gs.0, gs.1, "embedding")?, ids, (vocab, dim)),
                (vocab, dim),
                table.device(),
            )?,
            DType::F64 => Tensor::from_vec(
                table_gradient::<f64>(tensor_slice(&gs.0, gs.1, "embedding")?, ids, (vocab, dim)),
                (vocab, dim),
                table.device(),
            )?,
            other => candle::bail!("embedding: no backward for {other:?}"),
        };
        Ok((crate::param_grads::deliver(table, d_table), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    /// Forward values and table gradients (through a plain backward and through the
    /// collector) against candle's `index_select`, with repeated ids and ids beyond the first
    /// task's rows.
    fn agrees_with_index_select(dtype: DType) -> Result<()> {
        let dev = Device::Cpu;
        let (vocab, dim) = (150, 5);
        let table =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (vocab, dim), &dev)?.to_dtype(dtype)?)?;
        let ids = Tensor::new(&[[3u32, 149, 3, 64], [0, 3, 70, 64]], &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 4, dim), &dev)?.to_dtype(dtype)?;
        let ours = TokenEmbedding::new(table.as_tensor().clone())?.forward(&ids)?;
        let dims = [2, 4, dim];
        let reference = table
            .as_tensor()
            .index_select(&ids.flatten_all()?, 0)?
            .reshape(&dims[..])?;
        assert_eq!(ours.dims(), &dims);
        let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>();
        assert_eq!(flat(&ours)?, flat(&reference)?);
        let expected = (reference * &probe)?.sum_all()?.backward()?;
        let expected = flat(expected.get(&table).unwrap())?;
        let loss = (ours * &probe)?.sum_all()?;
        let plain = loss.backward()?;
        assert_eq!(flat(plain.get(&table).unwrap())?, expected);
        let collected = crate::param_grads::backward(&loss)?;
        assert_eq!(flat(collected.get(&table).unwrap())?, expected);
        Ok(())
    }

    #[test]
    fn f32_agrees_with_index_select() -> Result<()> {
        agrees_with_index_select(DType::F32)
    }

    #[test]
    fn f64_agrees_with_index_select() -> Result<()> {
        agrees_with_index_select(DType::F64)
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_refused() -> Result<()> {
        let table = Tensor::zeros((10, 3), DType::F32, &Device::Cpu)?;
        let err = TokenEmbedding::new(table)?
            .forward(&Tensor::new(&[1u32, 10], &Device::Cpu)?)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token id 10 outside the vocabulary of 10"),
            "{err}"
        );
        Ok(())
    }
}
