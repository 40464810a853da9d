//! Matrix products as autograd ops: `x W^T` (a linear layer's product) and batched products
//! (the attention's context). Fused, every product, forward and backward, goes through
//! [`gnmt_kernels::matmul`] in the chosen [`Precision`] (candle's own matmul stays f32), and
//! batched products run their batch rows in parallel (candle ran them one after another on
//! the calling thread). The reference is candle's `matmul`.

use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use gnmt_kernels::buffers::zeros;
use gnmt_kernels::matmul::{matmul, product};
use gnmt_kernels::{Compute, Precision};

use crate::dispatch::{self, Float, Kernel};
use crate::Kernels;

/// A linear layer over the last dimension: `x [.., in]`, `w [out, in]`, `bias [out]` ->
/// `x w^T + bias [.., out]`, through [`matmul_t`].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, kernels: Kernels) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inner, lead) = dims.split_last().expect("at least one dimension");
    let rows = lead.iter().product::<usize>();
    let y = matmul_t(&x.reshape((rows, *inner))?, w, kernels)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dims2()?.0);
    y.reshape(out_dims)
}

/// `a b` through candle's matmul (cuBLAS on a GPU), where the fused CPU kernels do not run,
/// for f32 operands in the fused kernels' precision: bf16 (bf16 operands, f32 sums, the
/// result rounded to bf16 as PyTorch's autocast has it, returned in f32: the weights and
/// their gradients stay f32) or TF32 ([`crate::tf32`]); else in the operands' dtype.
pub fn candle_matmul(a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels {
        _ if a.dtype() != DType::F32 => a.matmul(b),
        Kernels::Fused(Precision::Bf16) => a
            .to_dtype(DType::BF16)?
            .matmul(&b.to_dtype(DType::BF16)?)?
            .to_dtype(DType::F32),
        Kernels::Fused(Precision::Tf32) => crate::tf32::tf32_matmul(a, b),
        _ => a.matmul(b),
    }
}

/// `x [N, in]`, `w [out, in]` -> `x w^T [N, out]`.
pub fn matmul_t(x: &Tensor, w: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels.fused_on(x.device()) {
        None => candle_matmul(x, &w.t()?, kernels),
        Some(precision) => x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Product::new(false, true, precision)),
    }
}

/// `a [B, M, K]` times `b [B, K, N]` -> `[B, M, N]`, one product per batch row.
pub fn batched_matmul(a: &Tensor, b: &Tensor, kernels: Kernels) -> Result<Tensor> {
    match kernels.fused_on(a.device()) {
        None => candle_matmul(a, b, kernels),
        Some(precision) => a
            .contiguous()?
            .apply_op2(&b.contiguous()?, Product::new(false, false, precision)),
    }
}

/// `op(a) op(b)` with no backward pass (`op` transposes the operands flagged in `(lhs_t,
/// rhs_t)`, see [`Product`]): the products backward passes are made of.
pub(crate) fn product_no_bwd(
    a: &Tensor,
    b: &Tensor,
    (lhs_t, rhs_t): (bool, bool),
    precision: Precision,
) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2_no_bwd(&b.contiguous()?, &Product::new(lhs_t, rhs_t, precision))
}

/// `op(a) op(b)`, where `op` transposes the operands flagged so: `[M, N]` from `a [M, K]`
/// (`[K, M]` transposed) and `b [K, N]` (`[N, K]` transposed), or the same with a leading
/// batch dimension on both, one product per batch row. Its backward pass is two more
/// products.
#[derive(Clone, Copy)]
struct Product {
    lhs_t: bool,
    rhs_t: bool,
    precision: Precision,
}

/// The sizes of one product `(batch, m, n, k)`; `batch` is `None` for plain matrices.
type ProductDims = (Option<usize>, usize, usize, usize);

impl Product {
    fn new(lhs_t: bool, rhs_t: bool, precision: Precision) -> Self {
        Self {
            lhs_t,
            rhs_t,
            precision,
        }
    }

    fn dims(&self, a: &Shape, b: &Shape) -> Result<ProductDims> {
        let fit = |batch: Option<usize>, (a0, a1): (usize, usize), (b0, b1): (usize, usize)| {
            let (m, k) = if self.lhs_t { (a1, a0) } else { (a0, a1) };
            let (kb, n) = if self.rhs_t { (b1, b0) } else { (b0, b1) };
            (k == kb).then_some((batch, m, n, k))
        };
        let dims = match (a.dims(), b.dims()) {
            (&[a0, a1], &[b0, b1]) => fit(None, (a0, a1), (b0, b1)),
            (&[ba, a0, a1], &[bb, b0, b1]) if ba == bb => fit(Some(ba), (a0, a1), (b0, b1)),
            _ => None,
        };
        dims.ok_or_else(|| candle::Error::Msg(format!("matmul: {a:?} and {b:?} do not fit")).bt())
    }
}

impl Kernel<2> for Product {
    const NAME: &'static str = "matmul";

    fn run<T: Float>(&self, [(a, sa), (b, sb)]: [(&[T], &Shape); 2]) -> Result<(Vec<T>, Shape)> {
        let (batch, m, n, k) = self.dims(sa, sb)?;
        let (lhs, rhs) = ((a, self.lhs_t), (b, self.rhs_t));
        Ok(match batch {
            None => {
                let compute = Compute::all_threads(self.precision);
                (
                    product((m, n, k), lhs, rhs, None, compute),
                    Shape::from((m, n)),
                )
            }
            Some(batch) => (
                batched_products(batch, (m, n, k), lhs, rhs, self.precision),
                Shape::from((batch, m, n)),
            ),
        })
    }
}

