//! Dropout whose mask is generated where the activations are: the op holds the generator's
//! position instead of the mask. On a GPU, `gnmt-cuda-kernels`' `dropout` computes the same
//! ChaCha20 words the CPU draws, so a seeded GPU run drops exactly what a CPU run drops, no
//! mask crosses the bus, and the backward pass regenerates the mask instead of keeping it.
//! On the CPU the op draws the mask as [`gnmt_kernels::dropout::draw_mask`] does (the tests
//! check that it equals [`crate::Dropout`]'s own path there).

#[cfg(feature = "cuda")]
use candle::cuda_backend::CudaStorage;
use candle::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use gnmt_kernels::dropout::{draw_mask, times_mask};

use crate::dispatch::{self, Float, Kernel};

/// The part of a generator's stream that decides the next `n` mask elements, and `p`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamSlice {
    seed: [u8; 32],
    stream: u64,
    /// The stream's word position of the first element.
    start: u128,
    p: f32,
}

impl StreamSlice {
    /// The slice of the next `n` elements of `rng`'s stream, which moves past it exactly as
    /// drawing the mask would move it.
    pub(crate) fn take(rng: &mut ChaCha20Rng, p: f32, n: usize) -> Self {
        let start = rng.get_word_pos();
        rng.set_word_pos(start + n as u128);
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            start,
            p,
        }
    }

    /// The mask of `n` elements, drawn on the CPU.
    fn mask(&self, n: usize) -> Vec<f32> {
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.start);
        draw_mask(&mut rng, self.p, n)
    }
}

/// `x` with the slice's mask applied (and the same mask on its gradient).
pub(crate) fn apply(x: &Tensor, slice: StreamSlice) -> Result<Tensor> {
    x.contiguous()?.apply_op1(StreamDropout(slice))
}

struct StreamDropout(StreamSlice);

impl Kernel<1> for StreamDropout {
    const NAME: &'static str = "dropout";

    fn run<T: Float>(&self, [(x, shape)]: [(&[T], &Shape); 1]) -> Result<(Vec<T>, Shape)> {
        Ok((times_mask(x, &self.0.mask(x.len())), shape.clone()))
    }
}

impl CustomOp1 for StreamDropout {
    fn name(&self) -> &'static str {
        "dropout-from-stream"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch::run(self, [(s, l)])
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        on_gpu::dropout(&self.0, s, l)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&StreamDropout(self.0))?,
        ))
    }
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::{CudaStorage, WrapErr};
    use candle::{Layout, Result, Shape};
    use gnmt_cuda_kernels::{dropout, Launch};

    use super::StreamSlice;
    use crate::cuda::{config, function, output, view};

    const OP: &str = "dropout";

    pub(super) fn dropout(
        slice: &StreamSlice,
        x: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let device = x.device.clone();
        let x = view::<f32>(x, layout, OP)?;
        let n = layout.shape().elem_count();
        let mut out = output::<f32>(&device, n)?;
        let key: [u32; 8] = std::array::from_fn(|i| {
            u32::from_le_bytes(slice.seed[4 * i..][..4].try_into().unwrap())
        });
        let Ok(first_block) = u64::try_from(slice.start / 16) else {
            candle::bail!("{OP}: the generator is past 2^64 blocks")
        };
        let offset = (slice.start % 16) as u32;
        let keep = 1.0 - slice.p;
        let (threshold, scale) = (keep * (1u32 << 24) as f32, 1.0 / keep);
        let n64 = n as u64;
        let func = function(&device, dropout::MODULE, dropout::DROPOUT)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&n64).arg(&x).arg(&mut out);
        for k in &key {
            args.arg(k);
        }
        args.arg(&slice.stream).arg(&first_block).arg(&offset);
        args.arg(&threshold).arg(&scale);
        // SAFETY: `n` values in and out; the kernel reads only its scalar arguments besides.
        unsafe { args.launch(config(Launch::elements(dropout::blocks(n, offset)))) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            layout.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dropout, Kernels};
    use candle::{Device, Var};

    /// From the same generator, the op gives the values and gradient of Dropout's own path
    /// (the mask drawn up front) and leaves the generator where that path leaves it.
    #[test]
    fn masks_from_the_stream_equal_the_drawn_ones() {
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 1000.0, &Device::Cpu)
                .unwrap()
                .reshape((10, 100))
                .unwrap(),
        )
        .unwrap();
        let w = Tensor::arange(0f32, 1000.0, &Device::Cpu)
            .unwrap()
            .reshape((10, 100))
            .unwrap()
            .cos()
            .unwrap();
        let mut drawn = Dropout::new(0.3, 9);
        // Part-way into the stream, as after earlier layers.
        drawn
            .apply(&x.as_tensor().narrow(1, 0, 7).unwrap(), Kernels::default())
            .unwrap();
        let mut rng = drawn.rng().clone();
        let want = drawn.apply(x.as_tensor(), Kernels::default()).unwrap();
        let got = apply(x.as_tensor(), StreamSlice::take(&mut rng, 0.3, 1000)).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&got), values(&want));
        assert_eq!(rng.get_word_pos(), drawn.rng().get_word_pos());
        let grad = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            values(g.get(&x).unwrap())
        };
        assert_eq!(grad(&got), grad(&want));
    }
}
