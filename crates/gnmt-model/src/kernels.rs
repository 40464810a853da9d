//! Scalar arithmetic and the matrix product shared by the fused CPU kernels, for f32 and f64.

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::packed_gemm::{Format, PackedB, View};

/// What the kernels need from a float type.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
{
    const ONE: Self;
    fn tanh_(self) -> Self;
    fn sigmoid(self) -> Self;
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn max_(self, other: Self) -> Self;
    fn from_f64(x: f64) -> Self;
}

impl Real for f32 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn tanh_(self) -> Self {
        fast_tanh(self)
    }
    /// `(1 + tanh(x / 2)) / 2`: the rational tanh vectorises, a libm `expf` call does not.
    #[inline(always)]
    fn sigmoid(self) -> Self {
        0.5 * fast_tanh(0.5 * self) + 0.5
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        fast_exp(self)
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        self.max(other)
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

/// f64 is the precision of the gradient checks: exact library functions.
impl Real for f64 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }
    fn ln_(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        self.max(other)
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

/// How the fused operations multiply f32 matrices. f64 products are always f64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 products and sums ([`crate::packed_gemm`]'s f32 kernel).
    #[default]
    F32,
    /// Operands rounded to bfloat16, f32 sums ([`crate::packed_gemm`]; needs AVX512-BF16).
    Bf16,
}

static BF16_MATMULS: AtomicBool = AtomicBool::new(false);

/// Chooses the precision of every f32 matrix product in the fused operations, process-wide
/// (training and decoding read it at each product). bf16 is fast only on CPUs with
/// AVX512-BF16 ([`crate::packed_gemm::accelerated`]); elsewhere it runs a portable version of
/// the same arithmetic.
pub fn set_matmul_precision(p: MatmulPrecision) {
    BF16_MATMULS.store(p == MatmulPrecision::Bf16, Ordering::Relaxed);
}

pub fn matmul_precision() -> MatmulPrecision {
    if BF16_MATMULS.load(Ordering::Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    }
}

/// "f32" or "bf16": the current [`matmul_precision`], as the `--matmul` option spells it.
pub fn matmul_precision_name() -> &'static str {
    match matmul_precision() {
        MatmulPrecision::F32 => "f32",
        MatmulPrecision::Bf16 => "bf16",
    }
}

/// `x` as an f32 slice when `T` is f32.
fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice already is a &[f32].
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: T is f32, so the slice already is a &mut [f32].
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The packed format of f32 products under the current [`matmul_precision`]; `None` leaves
/// f32 products to `gemm`, which happens only on a CPU with neither AVX-512F nor FMA, where
/// our portable f32 kernel would compute its fused multiply-adds in software (results there
/// may then depend on the batch; see `packed_gemm`).
pub(crate) fn packed_format() -> Option<Format> {
    match matmul_precision() {
        MatmulPrecision::F32 => crate::packed_gemm::f32_is_fast().then_some(Format::F32),
        MatmulPrecision::Bf16 => Some(Format::Bf16),
    }
}

/// The right operand of a product used many times (a recurrent weight, read at every step):
/// f32 operands are packed once for [`crate::packed_gemm`] in the current precision's format.
pub(crate) struct Rhs<'a, T> {
    data: &'a [T],
    /// Element `(r, c)` of `b [k, n]` is `data[r * strides.0 + c * strides.1]`.
    strides: (usize, usize),
    packed: Option<PackedB>,
}

impl<'a, T: 'static> Rhs<'a, T> {
    /// `b [k, n]` row-major, or with `transposed` read from its `[n, k]` row-major storage.
    pub(crate) fn new(data: &'a [T], (k, n): (usize, usize), transposed: bool) -> Self {
        let strides = if transposed { (1, k) } else { (n, 1) };
        Self::strided(data, (k, n), strides)
    }

    /// `b [k, n]` whose element `(r, c)` is `data[r * row_stride + c * col_stride]`, one of the
    /// strides 1: a matrix inside a wider one (`W_hh` inside `[W_hh | bias]`), read where it
    /// lies instead of copied out first.
    ///
    /// Panics if `data` is too short or neither stride is 1.
    pub(crate) fn strided(
        data: &'a [T],
        (k, n): (usize, usize),
        (row_stride, col_stride): (usize, usize),
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
            packed_format().map(|format| PackedB::new(view, format))
        });
        Self {
            data,
            strides: (row_stride, col_stride),
            packed,
        }
    }
}

