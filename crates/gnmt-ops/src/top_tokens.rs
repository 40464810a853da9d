//! The `k` best next tokens of each decoder row from logits that stay on a GPU:
//! `gnmt-cuda-kernels`' `top_tokens` ranks them there, and only `rows x k` tokens and
//! log-probabilities come back to the host (the CPU's `gnmt_kernels::top_tokens` reads the
//! whole `[rows, V]` logits, which on a GPU is a copy of all of them per decoding step).

use candle::{Result, Tensor};
use gnmt_kernels::top_tokens::TopTokens;

/// The `k` best of each row of `logits [rows, V]` (as log-probabilities when `normalise`,
/// else the values as they are), ranked where the logits are; `None` where this cannot be
/// done there (the CPU, a build without the `cuda` feature, `k` above the kernel's limit,
/// another dtype than f32): the caller ranks on the host.
pub fn on_device(logits: &Tensor, k: usize, normalise: bool) -> Result<Option<TopTokens>> {
    if logits.device().is_cpu() {
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        on_gpu::top_tokens(logits, k, normalise)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (k, normalise);
        Ok(None)
    }
}

#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::WrapErr;
    use candle::{DType, Result, Storage, Tensor};
    use gnmt_cuda_kernels::{top_tokens as kernel, Launch};
    use gnmt_kernels::top_tokens::TopTokens;

    use crate::cuda::{config, dim, function, output, view};

    const OP: &str = "top tokens";

    pub(super) fn top_tokens(
        logits: &Tensor,
        k: usize,
        normalise: bool,
    ) -> Result<Option<TopTokens>> {
        let (rows, vocab) = logits.dims2()?;
        let k = k.min(vocab);
        if k > kernel::MAX_TOP || logits.dtype() != DType::F32 {
            return Ok(None);
        }
        let logits = logits.contiguous()?;
        let (storage, layout) = logits.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            return Ok(None);
        };
        let device = storage.device.clone();
        let z = view::<f32>(storage, layout, OP)?;
        let mut tokens = output::<u32>(&device, rows * k)?;
        let mut log_probs = output::<f32>(&device, rows * k)?;
        let (r, v, kk) = (dim(rows, OP)?, dim(vocab, OP)?, dim(k, OP)?);
        let normalise = i32::from(normalise);
        if rows > 0 && k > 0 {
            let func = function(&device, kernel::MODULE, kernel::TOP_TOKENS)?;
            let stream = device.cuda_stream();
            let mut args = stream.launch_builder(&func);
            args.arg(&r).arg(&v).arg(&kk).arg(&normalise).arg(&z);
            args.arg(&mut tokens).arg(&mut log_probs);
            // SAFETY: `rows` rows of `vocab` logits; `rows * k` tokens and values written;
            // k <= MAX_TOP and k <= vocab, as the kernel requires.
            unsafe { args.launch(config(Launch::rows(rows))) }.w()?;
        }
        let tokens = device.clone_dtoh(&tokens)?;
        let log_probs = device.clone_dtoh(&log_probs)?;
        Ok(Some(TopTokens::from_rows(k, tokens, log_probs)))
    }
}
