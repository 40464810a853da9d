//! int8 storage of a model's matrices: each row of a 2-D parameter as 8-bit integers with one
//! f32 scale, the way the int8 products quantize a weight ([`gnmt_kernels::gemm::quantize_row`]),
//! so that decoding with `--matmul int8` multiplies exactly the stored integers. Vectors
//! (biases) stay f32. About a quarter of an f32 file, half of an f16 one.
//!
//! In `model.safetensors` a quantized parameter `NAME [rows, cols]` is the tensor `NAME` with
//! dtype I8 and the tensor `NAME.row_scales [rows]` (F32). Loading multiplies them back into
//! f32 (candle has no int8 tensors).

use std::borrow::Cow;

use candle::{DType, Device, Tensor};
use safetensors::{Dtype, View};

/// The suffix of a quantized parameter's scales tensor.
pub const ROW_SCALES: &str = ".row_scales";

/// A tensor as safetensors stores it: dtype, shape and little-endian bytes.
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

impl RawTensor {
    /// `t` (on the CPU) as stored in `dtype` (F32, F16 or BF16).
    pub fn float(t: &Tensor, dtype: DType) -> candle::Result<Self> {
        let t = t.to_dtype(dtype)?.to_device(&Device::Cpu)?;
        Ok(Self {
            dtype: View::dtype(&t),
            shape: t.dims().to_vec(),
            bytes: View::data(&t).into_owned(),
        })
    }

    /// The int8 rows of a 2-D `t` and their scales: `(NAME tensor, NAME.row_scales tensor)`.
    pub fn int8_rows(t: &Tensor) -> candle::Result<(Self, Self)> {
        let (rows, cols) = t.dims2()?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut q = vec![0i8; rows * cols];
        let mut scales = Vec::with_capacity(rows);
        if cols > 0 {
            for (row, out) in values.chunks(cols).zip(q.chunks_mut(cols)) {
                scales.push(gnmt_kernels::gemm::quantize_row(row, out));
            }
        } else {
            scales.resize(rows, 0.0);
        }
        let quantized = Self {
            dtype: Dtype::I8,
            shape: vec![rows, cols],
            bytes: q.iter().map(|&x| x as u8).collect(),
        };
        let scales = Self {
            dtype: Dtype::F32,
            shape: vec![rows],
            bytes: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        };
        Ok((quantized, scales))
    }
}

/// The f32 matrix `[rows, cols]` of int8 `bytes` and per-row `scales` (little-endian f32
/// bytes), on `device` in `dtype`.
pub fn dequantize(
    bytes: &[u8],
    scales: &[u8],
    (rows, cols): (usize, usize),
    dtype: DType,
    device: &Device,
) -> candle::Result<Tensor> {
    if bytes.len() != rows * cols || scales.len() != 4 * rows {
        candle::bail!(
            "int8 tensor of {} bytes and {} scale bytes for [{rows}, {cols}]",
            bytes.len(),
            scales.len()
        )
    }
    let mut values = Vec::with_capacity(rows * cols);
    for (r, scale) in scales.chunks_exact(4).enumerate() {
        let scale = f32::from_le_bytes(scale.try_into().expect("4 bytes"));
        let row = &bytes[r * cols..][..cols];
        values.extend(row.iter().map(|&q| q as i8 as f32 * scale));
    }
    Tensor::from_vec(values, (rows, cols), device)?.to_dtype(dtype)
}
