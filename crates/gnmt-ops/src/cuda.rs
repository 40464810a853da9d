//! Launching `gnmt-cuda-kernels`' kernels on candle's CUDA storages (the `cuda` feature): what
//! an operation's `cuda_fwd` needs besides the kernel's own arguments; and a GPU tensor's
//! memory lent mutably ([`with_f32_mut`]) for in-place updates and collectives.

use std::cell::Cell;

use candle::backend::BackendStorage;
use candle::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, LaunchConfig,
};
use candle::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle::{CpuStorage, InplaceOp1, Layout, Result, Storage, Tensor};
use gnmt_cuda_kernels::{Launch, Module};

/// The elements of a contiguous CUDA storage under `layout`, as type `T`; errors name `op`.
pub(crate) fn view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle::bail!("{op}: inputs must be contiguous")
    };
    let slice = storage.as_cuda_slice::<T>().map_err(|_| {
        candle::Error::msg(format!(
            "{op}: the CUDA kernel takes {}, got {:?}",
            std::any::type_name::<T>(),
            storage.dtype()
        ))
    })?;
    Ok(slice.slice(start..end))
}

/// `f` of the elements of a contiguous CUDA tensor (one an operation keeps beside its
/// inputs).
pub(crate) fn read_tensor<T: CudaDType, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cuda(s) => f(view(s, layout, op)?),
        _ => candle::bail!("{op}: a tensor it keeps is not on the GPU"),
    }
}

/// A kernel of `module`, loaded once per device; launched on the device's stream
/// (`device.cuda_stream().launch_builder(&f)`), where candle runs its own operations.
pub(crate) fn function(device: &CudaDevice, module: Module, name: &str) -> Result<CudaFunction> {
    Ok(device
        .get_or_load_custom_func(name, module.name, module.ptx)?
        .into_cuda_function())
}

/// `n` as the kernels' `unsigned int`, or an error naming `op`.
pub(crate) fn dim(n: usize, op: &str) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle::Error::msg(format!("{op}: {n} is too large for the GPU kernel")))
}

/// Uninitialised device memory for `n` values that the kernel about to run writes in full.
pub(crate) fn output<T: candle::cuda_backend::cudarc::driver::DeviceRepr>(
    device: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `n` values before any read.
    unsafe { device.alloc::<T>(n) }
}

pub(crate) fn config(launch: Launch) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (launch.grid, 1, 1),
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs `f` on the contiguous f32 data of the GPU tensor `t`, lent mutably (candle lends a
/// tensor's storage only inside an in-place op). Nested calls hold several tensors at once.
pub fn with_f32_mut(t: &Tensor, f: impl FnOnce(CudaViewMut<'_, f32>) -> Result<()>) -> Result<()> {
    t.inplace_op1(&LendGpu(Cell::new(Some(f))))
}

struct LendGpu<F>(Cell<Option<F>>);

impl<F: FnOnce(CudaViewMut<'_, f32>) -> Result<()>> InplaceOp1 for LendGpu<F> {
    fn name(&self) -> &'static str {
        "lend-f32"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> Result<()> {
        candle::bail!("a GPU tensor was expected")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> Result<()> {
        let f = self.0.take().expect("candle runs an in-place op once");
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle::bail!("contiguous GPU tensors only")
        };
        f(storage.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
    }
}
