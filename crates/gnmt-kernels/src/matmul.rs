//! Matrix products of f32 and f64 slices in a chosen [`Precision`]: f32 operands go to the
//! packed GEMM ([`crate::gemm`]), f64 ones (the gradient checks) to the `gemm` crate.

use std::any::TypeId;

use crate::gemm::{Format, PackedB, View};
use crate::precision::Precision;
use crate::real::Real;

/// How the products of one operation are computed: the precision of f32 products (f64 ones
/// are always f64) and the threads that share each product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub precision: Precision,
    pub threads: usize,
}

impl Compute {
    pub fn new(precision: Precision, threads: usize) -> Self {
        Self { precision, threads }
    }

    /// `precision` on all of rayon's threads.
    pub fn all_threads(precision: Precision) -> Self {
        Self::new(precision, rayon::current_num_threads())
    }

    /// The same precision on one thread (products that run inside a parallel loop).
    pub fn single_threaded(self) -> Self {
        Self { threads: 1, ..self }
    }
}

/// `x` as an f32 slice when `T` is f32.
pub(crate) fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice already is a &[f32].
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice already is a &mut [f32].
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The packed format of f32 products in `precision`; `None` leaves f32 products to `gemm`,
/// which happens only on a CPU with neither AVX-512F nor FMA, where our portable f32 kernel
/// would compute its fused multiply-adds in software (results there may then depend on the
/// batch; see [`crate::gemm`]). TF32 is a GPU's format: here it is f32.
pub fn packed_format(precision: Precision) -> Option<Format> {
    match precision {
        Precision::F32 | Precision::Tf32 => crate::gemm::f32_is_fast().then_some(Format::F32),
        Precision::Bf16 => Some(Format::Bf16),
        Precision::Int8 => Some(Format::Int8),
    }
}

/// The right operand of a product used many times (a recurrent weight, read at every step):
/// f32 operands are packed once for [`crate::gemm`] in the format of the chosen precision.
pub struct Rhs<'a, T> {
    data: &'a [T],
    /// Element `(r, c)` of `b [k, n]` is `data[r * strides.0 + c * strides.1]`.
    strides: (usize, usize),
    packed: Option<std::borrow::Cow<'a, PackedB>>,
}

impl<'a, T: 'static> Rhs<'a, T> {
    /// `b [k, n]` row-major, or with `transposed` read from its `[n, k]` row-major storage.
    pub fn new(
        data: &'a [T],
        (k, n): (usize, usize),
        transposed: bool,
        precision: Precision,
    ) -> Self {
        let strides = if transposed { (1, k) } else { (n, 1) };
        Self::strided(data, (k, n), strides, precision)
    }

    /// `b [k, n]` whose element `(r, c)` is `data[r * row_stride + c * col_stride]`, one of the
    /// strides 1: a matrix inside a wider one (`W_hh` inside `[W_hh | bias]`), read where it
    /// lies instead of copied out first.
    ///
    /// Panics if `data` is too short or neither stride is 1.
    pub fn strided(
        data: &'a [T],
        (k, n): (usize, usize),
        (row_stride, col_stride): (usize, usize),
        precision: Precision,
    ) -> Self {
        assert!(
            row_stride == 1 || col_stride == 1,
            "one of the strides must be 1"
        );
        assert!(
            k == 0 || n == 0 || data.len() > (k - 1) * row_stride + (n - 1) * col_stride,
            "matrix storage too short"
        );
        let packed = as_f32(data).and_then(|b| {
            let view = View {
                data: b,
                rows: k,
                cols: n,
                row_stride,
                col_stride,
            };
            packed_format(precision)
                .map(|format| std::borrow::Cow::Owned(PackedB::new(view, format)))
        });
        Self {
            data,
            strides: (row_stride, col_stride),
            packed,
        }
    }
}

impl<'a, T: 'static> Rhs<'a, T> {
    /// [`Rhs::strided`], reusing `prepacked` (made by [`PackedB::new`] from the same matrix) when
    /// it is f32's operand in the format of `precision`, instead of packing `data` again: a
    /// weight used by many products in a row (the encoder's, batch after batch) is packed once.
    pub fn strided_prepacked(
        data: &'a [T],
        (k, n): (usize, usize),
        strides: (usize, usize),
        precision: Precision,
        prepacked: Option<&'a PackedB>,
    ) -> Self {
        let usable = prepacked.filter(|p| {
            as_f32(data).is_some()
                && packed_format(precision) == Some(p.format())
                && (p.k(), p.n()) == (k, n)
        });
        match usable {
            Some(p) => Self {
                data,
                strides,
                packed: Some(std::borrow::Cow::Borrowed(p)),
            },
            None => Self::strided(data, (k, n), strides, precision),
        }
    }
}

/// `dst [m, n] (+)= a [m, k] * b [k, n]`, densely packed and row-major, except that a
/// transposed operand is read from its `[k, m]` (or `[n, k]`) row-major storage. f32 operands
/// are multiplied by [`crate::gemm`] (f32 or bf16 by `compute.precision`; each
/// element summed in depth order, whatever the shape or thread count), f64 by `gemm`.
pub fn matmul<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    a: (&[T], bool),
    (b, b_transposed): (&[T], bool),
    compute: Compute,
) {
    matmul_rhs(
        (m, n, k),
        dst,
        accumulate,
        a,
        &Rhs::new(b, (k, n), b_transposed, compute.precision),
        compute,
    )
}

