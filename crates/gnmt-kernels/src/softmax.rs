//! Log-sum-exp, log-softmax and the softmax cross-entropy gradient of one row.

use crate::real::Real;
use crate::reduce::{lane_max, lane_sum};

/// `(logsumexp(z), sum(z))` of one row.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn row_logsumexp<T: Real>(z: &[T]) -> (T, T) {
    let max = lane_max(z);
    let sum = lane_sum(z, z, |x, _| x);
    let total = lane_sum(z, z, |x, _| (x - max).exp_());
    (max + total.ln_(), sum)
}

/// `z[j] -= logsumexp(z)`, in place: a log-softmax of one row.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn log_softmax_row<T: Real>(z: &mut [T]) {
    let lse = log_sum_exp(z);
    for x in z.iter_mut() {
        *x = *x - lse;
    }
}

/// `logsumexp(z)` of one row: exactly the shift [`log_softmax_row`] subtracts, so that
/// `z[j] - log_sum_exp_row(z)` is bit for bit the log-probability it writes.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn log_sum_exp_row<T: Real>(z: &[T]) -> T {
    log_sum_exp(z)
}

#[inline(always)]
fn log_sum_exp<T: Real>(z: &[T]) -> T {
    let max = lane_max(z);
    max + lane_sum(z, z, |x, _| (x - max).exp_()).ln_()
}

/// `z[j] = scale * exp(z[j] - lse) - spread`, in place.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub fn softmax_gradient_row<T: Real>(z: &mut [T], lse: T, scale: T, spread: T) {
    for x in z.iter_mut() {
        *x = scale * (*x - lse).exp_() - spread;
    }
}
