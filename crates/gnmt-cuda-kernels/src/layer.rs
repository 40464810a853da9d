//! A whole LSTM layer on a GPU as one forward and one backward pass: the order of the products
//! and kernel launches that `gnmt-ops`' layer operation runs on candle's CUDA device, written
//! once over any [`Gpu`] so that the tests run the same sequence on the host emulator.
//!
//! As Marian and cuDNN do, the input projection of every step is one product before the
//! recurrence; each step is then one product (`h_prev W_hh^T`) and one launch of
//! `lstm_layer_step_forward`. Backward, each step is a launch and one product (the gradient
//! reaching `h_prev`), and the gradient of `W_hh` is one product over all steps, of the bias
//! one column sum. Composed of candle ops instead, the backward pass of each step's slice of
//! the input projection would add a zero-padded copy of the whole `[B, T, 4H]` tensor: O(T^2)
//! memory traffic.
//!
//! Every buffer is batch-major, like the layer's input and output: row `b * T + s` of a
//! `[B*T, width]` buffer is sentence `b` at time `s`. Padded steps are computed in the input
//! projection (a product over all rows beats gathering the real ones on a GPU) and then
//! carried: their gates' gradients are 0, so they add nothing to the weights' gradients.

use crate::{lstm, Launch};

/// A row-major product `C [m, n] = op(A) op(B)`, `op` transposing the operand flagged: `A` is
/// stored `[m, k]` (or `[k, m]` with `a_t`) with `lda` values between rows, `B` `[k, n]` (or
/// `[n, k]` with `b_t`) with `ldb`, `C` with `ldc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_t: bool,
    pub b_t: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
}

/// A kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum Arg<M> {
    U32(u32),
    I32(i32),
    /// A device address, or null.
    Mem(Option<M>),
}

/// What the layer needs of a device: products, launches of this crate's kernels, and
/// addresses of f32 values.
pub trait Gpu {
    /// The address of an f32 value on the device.
    type Mem: Copy;
    type Error;

    /// `mem` advanced by `values` f32 values.
    fn offset(&self, mem: Self::Mem, values: usize) -> Self::Mem;

    /// `c = op(a) op(b)`, in the device's precision for products.
    fn gemm(&self, g: Gemm, a: Self::Mem, b: Self::Mem, c: Self::Mem) -> Result<(), Self::Error>;

    /// Launches `kernel` of `kernels/lstm.cu` with `args` in the kernel's order.
    fn launch(
        &self,
        kernel: &'static str,
        launch: Launch,
        args: &[Arg<Self::Mem>],
    ) -> Result<(), Self::Error>;

    /// An error saying `what` (a size too large for the kernels).
    fn error(&self, what: String) -> Self::Error;
}

/// The sizes of a layer's call, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDims {
    pub batch: usize,
    pub steps: usize,
    pub hidden: usize,
    pub input: usize,
    /// Time runs backwards (the bidirectional layer's second half).
    pub reverse: bool,
}

impl LayerDims {
    /// The time of processing step `k`.
    fn time(&self, k: usize) -> usize {
        if self.reverse {
            self.steps - 1 - k
        } else {
            k
        }
    }

    /// The kernels' `(batch, steps, hidden)` as `unsigned int`s, or an error where there is
    /// no `(row, step)` or too many values.
    fn sizes<G: Gpu>(&self, gpu: &G) -> Result<[Arg<G::Mem>; 3], G::Error> {
        if self.batch * self.steps == 0 {
            return Err(gpu.error("lstm layer: the GPU's layer needs a (row, step)".into()));
        }
        let biggest = self.batch * self.steps * 4 * self.hidden.max(self.input);
        if u32::try_from(biggest).is_err() {
            return Err(gpu.error(format!(
                "lstm layer: {} x {} x {} values are too many for the GPU kernels",
                self.batch,
                self.steps,
                4 * self.hidden.max(self.input)
            )));
        }
        Ok([self.batch, self.steps, self.hidden].map(|n| Arg::U32(n as u32)))
    }
}

/// The forward pass's device buffers (f32).
#[derive(Debug, Clone, Copy)]
pub struct Forward<M> {
    /// The input `[B*T, in]`.
    pub x: M,
    pub w_ih: M,
    /// `[W_hh | b_ih + b_hh] [4H, H + 1]`.
    pub w_hh_bias: M,
    /// One flag per `[B*T]` row (1 real, 0 padding), or `None`: every step real.
    pub keep: Option<M>,
    /// Receives the pre-activation gates `[B*T, 4H]` (the backward pass reads them).
    pub gates: M,
    /// Room for one step's recurrent product `[B, 4H]`.
    pub rec: M,
    /// Receive the hidden states (the layer's output) and the cell states, `[B, T, H]`.
    pub h: M,
    pub c: M,
}

