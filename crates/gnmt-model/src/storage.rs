//! Reading a CPU tensor's elements where they lie, for the fused operations.

/// The data of a contiguous CPU tensor of dtype `T`, read in place from `storage` (the guard
/// of [`candle::Tensor::storage_and_layout`]): no copy, unlike `to_vec1`. Errors name `op`.
pub(crate) fn tensor_slice<'a, T: candle::WithDType>(
    storage: &'a candle::Storage,
    layout: &candle::Layout,
    op: &str,
) -> candle::Result<&'a [T]> {
    match storage {
        candle::Storage::Cpu(cpu) => contiguous_slice(T::cpu_storage_as_slice(cpu)?, layout, op),
        _ => candle::bail!("{op}: CPU tensors only"),
    }
}

/// The elements of a contiguous tensor's storage, or an error naming the operation.
pub(crate) fn contiguous_slice<'a, T>(
    data: &'a [T],
    layout: &candle::Layout,
    op: &str,
) -> candle::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle::bail!("{op}: inputs must be contiguous"),
    }
}
