//! The machine's peak product rates, measured in the same process as a benchmark, for the
//! fraction of it a measurement reaches.

use std::time::Instant;

use candle::{DType, Device, Tensor};

/// Side of the square product that measures the machine's peak.
const PEAK_N: usize = 2048;

/// GFLOP/s of the best of three runs of a `PEAK_N`^3 product (after one warm-up run).
fn best_of_three(mut run: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    run()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        run()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (PEAK_N as f64).powi(3) / best / 1e9)
}

/// The rate of our packed product ([`gnmt_kernels::gemm`]) at 2048^3 with operands in the
/// format of `precision`, `B` packed beforehand, in GFLOP/s: the peak of that precision
/// (bf16 or int8) that a benchmark's products are measured against.
pub(crate) fn packed_peak_gflops(precision: gnmt_model::Precision) -> anyhow::Result<f64> {
    use gnmt_kernels::gemm::{gemm, PackedB, View};
    let format = gnmt_kernels::matmul::packed_format(precision)
        .ok_or_else(|| anyhow::anyhow!("{precision:?} products are not packed on this CPU"))?;
    let n = PEAK_N;
    let (a, b) = (vec![1f32; n * n], vec![1f32; n * n]);
    let mut c = vec![0f32; n * n];
    let packed = PackedB::new(View::new(&b, n, n, false), format);
    let threads = rayon::current_num_threads();
    best_of_three(|| {
        gemm(&mut c, false, View::new(&a, n, n, false), &packed, threads);
        Ok(())
    })
}

/// f32 matmul rate at 2048^3 on `device` (candle's matmul: cuBLAS on a GPU), in GFLOP/s:
/// the device's practical peak.
pub(crate) fn peak_gflops(device: &Device) -> anyhow::Result<f64> {
    let a = Tensor::ones((PEAK_N, PEAK_N), DType::F32, device)?;
    let b = Tensor::ones((PEAK_N, PEAK_N), DType::F32, device)?;
    best_of_three(|| {
        a.matmul(&b)?;
        device.synchronize()?;
        Ok(())
    })
}
