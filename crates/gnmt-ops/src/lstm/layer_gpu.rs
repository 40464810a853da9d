//! The fused LSTM layer on a GPU: [`gnmt_cuda_kernels::layer`]'s forward and backward passes
//! on candle's CUDA stream, its products through cuBLAS in the layer's precision (f32, TF32, or
//! bf16 operands with f32 sums: `cublasGemmEx` on the f32 buffers, no converted copies) and its
//! kernels from `kernels/lstm.cu`. The tests run the same sequence of products and launches on
//! the host emulator (`gnmt-cuda-kernels`' `emulated/lstm_layer.rs`).

use std::sync::Arc;

use candle::cuda_backend::cudarc::cublas::{result::gemm_ex, sys as blas, CudaBlas};
use candle::cuda_backend::cudarc::driver::sys::CUdeviceptr;
use candle::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PushKernelArg,
};
use candle::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gnmt_cuda_kernels::layer::{self, Arg, Backward, Forward, Gemm, Gpu, LayerDims};
use gnmt_cuda_kernels::{lstm, Launch};
use gnmt_kernels::Precision;

use crate::cuda::{config, function, output, read_tensor, view};

const OP: &str = "lstm layer";

/// What the backward pass reads of the forward pass besides its output: the pre-activation
/// gates `[B*T, 4H]` and the cell states `[B, T, H]`.
pub(super) struct Saved {
    gates: CudaSlice<f32>,
    c: CudaSlice<f32>,
}

