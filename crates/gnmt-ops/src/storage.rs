//! Reading a CPU tensor's elements where they lie, for the fused operations' kernels, and the
//! one output of a backward op split into the gradients it holds.

use candle::{Result, Shape, Tensor};

/// The data of a contiguous CPU tensor of dtype `T`, read in place from `storage` (the guard
/// of [`candle::Tensor::storage_and_layout`]): no copy, unlike `to_vec1`. Errors name `op`.
pub(crate) fn tensor_slice<'a, T: candle::WithDType>(
    storage: &'a candle::Storage,
    layout: &candle::Layout,
    op: &str,
) -> Result<&'a [T]> {
    match storage {
        candle::Storage::Cpu(cpu) => contiguous_slice(T::cpu_storage_as_slice(cpu)?, layout, op),
        _ => candle::bail!("{op}: CPU tensors only"),
    }
}

/// `f` of the elements of `t` (a tensor a kernel keeps beside its inputs: a saved activation,
/// a weight), read in place; `t` must be a contiguous CPU tensor of dtype `T`.
pub(crate) fn read<T: candle::WithDType, R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    f(tensor_slice(&storage, layout, op)?)
}

/// The elements of a contiguous tensor's storage, or an error naming the operation.
pub(crate) fn contiguous_slice<'a, T>(
    data: &'a [T],
    layout: &candle::Layout,
    op: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle::bail!("{op}: inputs must be contiguous"),
    }
}

/// Concatenated vectors as one, with the shape of the whole: how a backward op returns the
/// several gradients it computes (an op has one output).
pub(crate) fn joined<T>(parts: Vec<Vec<T>>) -> (Vec<T>, Shape) {
    let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        all.extend(part);
    }
    let n = all.len();
    (all, Shape::from(n))
}

/// A flat tensor from [`joined`] split back into tensors of `shapes`: views of it, no copy.
pub(crate) fn split<const N: usize>(flat: &Tensor, shapes: [Shape; N]) -> Result<[Tensor; N]> {
    let mut start = 0;
    let mut parts = Vec::with_capacity(N);
    for shape in shapes {
        let n = shape.elem_count();
        parts.push(flat.narrow(0, start, n)?.reshape(shape)?);
        start += n;
    }
    if start != flat.elem_count() {
        candle::bail!("{} gradient values for {start}", flat.elem_count())
    }
    Ok(parts
        .try_into()
        .unwrap_or_else(|_| unreachable!("one part per shape")))
}
