//! f32 products on a GPU's tensor cores in TF32 (`--matmul tf32`): the operands' mantissas
//! rounded to 10 bits, the sums in f32 (cuBLAS's `CUBLAS_COMPUTE_32F_FAST_TF32`), about eight
//! times the f32 rate on an H100. Weights, gradients and results stay f32; the products of
//! the backward pass are TF32 products too.
//!
//! candle chooses TF32 through one process-wide switch
//! (`candle::cuda_backend::set_gemm_reduced_precision_f32`), while a precision here belongs to
//! a model ([`crate::Kernels`]). So this operation turns the switch on only around its own
//! launches, under a lock, and restores it: a model in f32 keeps f32 products beside one in
//! TF32. (A product another thread launches through candle directly in that instant could
//! run in TF32 too; gnmt's own products all pass through here or the reference.)
//!
//! On the CPU, which has no TF32 unit, the operation rounds the operands to TF32 and
//! multiplies in f32: what its tests check the operation's shapes, layouts and gradients
//! with. The command line refuses `--matmul tf32` on the CPU.

use candle::backend::BackendStorage;
#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `a b` in TF32, with its backward pass in TF32 too: `a [M, K]`, `b [K, N]` (or with one
/// leading batch dimension on both), f32, any layout candle's matmul takes (a transposed
/// weight among them). Empty products go to candle's matmul.
pub fn tf32_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    tf32_product(a, b, true)
}

fn tf32_product(a: &Tensor, b: &Tensor, with_backward: bool) -> Result<Tensor> {
    let dims = product_dims(a.shape(), b.shape())?;
    let (_, m, n, k) = dims;
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        candle::bail!(
            "tf32 matmul: f32 operands only, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        )
    }
    if m * n * k == 0 {
        return a.matmul(b);
    }
    let op = Tf32Product { dims };
    if with_backward {
        a.apply_op2(b, op)
    } else {
        a.apply_op2_no_bwd(b, &op)
    }
}

/// `(batch, m, n, k)` of `a [.., M, K] x b [.., K, N]`, as candle's storages take them.
fn product_dims(a: &Shape, b: &Shape) -> Result<(usize, usize, usize, usize)> {
    let dims = match (a.dims(), b.dims()) {
        (&[m, k], &[kb, n]) if k == kb => Some((1, m, n, k)),
        (&[ba, m, k], &[bb, kb, n]) if ba == bb && k == kb => Some((ba, m, n, k)),
        _ => None,
    };
    dims.ok_or_else(|| candle::Error::Msg(format!("tf32 matmul: {a:?} and {b:?} do not fit")).bt())
}

/// The shape of the product.
fn product_shape(a: &Shape, (_, m, n, _): (usize, usize, usize, usize)) -> Shape {
    match a.rank() {
        2 => Shape::from((m, n)),
        _ => Shape::from((a.dims()[0], m, n)),
    }
}

struct Tf32Product {
    dims: (usize, usize, usize, usize),
}

impl CustomOp2 for Tf32Product {
    fn name(&self) -> &'static str {
        "matmul-tf32"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let rounded = |s: &CpuStorage, l: &Layout| -> Result<CpuStorage> {
            let CpuStorage::F32(x) = s else {
                candle::bail!("tf32 matmul: f32 operands only, got {:?}", s.dtype())
            };
            Ok(CpuStorage::F32(
                offsets(l)
                    .into_iter()
                    .map(|i| round_to_tf32(x[i]))
                    .collect(),
            ))
        };
        let (a, b) = (rounded(s1, l1)?, rounded(s2, l2)?);
        let (la, lb) = (
            Layout::contiguous(l1.shape().clone()),
            Layout::contiguous(l2.shape().clone()),
        );
        let out = a.matmul(&b, self.dims, &la, &lb)?;
        Ok((out, product_shape(l1.shape(), self.dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let out = with_tf32(|| s1.matmul(s2, self.dims, l1, l2))?;
        Ok((out, product_shape(l1.shape(), self.dims)))
    }

    /// `dA = G B^T`, `dB = A^T G`, in TF32.
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let t = |x: &Tensor| x.transpose(x.rank() - 2, x.rank() - 1);
        let da = tf32_product(grad, &t(b)?, false)?;
        let db = tf32_product(&t(a)?, grad, false)?;
        Ok((Some(da), Some(db)))
    }
}

/// The storage offsets of a layout's elements, in row-major order.
fn offsets(l: &Layout) -> Vec<usize> {
    let mut offsets = vec![l.start_offset()];
    for (&dim, &stride) in l.dims().iter().zip(l.stride()) {
        offsets = offsets
            .iter()
            .flat_map(|&o| (0..dim).map(move |i| o + i * stride))
            .collect();
    }
    offsets
}

/// `x` with its mantissa rounded to TF32's 10 bits, to nearest with ties away from zero (PTX's
/// `cvt.rna.tf32.f32`; a GPU's own conversion may instead truncate, one TF32 unit apart, which
/// the GPU checks' tolerance covers); infinities and NaN pass through.
pub fn round_to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    const DROPPED: u32 = 13;
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(1 << (DROPPED - 1)) & !((1 << DROPPED) - 1);
    f32::from_bits(rounded)
}