/// `dst [m, n] (+)= a [m, k] * b [k, n]`, densely packed and row-major, except that a
/// transposed operand is read from its `[k, m]` (or `[n, k]`) row-major storage. f32 operands
/// are multiplied by [`crate::packed_gemm`] (f32 or bf16 by the current precision; each
/// element summed in depth order, whatever the shape or thread count), f64 by `gemm`.
pub(crate) fn matmul<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    a: (&[T], bool),
    (b, b_transposed): (&[T], bool),
    threads: usize,
) {
    matmul_rhs(
        (m, n, k),
        dst,
        accumulate,
        a,
        &Rhs::new(b, (k, n), b_transposed),
        threads,
    )
}

/// `a [m, k] * b [k, n]` (operands as for [`matmul`]) as a new `[m, n]` matrix, plus `bias [n]`
/// on every row when given. A packed f32 product is written straight into fresh memory: no
/// zeroing pass over the output first (which, for the output layer's logits, wrote 50 MB a
/// training step).
pub(crate) fn product<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    a: (&[T], bool),
    (b, b_transposed): (&[T], bool),
    bias: Option<&[T]>,
    threads: usize,
) -> Vec<T> {
    product_rhs(
        (m, n, k),
        a,
        &Rhs::new(b, (k, n), b_transposed),
        bias,
        threads,
    )
}

/// [`product`] with a prepared right operand.
pub(crate) fn product_rhs<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    (a, a_transposed): (&[T], bool),
    rhs: &Rhs<T>,
    bias: Option<&[T]>,
    threads: usize,
) -> Vec<T> {
    if let (Some(packed), Some(a_f32)) = (&rhs.packed, as_f32(a)) {
        assert!(a.len() >= m * k, "left operand too short");
        assert!(
            packed.k() == k && packed.n() == n,
            "packed operand of another shape"
        );
        let bias = bias.map(|b| as_f32(b).expect("T is f32"));
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        crate::packed_gemm::gemm_uninit(
            &mut out.spare_capacity_mut()[..m * n],
            View::new(a_f32, m, k, a_transposed),
            packed,
            bias,
            threads,
        );
        // SAFETY: gemm_uninit wrote all m * n elements.
        unsafe { out.set_len(m * n) };
        let out: Box<dyn std::any::Any> = Box::new(out);
        return *out.downcast::<Vec<T>>().expect("T is f32");
    }
    let mut out = zeros(m * n);
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
        threads,
    );
    out
}

/// [`matmul`] with a prepared right operand.
pub(crate) fn matmul_rhs<T: 'static + Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    (a, a_transposed): (&[T], bool),
    rhs: &Rhs<T>,
    threads: usize,
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
        crate::packed_gemm::gemm(
            dst,
            accumulate,
            View::new(a, m, k, a_transposed),
            packed,
            threads,
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
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
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

/// The elements of a contiguous tensor's storage, or an error naming the operation.
/// The data of a contiguous CPU tensor of dtype `T`, read in place from `storage` (the guard
/// of [`candle::Tensor::storage_and_layout`]): no copy, unlike `to_vec1`.
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

/// `n` zeros, written by all of rayon's threads when there are many. Freed memory is reused
/// (see the CLI's `keep_freed_memory`), so `vec![0; n]` is a `memset` on the calling thread:
/// for the gradient buffers of a training step, serial work that held back two threads.
pub(crate) fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    if n < 1 << 15 || rayon::current_num_threads() == 1 {
        return vec![T::default(); n];
    }
    let mut out = Vec::with_capacity(n);
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|_| T::default())
        .collect_into_vec(&mut out);
    out
}