/// `a [m, k] * b [k, n]` (operands as for [`matmul`]) as a new `[m, n]` matrix, plus `bias [n]`
/// on every row when given. A packed f32 product is written straight into fresh memory: no
/// zeroing pass over the output first (which, for the output layer's logits, wrote 50 MB a
/// training step).
pub fn product<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    a: (&[T], bool),
    (b, b_transposed): (&[T], bool),
    bias: Option<&[T]>,
    compute: Compute,
) -> Vec<T> {
    product_rhs(
        (m, n, k),
        a,
        &Rhs::new(b, (k, n), b_transposed, compute.precision),
        bias,
        compute,
    )
}

/// [`product`] with a prepared right operand.
pub fn product_rhs<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    (a, a_transposed): (&[T], bool),
    rhs: &Rhs<T>,
    bias: Option<&[T]>,
    compute: Compute,
) -> Vec<T> {
    if let (Some(packed), Some(a_f32)) = (&rhs.packed, as_f32(a)) {
        assert!(a.len() >= m * k, "left operand too short");
        assert!(
            packed.k() == k && packed.n() == n,
            "packed operand of another shape"
        );
        let bias = bias.map(|b| as_f32(b).expect("T is f32"));
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        crate::gemm::gemm_uninit(
            &mut out.spare_capacity_mut()[..m * n],
            View::new(a_f32, m, k, a_transposed),
            packed,
            bias,
            compute.threads,
        );
        // SAFETY: gemm_uninit wrote all m * n elements.
        unsafe { out.set_len(m * n) };
        let out: Box<dyn std::any::Any> = Box::new(out);
        return *out.downcast::<Vec<T>>().expect("T is f32");
    }
    let mut out = crate::buffers::zeros(m * n);
    let accumulate = match bias {
        Some(bias) => {
            assert_eq!(bias.len(), n, "bias length differs from the column count");
            if n > 0 {
                out.chunks_mut(n).for_each(|row| row.copy_from_slice(bias));
            }
            true
        }
        None => false,
    };
    matmul_rhs(
        (m, n, k),
        &mut out,
        accumulate,
        (a, a_transposed),
        rhs,
        compute,
    );
    out
}

/// [`matmul`] with a prepared right operand.
pub fn matmul_rhs<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    (a, a_transposed): (&[T], bool),
    rhs: &Rhs<T>,
    compute: Compute,
) {
    if m == 0 || n == 0 {
        return;
    }
    let b = rhs.data;
    assert!(dst.len() >= m * n && a.len() >= m * k);
    if let Some(packed) = &rhs.packed {
        assert!(
            packed.k() == k && packed.n() == n,
            "packed operand of another shape"
        );
        let (dst, a) = (as_f32_mut(dst), as_f32(a));
        let (dst, a) = (
            dst.expect("packed only for f32"),
            a.expect("packed only for f32"),
        );
        crate::gemm::gemm(
            dst,
            accumulate,
            View::new(a, m, k, a_transposed),
            packed,
            compute.threads,
        );
        return;
    }
    // (column stride, row stride) of each operand.
    let (a_cs, a_rs) = if a_transposed {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (b_cs, b_rs) = (rhs.strides.1 as isize, rhs.strides.0 as isize);
    let parallelism = if compute.threads > 1 {
        gemm::Parallelism::Rayon(compute.threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above (and Rhs::strided's) bound every index gemm touches: dst is
    // m x n with row stride n, a a densely packed m x k matrix, read directly or transposed,
    // b a k x n matrix within its strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_product_equals_the_product_accumulated_onto_its_bias() {
        fn check<T: 'static + Real + std::fmt::Debug>(of: fn(f64) -> T) {
            let (m, n, k) = (37, 45, 19);
            let a: Vec<T> = (0..m * k)
                .map(|i| of(((i * 7) % 13) as f64 - 6.0))
                .collect();
            let b: Vec<T> = (0..k * n)
                .map(|i| of(((i * 5) % 11) as f64 / 4.0))
                .collect();
            let bias: Vec<T> = (0..n).map(|j| of(j as f64 - 20.0)).collect();
            for (c, (at, bt)) in [Precision::F32, Precision::Bf16]
                .map(|p| Compute::new(p, 2))
                .into_iter()
                .flat_map(|c| [(c, (false, false)), (c, (true, true))])
            {
                let mut want: Vec<T> = bias.iter().copied().cycle().take(m * n).collect();
                matmul((m, n, k), &mut want, true, (&a, at), (&b, bt), c);
                let got = product((m, n, k), (&a, at), (&b, bt), Some(&bias), c);
                assert_eq!(got, want);
                let mut plain = vec![T::default(); m * n];
                matmul((m, n, k), &mut plain, false, (&a, at), (&b, bt), c);
                assert_eq!(product((m, n, k), (&a, at), (&b, bt), None, c), plain);
            }
        }
        check::<f32>(|x| x as f32);
        check::<f64>(|x| x);
    }
}
