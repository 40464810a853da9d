//! A device's out-of-memory error told apart from other errors, so that a command can say
//! which setting to lower instead of passing on the driver's words.

/// Whether `e` is a device running out of memory: CUDA's driver (`CUDA_ERROR_OUT_OF_MEMORY`,
/// as cudarc reports it through candle), cuBLAS failing to allocate its workspace, or the
/// runtime's `cudaErrorMemoryAllocation`.
pub fn is_out_of_memory(e: &dyn std::fmt::Display) -> bool {
    let text = e.to_string();
    [
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "cudaErrorMemoryAllocation",
    ]
    .iter()
    .any(|marker| text.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_memory_errors_are_recognised_and_others_are_not() {
        // The text candle gives cudarc's driver error, and cuBLAS's.
        let driver = candle::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".to_string(),
        );
        assert!(is_out_of_memory(&driver));
        let cublas = candle::Error::Msg("cublas error CUBLAS_STATUS_ALLOC_FAILED".into());
        assert!(is_out_of_memory(&cublas));
        let shape = candle::Error::Msg("shape mismatch in matmul".into());
        assert!(!is_out_of_memory(&shape));
    }
}