/// Rows `rows` of a row-major `[_, width]` matrix, in that order, as a dense matrix: the
/// real (unpadded) rows of a batch, so products skip the padding.
pub(crate) fn gather_rows<T: Copy + Default + Send + Sync>(
    data: &[T],
    width: usize,
    rows: &[usize],
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = zeros(rows.len() * width);
    if width > 0 {
        out.par_chunks_mut(width)
            .zip(rows.par_iter())
            .for_each(|(dst, &r)| dst.copy_from_slice(&data[r * width..][..width]));
    }
    out
}

/// The inverse of [`gather_rows`]: an `[n, width]` matrix holding row `i` of `compact` at row
/// `rows[i]`, zeros elsewhere (`rows` distinct).
pub(crate) fn scatter_rows<T: Copy + Default + Send + Sync>(
    compact: &[T],
    width: usize,
    rows: &[usize],
    n: usize,
) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = zeros(n * width);
    if width == 0 {
        return out;
    }
    // Destination rows in parallel: map each back to its compact row, if any.
    let mut source = vec![usize::MAX; n];
    for (i, &r) in rows.iter().enumerate() {
        source[r] = i;
    }
    out.par_chunks_mut(width)
        .zip(source.par_iter())
        .for_each(|(dst, &i)| {
            if i != usize::MAX {
                dst.copy_from_slice(&compact[i * width..][..width]);
            }
        });
    out
}

/// Column sums of a row-major `[rows, cols]` matrix (a bias gradient). Blocks of columns run
/// in parallel; each column is summed over the rows in order, whatever the thread count.
pub(crate) fn column_sums<T: Real>(data: &[T], cols: usize) -> Vec<T> {
    use rayon::prelude::*;
    const BLOCK: usize = 256;
    let mut sums = vec![T::default(); cols];
    sums.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let (start, width) = (b * BLOCK, block.len());
            for row in data.chunks_exact(cols) {
                for (acc, &x) in block.iter_mut().zip(&row[start..start + width]) {
                    *acc += x;
                }
            }
        });
    sums
}

// Row kernels. Each is compiled for AVX-512 and AVX2+FMA as well as baseline x86-64 and
// chosen at run time (`multiversion`); the arithmetic is the same source in every version
// and Rust never contracts a multiply and an add into an FMA on its own, so every version
// gives the same bits. Sums run over 16 independent lanes (a fixed order, so results stay
// deterministic): a plain sequential float sum cannot be vectorised.

/// Lanes of the vectorised reductions.
const LANES: usize = 16;

/// `sum_i f(xs[i], ys[i])`, accumulated in [`LANES`] lanes (lane `l` takes the elements
/// `l, l + LANES, ...`) and then combined in order. Written over exact chunks so that the
/// compiler sees no bounds checks and vectorises the loop.
#[inline(always)]
pub(crate) fn lane_sum<T: Real>(xs: &[T], ys: &[T], f: impl Fn(T, T) -> T) -> T {
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
fn lane_max<T: Real>(xs: &[T]) -> T {
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

/// One LSTM cell update of one row: pre-activation gates `g [4H]` (i, f, g, o) -> their
/// activations into `acts [4H]`; the cell `c [H]` and hidden state `h [H]` updated in place.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn lstm_cell_row<T: Real>(g: &[T], acts: &mut [T], c: &mut [T], h: &mut [T]) {
    let n = c.len();
    let (gi, rest) = g.split_at(n);
    let (gf, rest) = rest.split_at(n);
    let (gg, go) = rest.split_at(n);
    let (ai, rest) = acts.split_at_mut(n);
    let (af, rest) = rest.split_at_mut(n);
    let (ag, ao) = rest.split_at_mut(n);
    for j in 0..n {
        let (i, f, g, o) = (
            gi[j].sigmoid(),
            gf[j].sigmoid(),
            gg[j].tanh_(),
            go[j].sigmoid(),
        );
        ai[j] = i;
        af[j] = f;
        ag[j] = g;
        ao[j] = o;
        let cj = f * c[j] + i * g;
        c[j] = cj;
        h[j] = o * cj.tanh_();
    }
}

/// The backward pass of [`lstm_cell_row`] for one row, given its activations `acts [4H]`, the
/// new cell `c [H]` and the previous one `c_prev [H]`, and the gradient `dh [H]` reaching the
/// new hidden state. `dc [H]` holds the gradient reaching the new cell and leaves holding the
/// one reaching `c_prev`; `dg [4H]` receives the gradient of the pre-activation gates.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn lstm_cell_row_backward<T: Real>(
    acts: &[T],
    c: &[T],
    c_prev: &[T],
    dh: &[T],
    dc: &mut [T],
    dg: &mut [T],
) {
    let n = c.len();
    let (ai, rest) = acts.split_at(n);
    let (af, rest) = rest.split_at(n);
    let (ag, ao) = rest.split_at(n);
    let (di, rest) = dg.split_at_mut(n);
    let (df, rest) = rest.split_at_mut(n);
    let (dgg, dgo) = rest.split_at_mut(n);
    for j in 0..n {
        let (i, f, g, o) = (ai[j], af[j], ag[j], ao[j]);
        let tc = c[j].tanh_();
        let dcj = dc[j] + dh[j] * o * (T::ONE - tc * tc);
        di[j] = dcj * g * i * (T::ONE - i);
        df[j] = dcj * c_prev[j] * f * (T::ONE - f);
        dgg[j] = dcj * i * (T::ONE - g * g);
        dgo[j] = dh[j] * tc * o * (T::ONE - o);
        dc[j] = dcj * f;
    }
}

