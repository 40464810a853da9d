//! The LSTM cell as one fused operation (Marian's `lstmOpsC`/`lstmOpsO` in one pass):
//! `(gates [B, 4H], c_prev [B, H]) -> [B, 2H] = [h | c]`, gates in PyTorch order i, f, g, o.
//!
//! Composed from candle ops the cell is about a dozen element-wise operations, each allocating
//! a tensor, plus their gradients. Fused, the forward pass writes `h` and `c` once, and the
//! backward pass recomputes the gate activations from the saved pre-activations. The composite
//! cell in [`super::reference`] stays the reference the tests compare against.

#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use gnmt_kernels::lstm::lstm_cell_row;

use gnmt_kernels::Real;

use crate::dispatch::{self, Float, Kernel};
use crate::storage::{joined, read, split, tensor_slice};
use crate::Kernels;

/// `(h, c)` from pre-activation gates `[B, 4H]` and the previous cell state `[B, H]`.
pub fn lstm_cell(gates: &Tensor, c_prev: &Tensor, kernels: Kernels) -> Result<(Tensor, Tensor)> {
    if kernels.is_reference() {
        rows_and_units(gates.shape(), c_prev.shape())?;
        return super::reference::lstm_cell(gates, c_prev);
    }
    let hidden = c_prev.dims2()?.1;
    let out = gates
        .contiguous()?
        .apply_op2(&c_prev.contiguous()?, LstmCell)?;
    Ok((
        out.narrow(1, 0, hidden)?.contiguous()?,
        out.narrow(1, hidden, hidden)?.contiguous()?,
    ))
}

/// [`lstm_cell`] for decoding, where nothing needs a gradient: `h` and `c` written straight
/// into their own tensors (no `[h | c]` to split and copy), rows in parallel when there are
/// many (a beam step's cell ran on one thread while the other waited). The same bits as
/// [`lstm_cell`]: each row is the same [`lstm_cell_row`] call.
pub fn lstm_cell_step(
    gates: &Tensor,
    c_prev: &Tensor,
    kernels: Kernels,
) -> Result<(Tensor, Tensor)> {
    if kernels.is_reference() {
        return super::reference::lstm_cell(gates, c_prev);
    }
    if !gates.device().is_cpu() {
        // A GPU's fused cell: the same kernel as training's.
        return lstm_cell(gates, c_prev, kernels);
    }
    let (b, h) = rows_and_units(gates.shape(), c_prev.shape())?;
    let (gates, c_prev) = (gates.contiguous()?, c_prev.contiguous()?);
    let (gs, cs) = (gates.storage_and_layout(), c_prev.storage_and_layout());
    macro_rules! step {
        ($t:ty) => {{
            let (hs, cs) = step_rows::<$t>(
                tensor_slice(&gs.0, gs.1, "lstm cell")?,
                tensor_slice(&cs.0, cs.1, "lstm cell")?,
                h,
            );
            let device = c_prev.device();
            Ok((
                Tensor::from_vec(hs, (b, h), device)?,
                Tensor::from_vec(cs, (b, h), device)?,
            ))
        }};
    }
    match c_prev.dtype() {
        DType::F32 => step!(f32),
        DType::F64 => step!(f64),
        other => candle::bail!("lstm cell: no kernel for {other:?}"),
    }
}

/// `(B, H)` of gates `[B, 4H]` and a cell state `[B, H]`, or an error if they do not fit.
pub(super) fn rows_and_units(gates: &Shape, c: &Shape) -> Result<(usize, usize)> {
    let (b, h) = c.dims2()?;
    if gates.dims2()? != (b, 4 * h) {
        candle::bail!("lstm cell: gates {gates:?} and cell {c:?} do not fit")
    }
    Ok((b, h))
}

/// Rows below this many hidden units in all are stepped on the calling thread.
const PARALLEL_MIN_UNITS: usize = 1 << 13;

fn step_rows<T: Float>(gates: &[T], c_prev: &[T], h: usize) -> (Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let mut hs = vec![T::default(); c_prev.len()];
    let mut cs = c_prev.to_vec();
    // `acts` is scratch for the gate activations, which decoding does not keep.
    let row =
        |acts: &mut Vec<T>, ((g, c), h): ((&[T], &mut [T]), &mut [T])| lstm_cell_row(g, acts, c, h);
    let h = h.max(1);
    let scratch = || vec![T::default(); 4 * h];
    if c_prev.len() >= PARALLEL_MIN_UNITS && rayon::current_num_threads() > 1 {
        gates
            .par_chunks(4 * h)
            .zip(cs.par_chunks_mut(h))
            .zip(hs.par_chunks_mut(h))
            .for_each_init(scratch, row);
    } else {
        let mut acts = scratch();
        gates
            .chunks(4 * h)
            .zip(cs.chunks_mut(h))
            .zip(hs.chunks_mut(h))
            .for_each(|item| row(&mut acts, item));
    }
    (hs, cs)
}

