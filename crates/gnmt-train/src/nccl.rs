//! The all-reduce of a job's gradients when they live on GPUs (the `nccl` feature): NCCL, as
//! Marian and PyTorch's DDP use it. Rank 0 makes the communicator's unique id and broadcasts
//! it over MPI; each process then joins with the GPU it trains on, on the stream candle runs
//! its operations on, so the reduction follows the backward pass in order. The gradients are
//! summed on the GPUs in buckets (no copy through host memory); the loss sums, a few numbers,
//! still go through MPI.

use std::cell::RefCell;

use candle::backprop::GradStore;
use candle::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle::cuda_backend::CudaDevice;
use candle::{DType, Device, Tensor, Var};
use gnmt_dist::Group;

use crate::{Error, Result};

thread_local! {
    /// This process's communicator, made at the first all-reduce (every rank reaches it at
    /// once: the all-reduce is collective) and kept for the run. NCCL communicators are
    /// used from the thread that made them.
    static COMM: RefCell<Option<Comm>> = const { RefCell::new(None) };
}

/// Sums `vars`' gradients over the ranks on their GPU, in buckets of `bucket` values, when
/// they are on one; returns false (nothing done) otherwise.
pub(crate) fn all_reduce(
    grads: &mut GradStore,
    vars: &[&Var],
    bucket: usize,
    group: &Group,
) -> Result<bool> {
    let Some(Device::Cuda(device)) = vars.first().map(|v| v.device().clone()) else {
        return Ok(false);
    };
    COMM.with(|cell| -> Result<()> {
        let mut comm = cell.borrow_mut();
        if comm.is_none() {
            *comm = Some(join(&device, group)?);
        }
        let comm = comm.as_ref().expect("made above");
        let mut start = 0;
        while start < vars.len() {
            let end = crate::sync::bucket_end(vars, start, bucket);
            reduce_bucket(grads, &vars[start..end], comm)?;
            start = end;
        }
        Ok(())
    })?;
    Ok(true)
}

/// One bucket: the gradients flattened into one f32 buffer on the GPU, summed in place, and
/// split back.
fn reduce_bucket(grads: &mut GradStore, vars: &[&Var], comm: &Comm) -> Result<()> {
    let parts = vars
        .iter()
        .map(|var| match grads.get(var) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32),
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device()),
        })
        .collect::<candle::Result<Vec<_>>>()?;
    let flat = Tensor::cat(&parts, 0)?.contiguous()?;
    gnmt_ops::cuda::with_f32_mut(&flat, |mut buffer| {
        comm.all_reduce_in_place(&mut buffer, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(|e| candle::Error::Msg(format!("NCCL all-reduce: {e:?}")))
    })?;
    let mut offset = 0;
    for var in vars {
        let n = var.elem_count();
        let g = flat.narrow(0, offset, n)?.reshape(var.shape())?;
        grads.insert(var, g.to_dtype(var.dtype())?);
        offset += n;
    }
    Ok(())
}

/// This rank's communicator: rank 0's unique id, broadcast over MPI, joined on `device`'s
/// stream.
fn join(device: &CudaDevice, group: &Group) -> Result<Comm> {
    let nccl = |what: &str, e: &dyn std::fmt::Debug| {
        Error::Config(format!("NCCL {what} on {}: {e:?}", group.label()))
    };
    let mut bytes = if group.is_root() {
        let id = Id::new().map_err(|e| nccl("unique id", &e))?;
        id.internal().iter().map(|&c| c as u8).collect()
    } else {
        Vec::new()
    };
    group.broadcast(0, &mut bytes);
    let internal: [std::ffi::c_char; 128] = bytes
        .iter()
        .map(|&b| b as std::ffi::c_char)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| Error::Config(format!("NCCL: a unique id of {} bytes", bytes.len())))?;
    let id = Id::uninit(internal);
    Comm::from_rank(device.cuda_stream(), group.rank(), group.size(), id)
        .map_err(|e| nccl("communicator", &e))
}
