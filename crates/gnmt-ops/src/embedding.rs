//! Token embeddings: a lookup whose backward pass builds the table's gradient in one parallel
//! pass.
//!
//! candle's `index_select` backward copies a zero table, adds the looked-up rows' gradients
//! into the copy, and the backward engine then adds that into another zero table: for an
//! `[8000, 256]` table, five full passes on the calling thread, where one zero fill and the
//! rows' additions are needed. Here the table's gradient is written once by
//! `gnmt_kernels::embedding::table_gradient` (in parallel; each row adds its positions in
//! order: candle's order, so the same bits), or on a GPU by `gnmt-cuda-kernels`'
//! `embedding.cu` (one block per table row, the same order, no atomics, where candle's CUDA
//! `index_add` runs one thread per column over every position), and handed to
//! [`crate::param_grads`] when a collector is open.

use candle::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use gnmt_kernels::buffers::gather_rows;
use gnmt_kernels::embedding::table_gradient;

use crate::dispatch::{self, Float, Kernel};
use crate::storage::contiguous_slice;
use crate::Kernels;

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

    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// `ids [..]` (u32) -> `[.., dim]`.
    pub fn forward(&self, ids: &Tensor, kernels: Kernels) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        let ids = ids.flatten_all()?;
        let device = self.table.device();
        let fused = match self.table.dtype() {
            DType::F32 => kernels.fused_on(device).is_some() || kernels.cuda_on(device),
            DType::F64 => kernels.fused_on(device).is_some(),
            _ => false,
        };
        let rows = if fused {
            self.table.contiguous()?.apply_op2(&ids, Lookup)?
        } else {
            // The reference, and half-precision tables (inference only): candle's lookup.
            self.table.index_select(&ids, 0)?
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

/// The rows of the table the ids name.
struct Rows<'a> {
    ids: &'a [u32],
}

impl Kernel<1> for Rows<'_> {
    const NAME: &'static str = "embedding";

    fn run<T: Float>(&self, [(table, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        let dim = shape.dims2()?.1;
        let rows: Vec<usize> = self.ids.iter().map(|&id| id as usize).collect();
        Ok((
            gather_rows(table, dim, &rows),
            Shape::from((rows.len(), dim)),
        ))
    }
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
        let ids = checked_ids(s2, l2, l1.shape().dims2()?.0)?;
        dispatch::run(&Rows { ids }, [(s1, l1)])
    }

    /// candle's own lookup on the GPU. The ids are not checked here (that would copy them to
    /// the host; candle's kernel stops on an id beyond the table with a device assertion):
    /// they come from the model's tokenizer, whose size loading checks against the table.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, dim) = (l2.shape().elem_count(), l1.shape().dims2()?.1);
        Ok((s1.index_select(s2, l1, l2, 0)?, Shape::from((n, dim))))
    }

    fn bwd(
        &self,
        table: &Tensor,
        ids: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let vocab = table.dims2()?.0;
        let d_table = grad
            .contiguous()?
            .apply_op2_no_bwd(ids, &TableGradient { vocab })?;
        Ok((crate::param_grads::deliver(table, d_table), None))
    }
}

/// `(grad [N, E], ids [N]) -> d_table [vocab, E]`: row `v` is the sum, in position order, of
/// the gradients of the positions that looked up `v`.
struct TableGradient {
    vocab: usize,
}

/// [`TableGradient`] with its ids read.
struct TableRows<'a> {
    ids: &'a [u32],
    vocab: usize,
}

impl Kernel<1> for TableRows<'_> {
    const NAME: &'static str = "embedding";

    fn run<T: Float>(&self, [(grad, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        let dim = shape.dims2()?.1;
        let d_table = table_gradient(grad, self.ids, self.vocab, dim);
        Ok((d_table, Shape::from((self.vocab, dim))))
    }
}

impl CustomOp2 for TableGradient {
    fn name(&self) -> &'static str {
        "embedding-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ids = checked_ids(s2, l2, self.vocab)?;
        if l1.shape().dims2()?.0 != ids.len() {
            candle::bail!("embedding: gradient {:?} for {} ids", l1.shape(), ids.len())
        }
        let kernel = TableRows {
            ids,
            vocab: self.vocab,
        };
        dispatch::run(&kernel, [(s1, l1)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        on_gpu::table_gradient(self.vocab, (s1, l1), (s2, l2))
    }
}

/// The table's gradient on a GPU: `gnmt-cuda-kernels`' `embedding.cu` (f32).
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape};
    use gnmt_cuda_kernels::{embedding, Launch};

    use crate::cuda::{config, dim, function, output, view};

    const OP: &str = "embedding";

    pub(super) fn table_gradient(
        vocab: usize,
        (grad, lg): (&CudaStorage, &Layout),
        (ids, li): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (n, width) = lg.shape().dims2()?;
        if li.shape().elem_count() != n {
            candle::bail!("{OP}: gradient {:?} for {:?} ids", lg.shape(), li.shape())
        }
        let device = grad.device.clone();
        let (grad, ids) = (view::<f32>(grad, lg, OP)?, view::<u32>(ids, li, OP)?);
        let mut d_table = output::<f32>(&device, vocab * width)?;
        let sizes = [dim(vocab, OP)?, dim(n, OP)?, dim(width, OP)?];
        let func = function(&device, embedding::MODULE, embedding::BACKWARD)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        for size in &sizes {
            args.arg(size);
        }
        args.arg(&grad).arg(&ids).arg(&mut d_table);
        // SAFETY: grad [n, width], ids [n] and d_table [vocab, width], written in full.
        unsafe { args.launch(config(Launch::rows(vocab))) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(d_table, device),
            Shape::from((vocab, width)),
        ))
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
        let embedding = TokenEmbedding::new(table.as_tensor().clone())?;
        let ours = embedding.forward(&ids, Kernels::default())?;
        let dims = [2, 4, dim];
        let reference = embedding.forward(&ids, Kernels::Reference)?;
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
            .forward(&Tensor::new(&[1u32, 10], &Device::Cpu)?, Kernels::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token id 10 outside the vocabulary of 10"),
            "{err}"
        );
        Ok(())
    }
}
