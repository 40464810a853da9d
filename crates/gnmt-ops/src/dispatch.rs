//! The one place where a CPU storage's dtype picks the element type a fused kernel runs in.
//!
//! An op's `cpu_fwd` hands its storages to [`run`] with a [`Kernel`]: [`run`] checks that they
//! share one float dtype and are contiguous, and calls the kernel's generic body with slices of
//! that type.

use candle::backend::BackendStorage;
use candle::{CpuStorage, DType, Layout, Result, Shape, WithDType};

use gnmt_kernels::Real;

use crate::storage::contiguous_slice;

/// The element types the fused kernels run in: f32 (training and decoding) and f64 (the
/// gradient checks).
pub trait Float: 'static + Real + WithDType {}

impl<T: 'static + Real + WithDType> Float for T {}

/// The body of a fused op over `N` float inputs of one dtype.
pub(crate) trait Kernel<const N: usize> {
    /// Names the op in errors.
    const NAME: &'static str;

    /// Each input as a contiguous slice with its shape -> the output and its shape.
    fn run<T: Float>(&self, inputs: [(&[T], &Shape); N]) -> Result<(Vec<T>, Shape)>;
}

/// Runs `kernel` on `inputs` in their common dtype (f32 or f64).
pub(crate) fn run<K: Kernel<N>, const N: usize>(
    kernel: &K,
    inputs: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    let dtype = match inputs.first() {
        Some((s, _)) => s.dtype(),
        None => DType::F32,
    };
    if let Some((s, _)) = inputs.iter().find(|(s, _)| s.dtype() != dtype) {
        candle::bail!(
            "{}: inputs of one dtype only, got {dtype:?} and {:?}",
            K::NAME,
            s.dtype()
        )
    }
    match dtype {
        DType::F32 => typed::<f32, K, N>(kernel, inputs),
        DType::F64 => typed::<f64, K, N>(kernel, inputs),
        other => candle::bail!("{}: f32 or f64 only, got {other:?}", K::NAME),
    }
}

fn typed<T: Float, K: Kernel<N>, const N: usize>(
    kernel: &K,
    inputs: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in inputs {
        let data = contiguous_slice(T::cpu_storage_as_slice(storage)?, layout, K::NAME)?;
        slices.push((data, layout.shape()));
    }
    let slices: [(&[T], &Shape); N] = slices
        .try_into()
        .unwrap_or_else(|_| unreachable!("one slice per input"));
    let (out, shape) = kernel.run(slices)?;
    if out.len() != shape.elem_count() {
        candle::bail!("{}: {} values for {shape:?}", K::NAME, out.len())
    }
    Ok((T::to_cpu_storage_owned(out), shape))
}

/// The body of a fused op that overwrites its first input with the result, reading `N` more
/// inputs of the same float dtype.
pub(crate) trait KernelInPlace<const N: usize> {
    const NAME: &'static str;

    fn run<T: Float>(&self, dst: (&mut [T], &Shape), inputs: [(&[T], &Shape); N]) -> Result<()>;
}

/// Runs `kernel` on `dst` and `inputs` in their common dtype (f32 or f64).
pub(crate) fn run_in_place<K: KernelInPlace<N>, const N: usize>(
    kernel: &K,
    (dst, dst_layout): (&mut CpuStorage, &Layout),
    inputs: [(&CpuStorage, &Layout); N],
) -> Result<()> {
    let dtype = dst.dtype();
    if let Some((s, _)) = inputs.iter().find(|(s, _)| s.dtype() != dtype) {
        candle::bail!(
            "{}: inputs of one dtype only, got {dtype:?} and {:?}",
            K::NAME,
            s.dtype()
        )
    }
    let Some((start, end)) = dst_layout.contiguous_offsets() else {
        candle::bail!("{}: inputs must be contiguous", K::NAME)
    };
    let shape = dst_layout.shape();
    macro_rules! typed {
        ($t:ty, $dst:expr) => {{
            let mut slices = Vec::with_capacity(N);
            for (storage, layout) in inputs {
                let data = <$t>::cpu_storage_as_slice(storage)?;
                slices.push((contiguous_slice(data, layout, K::NAME)?, layout.shape()));
            }
            let slices: [(&[$t], &Shape); N] = slices
                .try_into()
                .unwrap_or_else(|_| unreachable!("one slice per input"));
            kernel.run((&mut $dst[start..end], shape), slices)
        }};
    }
    match dst {
        CpuStorage::F32(d) => typed!(f32, d),
        CpuStorage::F64(d) => typed!(f64, d),
        other => candle::bail!("{}: f32 or f64 only, got {:?}", K::NAME, other.dtype()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums its two inputs: enough to see the dispatch pick the dtype and check it.
    struct Sum;

    impl Kernel<2> for Sum {
        const NAME: &'static str = "sum";
        fn run<T: Float>(
            &self,
            [(a, shape), (b, _)]: [(&[T], &Shape); 2],
        ) -> Result<(Vec<T>, Shape)> {
            Ok((
                a.iter().zip(b).map(|(&x, &y)| x + y).collect(),
                shape.clone(),
            ))
        }
    }

    #[test]
    fn runs_in_the_inputs_dtype_and_refuses_mixed_or_integer_ones() {
        let layout = Layout::contiguous(2);
        let (f32s, f64s) = (
            CpuStorage::F32(vec![1.0, 2.0]),
            CpuStorage::F64(vec![1.0, 2.0]),
        );
        let (out, _) = run(&Sum, [(&f64s, &layout), (&f64s, &layout)]).unwrap();
        assert!(matches!(out, CpuStorage::F64(v) if v == [2.0, 4.0]));
        let mixed = run(&Sum, [(&f32s, &layout), (&f64s, &layout)]).unwrap_err();
        assert!(
            mixed.to_string().contains("sum: inputs of one dtype only"),
            "{mixed}"
        );
        let ids = CpuStorage::U32(vec![1, 2]);
        let integer = run(&Sum, [(&ids, &layout), (&ids, &layout)]).unwrap_err();
        assert!(integer.to_string().contains("f32 or f64 only"), "{integer}");
    }
}
