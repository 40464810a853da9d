//! The weights of decoding, laid out once for the small per-step products `x W (+ bias)`.

use candle::{DType, Result, Tensor};

use gnmt_kernels::gemm::{self, PackedB, View};
use gnmt_kernels::matmul::packed_format;

use crate::storage::tensor_slice;
use crate::Kernels;

/// A weight laid out for the products of decoding, `x W (+ bias)` with `W [in, out]`: with
/// fused kernels an f32 weight is packed once for [`gnmt_kernels::gemm`] in the format of
/// their precision, and its bias read out once, not at every step; other dtypes and the
/// reference kernels keep a contiguous copy for candle's matmul.
#[derive(Debug)]
pub struct StepMatrix {
    w: Tensor,
    bias: Option<Tensor>,
    packed: Option<Packed>,
    /// The precision of candle's products when not packed (a GPU's bf16).
    kernels: Kernels,
}

/// The packed weight with its bias as f32 (added as the product's tiles are written).
#[derive(Debug)]
struct Packed {
    w: PackedB,
    bias: Option<Vec<f32>>,
}

impl StepMatrix {
    /// `w [in, out]` (a transposed view is fine: packing reads it in place), with an optional
    /// `bias [out]`, multiplied by `kernels`.
    pub fn new(w: Tensor, bias: Option<Tensor>, kernels: Kernels) -> Result<Self> {
        let (k, n) = w.dims2()?;
        if let Some(b) = &bias {
            if b.dims1()? != n {
                candle::bail!("step matrix: bias of {} for {n} outputs", b.dims1()?)
            }
        }
        let format = kernels.fused_on(w.device()).and_then(packed_format);
        let Some(format) = format.filter(|_| w.dtype() == DType::F32) else {
            return Ok(Self {
                w: w.contiguous()?,
                bias,
                packed: None,
                kernels,
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
            kernels,
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
    /// (zeroing a decoder's `[rows, vocabulary]` logits each step is a pass of its own).
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
        let y = crate::matmul::candle_matmul(x, &self.w, self.kernels)?;
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
