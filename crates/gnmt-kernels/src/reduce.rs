//! Sums and maxima of rows in a fixed order of 16 lanes, which the compiler vectorises.
//!
//! The row kernels (here and in `lstm`, `attention`, `softmax`) are each compiled for AVX-512 and AVX2+FMA as well as baseline x86-64 and
//! chosen at run time (`multiversion`); the arithmetic is the same source in every version
//! and Rust never contracts a multiply and an add into an FMA on its own, so every version
//! gives the same bits. Sums run over 16 independent lanes (a fixed order, so results stay
//! deterministic): a plain sequential float sum cannot be vectorised.

use crate::real::Real;

/// Lanes of the vectorised reductions.
const LANES: usize = 16;

/// `sum_i f(xs[i], ys[i])`, accumulated in [`LANES`] lanes (lane `l` takes the elements
/// `l, l + LANES, ...`) and then combined in order. Written over exact chunks so that the
/// compiler sees no bounds checks and vectorises the loop.
#[inline(always)]
pub fn lane_sum<T: Real>(xs: &[T], ys: &[T], f: impl Fn(T, T) -> T) -> T {
    let n = xs.len().min(ys.len());
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mut acc = [T::default(); LANES];
    let (mut xc, mut yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    for (x, y) in (&mut xc).zip(&mut yc) {
        for ((a, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *a += f(x, y);
        }
    }
    let mut total = T::default();
    for (&x, &y) in xc.remainder().iter().zip(yc.remainder()) {
        total += f(x, y);
    }
    for a in acc {
        total += a;
    }
    total
}

/// The largest of `xs` (the first element for an empty... never called empty).
#[inline(always)]
pub fn lane_max<T: Real>(xs: &[T]) -> T {
    let mut acc = [xs[0]; LANES];
    let full = xs.len() / LANES * LANES;
    for chunk in xs[..full].chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = a.max_(x);
        }
    }
    let mut m = xs[0];
    for &x in &xs[full..] {
        m = m.max_(x);
    }
    for a in acc {
        m = m.max_(a);
    }
    m
}