/// Additive attention scores of one query `q [A]` against `keys [S, A]`:
/// `out[s] = sum_a v[a] tanh(q[a] + keys[s, a])`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn additive_row<T: Real>(q: &[T], keys: &[T], v: &[T], out: &mut [T]) {
    let a = q.len();
    // q + k first (vectorised), then the weighted tanh sum over lanes.
    let mut pre = vec![T::default(); a];
    for (s, o) in out.iter_mut().enumerate() {
        let k = &keys[s * a..][..a];
        for ((p, &x), &y) in pre.iter_mut().zip(q).zip(k) {
            *p = x + y;
        }
        *o = lane_sum(v, &pre, |w, x| w * x.tanh_());
    }
}

/// Attention of one query over one sentence's memory: the additive scores of the projected
/// query `q [A]` against `keys [S, A]`, softmax over the positions where `mask [S]` is non-zero
/// (exactly 0 elsewhere) into `weights [S]`, and `context [H] = sum_s weights[s] values[s]`.
/// Every sum runs over the real positions in source order, so the result does not depend on
/// how much padding follows them.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn attend_row<T: Real>(
    q: &[T],
    keys: &[T],
    v: &[T],
    mask: &[T],
    values: &[T],
    weights: &mut [T],
    context: &mut [T],
) {
    let h = context.len();
    additive_row(q, keys, v, weights);
    let real = |s: &usize| mask[*s] != T::default();
    let max = (0..mask.len())
        .filter(real)
        .map(|s| weights[s])
        .reduce(|a, b| a.max_(b));
    context.fill(T::default());
    let Some(max) = max else {
        weights.fill(T::default()); // no real position: nothing to attend to
        return;
    };
    let mut sum = T::default();
    for (s, w) in weights.iter_mut().enumerate() {
        *w = if real(&s) {
            (*w - max).exp_()
        } else {
            T::default()
        };
        sum += *w;
    }
    for (s, w) in weights.iter_mut().enumerate() {
        if !real(&s) {
            continue;
        }
        *w = *w / sum;
        for (c, &x) in context.iter_mut().zip(&values[s * h..][..h]) {
            *c += *w * x;
        }
    }
}

/// The gradient of `g * sum_a v[a] tanh(q[a] + k[a])` added into `dq`, `dk` and `dv`.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn additive_row_backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: T,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    for i in 0..q.len() {
        let th = (q[i] + k[i]).tanh_();
        let dpre = g * v[i] * (T::ONE - th * th);
        dq[i] += dpre;
        dk[i] += dpre;
        dv[i] += g * th;
    }
}

