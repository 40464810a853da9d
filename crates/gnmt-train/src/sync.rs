//! What keeps the ranks of a job on one model: the all-reduce of each update's gradients, the
//! broadcast of rank 0's starting weights, and the checksum the ranks compare.

use std::hash::Hasher;

use candle::backprop::GradStore;
use candle::{Tensor, Var};
use gnmt_dist::Group;

use crate::optim::Optimizer;
use crate::{Error, Result};

/// Values per all-reduce: gradients are copied into buckets of this size (64 MiB of f32), so
/// the extra memory stays bounded whatever the model; a parameter larger than a bucket travels
/// alone.
const BUCKET: usize = 16 << 20;

/// Replaces every parameter's gradient by its sum over the ranks, and `extras` (the update's
/// loss sums) with them: one flat buffer, cut into buckets, in the parameters' name order.
pub fn all_reduce(
    grads: &mut GradStore,
    optimizer: &Optimizer,
    extras: &mut [f64],
    group: &Group,
) -> Result<()> {
    let vars: Vec<&Var> = optimizer.vars().map(|(_, v)| v).collect();
    #[cfg(feature = "nccl")]
    if crate::nccl::all_reduce(grads, &vars, BUCKET, group)? {
        group.all_reduce_sum_f64(extras);
        return Ok(());
    }
    let mut start = 0;
    while start < vars.len() {
        let end = bucket_end(&vars, start, BUCKET);
        let len: usize = vars[start..end].iter().map(|v| v.elem_count()).sum();
        let last = end == vars.len();
        let mut bucket = Vec::with_capacity(len + if last { extras.len() } else { 0 });
        for var in &vars[start..end] {
            match grads.get(var) {
                Some(g) => bucket.extend(
                    g.flatten_all()?
                        .to_dtype(candle::DType::F32)?
                        .to_vec1::<f32>()?,
                ),
                None => bucket.resize(bucket.len() + var.elem_count(), 0.0),
            }
        }
        if last {
            bucket.extend(extras.iter().map(|&x| x as f32));
        }
        group.all_reduce_sum(&mut bucket);
        let mut offset = 0;
        for var in &vars[start..end] {
            let n = var.elem_count();
            let g = Tensor::from_slice(&bucket[offset..offset + n], var.shape(), var.device())?
                .to_dtype(var.dtype())?;
            grads.insert(var, g);
            offset += n;
        }
        if last {
            for (x, &s) in extras.iter_mut().zip(&bucket[offset..]) {
                *x = s as f64;
            }
        }
        start = end;
    }
    Ok(())
}

/// The end of the bucket of at most `bucket` values that starts at parameter `start`: at
/// least one parameter, then as many as fit.
pub(crate) fn bucket_end(vars: &[&Var], start: usize, bucket: usize) -> usize {
    let mut end = start + 1;
    let mut len = vars[start].elem_count();
    while end < vars.len() && len + vars[end].elem_count() <= bucket {
        len += vars[end].elem_count();
        end += 1;
    }
    end
}

/// Gives every rank rank 0's parameters.
pub fn broadcast_weights(optimizer: &Optimizer, group: &Group) -> Result<()> {
    for (_, var) in optimizer.vars() {
        let mut data = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        group.broadcast_f32(0, &mut data);
        var.set(&Tensor::from_vec(data, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// A checksum of the parameters' bits, in name order.
pub fn weights_checksum(optimizer: &Optimizer) -> Result<u64> {
    // `DefaultHasher::new` has fixed keys: every rank (the same binary) hashes alike.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, var) in optimizer.vars() {
        h.write(name.as_bytes());
        for x in var.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            h.write_u32(x.to_bits());
        }
    }
    Ok(h.finish())
}

/// Stops with an error naming the ranks whose weights differ from rank 0's, after `step`.
pub fn check_consistency(optimizer: &Optimizer, group: &Group, step: u64) -> Result<()> {
    if !group.is_distributed() {
        return Ok(());
    }
    let sums = group.all_gather(weights_checksum(optimizer)?);
    let differ: Vec<String> = sums
        .iter()
        .enumerate()
        .filter(|(_, &s)| s != sums[0])
        .map(|(r, _)| r.to_string())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::Diverged(format!(
        "after update {step} the weights of rank(s) {} differ from rank 0's: the ranks no longer \
         train one model (a different binary, data or checkpoint on some machine?); the last \
         checkpoint is still good",
        differ.join(", ")
    )))
}
