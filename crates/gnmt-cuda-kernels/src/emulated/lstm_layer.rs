//! [`crate::layer`] (a whole LSTM layer: its products and `kernels/lstm.cu`'s layer kernels) run
//! on the host emulator, against gnmt-kernels' `lstm::sequence`, the CPU's layer.

use gnmt_kernels::lstm::sequence::{self, Dims, RecurrentWeight, Saved};
use gnmt_kernels::Precision;

use super::{bits, values, SMALL};
use crate::layer::{self, Arg, Backward, Forward, Gemm, Gpu, LayerDims};
use crate::{lstm, Launch};

extern "C" {
    fn emu_lstm_layer_step_forward(
        grid: u32,
        block: u32,
        batch: u32,
        steps: u32,
        hidden: u32,
        s: u32,
        prev: i32,
        rec: *const f32,
        bias: *const f32,
        bias_stride: u32,
        keep: *const f32,
        gates: *mut f32,
        h: *mut f32,
        c: *mut f32,
    );
    fn emu_lstm_layer_step_backward(
        grid: u32,
        block: u32,
        batch: u32,
        steps: u32,
        hidden: u32,
        s: u32,
        prev: i32,
        has_next: i32,
        grad: *const f32,
        dh_rec: *const f32,
        gates: *const f32,
        c: *const f32,
        keep: *const f32,
        dgates: *mut f32,
        dh_carry: *mut f32,
        dc: *mut f32,
    );
    fn emu_lstm_layer_previous_states(
        grid: u32,
        block: u32,
        batch: u32,
        steps: u32,
        hidden: u32,
        reverse: i32,
        h: *const f32,
        h_prev: *mut f32,
    );
    fn emu_column_sums(
        grid: u32,
        block: u32,
        rows: u32,
        cols: u32,
        m: *const f32,
        out: *mut f32,
        out_stride: u32,
    );
}

/// The emulator as a [`Gpu`]: addresses are host pointers into the test's buffers, products
/// plain loops in f32. `launch` replaces every kernel's launch when given.
struct Host {
    launch: Option<Launch>,
}

impl Gpu for Host {
    type Mem = *mut f32;
    type Error = String;

    fn offset(&self, mem: *mut f32, values: usize) -> *mut f32 {
        mem.wrapping_add(values)
    }

    fn gemm(&self, g: Gemm, a: *mut f32, b: *mut f32, c: *mut f32) -> Result<(), String> {
        // SAFETY: the layer's products stay inside the buffers the test allocated for them.
        unsafe {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut sum = 0.0f32;
                    for k in 0..g.k {
                        let x = *a.add(if g.a_t { k * g.lda + i } else { i * g.lda + k });
                        let y = *b.add(if g.b_t { j * g.ldb + k } else { k * g.ldb + j });
                        sum += x * y;
                    }
                    *c.add(i * g.ldc + j) = sum;
                }
            }
        }
        Ok(())
    }

    fn launch(
        &self,
        kernel: &'static str,
        launch: Launch,
        args: &[Arg<*mut f32>],
    ) -> Result<(), String> {
        let Launch { grid, block } = self.launch.unwrap_or(launch);
        let u = |i: usize| match args[i] {
            Arg::U32(x) => x,
            ref a => panic!("{kernel}: argument {i} is {a:?}, not an unsigned int"),
        };
        let int = |i: usize| match args[i] {
            Arg::I32(x) => x,
            ref a => panic!("{kernel}: argument {i} is {a:?}, not an int"),
        };
        let p = |i: usize| match args[i] {
            Arg::Mem(m) => m.unwrap_or(std::ptr::null_mut()),
            ref a => panic!("{kernel}: argument {i} is {a:?}, not an address"),
        };
        // SAFETY: the arguments are the kernels' own, in their order (a wrong kind panics
        // above); the buffers are the test's, sized for the layer.
        unsafe {
            match (kernel, args.len()) {
                (lstm::LAYER_STEP_FORWARD, 12) => emu_lstm_layer_step_forward(
                    grid,
                    block,
                    u(0),
                    u(1),
                    u(2),
                    u(3),
                    int(4),
                    p(5),
                    p(6),
                    u(7),
                    p(8),
                    p(9),
                    p(10),
                    p(11),
                ),
                (lstm::LAYER_STEP_BACKWARD, 14) => emu_lstm_layer_step_backward(
                    grid,
                    block,
                    u(0),
                    u(1),
                    u(2),
                    u(3),
                    int(4),
                    int(5),
                    p(6),
                    p(7),
                    p(8),
                    p(9),
                    p(10),
                    p(11),
                    p(12),
                    p(13),
                ),
                (lstm::LAYER_PREVIOUS_STATES, 6) => emu_lstm_layer_previous_states(
                    grid,
                    block,
                    u(0),
                    u(1),
                    u(2),
                    int(3),
                    p(4),
                    p(5),
                ),
                (lstm::COLUMN_SUMS, 5) => {
                    emu_column_sums(grid, block, u(0), u(1), p(2), p(3), u(4))
                }
                (k, n) => panic!("no kernel {k} of {n} arguments"),
            }
        }
        Ok(())
    }

    fn error(&self, what: String) -> String {
        what
    }
}

