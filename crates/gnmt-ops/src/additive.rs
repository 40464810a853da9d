//! The additive attention scorer as one fused operation:
//! `scores[b, t, s] = sum_a v[a] * tanh(q[b, t, a] + k[b, s, a])`.
//!
//! Composed from candle ops this materialises several `[B, T, S, A]` tensors (the broadcast
//! sum, its tanh, their gradients): 16.7 million elements per tensor for a batch of 64
//! sentences of 32 tokens with 256 attention units. The fused form reads `q` and `k` once,
//! writes `[B, T, S]`, and recomputes the tanh in the backward pass instead of storing it.
//! `reference_scores` is the composite form the tests compare against, values and gradients.
//!
//! Work is split over the batch dimension only, and every sum runs in a fixed order, so the
//! results do not depend on the number of threads.

use candle::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use gnmt_kernels::attention::{additive_row, additive_row_backward};

use crate::dispatch::{self, Float, Kernel};
use crate::storage::{read, split};
use crate::Kernels;
#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;

/// `sum_a v_a tanh(q + k)`: `q [B, T, A]`, `k [B, S, A]`, `v [A]` -> `[B, T, S]`. Fused, on
/// the CPU or a GPU (f32 there), the `[B, T, S, A]` hidden layer the reference builds is
/// never written.
pub fn additive_scores(q: &Tensor, k: &Tensor, v: &Tensor, kernels: Kernels) -> Result<Tensor> {
    if kernels.is_reference() {
        return reference_scores(q, k, v);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    q.apply_op3(&k, &v, AdditiveScores)
}

/// The same computation from candle ops (the reference).
fn reference_scores(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    dims(q.shape(), k.shape(), v.shape())?;
    let hidden = q.unsqueeze(2)?.broadcast_add(&k.unsqueeze(1)?)?.tanh()?; // [B, T, S, A]
    hidden.broadcast_mul(v)?.sum(D::Minus1)
}

struct AdditiveScores;

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    s: usize,
    a: usize,
}

fn dims(q: &Shape, k: &Shape, v: &Shape) -> Result<Dims> {
    let (b, t, a) = q.dims3()?;
    let (bk, s, ak) = k.dims3()?;
    let av = v.dims1()?;
    if b != bk || a != ak || a != av {
        candle::bail!("additive scores: q {q:?}, k {k:?}, v {v:?} do not fit")
    }
    Ok(Dims { b, t, s, a })
}

impl Kernel<3> for AdditiveScores {
    const NAME: &'static str = "additive scores";

