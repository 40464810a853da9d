//! A layer step's cell over a padded batch as one operation: rows past their sentence's end
//! carry their state through unchanged (`h_prev`, `c_prev`), the others step. The composite
//! (the cell, then two masked blends) is the reference; fused, a GPU runs
//! `gnmt-cuda-kernels`' `lstm_cell_carry_*` (one launch instead of about nine per step), and
//! the CPU the same arithmetic, which the tests compare with the composite.

#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use gnmt_kernels::lstm::lstm_cell_row;

use super::cell::{backward, rows_and_units};
use crate::dispatch::{self, Float, Kernel};
use crate::storage::{joined, read, split};
use crate::Kernels;

/// `(h, c)` of a step: rows whose `keep` (`[B]` or `[B, 1]`, 0 or 1) is 0 keep `(h_prev,
/// c_prev)`, the others step from pre-activation gates `[B, 4H]` and `c_prev [B, H]`.
pub fn lstm_cell_carry(
    gates: &Tensor,
    c_prev: &Tensor,
    h_prev: &Tensor,
    keep: &Tensor,
    kernels: Kernels,
) -> Result<(Tensor, Tensor)> {
    let (b, h) = rows_and_units(gates.shape(), c_prev.shape())?;
    if h_prev.dims() != c_prev.dims() || keep.elem_count() != b {
        candle::bail!(
            "lstm cell: h_prev {:?}, c_prev {:?}, keep {:?} do not fit",
            h_prev.dims(),
            c_prev.dims(),
            keep.dims()
        )
    }
    if kernels.is_reference() {
        let (h_new, c_new) = super::reference::lstm_cell(gates, c_prev)?;
        let m = keep.reshape((b, 1))?.to_dtype(gates.dtype())?;
        let blend = super::reference::blend;
        return Ok((blend(&m, &h_new, h_prev)?, blend(&m, &c_new, c_prev)?));
    }
    let keep = keep.flatten_all()?.to_dtype(DType::F32)?.contiguous()?;
    let out = gates.contiguous()?.apply_op3(
        &c_prev.contiguous()?,
        &h_prev.contiguous()?,
        Carry { keep },
    )?;
    Ok((
        out.narrow(1, 0, h)?.contiguous()?,
        out.narrow(1, h, h)?.contiguous()?,
    ))
}

/// `(gates, c_prev, h_prev) -> [h | c]`, with the rows' `keep` flags (f32).
struct Carry {
    keep: Tensor,
}

impl Kernel<3> for Carry {
    const NAME: &'static str = "lstm cell";

    fn run<T: Float>(
        &self,
        [(gates, sg), (c_prev, sc), (h_prev, _)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (b, h) = rows_and_units(sg, sc)?;
        let mut out = vec![T::default(); b * 2 * h];
        let mut acts = vec![T::default(); 4 * h];
        read(&self.keep, Self::NAME, |keep: &[f32]| {
            for r in 0..b {
                let (oh, oc) = out[r * 2 * h..][..2 * h].split_at_mut(h);
                oc.copy_from_slice(&c_prev[r * h..][..h]);
                if keep[r] == 0.0 {
                    oh.copy_from_slice(&h_prev[r * h..][..h]);
                } else {
                    lstm_cell_row(&gates[r * 4 * h..][..4 * h], &mut acts, oc, oh);
                }
            }
            Ok(())
        })?;
        Ok((out, Shape::from((b, 2 * h))))
    }
}

impl CustomOp3 for Carry {
    fn name(&self) -> &'static str {
        "lstm-cell-carry"
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
        on_gpu::forward(&self.keep, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c_prev: &Tensor,
        h_prev: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = CarryGradients {
            out: out.contiguous()?,
            keep: self.keep.clone(),
        };
        let flat = grad.contiguous()?.apply_op3_no_bwd(gates, c_prev, &op)?;
        let shapes = [gates.shape(), c_prev.shape(), h_prev.shape()].map(Clone::clone);
        let [dg, dc, dh] = split(&flat, shapes)?;
        Ok((Some(dg), Some(dc), Some(dh)))
    }
}

/// `(grad [B, 2H], gates, c_prev)` with the step's `[h | c]` and `keep` -> `[dgates | dc_prev |
/// dh_prev]` joined: a stepped row's gradients are the cell's (no direct one to `h_prev`), a
/// carried row passes its gradient to the previous state.
struct CarryGradients {
    out: Tensor,
    keep: Tensor,
}

impl Kernel<3> for CarryGradients {
    const NAME: &'static str = "lstm cell";

    fn run<T: Float>(
        &self,
        [(grad, _), (gates, sg), (c_prev, sc)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (b, h) = rows_and_units(sg, sc)?;
        let (mut dg, mut dc) = read(&self.out, Self::NAME, |out: &[T]| {
            Ok(backward(gates, c_prev, out, grad, b, h))
        })?;
        let mut dh = vec![T::default(); b * h];
        read(&self.keep, Self::NAME, |keep: &[f32]| {
            for r in (0..b).filter(|&r| keep[r] == 0.0) {
                let (g_h, g_c) = grad[r * 2 * h..][..2 * h].split_at(h);
                dg[r * 4 * h..][..4 * h].fill(T::default());
                dc[r * h..][..h].copy_from_slice(g_c);
                dh[r * h..][..h].copy_from_slice(g_h);
            }
            Ok(())
        })?;
        Ok(joined(vec![dg, dc, dh]))
    }
}

impl CustomOp3 for CarryGradients {
    fn name(&self) -> &'static str {
        "lstm-cell-carry-backward"
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
        on_gpu::backward(&self.out, &self.keep, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// `lstm_cell_carry_forward` and `lstm_cell_carry_backward` on a GPU (f32).
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape, Tensor};
    use gnmt_cuda_kernels::{lstm, Launch};