/// Runs the layer over at least one `(row, step)`: `h` (its output), `c` and `gates` filled.
pub fn forward<G: Gpu>(gpu: &G, d: LayerDims, m: &Forward<G::Mem>) -> Result<(), G::Error> {
    let [batch, steps, hidden] = d.sizes(gpu)?;
    let (b, t, h) = (d.batch, d.steps, d.hidden);
    // Every step's input projection at once: gates = x W_ih^T.
    let projection = Gemm {
        m: b * t,
        n: 4 * h,
        k: d.input,
        a_t: false,
        b_t: true,
        lda: d.input,
        ldb: d.input,
        ldc: 4 * h,
    };
    gpu.gemm(projection, m.x, m.w_ih, m.gates)?;
    // h_prev [B, H] is every row's state at the previous time: a strided view of `h`.
    let recurrent = Gemm {
        m: b,
        n: 4 * h,
        k: h,
        a_t: false,
        b_t: true,
        lda: t * h,
        ldb: h + 1,
        ldc: 4 * h,
    };
    let bias = gpu.offset(m.w_hh_bias, h);
    for k in 0..t {
        let s = d.time(k);
        let prev = (k > 0).then(|| d.time(k - 1));
        if let Some(p) = prev {
            gpu.gemm(recurrent, gpu.offset(m.h, p * h), m.w_hh_bias, m.rec)?;
        }
        gpu.launch(
            lstm::LAYER_STEP_FORWARD,
            Launch::elements(b * h),
            &[
                batch,
                steps,
                hidden,
                Arg::U32(s as u32),
                Arg::I32(prev.map_or(-1, |p| p as i32)),
                Arg::Mem(Some(m.rec)),
                Arg::Mem(Some(bias)),
                Arg::U32(h as u32 + 1),
                Arg::Mem(m.keep),
                Arg::Mem(Some(m.gates)),
                Arg::Mem(Some(m.h)),
                Arg::Mem(Some(m.c)),
            ],
        )?;
    }
    Ok(())
}

/// The backward pass's device buffers (f32).
#[derive(Debug, Clone, Copy)]
pub struct Backward<M> {
    /// The gradient reaching the layer's output `[B, T, H]`.
    pub grad: M,
    pub w_hh_bias: M,
    pub keep: Option<M>,
    /// What [`forward`] filled.
    pub gates: M,
    pub h: M,
    pub c: M,
    /// Receives the gradient of the pre-activation gates `[B*T, 4H]`: that of the input
    /// projection, from which the caller takes those of `x` and `W_ih` (two products).
    pub dgates: M,
    /// Receives the gradient of `[W_hh | bias] [4H, H + 1]`.
    pub d_w_hh_bias: M,
    /// Room for `[B, T, H]` values.
    pub h_prev: M,
    /// Room for `[B, H]` values.
    pub dh_rec: M,
    /// `[B, H]` each, zeroed by the caller.
    pub dh_carry: M,
    pub dc: M,
}

/// Backpropagation through the layer's time steps, then the gradient of `[W_hh | bias]`.
pub fn backward<G: Gpu>(gpu: &G, d: LayerDims, m: &Backward<G::Mem>) -> Result<(), G::Error> {
    let [batch, steps, hidden] = d.sizes(gpu)?;
    let (b, t, h) = (d.batch, d.steps, d.hidden);
    // The gradient reaching h_prev through one step's gates: dgates_s [B, 4H] (strided) W_hh.
    let through_gates = Gemm {
        m: b,
        n: h,
        k: 4 * h,
        a_t: false,
        b_t: false,
        lda: t * 4 * h,
        ldb: h + 1,
        ldc: h,
    };
    for k in (0..t).rev() {
        let s = d.time(k);
        let prev = (k > 0).then(|| d.time(k - 1));
        gpu.launch(
            lstm::LAYER_STEP_BACKWARD,
            Launch::elements(b * h),
            &[
                batch,
                steps,
                hidden,
                Arg::U32(s as u32),
                Arg::I32(prev.map_or(-1, |p| p as i32)),
                Arg::I32((k + 1 < t) as i32),
                Arg::Mem(Some(m.grad)),
                Arg::Mem(Some(m.dh_rec)),
                Arg::Mem(Some(m.gates)),
                Arg::Mem(Some(m.c)),
                Arg::Mem(m.keep),
                Arg::Mem(Some(m.dgates)),
                Arg::Mem(Some(m.dh_carry)),
                Arg::Mem(Some(m.dc)),
            ],
        )?;
        if k > 0 {
            let dgates_s = gpu.offset(m.dgates, s * 4 * h);
            gpu.gemm(through_gates, dgates_s, m.w_hh_bias, m.dh_rec)?;
        }
    }
    gpu.launch(
        lstm::LAYER_PREVIOUS_STATES,
        Launch::elements(b * t * h),
        &[
            batch,
            steps,
            hidden,
            Arg::I32(d.reverse as i32),
            Arg::Mem(Some(m.h)),
            Arg::Mem(Some(m.h_prev)),
        ],
    )?;
    // dW_hh = dgates^T h_prev over every (row, step), written into [dW_hh | dbias].
    let recurrent_weight = Gemm {
        m: 4 * h,
        n: h,
        k: b * t,
        a_t: true,
        b_t: false,
        lda: 4 * h,
        ldb: h,
        ldc: h + 1,
    };
    gpu.gemm(recurrent_weight, m.dgates, m.h_prev, m.d_w_hh_bias)?;
    gpu.launch(
        lstm::COLUMN_SUMS,
        Launch::elements(4 * h),
        &[
            Arg::U32((b * t) as u32),
            Arg::U32(4 * h as u32),
            Arg::Mem(Some(m.dgates)),
            Arg::Mem(Some(gpu.offset(m.d_w_hh_bias, h))),
            Arg::U32(h as u32 + 1),
        ],
    )
}
