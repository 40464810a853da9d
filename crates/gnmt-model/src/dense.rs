//! `x W^T` (a linear layer without bias) as one operation whose products, forward and
//! backward, go through [`gnmt_kernels::matmul`] in a chosen [`Precision`] (candle's own
//! matmul would stay f32), and the weights of decoding packed once.

use candle::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use gnmt_kernels::buffers::zeros;
use gnmt_kernels::gemm::{self, PackedB, View};
use gnmt_kernels::matmul::{matmul, packed_format};
use gnmt_kernels::{Compute, Precision, Real};

use crate::storage::{contiguous_slice, tensor_slice};

/// A weight laid out for the products of decoding, `x W (+ bias)` with `W [in, out]`: an f32
/// weight is packed once for [`gnmt_kernels::gemm`] in the format of its precision, and
/// its bias read out once, not at every step; other dtypes keep a contiguous copy for
/// candle's matmul.
#[derive(Debug)]
pub struct StepMatrix {
    w: Tensor,
    bias: Option<Tensor>,
    packed: Option<Packed>,
}

/// The packed weight with its bias as f32 (added as the product's tiles are written).
#[derive(Debug)]
struct Packed {
    w: PackedB,
    bias: Option<Vec<f32>>,
}

impl StepMatrix {
    /// `w [in, out]` (a transposed view is fine: packing reads it in place), with an optional
    /// `bias [out]`, multiplied in `precision`.
    pub fn new(w: Tensor, bias: Option<Tensor>, precision: Precision) -> Result<Self> {
        let (k, n) = w.dims2()?;
        if let Some(b) = &bias {
            if b.dims1()? != n {
                candle::bail!("step matrix: bias of {} for {n} outputs", b.dims1()?)
            }
        }
        let Some(format) = packed_format(precision).filter(|_| w.dtype() == DType::F32) else {
            return Ok(Self {
                w: w.contiguous()?,
                bias,
                packed: None,
            });
        };
        // `w` is usually the transpose of a stored `[out, in]` weight: read that storage.
        let (data, transposed) = if w.is_contiguous() {
            (w.flatten_all()?.to_vec1::<f32>()?, false)
        } else {
            (w.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?, true)
        };
        let packed = Packed {
            w: PackedB::new(View::new(&data, k, n, transposed), format),
            bias: match &bias {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                None => None,
            },
        };
        Ok(Self {
            w,
            bias,
            packed: Some(packed),
        })
    }

    /// `x [B, in]` -> `x W (+ bias) [B, out]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match &self.packed {
            None => self.candle_product(x),
            Some(p) => {
                let mut y = Vec::new();
                p.rows_into(x, &mut y)?;
                Tensor::from_vec(y, (x.dims2()?.0, p.w.n()), x.device())
            }
        }
    }

    /// [`StepMatrix::apply`] into `out` as a row-major f32 vector (no tensor made). `out` is a
    /// buffer reused across steps: only grown, never cleared, since every element is written
    /// (for a decoder's output layer, zeroing it cost 7% of a beam step).
    pub fn apply_into(&self, x: &Tensor, out: &mut Vec<f32>) -> Result<()> {
        match &self.packed {
            None => {
                *out = self
                    .candle_product(x)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1()?;
                Ok(())
            }
            Some(p) => p.rows_into(x, out),
        }
    }

    fn candle_product(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl Packed {
    /// The packed product of `x`, read in place, into `y`.
    fn rows_into(&self, x: &Tensor, y: &mut Vec<f32>) -> Result<()> {
        let (b, k) = x.dims2()?;
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        let a = View::new(
            tensor_slice::<f32>(&storage, layout, "step matrix")?,
            b,
            k,
            false,
        );
        let len = b * self.w.n();
        if y.len() < len {
            y.resize(len, 0.0);
        }
        y.truncate(len);
        let threads = rayon::current_num_threads();
        match &self.bias {
            Some(bias) => gemm::gemm_bias(y, a, &self.w, bias, threads),
            None => gemm::gemm(y, false, a, &self.w, threads),
        }
        Ok(())
    }
}

/// A linear layer over the last dimension: `x [.., in]`, `w [out, in]`, `bias [out]` ->
/// `x w^T + bias [.., out]`, through [`matmul_t`].
pub fn linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    precision: Precision,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (inner, lead) = dims.split_last().expect("at least one dimension");
    let rows = lead.iter().product::<usize>();
    let y = matmul_t(&x.reshape((rows, *inner))?, w, precision)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = lead.to_vec();
    out_dims.push(w.dims2()?.0);
    y.reshape(out_dims)
}