    use crate::cuda::{config, dim, function, output, read_tensor, view};

    const OP: &str = "lstm cell";

    pub(super) fn forward(
        keep: &Tensor,
        (gates, lg): (&CudaStorage, &Layout),
        (c_prev, lc): (&CudaStorage, &Layout),
        (h_prev, lh): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h) = super::rows_and_units(lg.shape(), lc.shape())?;
        let device = c_prev.device.clone();
        let gates = view::<f32>(gates, lg, OP)?;
        let (c_prev, h_prev) = (view::<f32>(c_prev, lc, OP)?, view::<f32>(h_prev, lh, OP)?);
        let mut out = output::<f32>(&device, b * 2 * h)?;
        let (rows, hidden) = (dim(b, OP)?, dim(h, OP)?);
        read_tensor::<f32, _>(keep, OP, |keep| {
            let func = function(&device, lstm::MODULE, lstm::CARRY_FORWARD)?;
            let stream = device.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&rows)
                .arg(&hidden)
                .arg(&gates)
                .arg(&c_prev)
                .arg(&h_prev);
            args.arg(&keep).arg(&mut out);
            // SAFETY: `rows` rows of every width the kernel reads and writes; `keep` one flag
            // per row.
            unsafe { args.launch(config(Launch::elements(b * h))) }.w()?;
            Ok(())
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((b, 2 * h)),
        ))
    }

    pub(super) fn backward(
        out: &Tensor,
        keep: &Tensor,
        (grad, lgrad): (&CudaStorage, &Layout),
        (gates, lg): (&CudaStorage, &Layout),
        (c_prev, lc): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h) = super::rows_and_units(lg.shape(), lc.shape())?;
        let device = grad.device.clone();
        let grad = view::<f32>(grad, lgrad, OP)?;
        let (gates, c_prev) = (view::<f32>(gates, lg, OP)?, view::<f32>(c_prev, lc, OP)?);
        let mut joined = output::<f32>(&device, b * 6 * h)?;
        let (rows, hidden) = (dim(b, OP)?, dim(h, OP)?);
        read_tensor::<f32, _>(out, OP, |out| {
            read_tensor::<f32, _>(keep, OP, |keep| {
                let func = function(&device, lstm::MODULE, lstm::CARRY_BACKWARD)?;
                let stream = device.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&rows)
                    .arg(&hidden)
                    .arg(&grad)
                    .arg(&gates)
                    .arg(&c_prev);
                args.arg(&out).arg(&keep).arg(&mut joined);
                // SAFETY: as in `forward`; `joined` holds [dgates | dc_prev | dh_prev].
                unsafe { args.launch(config(Launch::elements(b * h))) }.w()?;
                Ok(())
            })
        })?;
        let n = joined.len();
        Ok((CudaStorage::wrap_cuda_slice(joined, device), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    /// The fused carrying cell against the composite (cell, then blends): values, and the
    /// gradients of gates, c_prev and h_prev, with stepped and carried rows, f32 and f64.
    #[test]
    fn the_fused_carry_matches_the_composite() {
        let (b, h) = (4, 7);
        for dtype in [DType::F32, DType::F64] {
            let wave = |n: usize, k: f64, scale: f64| -> Var {
                let v: Vec<f64> = (0..n)
                    .map(|i| ((i as f64 + 1.0) * k).sin() * scale)
                    .collect();
                Var::from_tensor(
                    &Tensor::from_vec(v, n, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap()
            };
            let gates = wave(b * 4 * h, 0.37, 3.0);
            let (c_prev, h_prev) = (wave(b * h, 0.71, 2.0), wave(b * h, 0.53, 1.0));
            let keep = Tensor::new(&[1f32, 0., 1., 0.], &Device::Cpu).unwrap();
            let r = Tensor::arange(0f32, (2 * b * h) as f32, &Device::Cpu)
                .unwrap()
                .cos()
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |kernels: Kernels| -> Vec<Vec<f64>> {
                let g = gates.as_tensor().reshape((b, 4 * h)).unwrap();
                let c = c_prev.as_tensor().reshape((b, h)).unwrap();
                let hp = h_prev.as_tensor().reshape((b, h)).unwrap();
                let (hn, cn) = lstm_cell_carry(&g, &c, &hp, &keep, kernels).unwrap();
                let out = Tensor::cat(&[hn.flatten_all().unwrap(), cn.flatten_all().unwrap()], 0)
                    .unwrap();
                let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| {
                    t.to_dtype(DType::F64)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap()
                };
                let mut all = vec![flat(&out)];
                for v in [&gates, &c_prev, &h_prev] {
                    all.push(flat(grads.get(v).unwrap()));
                }
                all
            };
            let (fused, reference) = (run(Kernels::default()), run(Kernels::Reference));
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
            for (k, (a, w)) in fused.iter().zip(&reference).enumerate() {
                for (x, y) in a.iter().zip(w) {
                    assert!(
                        (x - y).abs() <= tol * (1.0 + y.abs()),
                        "{dtype:?} quantity {k}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