/// `(gates [B, 4H], c_prev [B, H]) -> [h | c] [B, 2H]`.
struct LstmCell;

impl Kernel<2> for LstmCell {
    const NAME: &'static str = "lstm cell";

    fn run<T: Float>(
        &self,
        [(gates, sg), (c_prev, sc)]: [(&[T], &Shape); 2],
    ) -> Result<(Vec<T>, Shape)> {
        let (b, h) = rows_and_units(sg, sc)?;
        let mut out = vec![T::default(); b * 2 * h];
        let mut acts = vec![T::default(); 4 * h];
        for r in 0..b {
            let (oh, oc) = out[r * 2 * h..][..2 * h].split_at_mut(h);
            oc.copy_from_slice(&c_prev[r * h..][..h]);
            lstm_cell_row(&gates[r * 4 * h..][..4 * h], &mut acts, oc, oh);
        }
        Ok((out, Shape::from((b, 2 * h))))
    }
}

impl CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "lstm-cell"
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        on_gpu::forward((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        gates: &Tensor,
        c_prev: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = CellGradients {
            out: out.contiguous()?,
        };
        let flat = grad.contiguous()?.apply_op3_no_bwd(gates, c_prev, &op)?;
        let [dg, dc] = split(&flat, [gates.shape().clone(), c_prev.shape().clone()])?;
        Ok((Some(dg), Some(dc)))
    }
}

/// `(grad [B, 2H], gates, c_prev)` with the cell's output `[h | c]` -> `[dgates | dc_prev]`
/// joined (see [`split`]); the gate activations are recomputed from the gates.
struct CellGradients {
    out: Tensor,
}

impl Kernel<3> for CellGradients {
    const NAME: &'static str = "lstm cell";

    fn run<T: Float>(
        &self,
        [(grad, _), (gates, sg), (c_prev, sc)]: [(&[T], &Shape); 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (b, h) = rows_and_units(sg, sc)?;
        read(&self.out, Self::NAME, |out: &[T]| {
            let (dg, dc) = backward(gates, c_prev, out, grad, b, h);
            Ok(joined(vec![dg, dc]))
        })
    }
}

impl CustomOp3 for CellGradients {
    fn name(&self) -> &'static str {
        "lstm-cell-backward"
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
        on_gpu::backward(&self.out, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The cell on a GPU: `gnmt-cuda-kernels`' `lstm_cell_forward` and `lstm_cell_backward`, the
/// arithmetic of [`lstm_cell_row`] and [`backward`] (f32).
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape, Tensor};
    use gnmt_cuda_kernels::{lstm, Launch};

    use crate::cuda::{config, dim, function, output, read_tensor, view};

    const OP: &str = "lstm cell";

    /// `(gates, c_prev)` -> `[h | c]`.
    pub(super) fn forward(
        (gates, lg): (&CudaStorage, &Layout),
        (c_prev, lc): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h) = super::rows_and_units(lg.shape(), lc.shape())?;
        let device = &c_prev.device;
        let (gates, c_prev) = (view::<f32>(gates, lg, OP)?, view::<f32>(c_prev, lc, OP)?);
        let mut out = output::<f32>(device, b * 2 * h)?;
        let (rows, hidden) = (dim(b, OP)?, dim(h, OP)?);
        let func = function(device, lstm::MODULE, lstm::FORWARD)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&rows)
            .arg(&hidden)
            .arg(&gates)
            .arg(&c_prev)
            .arg(&mut out);
        // SAFETY: the buffers hold what the kernel reads and writes for `rows` x `hidden`.
        unsafe { args.launch(config(Launch::elements(b * h))) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device.clone()),
            Shape::from((b, 2 * h)),
        ))
    }

    /// `(grad, gates, c_prev)` and the forward's `[h | c]` -> `[dgates | dc_prev]` joined.
    pub(super) fn backward(
        out: &Tensor,
        (grad, lgrad): (&CudaStorage, &Layout),
        (gates, lg): (&CudaStorage, &Layout),
        (c_prev, lc): (&CudaStorage, &Layout),
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h) = super::rows_and_units(lg.shape(), lc.shape())?;
        let device = grad.device.clone();
        let grad = view::<f32>(grad, lgrad, OP)?;
        let (gates, c_prev) = (view::<f32>(gates, lg, OP)?, view::<f32>(c_prev, lc, OP)?);
        let mut joined = output::<f32>(&device, b * 5 * h)?;
        let (rows, hidden) = (dim(b, OP)?, dim(h, OP)?);
        read_tensor::<f32, _>(out, OP, |out| {
            let func = function(&device, lstm::MODULE, lstm::BACKWARD)?;
            let stream = device.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&rows)
                .arg(&hidden)
                .arg(&grad)
                .arg(&gates)
                .arg(&c_prev)
                .arg(&out);
            args.arg(&mut joined);
            // SAFETY: as in `forward`; `joined` holds [dgates | dc_prev].
            unsafe { args.launch(config(Launch::elements(b * h))) }.w()?;
            Ok(())
        })?;
        let n = joined.len();
        Ok((CudaStorage::wrap_cuda_slice(joined, device), Shape::from(n)))
    }
}