/// `x [N, in]`, `w [out, in]` -> `x w^T [N, out]`, forward and backward in `precision`.
pub fn matmul_t(x: &Tensor, w: &Tensor, precision: Precision) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, MatmulT { precision })
}

struct MatmulT {
    precision: Precision,
}

fn product<T: 'static + Real>(
    x: &[T],
    w: &[T],
    (n, i, o): (usize, usize, usize),
    compute: Compute,
) -> Vec<T> {
    gnmt_kernels::matmul::product((n, o, i), (x, false), (w, true), None, compute)
}

/// Gradients of `x` (`g w`) and `w` (`g^T x`).
fn gradients<T: 'static + Real>(
    x: &[T],
    w: &[T],
    g: &[T],
    (n, i, o): (usize, usize, usize),
    compute: Compute,
) -> (Vec<T>, Vec<T>) {
    use gnmt_kernels::matmul::product;
    let dx = product((n, i, o), (g, false), (w, false), None, compute);
    let dw = product((o, i, n), (g, true), (x, false), None, compute);
    (dx, dw)
}

impl CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, i) = l1.shape().dims2()?;
        let (o, iw) = l2.shape().dims2()?;
        if i != iw {
            candle::bail!(
                "matmul-t: x {:?} and w {:?} do not fit",
                l1.shape(),
                l2.shape()
            )
        }
        let d = (n, i, o);
        let y = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(product(
                contiguous_slice(x, l1, "matmul-t")?,
                contiguous_slice(w, l2, "matmul-t")?,
                d,
                Compute::all_threads(self.precision),
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(product(
                contiguous_slice(x, l1, "matmul-t")?,
                contiguous_slice(w, l2, "matmul-t")?,
                d,
                Compute::all_threads(self.precision),
            )),
            _ => candle::bail!("matmul-t: f32 or f64 inputs of one dtype only"),
        };
        Ok((y, Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, i) = x.dims2()?;
        let o = w.dims2()?.0;
        let (xc, wc, gc) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        // Read in place: copying the inputs out was serial work on the calling thread.
        let (xs, ws, gs) = (
            xc.storage_and_layout(),
            wc.storage_and_layout(),
            gc.storage_and_layout(),
        );
        let device = x.device();
        macro_rules! grads {
            ($t:ty) => {{
                let (dx, dw) = gradients::<$t>(
                    tensor_slice(&xs.0, xs.1, "matmul-t")?,
                    tensor_slice(&ws.0, ws.1, "matmul-t")?,
                    tensor_slice(&gs.0, gs.1, "matmul-t")?,
                    (n, i, o),
                    Compute::all_threads(self.precision),
                );
                (
                    Tensor::from_vec(dx, (n, i), device)?,
                    Tensor::from_vec(dw, (o, i), device)?,
                )
            }};
        }
        let (dx, dw) = match x.dtype() {
            candle::DType::F32 => grads!(f32),
            candle::DType::F64 => grads!(f64),
            other => candle::bail!("matmul-t: no backward for {other:?}"),
        };
        Ok((Some(dx), crate::param_grads::deliver(w, dw)))
    }
}

/// `a [B, M, K]` times `b [B, K, N]` -> `[B, M, N]`, one product per batch row, rows in
/// parallel (the attention's context: attention weights times encoder outputs). Candle's
/// batched matmul ran these small products one after another on the calling thread.
/// Products, forward and backward, are in `precision`.
pub fn batched_matmul(a: &Tensor, b: &Tensor, precision: Precision) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2(&b.contiguous()?, BatchedMatmul { precision })
}

