//! One Adam update of an f32 parameter and its two moments, in place and in one pass over
//! their elements: the CPU kernel (gnmt-kernels' `adam.rs`) on CPU tensors, and
//! `gnmt-cuda-kernels`' `adam_update` (the same arithmetic) on a GPU's. The optimizer's
//! tensor-by-tensor update allocates a parameter-sized tensor per operation instead.

use std::cell::Cell;

use candle::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};

pub use gnmt_kernels::adam::AdamConstants;

/// Whether [`update`] runs on `device`: the CPU, and a GPU in a build with the `cuda`
/// feature.
pub fn runs_on(device: &candle::Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// Updates the parameter `p` and its moments `m`, `v` in place from the gradient `g` (f32
/// tensors of one size on one device; `p`, `m` and `v` contiguous), as
/// [`AdamConstants::element`] does each element.
pub fn update(p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor, k: &AdamConstants) -> Result<()> {
    let n = p.elem_count();
    if [m.elem_count(), v.elem_count(), g.elem_count()] != [n; 3] {
        candle::bail!("adam: parameter, gradient and moments differ in size")
    }
    let g = g.contiguous()?;
    if p.device().is_cpu() {
        let (g_storage, g_layout) = g.storage_and_layout();
        let g = match (&*g_storage, g_layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(d)), Some((a, b))) => &d[a..b],
            _ => candle::bail!("adam: f32 CPU gradients only"),
        };
        // candle lends a tensor's storage mutably only inside an in-place op, one tensor per
        // op: three nested ops hold the moments and the parameter at once.
        return with_f32_mut(m, |m| {
            with_f32_mut(v, |v| {
                with_f32_mut(p, |p| {
                    k.update(p, m, v, g);
                    Ok(())
                })
            })
        });
    }
    #[cfg(feature = "cuda")]
    if p.device().is_cuda() {
        return on_gpu::update(p, m, v, &g, k);
    }
    candle::bail!("adam: no one-pass update on {:?}", p.device().location())
}

/// Runs `f` on the contiguous f32 data of the CPU tensor `t`, lent mutably by an in-place op.
pub fn with_f32_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    t.inplace_op1(&LendF32(Cell::new(Some(f))))
}

/// An in-place op that hands its tensor's data to a closure (run once).
struct LendF32<F>(Cell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for LendF32<F> {
    fn name(&self) -> &'static str {
        "lend-f32"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let f = self.0.take().expect("candle runs an in-place op once");
        match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((a, b))) => f(&mut d[a..b]),
            _ => candle::bail!("contiguous f32 CPU tensors only"),
        }
    }
}

/// The update on a GPU: the three tensors lent mutably by nested in-place ops, as on the CPU.
#[cfg(feature = "cuda")]
mod on_gpu {
    use candle::cuda_backend::cudarc::driver::PushKernelArg;
    use candle::cuda_backend::WrapErr;
    use candle::{Result, Tensor};
    use gnmt_cuda_kernels::{adam, Launch};

    use super::AdamConstants;
    use crate::cuda::{config, function, read_tensor, with_f32_mut as lend};

    pub(super) fn update(
        p: &Tensor,
        m: &Tensor,
        v: &Tensor,
        g: &Tensor,
        k: &AdamConstants,
    ) -> Result<()> {
        let n = p.elem_count() as u64;
        let device = match p.device() {
            candle::Device::Cuda(d) => d.clone(),
            _ => candle::bail!("adam: the parameter is not on a GPU"),
        };
        read_tensor::<f32, _>(g, "adam", |g| {
            lend(m, |mut m| {
                lend(v, |mut v| {
                    lend(p, |mut p| {
                        let func = function(&device, adam::MODULE, adam::UPDATE)?;
                        let stream = device.cuda_stream();
                        let mut args = stream.launch_builder(&func);
                        args.arg(&n).arg(&mut p).arg(&mut m).arg(&mut v).arg(&g);
                        args.arg(&k.scale).arg(&k.beta1).arg(&k.beta2);
                        args.arg(&k.one_minus_beta1).arg(&k.one_minus_beta2);
                        args.arg(&k.c1).arg(&k.c2).arg(&k.eps).arg(&k.lr);
                        // SAFETY: four buffers of `n` f32 values (sizes checked by the caller).
                        unsafe { args.launch(config(Launch::elements(n as usize))) }.w()?;
                        Ok(())
                    })
                })
            })
        })
    }
}