    fn run<T: Float>(
        &self,
        [(q, sq), (k, sk), (v, sv)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let d = dims(sq, sk, sv)?;
        let mut out = vec![T::default(); d.b * d.t * d.s];
        out.par_chunks_mut(d.t * d.s)
            .enumerate()
            .for_each(|(b, out_b)| {
                let keys = &k[b * d.s * d.a..][..d.s * d.a];
                for t in 0..d.t {
                    let qr = &q[(b * d.t + t) * d.a..][..d.a];
                    additive_row(qr, keys, v, &mut out_b[t * d.s..][..d.s]);
                }
            });
        Ok((out, Shape::from((d.b, d.t, d.s))))
    }
}

impl CustomOp3 for AdditiveScores {
    fn name(&self) -> &'static str {
        "additive-scores"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = dims(l1.shape(), l2.shape(), l3.shape())?;
        on_gpu::scores(d, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = grad
            .contiguous()?
            .apply_op3_no_bwd(q, k, &ScoreGradients { v: v.clone() })?;
        let [dq, dk, dv] = split(
            &flat,
            [q.shape().clone(), k.shape().clone(), v.shape().clone()],
        )?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `(g [B, T, S], q, k)` with `v` -> the gradients of `sum(g * scores)` with respect to `q`,
/// `k` and `v`, joined in one vector (see [`split`]). The tanh is recomputed, not stored.
struct ScoreGradients {
    v: Tensor,
}

impl Kernel<3> for ScoreGradients {
    const NAME: &'static str = "additive scores";

    fn run<T: Float>(
        &self,
        [(g, sg), (q, sq), (k, sk)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        read(&self.v, Self::NAME, |v: &[T]| {
            let d = dims(sq, sk, self.v.shape())?;
            if sg.dims3()? != (d.b, d.t, d.s) {
                candle::bail!("additive scores: gradient {sg:?} for q {sq:?}, k {sk:?}")
            }
            Ok(gradients(q, k, v, g, d))
        })
    }
}

/// `[dq | dk | dv]`, each batch row's part on its own thread, `dv` summed in batch order.
fn gradients<T: Float>(q: &[T], k: &[T], v: &[T], g: &[T], d: Dims) -> (Vec<T>, Shape) {
    let per_batch: Vec<(Vec<T>, Vec<T>, Vec<T>)> = (0..d.b)
        .into_par_iter()
        .map(|b| {
            let mut dq = vec![T::default(); d.t * d.a];
            let mut dk = vec![T::default(); d.s * d.a];
            let mut dv = vec![T::default(); d.a];
            for t in 0..d.t {
                let qr = &q[(b * d.t + t) * d.a..][..d.a];
                for s in 0..d.s {
                    let gg = g[(b * d.t + t) * d.s + s];
                    if gg == T::default() {
                        continue; // padded source positions: exactly zero weight, zero gradient
                    }
                    let kr = &k[(b * d.s + s) * d.a..][..d.a];
                    let (dqr, dkr) = (&mut dq[t * d.a..][..d.a], &mut dk[s * d.a..][..d.a]);
                    additive_row_backward(qr, kr, v, gg, dqr, dkr, &mut dv);
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let n = d.b * (d.t + d.s) * d.a + d.a;
    let mut all = Vec::with_capacity(n);
    for (dq, _, _) in &per_batch {
        all.extend_from_slice(dq);
    }
    for (_, dk, _) in &per_batch {
        all.extend_from_slice(dk);
    }
    let mut dv = vec![T::default(); d.a];
    for (_, _, v_b) in per_batch {
        for (acc, x) in dv.iter_mut().zip(v_b) {
            *acc += x;
        }
    }
    all.extend(dv);
    (all, Shape::from(n))
}

impl CustomOp3 for ScoreGradients {
    fn name(&self) -> &'static str {
        "additive-scores-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s1, l1), (s2, l2), (s3, l3)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = dims(l2.shape(), l3.shape(), self.v.shape())?;
        if l1.shape().dims3()? != (d.b, d.t, d.s) {
            candle::bail!(
                "additive scores: gradient {:?} for q {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        on_gpu::gradients(d, &self.v, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The scores and their gradients on a GPU: `gnmt-cuda-kernels`' `attention.cu`, the
/// arithmetic of [`additive_row`] and [`gradients`] in the same order (f32).
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
    use candle::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape, Tensor};
    use gnmt_cuda_kernels::{attention, Launch};

    use super::Dims;
    use crate::cuda::{config, dim, function, output, read_tensor, view};

    const OP: &str = "additive scores";

    /// The four dimensions as the kernels take them.
    fn sizes(d: Dims) -> Result<[u32; 4]> {
        Ok([dim(d.b, OP)?, dim(d.t, OP)?, dim(d.s, OP)?, dim(d.a, OP)?])
    }

    pub(super) fn scores(
        d: Dims,
        (q, lq): (&CudaStorage, &Layout),
        (k, lk): (&CudaStorage, &Layout),
        (v, lv): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let device = q.device.clone();
        let (q, k, v) = (
            view::<f32>(q, lq, OP)?,
            view::<f32>(k, lk, OP)?,
            view::<f32>(v, lv, OP)?,
        );
        let mut out = output::<f32>(&device, d.b * d.t * d.s)?;
        let [b, t, s, a] = sizes(d)?;
        let func = function(&device, attention::MODULE, attention::FORWARD)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&b)
            .arg(&t)
            .arg(&s)
            .arg(&a)
            .arg(&q)
            .arg(&k)
            .arg(&v)
            .arg(&mut out);
        // SAFETY: q [B, T, A], k [B, S, A], v [A] and out [B, T, S] as the kernel reads them.
        unsafe { args.launch(config(Launch::elements(d.b * d.t * d.s))) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((d.b, d.t, d.s)),
        ))
    }

    /// `[dq | dk | dv]` of the upstream gradient `g [B, T, S]`: four launches in order.
    pub(super) fn gradients(
        d: Dims,
        v: &Tensor,
        (g, lg): (&CudaStorage, &Layout),
        (q, lq): (&CudaStorage, &Layout),
        (k, lk): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let device = g.device.clone();
        let (g, q, k) = (
            view::<f32>(g, lg, OP)?,
            view::<f32>(q, lq, OP)?,
            view::<f32>(k, lk, OP)?,
        );
        let n = d.b * (d.t + d.s) * d.a + d.a;
        let mut joined = output::<f32>(&device, n)?;
        let mut partials = output::<f32>(&device, d.b * d.a)?;
        read_tensor::<f32, _>(v, OP, |v| {
            let inputs = Inputs {
                device: &device,
                d,
                g: &g,
                q: &q,
                k: &k,
                v: &v,
            };
            inputs.launch(attention::DQ, d.b * d.t * d.a, &mut joined)?;
            inputs.launch(attention::DK, d.b * d.s * d.a, &mut joined)?;
            let [b, t, s, a] = sizes(d)?;
            let func = function(&device, attention::MODULE, attention::DV_ROWS)?;
            let stream = device.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&b)
                .arg(&t)
                .arg(&s)
                .arg(&a)
                .arg(&g)
                .arg(&q)
                .arg(&k)
                .arg(&mut partials);
            // SAFETY: g, q, k as above; partials [B, A].
            unsafe { args.launch(config(Launch::elements(d.b * d.a))) }.w()?;
            let func = function(&device, attention::MODULE, attention::DV_SUM)?;
            let mut args = stream.launch_builder(&func);
            args.arg(&b)
                .arg(&t)
                .arg(&s)
                .arg(&a)
                .arg(&partials)
                .arg(&mut joined);
            // SAFETY: partials [B, A] written above; dv at the end of joined.
            unsafe { args.launch(config(Launch::elements(d.a))) }.w()?;
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(joined, device), Shape::from(n)))
    }

    /// What the dq and dk kernels both read.
    struct Inputs<'a> {
        device: &'a CudaDevice,
        d: Dims,
        g: &'a CudaView<'a, f32>,
        q: &'a CudaView<'a, f32>,
        k: &'a CudaView<'a, f32>,
        v: &'a CudaView<'a, f32>,
    }

    impl Inputs<'_> {
        /// Launches `kernel` (dq or dk) over `items` threads' worth of work into `joined`.
        fn launch(
            &self,
            kernel: &str,
            items: usize,
            joined: &mut candle::cuda_backend::cudarc::driver::CudaSlice<f32>,
        ) -> Result<()> {
            let [b, t, s, a] = sizes(self.d)?;
            let func = function(self.device, attention::MODULE, kernel)?;
            let stream = self.device.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&b).arg(&t).arg(&s).arg(&a);
            args.arg(self.g)
                .arg(self.q)
                .arg(self.k)
                .arg(self.v)
                .arg(joined);
            // SAFETY: g [B, T, S], q [B, T, A], k [B, S, A], v [A], and `joined` of
            // B (T + S) A + A values, as both kernels read and write.
            unsafe { args.launch(config(Launch::elements(items))) }.w()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{DType, Device, Var};

    fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| {
                ((((i as u64 + 7) * 2654435761 * (seed + 1)) % 2000) as f64 / 1000.0 - 1.0) * 1.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_matches_reference_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let (q, k, v) = (
                rand(&[3, 4, 6], 1, dtype),
                rand(&[3, 5, 6], 2, dtype),
                rand(&[6], 3, dtype),
            );
            let (qv, kv, vv) = (
                Var::from_tensor(&q).unwrap(),
                Var::from_tensor(&k).unwrap(),
                Var::from_tensor(&v).unwrap(),
            );
            let weights = rand(&[3, 4, 5], 4, dtype); // an arbitrary upstream gradient
            let run = |kernels: Kernels| {
                let out = additive_scores(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), kernels)
                    .unwrap();
                let grads = (&out * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g = |x: &Var| {
                    grads
                        .get(x)
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                (
                    out.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap(),
                    g(&qv),
                    g(&kv),
                    g(&vv),
                )
            };
            let fused = run(Kernels::default());
            let reference = run(Kernels::Reference);
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            let close = |a: &[f64], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
            };
            assert!(close(&fused.0, &reference.0), "{dtype:?} values");
            assert!(close(&fused.1, &reference.1), "{dtype:?} dq");
            assert!(close(&fused.2, &reference.2), "{dtype:?} dk");
            assert!(close(&fused.3, &reference.3), "{dtype:?} dv");
        }
    }
}
