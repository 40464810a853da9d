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

/// The part of a generator's stream that decides a mask, and `p`: one word per `repeat`
/// consecutive elements (1 for dropout of single values; a token's embedding width for word
/// dropout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamSlice {
    seed: [u8; 32],
    stream: u64,
    /// The stream's word position of the first decision.
    start: u128,
    p: f32,
    repeat: usize,
}

impl StreamSlice {
    /// The slice of the next `decisions` words of `rng`'s stream, each deciding `repeat`
    /// elements; `rng` moves past them exactly as drawing the mask would move it.
    pub(crate) fn take(rng: &mut ChaCha20Rng, p: f32, decisions: usize, repeat: usize) -> Self {
        let start = rng.get_word_pos();
        rng.set_word_pos(start + decisions as u128);
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            start,
            p,
            repeat: repeat.max(1),
        }
    }

    /// The mask of `n` elements, drawn on the CPU.
    fn mask(&self, n: usize) -> Vec<f32> {
        let mut rng = ChaCha20Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.start);
        let decisions = draw_mask(&mut rng, self.p, n / self.repeat);
        if self.repeat == 1 {
            return decisions;
        }
        let each = |m: f32| std::iter::repeat_n(m, self.repeat);
        decisions.into_iter().flat_map(each).collect()
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
        if !n.is_multiple_of(slice.repeat) {
            candle::bail!("{OP}: {n} values are not whole runs of {}", slice.repeat)
        }
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
        let (n64, repeat) = (n as u64, slice.repeat as u64);
        let func = function(&device, dropout::MODULE, dropout::DROPOUT)?;
        let stream = device.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&n64).arg(&repeat).arg(&x).arg(&mut out);
        for k in &key {
            args.arg(k);
        }
        args.arg(&slice.stream).arg(&first_block).arg(&offset);
        args.arg(&threshold).arg(&scale);
        let blocks = dropout::blocks(n / slice.repeat, offset);
        // SAFETY: `n` values in and out, whole runs of `repeat`; besides them the kernel reads
        // only its scalar arguments.
        unsafe { args.launch(config(Launch::elements(blocks))) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            layout.shape().clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropout::Side;
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
        let got = apply(x.as_tensor(), StreamSlice::take(&mut rng, 0.3, 1000, 1)).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&got), values(&want));
        assert_eq!(rng.get_word_pos(), drawn.rng().get_word_pos());
        let grad = |y: &Tensor| {
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            values(g.get(&x).unwrap())
        };
        assert_eq!(grad(&got), grad(&want));
    }

    /// Word dropout from the stream (one word per token, its whole vector kept or dropped)
    /// equals Dropout's own word dropout from the same generator.
    #[test]
    fn word_masks_from_the_stream_equal_the_drawn_ones() {
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 1200.0, &Device::Cpu)
                .unwrap()
                .reshape((4, 30, 10))
                .unwrap(),
        )
        .unwrap();
        let mut drawn = Dropout::new(0.0, 3).with_word_dropout(0.25, 0.0);
        let mut rng = drawn.rng().clone();
        let want = drawn
            .drop_words(x.as_tensor(), Side::Source, Kernels::default())
            .unwrap();
        let got = apply(x.as_tensor(), StreamSlice::take(&mut rng, 0.25, 120, 10)).unwrap();
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&got), values(&want));
        assert!(values(&got).chunks(10).any(|v| v.iter().all(|&x| x == 0.0)));
        assert_eq!(rng.get_word_pos(), drawn.rng().get_word_pos());
        let sum = |y: &Tensor| {
            let g = y.sum_all().unwrap().backward().unwrap();
            values(g.get(&x).unwrap())
        };
        assert_eq!(sum(&got), sum(&want));
    }
}