/// Runs `launch` with candle's f32 products in TF32, then puts the switch back as it was;
/// the lock keeps two threads from interleaving their switching.
#[cfg(feature = "cuda")]
fn with_tf32<R>(launch: impl FnOnce() -> Result<R>) -> Result<R> {
    use candle::cuda_backend::{gemm_reduced_precision_f32, set_gemm_reduced_precision_f32};
    static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = SWITCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = gemm_reduced_precision_f32();
    set_gemm_reduced_precision_f32(true);
    let result = launch();
    set_gemm_reduced_precision_f32(before);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    fn wave(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * k).sin() * 3.0).collect()
    }

    fn round(t: &Tensor) -> Result<Tensor> {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        let v: Vec<f32> = v.into_iter().map(round_to_tf32).collect();
        Tensor::from_vec(v, t.shape(), t.device())
    }

    /// The tolerance for two f32 sums of the same products in different orders.
    const SUMS: f32 = 1e-5;

    fn max_diff(x: &Tensor, y: &Tensor) -> Result<f32> {
        (x - y)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn rounding_keeps_ten_mantissa_bits_to_nearest_ties_away() {
        let one = 1.0f32.to_bits();
        let ulp = 1 << 13;
        assert_eq!(round_to_tf32(f32::from_bits(one + ulp / 2 - 1)), 1.0);
        assert_eq!(
            round_to_tf32(f32::from_bits(one + ulp / 2)).to_bits(),
            one + ulp
        );
        assert_eq!(
            round_to_tf32(-f32::from_bits(one + ulp / 2)),
            -f32::from_bits(one + ulp)
        );
        assert_eq!(round_to_tf32(1.5), 1.5);
        // The largest finite values round up to infinity.
        assert_eq!(round_to_tf32(f32::MAX), f32::INFINITY);
        assert!(round_to_tf32(f32::NAN).is_nan());
        assert_eq!(round_to_tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        for x in wave(1000, 0.37) {
            let r = round_to_tf32(x);
            assert_eq!(r.to_bits() & (ulp - 1), 0);
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-11), "{x} -> {r}");
        }
    }

    /// Values are the f32 product of the rounded operands (a weight read transposed, as
    /// `x W^T` passes it, and batched); gradients of both operands are the TF32 products
    /// of the rounded gradient and operands. Up to the f32 sums' order (candle's CPU matmul
    /// sums a transposed operand in another order): 1e-5, where TF32's own error is 1e-3 and
    /// more here.
    #[test]
    fn products_and_gradients_are_those_of_rounded_operands() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(wave(6 * 33, 0.37), (6, 33), &dev)?)?;
        let w = Var::from_tensor(&Tensor::from_vec(wave(5 * 33, 0.71), (5, 33), &dev)?)?;
        let probe = Tensor::from_vec(wave(6 * 5, 0.13), (6, 5), &dev)?;
        let got = tf32_matmul(x.as_tensor(), &w.t()?)?;
        let want = round(&x)?.matmul(&round(&w)?.t()?)?;
        assert!(max_diff(&got, &want)? < SUMS);
        let exact = x.matmul(&w.t()?)?;
        let off = max_diff(&got, &exact)?;
        assert!(
            off > 0.0 && off < 0.05,
            "TF32 should differ a little from f32: {off}"
        );

        let grads = (got * &probe)?.sum_all()?.backward()?;
        let dx = round(&probe)?.matmul(&round(&w)?)?;
        let dw = round(&probe)?.t()?.matmul(&round(&x)?)?;
        assert!(max_diff(grads.get(&x).unwrap(), &dx)? < SUMS);
        assert!(max_diff(grads.get(&w).unwrap(), &dw)? < SUMS);

        let a = Var::from_tensor(&Tensor::from_vec(wave(3 * 4 * 7, 0.29), (3, 4, 7), &dev)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(wave(3 * 7 * 2, 0.53), (3, 7, 2), &dev)?)?;
        let probe = Tensor::from_vec(wave(3 * 4 * 2, 0.91), (3, 4, 2), &dev)?;
        let got = tf32_matmul(&a, &b)?;
        assert!(max_diff(&got, &round(&a)?.matmul(&round(&b)?)?)? < SUMS);
        let grads = (got * &probe)?.sum_all()?.backward()?;
        let da = round(&probe)?.matmul(&round(&b)?.transpose(1, 2)?)?;
        let db = round(&a)?.transpose(1, 2)?.matmul(&round(&probe)?)?;
        assert!(max_diff(grads.get(&a).unwrap(), &da)? < SUMS);
        assert!(max_diff(grads.get(&b).unwrap(), &db)? < SUMS);
        Ok(())
    }

    #[test]
    fn misfits_other_dtypes_and_empty_products() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let err = tf32_matmul(&a, &a).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        let err = tf32_matmul(&a.to_dtype(DType::F64)?, &a.t()?.to_dtype(DType::F64)?)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f32 operands only"), "{err}");
        let empty = tf32_matmul(
            &Tensor::zeros((2, 0), DType::F32, &dev)?,
            &Tensor::zeros((0, 4), DType::F32, &dev)?,
        )?;
        assert_eq!(empty.dims(), &[2, 4]);
        assert_eq!(empty.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