struct BatchedMatmul {
    precision: Precision,
}

/// `dst[i] = lhs[i] * rhs[i]` for each of `batch` rows, each operand possibly read
/// transposed; `(m, n, k)` are the sizes of one product.
fn batched_products<T: 'static + Real>(
    batch: usize,
    (m, n, k): (usize, usize, usize),
    lhs: (&[T], bool),
    rhs: (&[T], bool),
    precision: Precision,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = zeros(batch * m * n);
    if m * n == 0 {
        return out;
    }
    out.par_chunks_mut(m * n).enumerate().for_each(|(i, dst)| {
        let a = &lhs.0[i * m * k..][..m * k];
        let b = &rhs.0[i * k * n..][..k * n];
        // Each product on one thread: the batch rows are the parallel work.
        let compute = Compute::new(precision, 1);
        matmul((m, n, k), dst, false, (a, lhs.1), (b, rhs.1), compute);
    });
    out
}

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, m, k) = l1.shape().dims3()?;
        let (b2, k2, n) = l2.shape().dims3()?;
        if b != b2 || k != k2 {
            candle::bail!(
                "batched matmul: {:?} and {:?} do not fit",
                l1.shape(),
                l2.shape()
            )
        }
        let name = "batched matmul";
        let y = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(batched_products(
                b,
                (m, n, k),
                (contiguous_slice(x, l1, name)?, false),
                (contiguous_slice(w, l2, name)?, false),
                self.precision,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(batched_products(
                b,
                (m, n, k),
                (contiguous_slice(x, l1, name)?, false),
                (contiguous_slice(w, l2, name)?, false),
                self.precision,
            )),
            _ => candle::bail!("batched matmul: f32 or f64 inputs of one dtype only"),
        };
        Ok((y, Shape::from((b, m, n))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (bs, m, k) = a.dims3()?;
        let n = b.dims3()?.2;
        let (ac, bc, gc) = (a.contiguous()?, b.contiguous()?, grad.contiguous()?);
        let (a_s, b_s, g_s) = (
            ac.storage_and_layout(),
            bc.storage_and_layout(),
            gc.storage_and_layout(),
        );
        let device = a.device();
        let name = "batched matmul";
        macro_rules! grads {
            ($t:ty) => {{
                let (av, bv, gv) = (
                    tensor_slice::<$t>(&a_s.0, a_s.1, name)?,
                    tensor_slice::<$t>(&b_s.0, b_s.1, name)?,
                    tensor_slice::<$t>(&g_s.0, g_s.1, name)?,
                );
                // dA = G B^T [M, K]; dB = A^T G [K, N].
                let da = batched_products(bs, (m, k, n), (gv, false), (bv, true), self.precision);
                let db = batched_products(bs, (k, n, m), (av, true), (gv, false), self.precision);
                (
                    Tensor::from_vec(da, (bs, m, k), device)?,
                    Tensor::from_vec(db, (bs, k, n), device)?,
                )
            }};
        }
        let (da, db) = match a.dtype() {
            candle::DType::F32 => grads!(f32),
            candle::DType::F64 => grads!(f64),
            other => candle::bail!("batched matmul: no backward for {other:?}"),
        };
        Ok((Some(da), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    #[test]
    fn values_and_gradients_match_candle() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (7, 5), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 5), &dev)?)?;
        let probe = Tensor::randn(0f64, 1.0, (7, 3), &dev)?;
        let ours = matmul_t(&x, &w, Precision::F32)?;
        let reference = x.matmul(&w.t()?)?;
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
            let ours = batched_matmul(&a, &b, Precision::F32)?;
            let reference = a.matmul(&b)?;
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
        assert!(batched_matmul(&x, &x, Precision::F32).is_err());
        Ok(())
    }

    fn x_of(dev: &Device) -> Result<Tensor> {
        Tensor::zeros((7, 5), candle::DType::F32, dev)
    }
}