/// Runs the layer over `x [B, T, in]` with `W_ih` and `[W_hh | bias]`; `keep` is the `[B, T]`
/// mask (f32, contiguous, on the device). Returns the hidden states `[B, T, H]`.
pub(super) fn forward(
    d: LayerDims,
    precision: Precision,
    keep: Option<&Tensor>,
    (x, lx): (&CudaStorage, &Layout),
    (w_ih, lw): (&CudaStorage, &Layout),
    (wb, lwb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Saved)> {
    let device = x.device.clone();
    let gpu = CudaGpu::new(&device, precision)?;
    let stream = gpu.stream.clone();
    let (x, w_ih, wb) = (
        view::<f32>(x, lx, OP)?,
        view::<f32>(w_ih, lw, OP)?,
        view::<f32>(wb, lwb, OP)?,
    );
    let (b, t, h) = (d.batch, d.steps, d.hidden);
    // Written in full before any read: `gates` and `rec` by products, `h` and `c` by the
    // steps (every row at every step, carried or not).
    let mut gates = output::<f32>(&device, b * t * 4 * h)?;
    let mut rec = output::<f32>(&device, b * 4 * h)?;
    let mut hs = output::<f32>(&device, b * t * h)?;
    let mut cs = output::<f32>(&device, b * t * h)?;
    with_keep(keep, &stream, |keep| {
        let (x, _x) = x.device_ptr(&stream);
        let (w_ih, _w) = w_ih.device_ptr(&stream);
        let (w_hh_bias, _wb) = wb.device_ptr(&stream);
        let (gates, _g) = gates.device_ptr_mut(&stream);
        let (rec, _r) = rec.device_ptr_mut(&stream);
        let (h, _h) = hs.device_ptr_mut(&stream);
        let (c, _c) = cs.device_ptr_mut(&stream);
        let buffers = Forward {
            x,
            w_ih,
            w_hh_bias,
            keep,
            gates,
            rec,
            h,
            c,
        };
        layer::forward(&gpu, d, &buffers)
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(hs, device),
        Saved { gates, c: cs },
    ))
}

/// `(grad [B, T, H], [W_hh | bias])` with what the forward pass saved and its output `h` ->
/// `[dgates [B*T, 4H] | d[W_hh | bias] [4H, H + 1]]`, one flat tensor.
pub(super) struct ThroughTime {
    pub d: LayerDims,
    pub precision: Precision,
    /// The `[B, T]` mask, as [`forward`] took it.
    pub keep: Option<Tensor>,
    pub saved: Saved,
    pub h: Tensor,
}

impl CustomOp2 for ThroughTime {
    fn name(&self) -> &'static str {
        "lstm-layer-backward-gpu"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle::bail!("{OP}: the GPU's backward pass got tensors on the CPU")
    }

    fn cuda_fwd(
        &self,
        grad: &CudaStorage,
        lg: &Layout,
        wb: &CudaStorage,
        lwb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = self.d;
        let (b, t, h) = (d.batch, d.steps, d.hidden);
        let device = grad.device.clone();
        let gpu = CudaGpu::new(&device, self.precision)?;
        let stream = gpu.stream.clone();
        let (grad, wb) = (view::<f32>(grad, lg, OP)?, view::<f32>(wb, lwb, OP)?);
        let n_dgates = b * t * 4 * h;
        // Written in full: every row of dgates at every step, dW_hh by a product and the bias
        // column by the column sums; h_prev by its kernel; dh_rec by a product before a read.
        let mut joined = output::<f32>(&device, n_dgates + 4 * h * (h + 1))?;
        let mut h_prev = output::<f32>(&device, b * t * h)?;
        let mut dh_rec = output::<f32>(&device, b * h)?;
        let mut dh_carry = stream.alloc_zeros::<f32>(b * h).w()?;
        let mut dc = stream.alloc_zeros::<f32>(b * h).w()?;
        let keep = self.keep.as_ref();
        read_tensor::<f32, _>(&self.h, OP, |hs| {
            with_keep(keep, &stream, |keep| {
                let (grad, _g) = grad.device_ptr(&stream);
                let (w_hh_bias, _wb) = wb.device_ptr(&stream);
                let (gates, _ga) = self.saved.gates.device_ptr(&stream);
                let (h, _h) = hs.device_ptr(&stream);
                let (c, _c) = self.saved.c.device_ptr(&stream);
                let (dgates, _j) = joined.device_ptr_mut(&stream);
                let (h_prev, _hp) = h_prev.device_ptr_mut(&stream);
                let (dh_rec, _dr) = dh_rec.device_ptr_mut(&stream);
                let (dh_carry, _dh) = dh_carry.device_ptr_mut(&stream);
                let (dc, _dc) = dc.device_ptr_mut(&stream);
                let buffers = Backward {
                    grad,
                    w_hh_bias,
                    keep,
                    gates,
                    h,
                    c,
                    dgates,
                    d_w_hh_bias: gpu.offset(dgates, n_dgates),
                    h_prev,
                    dh_rec,
                    dh_carry,
                    dc,
                };
                layer::backward(&gpu, d, &buffers)
            })
        })?;
        let n = joined.len();
        Ok((CudaStorage::wrap_cuda_slice(joined, device), Shape::from(n)))
    }
}

/// `f` with the device address of the `[B, T]` mask's flags, as the kernels read them (one per
/// batch-major row `b * T + s`), or with `None`: every step real.
fn with_keep<R>(
    keep: Option<&Tensor>,
    stream: &CudaStream,
    f: impl FnOnce(Option<CUdeviceptr>) -> Result<R>,
) -> Result<R> {
    match keep {
        None => f(None),
        Some(mask) => read_tensor::<f32, _>(mask, OP, |flags| {
            let (flags, _flags) = flags.device_ptr(stream);
            f(Some(flags))
        }),
    }
}

/// The kernels [`layer`] launches.
const KERNELS: [&str; 4] = [
    lstm::LAYER_STEP_FORWARD,
    lstm::LAYER_STEP_BACKWARD,
    lstm::LAYER_PREVIOUS_STATES,
    lstm::COLUMN_SUMS,
];