/// Gradients with respect to the gates and the previous cell state, from the gradient of
/// `[h | c]`.
pub(super) fn backward<T: Float>(
    gates: &[T],
    c_prev: &[T],
    out: &[T],
    grad: &[T],
    b: usize,
    h: usize,
) -> (Vec<T>, Vec<T>) {
    let mut dgates = vec![T::default(); b * 4 * h];
    let mut dc_prev = vec![T::default(); b * h];
    for r in 0..b {
        let g = &gates[r * 4 * h..][..4 * h];
        let cp = &c_prev[r * h..][..h];
        let c = &out[r * 2 * h + h..][..h];
        let (dh, dc_in) = grad[r * 2 * h..][..2 * h].split_at(h);
        let dg = &mut dgates[r * 4 * h..][..4 * h];
        for j in 0..h {
            let (i, f, gg, o) = (
                g[j].sigmoid(),
                g[h + j].sigmoid(),
                g[2 * h + j].tanh_(),
                g[3 * h + j].sigmoid(),
            );
            let tc = c[j].tanh_();
            let dc = dc_in[j] + dh[j] * o * (<T as Real>::ONE - tc * tc);
            let do_ = dh[j] * tc;
            dg[j] = dc * gg * i * (<T as Real>::ONE - i);
            dg[h + j] = dc * cp[j] * f * (<T as Real>::ONE - f);
            dg[2 * h + j] = dc * i * (<T as Real>::ONE - gg * gg);
            dg[3 * h + j] = do_ * o * (<T as Real>::ONE - o);
            dc_prev[r * h + j] = dc * f;
        }
    }
    (dgates, dc_prev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::{Device, Var};

    /// A tensor's values as f64, flattened.
    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }

    fn rand(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|i| {
                ((((i as u64 + 3) * 2654435761 * (seed + 1)) % 2000) as f64 / 1000.0 - 1.0) * 2.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_cell_matches_the_reference_values_and_gradients() {
        for dtype in [DType::F32, DType::F64] {
            let gates = Var::from_tensor(&rand(&[3, 20], 1, dtype)).unwrap();
            let c_prev = Var::from_tensor(&rand(&[3, 5], 2, dtype)).unwrap();
            let (wh, wc) = (rand(&[3, 5], 3, dtype), rand(&[3, 5], 4, dtype));
            let run = |kernels: Kernels| {
                let (h, c) = lstm_cell(gates.as_tensor(), c_prev.as_tensor(), kernels).unwrap();
                let loss = ((&h * &wh).unwrap().sum_all().unwrap()
                    + (&c * &wc).unwrap().sum_all().unwrap())
                .unwrap();
                let grads = loss.backward().unwrap();
                [
                    values(&h),
                    values(&c),
                    values(grads.get(&gates).unwrap()),
                    values(grads.get(&c_prev).unwrap()),
                ]
            };
            let (fused, reference) = (run(Kernels::default()), run(Kernels::Reference));
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-13 };
            for (k, (a, b)) in fused.iter().zip(&reference).enumerate() {
                assert!(
                    a.iter()
                        .zip(b)
                        .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs())),
                    "{dtype:?} output {k}: {a:?} vs {b:?}"
                );
            }
        }
    }

    /// The decoding step gives the bits of the autograd cell, on one thread's path (few rows)
    /// and the parallel one (many).
    #[test]
    fn the_decoding_step_gives_the_bits_of_the_cell() {
        for (rows, dtype) in [(3, DType::F32), (3, DType::F64), (400, DType::F32)] {
            let h = 24;
            let gates = rand(&[rows, 4 * h], 5, dtype);
            let c_prev = rand(&[rows, h], 6, dtype);
            let (h1, c1) = lstm_cell(&gates, &c_prev, Kernels::default()).unwrap();
            let (h2, c2) = lstm_cell_step(&gates, &c_prev, Kernels::default()).unwrap();
            assert_eq!(values(&h1), values(&h2), "{rows} rows {dtype:?}: h");
            assert_eq!(values(&c1), values(&c2), "{rows} rows {dtype:?}: c");
        }
        const { assert!(400 * 24 >= PARALLEL_MIN_UNITS) };
    }
}