/// `(logsumexp(z), sum(z))` of one row.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl",
    "x86_64+avx2+fma"
))]
pub(crate) fn row_logsumexp<T: Real>(z: &[T]) -> (T, T) {
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
pub(crate) fn log_softmax_row<T: Real>(z: &mut [T]) {
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
pub(crate) fn log_sum_exp_row<T: Real>(z: &[T]) -> T {
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
pub(crate) fn softmax_gradient_row<T: Real>(z: &mut [T], lse: T, scale: T, spread: T) {
    for x in z.iter_mut() {
        *x = scale * (*x - lse).exp_() - spread;
    }
}

/// `exp(x)` for f32 without a libm call, so loops over it vectorise: `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, a degree-6 Taylor polynomial for `exp(r)` (relative error below 2e-7),
/// and `2^n` put straight into the exponent bits. Inputs are clamped to the normal range:
/// below -87.3 the result is about 1e-38 instead of a denormal or 0, which no sum of
/// probabilities can tell apart.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer with plain float
    // arithmetic (no `round` call, which is not vectorised on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The bits of `shifted` are those of ROUND plus the integer n (|n| <= 127 keeps it in the
    // mantissa), so 2^n's exponent field comes from integer arithmetic on them. `n as i32`
    // would be a saturating conversion, which LLVM turns into scalar code per lane (a third of
    // a log-sum-exp's time).
    const ROUND_BITS: u32 = 0x4b40_0000; // ROUND.to_bits()
    p * f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_BITS).wrapping_add(127) << 23)
}

/// tanh as a 13/6 rational function (Eigen's `generic_fast_tanh_float`): accurate to a few
/// f32 ULPs, branch-free, and vectorised by the compiler, unlike a libm call.
#[inline(always)]
pub fn fast_tanh(x: f32) -> f32 {
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let mut p = x2 * A13 + A11;
    p = x2 * p + A9;
    p = x2 * p + A7;
    p = x2 * p + A5;
    p = x2 * p + A3;
    p = x2 * p + A1;
    p *= x;
    let mut q = x2 * B6 + B4;
    q = x2 * q + B2;
    q = x2 * q + B0;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattering_undoes_gathering_in_any_row_order() {
        let data: Vec<f32> = (0..15).map(|x| x as f32).collect(); // [5, 3]
        let rows = [4, 0, 2];
        let compact = gather_rows(&data, 3, &rows);
        assert_eq!(compact, [12., 13., 14., 0., 1., 2., 6., 7., 8.]);
        let back = scatter_rows(&compact, 3, &rows, 5);
        assert_eq!(
            back,
            [0., 1., 2., 0., 0., 0., 6., 7., 8., 0., 0., 0., 12., 13., 14.]
        );
        // Large enough for the parallel zeroing.
        assert!(zeros::<f32>(1 << 16).iter().all(|&x| x == 0.0));
        assert_eq!(zeros::<f64>(1 << 16).len(), 1 << 16);
    }

    /// A fresh product (written into unzeroed memory when f32) equals the bias rows plus the
    /// product accumulated onto them, in f32 and f64, transposed operands and a partial
    /// last block included.
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
            for (at, bt) in [(false, false), (true, true)] {
                let mut want: Vec<T> = bias.iter().copied().cycle().take(m * n).collect();
                matmul((m, n, k), &mut want, true, (&a, at), (&b, bt), 2);
                let got = product((m, n, k), (&a, at), (&b, bt), Some(&bias), 2);
                assert_eq!(got, want);
                let mut plain = vec![T::default(); m * n];
                matmul((m, n, k), &mut plain, false, (&a, at), (&b, bt), 2);
                assert_eq!(product((m, n, k), (&a, at), (&b, bt), None, 2), plain);
            }
        }
        check::<f32>(|x| x as f32);
        check::<f64>(|x| x);
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert!(fast_exp(-1000.0) < 1e-37 && fast_exp(-1000.0) >= 0.0);
        assert!(fast_exp(1000.0).is_finite());
    }

    #[test]
    fn sigmoid_through_tanh_is_accurate() {
        let mut worst = 0f64;
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            worst = worst.max((Real::sigmoid(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "max error {worst}");
    }

    #[test]
    fn fast_tanh_is_accurate() {
        let mut worst = 0f32;
        for i in -20000..=20000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((fast_tanh(x) - x.tanh()).abs());
        }
        assert!(worst < 5e-7, "max error {worst}"); // a few f32 ULPs near +-1
    }
}