/// `dst[i] = op(lhs[i]) op(rhs[i])` for each of `batch` rows, the rows in parallel and each
/// product on one thread; `(m, n, k)` are the sizes of one product.
fn batched_products<T: Float>(
    batch: usize,
    (m, n, k): (usize, usize, usize),
    lhs: (&[T], bool),
    rhs: (&[T], bool),
    precision: Precision,
) -> Vec<T> {
    let mut out = zeros(batch * m * n);
    if m * n == 0 {
        return out;
    }
    out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
        let a = &lhs.0[i * m * k..][..m * k];
        let b = &rhs.0[i * k * n..][..k * n];
        let compute = Compute::new(precision, 1);
        matmul((m, n, k), dst, false, (a, lhs.1), (b, rhs.1), compute);
    });
    out
}

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s1, l1), (s2, l2)])
    }

    /// With `C = op(A) op(B)` and `G` its gradient: `dA = G op(B)^T` (transposed back when
    /// `A` was read transposed: `op(B) G^T`), `dB = op(A)^T G` (or `G^T op(A)`).
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let p = |x, y, flags| product_no_bwd(x, y, flags, self.precision);
        let da = match self.lhs_t {
            false => p(grad, b, (false, !self.rhs_t))?,
            true => p(b, grad, (self.rhs_t, true))?,
        };
        let db = match self.rhs_t {
            false => p(a, grad, (!self.lhs_t, false))?,
            true => p(grad, a, (true, self.lhs_t))?,
        };
        use crate::param_grads::deliver;
        Ok((deliver(a, da), deliver(b, db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    const FUSED: Kernels = Kernels::Fused(Precision::F32);

    #[test]
    fn values_and_gradients_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (7, 5), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 5), &dev)?)?;
        let probe = Tensor::randn(0f64, 1.0, (7, 3), &dev)?;
        let ours = matmul_t(&x, &w, FUSED)?;
        let reference = matmul_t(&x, &w, Kernels::Reference)?;
        let diff = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        let g1 = (ours * &probe)?.sum_all()?.backward()?;
        let g2 = (reference * &probe)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let d = (g1.get(v).unwrap() - g2.get(v).unwrap())?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(d < 1e-12, "{d}");
        }
        Ok(())
    }

    #[test]
    fn batched_products_and_gradients_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [candle::DType::F32, candle::DType::F64] {
            let randn = |shape: (usize, usize, usize)| -> Result<Var> {
                Var::from_tensor(&Tensor::randn(0f64, 1.0, shape, &dev)?.to_dtype(dtype)?)
            };
            let (a, b) = (randn((3, 4, 5))?, randn((3, 5, 6))?);
            let probe = Tensor::randn(0f64, 1.0, (3, 4, 6), &dev)?.to_dtype(dtype)?;
            let ours = batched_matmul(&a, &b, FUSED)?;
            let reference = batched_matmul(&a, &b, Kernels::Reference)?;
            let diff = |x: &Tensor, y: &Tensor| -> Result<f64> {
                (x - y)?
                    .abs()?
                    .max_all()?
                    .to_dtype(candle::DType::F64)?
                    .to_scalar::<f64>()
            };
            let tol = if dtype == candle::DType::F32 {
                1e-5
            } else {
                1e-12
            };
            assert!(diff(&ours, &reference)? < tol);
            let g1 = (ours * &probe)?.sum_all()?.backward()?;
            let g2 = (reference * &probe)?.sum_all()?.backward()?;
            for v in [&a, &b] {
                let d = diff(g1.get(v).unwrap(), g2.get(v).unwrap())?;
                assert!(d < tol, "{dtype:?}: {d}");
            }
        }
        let x = x_of(&dev)?.unsqueeze(0)?;
        assert!(batched_matmul(&x, &x, FUSED).is_err());
        Ok(())
    }

    fn x_of(dev: &Device) -> Result<Tensor> {
        Tensor::zeros((7, 5), candle::DType::F32, dev)
    }

    /// The device path's mixed precision (what a GPU runs with `--matmul bf16`): the product
    /// of the operands rounded to bf16, its result rounded to bf16, returned in f32; the
    /// gradients reach the f32 operands. Checked through candle's CPU matmul.
    #[test]
    fn bf16_candle_products_round_operands_and_result_and_keep_f32_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let wave = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + 1.0) * k).sin()).collect()
        };
        let a = Var::from_tensor(&Tensor::from_vec(wave(6 * 33, 0.37), (6, 33), &dev)?)?;
        let b = Var::from_tensor(&Tensor::from_vec(wave(33 * 5, 0.71), (33, 5), &dev)?)?;
        let bf16 = Kernels::Fused(Precision::Bf16);
        let got = candle_matmul(a.as_tensor(), b.as_tensor(), bf16)?;
        assert_eq!(got.dtype(), DType::F32);
        let round = |t: &Tensor| t.to_dtype(DType::BF16)?.to_dtype(DType::F32);
        let want = round(&round(a.as_tensor())?.matmul(&round(b.as_tensor())?)?)?;
        let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err <= 1e-2, "{err}");
        let exact = a.as_tensor().matmul(b.as_tensor())?;
        let off = (&got - &exact)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            off > 0.0 && off < 0.1,
            "bf16 should differ a little from f32: {off}"
        );
        let grads = got.sum_all()?.backward()?;
        for v in [&a, &b] {
            let g = grads.get(v).expect("a gradient");
            assert_eq!((g.dtype(), g.dims()), (DType::F32, v.dims()));
        }
        // Other kernels multiply in f32.
        let f32 = candle_matmul(a.as_tensor(), b.as_tensor(), FUSED)?;
        assert_eq!((&f32 - &exact)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