/// A layer's inputs and what both sides computed from them.
struct Case {
    b: usize,
    t: usize,
    h: usize,
    input: usize,
    reverse: bool,
    lengths: Vec<usize>,
    x: Vec<f32>,
    w_ih: Vec<f32>,
    w_hh_bias: Vec<f32>,
    grad: Vec<f32>,
}

/// The emulated layer's results: `h`, `c` `[B, T, H]`, `dgates [B*T, 4H]`, `[dW_hh | db]`.
struct Results {
    h: Vec<f32>,
    c: Vec<f32>,
    dgates: Vec<f32>,
    d_w_hh_bias: Vec<f32>,
}

impl Case {
    fn new(reverse: bool, lengths: &[usize]) -> Self {
        let (b, t, h, input) = (lengths.len(), *lengths.iter().max().unwrap(), 19, 23);
        Self {
            b,
            t,
            h,
            input,
            reverse,
            lengths: lengths.to_vec(),
            x: values(b * t * input, 31, 1.0),
            w_ih: values(4 * h * input, 32, 0.4),
            w_hh_bias: values(4 * h * (h + 1), 33, 0.4),
            grad: values(b * t * h, 34, 1.0),
        }
    }

    fn real(&self, row: usize, s: usize) -> bool {
        s < self.lengths[row]
    }

    fn emulated(&mut self, gpu: &Host) -> Results {
        let (b, t, h) = (self.b, self.t, self.h);
        let d = LayerDims {
            batch: b,
            steps: t,
            hidden: h,
            input: self.input,
            reverse: self.reverse,
        };
        let mut keep: Vec<f32> = (0..b * t)
            .map(|r| self.real(r / t, r % t) as u8 as f32)
            .collect();
        let nan = |n: usize| vec![f32::NAN; n];
        let (mut gates, mut rec, mut hs, mut cs) = (
            nan(b * t * 4 * h),
            nan(b * 4 * h),
            nan(b * t * h),
            nan(b * t * h),
        );
        let f = Forward {
            x: self.x.as_mut_ptr(),
            w_ih: self.w_ih.as_mut_ptr(),
            w_hh_bias: self.w_hh_bias.as_mut_ptr(),
            keep: Some(keep.as_mut_ptr()),
            gates: gates.as_mut_ptr(),
            rec: rec.as_mut_ptr(),
            h: hs.as_mut_ptr(),
            c: cs.as_mut_ptr(),
        };
        layer::forward(gpu, d, &f).unwrap();
        let (mut dgates, mut dwb, mut h_prev, mut dh_rec) = (
            nan(b * t * 4 * h),
            nan(4 * h * (h + 1)),
            nan(b * t * h),
            nan(b * h),
        );
        let (mut dh_carry, mut dc) = (vec![0.0; b * h], vec![0.0; b * h]);
        let bw = Backward {
            grad: self.grad.as_mut_ptr(),
            w_hh_bias: self.w_hh_bias.as_mut_ptr(),
            keep: Some(keep.as_mut_ptr()),
            gates: gates.as_mut_ptr(),
            h: hs.as_mut_ptr(),
            c: cs.as_mut_ptr(),
            dgates: dgates.as_mut_ptr(),
            d_w_hh_bias: dwb.as_mut_ptr(),
            h_prev: h_prev.as_mut_ptr(),
            dh_rec: dh_rec.as_mut_ptr(),
            dh_carry: dh_carry.as_mut_ptr(),
            dc: dc.as_mut_ptr(),
        };
        layer::backward(gpu, d, &bw).unwrap();
        Results {
            h: hs,
            c: cs,
            dgates,
            d_w_hh_bias: dwb,
        }
    }