/// candle's device as a [`Gpu`]: raw device addresses, cuBLAS on candle's handle (bound to
/// its stream) with the compute type of the layer's precision, launches on candle's stream.
struct CudaGpu {
    /// [`KERNELS`]' functions, looked up once per pass rather than once per step.
    functions: Vec<CudaFunction>,
    stream: Arc<CudaStream>,
    blas: Arc<CudaBlas>,
    compute: blas::cublasComputeType_t,
}

impl CudaGpu {
    fn new(device: &CudaDevice, precision: Precision) -> Result<Self> {
        use blas::cublasComputeType_t as C;
        let compute = match precision {
            Precision::F32 => C::CUBLAS_COMPUTE_32F,
            Precision::Tf32 => C::CUBLAS_COMPUTE_32F_FAST_TF32,
            // Operands rounded to bf16 inside cuBLAS, sums in f32: `--matmul bf16`.
            Precision::Bf16 => C::CUBLAS_COMPUTE_32F_FAST_16BF,
            Precision::Int8 => candle::bail!("{OP}: training has no int8 products on a GPU"),
        };
        let functions = KERNELS
            .iter()
            .map(|name| function(device, lstm::MODULE, name))
            .collect::<Result<_>>()?;
        Ok(Self {
            functions,
            stream: device.cuda_stream(),
            blas: device.cublas_handle(),
            compute,
        })
    }
}

/// No address: the kernels read a null `keep` as "every step real".
const NULL: CUdeviceptr = 0;

impl Gpu for CudaGpu {
    type Mem = CUdeviceptr;
    type Error = candle::Error;

    fn offset(&self, mem: CUdeviceptr, values: usize) -> CUdeviceptr {
        mem + (values * std::mem::size_of::<f32>()) as CUdeviceptr
    }

    fn gemm(&self, g: Gemm, a: CUdeviceptr, b: CUdeviceptr, c: CUdeviceptr) -> Result<()> {
        let op = |t: bool| {
            if t {
                blas::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let int = |n: usize| {
            i32::try_from(n)
                .map_err(|_| candle::Error::msg(format!("{OP}: {n} is too large for cuBLAS")))
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let f32_type = blas::cudaDataType_t::CUDA_R_32F;
        // cuBLAS is column-major: the row-major C = op(A) op(B) is the column-major
        // C^T = op(B)^T op(A)^T, so the operands swap places.
        // SAFETY: the addresses are the layer's buffers, sized by `layer` for this product,
        // on the stream cuBLAS's handle runs on.
        unsafe {
            gemm_ex(
                *self.blas.handle(),
                op(g.b_t),
                op(g.a_t),
                int(g.n)?,
                int(g.m)?,
                int(g.k)?,
                (&alpha as *const f32).cast(),
                b as *const _,
                f32_type,
                int(g.ldb)?,
                a as *const _,
                f32_type,
                int(g.lda)?,
                (&beta as *const f32).cast(),
                c as *mut _,
                f32_type,
                int(g.ldc)?,
                self.compute,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
            )
        }
        .w()
    }

    fn launch(
        &self,
        kernel: &'static str,
        launch: Launch,
        args: &[Arg<CUdeviceptr>],
    ) -> Result<()> {
        let Some(i) = KERNELS.iter().position(|&k| k == kernel) else {
            candle::bail!("{OP}: no kernel {kernel}")
        };
        let mut builder = self.stream.launch_builder(&self.functions[i]);
        for arg in args {
            match arg {
                Arg::U32(x) => builder.arg(x),
                Arg::I32(x) => builder.arg(x),
                Arg::Mem(m) => builder.arg(m.as_ref().unwrap_or(&NULL)),
            };
        }
        // SAFETY: `layer` passes each kernel its arguments in its order, with buffers of the
        // sizes it reads and writes.
        unsafe { builder.launch(config(launch)) }.w()?;
        Ok(())
    }

    fn error(&self, what: String) -> candle::Error {
        candle::Error::msg(what)
    }
}