    /// The CPU layer's results in the emulated layout (its `h` and cells are time-major, its
    /// gate gradients compact over the real pairs).
    fn cpu(&self) -> Results {
        let (b, t, h, input) = (self.b, self.t, self.h, self.input);
        let keep: Vec<bool> = (0..t * b).map(|p| self.real(p % b, p / b)).collect();
        let real: Vec<usize> = (0..t * b).filter(|&p| keep[p]).collect();
        // The input projection of the real pairs, in their (time-major) order.
        let mut x_gates = Vec::with_capacity(real.len() * 4 * h);
        for &p in &real {
            let x = &self.x[((p % b) * t + p / b) * input..][..input];
            for g in 0..4 * h {
                let w = &self.w_ih[g * input..][..input];
                x_gates.push(x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>());
            }
        }
        let bias: Vec<f32> = (0..4 * h)
            .map(|g| self.w_hh_bias[g * (h + 1) + h])
            .collect();
        let weight = RecurrentWeight {
            data: &self.w_hh_bias,
            row_stride: h + 1,
        };
        let d = Dims {
            t,
            b,
            h,
            reverse: self.reverse,
            precision: Precision::F32,
        };
        let (hs, acts, cells) = sequence::forward(&x_gates, weight, None, &bias, Some(&keep), d);
        let batch_major = |tm: &[f32]| -> Vec<f32> {
            (0..b * t)
                .flat_map(|r| tm[((r % t) * b + r / t) * h..][..h].to_vec())
                .collect()
        };
        let grad_h: Vec<f32> = (0..t * b)
            .flat_map(|p| self.grad[((p % b) * t + p / b) * h..][..h].to_vec())
            .collect();
        let mut dg_real = vec![0.0; real.len() * 4 * h];
        let saved = Saved {
            h: &hs,
            acts: &acts,
            cells: &cells,
        };
        let (d_w, d_bias) =
            sequence::backward(&grad_h, saved, weight, Some(&keep), &real, d, &mut dg_real);
        let mut dgates = vec![0.0; b * t * 4 * h];
        for (i, &p) in real.iter().enumerate() {
            let row = (p % b) * t + p / b;
            dgates[row * 4 * h..][..4 * h].copy_from_slice(&dg_real[i * 4 * h..][..4 * h]);
        }
        let d_w_hh_bias = (0..4 * h)
            .flat_map(|g| d_w[g * h..][..h].iter().copied().chain([d_bias[g]]))
            .collect();
        Results {
            h: batch_major(&hs),
            c: batch_major(&cells),
            dgates,
            d_w_hh_bias,
        }
    }
}

/// The largest difference between `a` and `b`, relative to `b`'s largest magnitude.
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
        / scale
}

/// Forward and backward, both directions, sentences of different lengths (one of a single
/// step): the CPU's layer to the rounding of other product orders; padded steps carry the
/// state and get no gradient; every launch gives the same bits as a small grid.
#[test]
fn the_layer_matches_the_cpus_layer() {
    for reverse in [false, true] {
        let mut case = Case::new(reverse, &[7, 4, 1, 7, 5]);
        let got = case.emulated(&Host { launch: None });
        let want = case.cpu();
        for (name, a, b) in [
            ("h", &got.h, &want.h),
            ("c", &got.c, &want.c),
            ("dgates", &got.dgates, &want.dgates),
            ("[dW_hh | db]", &got.d_w_hh_bias, &want.d_w_hh_bias),
        ] {
            let err = relative_error(a, b);
            assert!(err < 2e-5, "reverse {reverse}: {name} differs by {err}");
        }
        let (b, t, h) = (case.b, case.t, case.h);
        for row in 0..b {
            for s in case.lengths[row]..t {
                let here = (row * t + s) * 4 * h;
                assert!(got.dgates[here..][..4 * h].iter().all(|&g| g == 0.0));
            }
        }
        assert!(got.d_w_hh_bias.iter().all(|g| g.abs() > 0.0));
        let small = case.emulated(&Host {
            launch: Some(SMALL),
        });
        for (a, b) in [
            (&small.h, &got.h),
            (&small.dgates, &got.dgates),
            (&small.d_w_hh_bias, &got.d_w_hh_bias),
        ] {
            assert_eq!(
                bits(a),
                bits(b),
                "reverse {reverse}: another grid, other bits"
            );
        }
    }
}

/// A layer with no `(row, step)`, or more values than the kernels' `unsigned int` counts, is
/// refused before any product or launch.
#[test]
fn an_empty_or_oversized_layer_is_refused() {
    let null = std::ptr::null_mut();
    let buffers = Forward {
        x: null,
        w_ih: null,
        w_hh_bias: null,
        keep: None,
        gates: null,
        rec: null,
        h: null,
        c: null,
    };
    let dims = |batch, steps| LayerDims {
        batch,
        steps,
        hidden: 1024,
        input: 1024,
        reverse: false,
    };
    let gpu = Host { launch: None };
    let empty = layer::forward(&gpu, dims(0, 5), &buffers).unwrap_err();
    assert!(empty.contains("needs a (row, step)"), "{empty}");
    let huge = layer::forward(&gpu, dims(4096, 300), &buffers).unwrap_err();
    assert!(huge.contains("too many"), "{huge}");
}
