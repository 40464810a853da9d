//! The kernels run on the host emulator (`emulate/`), checked against gnmt-kernels' CPU
//! kernels: bit for bit where the arithmetic is element-wise, to rounding where a row is
//! reduced in another order; and, for every kernel, the same bits on any grid (a row's result
//! does not depend on the batch or the launch).

mod attend_step;
mod attention_softmax;
mod embedding;
mod lstm_layer;

use crate::Launch;
use gnmt_kernels::adam::AdamConstants;
use gnmt_kernels::attention::{additive_row, additive_row_backward};
use gnmt_kernels::dropout::{draw_mask, times_mask};
use gnmt_kernels::lstm::{lstm_cell_row, lstm_cell_row_backward};
use gnmt_kernels::softmax::{row_logsumexp, softmax_gradient_row};
use gnmt_kernels::top_tokens::{top_scores, top_tokens};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// `emulate/launchers.c`'s `struct dropout_stream`.
#[repr(C)]
struct CDropout {
    key: [u32; 8],
    stream: u64,
    first_block: u64,
    offset: u32,
    threshold: f32,
    scale: f32,
}

/// `AdamConstants` in the order `emulate/launchers.c`'s `struct adam_constants` has them.
#[repr(C)]
struct CAdam {
    scale: f32,
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    lr: f32,
}

extern "C" {
    fn emu_lstm_cell_forward(
        grid: u32,
        block: u32,
        rows: u32,
        hidden: u32,
        gates: *const f32,
        c_prev: *const f32,
        out: *mut f32,
    );
    fn emu_lstm_cell_backward(
        grid: u32,
        block: u32,
        rows: u32,
        hidden: u32,
        grad: *const f32,
        gates: *const f32,
        c_prev: *const f32,
        out: *const f32,
        joined: *mut f32,
    );
    fn emu_lstm_cell_carry(
        grid: u32,
        block: u32,
        backward: i32,
        rows: u32,
        hidden: u32,
        grad: *const f32,
        gates: *const f32,
        c_prev: *const f32,
        h_prev: *const f32,
        out: *const f32,
        keep: *const f32,
        result: *mut f32,
    );
    fn emu_adam_update(
        grid: u32,
        block: u32,
        n: u64,
        p: *mut f32,
        m: *mut f32,
        v: *mut f32,
        g: *const f32,
        k: *const CAdam,
    );
    fn emu_attention(
        grid: u32,
        block: u32,
        which: i32,
        batch: u32,
        steps: u32,
        sources: u32,
        width: u32,
        g: *const f32,
        q: *const f32,
        k: *const f32,
        v: *const f32,
        partials: *const f32,
        out: *mut f32,
    );
    fn emu_top_tokens(
        grid: u32,
        block: u32,
        rows: u32,
        vocab: u32,
        k: u32,
        normalise: i32,
        logits: *const f32,
        tokens: *mut u32,
        log_probs: *mut f32,
    );
    fn emu_dropout(
        grid: u32,
        block: u32,
        n: u64,
        repeat: u64,
        x: *const f32,
        out: *mut f32,
        s: *const CDropout,
    );
    fn emu_token_losses_forward(
        grid: u32,
        block: u32,
        rows: u32,
        vocab: u32,
        logits: *const f32,
        targets: *const u32,
        keep: *const f32,
        eps: f32,
        inv_vocab: f32,
        out: *mut f32,
    );
    fn emu_token_losses_backward(
        grid: u32,
        block: u32,
        rows: u32,
        vocab: u32,
        logits: *const f32,
        targets: *const u32,
        g: *const f32,
        eps: f32,
        uniform: f32,
        dlogits: *mut f32,
    );
}

fn lstm_forward(launch: Launch, hidden: usize, gates: &[f32], c_prev: &[f32]) -> Vec<f32> {
    let rows = c_prev.len() / hidden;
    assert_eq!(gates.len(), rows * 4 * hidden);
    let mut out = vec![f32::NAN; rows * 2 * hidden];
    // SAFETY: the buffers hold what the kernel reads and writes for `rows` x `hidden`.
    unsafe {
        emu_lstm_cell_forward(
            launch.grid,
            launch.block,
            rows as u32,
            hidden as u32,
            gates.as_ptr(),
            c_prev.as_ptr(),
            out.as_mut_ptr(),
        )
    };
    out
}

fn lstm_backward(
    launch: Launch,
    hidden: usize,
    grad: &[f32],
    gates: &[f32],
    c_prev: &[f32],
    out: &[f32],
) -> Vec<f32> {
    let rows = c_prev.len() / hidden;
    assert_eq!(grad.len(), rows * 2 * hidden);
    assert_eq!(out.len(), rows * 2 * hidden);
    let mut joined = vec![f32::NAN; rows * 5 * hidden];
    // SAFETY: as in `lstm_forward`; `joined` holds [dgates | dc_prev].
    unsafe {
        emu_lstm_cell_backward(
            launch.grid,
            launch.block,
            rows as u32,
            hidden as u32,
            grad.as_ptr(),
            gates.as_ptr(),
            c_prev.as_ptr(),
            out.as_ptr(),
            joined.as_mut_ptr(),
        )
    };
    joined
}

fn token_losses(
    launch: Launch,
    vocab: usize,
    logits: &[f32],
    targets: &[u32],
    keep: &[f32],
    eps: f64,
) -> Vec<f32> {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * vocab);
    let mut out = vec![f32::NAN; rows * 2];
    // SAFETY: every buffer holds `rows` rows; targets are below `vocab`.
    unsafe {
        emu_token_losses_forward(
            launch.grid,
            launch.block,
            rows as u32,
            vocab as u32,
            logits.as_ptr(),
            targets.as_ptr(),
            keep.as_ptr(),
            eps as f32,
            (1.0 / vocab as f64) as f32,
            out.as_mut_ptr(),
        )
    };
    out
}

fn token_losses_backward(
    launch: Launch,
    vocab: usize,
    logits: &[f32],
    targets: &[u32],
    g: &[f32],
    eps: f64,
) -> Vec<f32> {
    let rows = targets.len();
    let mut dz = vec![f32::NAN; rows * vocab];
    // SAFETY: as in `token_losses`.
    unsafe {
        emu_token_losses_backward(
            launch.grid,
            launch.block,
            rows as u32,
            vocab as u32,
            logits.as_ptr(),
            targets.as_ptr(),
            g.as_ptr(),
            eps as f32,
            (eps / vocab as f64) as f32,
            dz.as_mut_ptr(),
        )
    };
    dz
}

/// `n` values in `[-scale, scale)` from a fixed integer hash: every test sees the same data.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.wrapping_mul(0xbf58_476d);
            let h = h.wrapping_mul(0x94d0_49bb_1331_11eb) >> 40;
            (h as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// A launch far smaller than the data: every thread takes several items (or rows).
const SMALL: Launch = Launch { grid: 2, block: 32 };

#[test]
fn the_cell_gives_the_cpu_kernels_bits() {
    let (rows, hidden) = (5, 37);
    // Pre-activations past the clamps of tanh and exp, too.
    let gates = values(rows * 4 * hidden, 1, 12.0);
    let c_prev = values(rows * hidden, 2, 3.0);
    let out = lstm_forward(Launch::elements(rows * hidden), hidden, &gates, &c_prev);
    let mut want = vec![0f32; rows * 2 * hidden];
    let mut acts = vec![0f32; 4 * hidden];
    for r in 0..rows {
        let (h, c) = want[r * 2 * hidden..][..2 * hidden].split_at_mut(hidden);
        c.copy_from_slice(&c_prev[r * hidden..][..hidden]);
        lstm_cell_row(&gates[r * 4 * hidden..][..4 * hidden], &mut acts, c, h);
    }
    assert_eq!(bits(&out), bits(&want));
    let small = lstm_forward(SMALL, hidden, &gates, &c_prev);
    assert_eq!(bits(&small), bits(&out), "the grid changed the results");
}

#[test]
fn the_cells_gradient_gives_the_cpu_kernels_bits() {
    let (rows, hidden) = (4, 29);
    let gates = values(rows * 4 * hidden, 3, 6.0);
    let c_prev = values(rows * hidden, 4, 2.0);
    let grad = values(rows * 2 * hidden, 5, 1.0);
    let out = lstm_forward(Launch::elements(rows * hidden), hidden, &gates, &c_prev);
    let joined = lstm_backward(
        Launch::elements(rows * hidden),
        hidden,
        &grad,
        &gates,
        &c_prev,
        &out,
    );
    let (dgates, dc_prev) = joined.split_at(rows * 4 * hidden);
    let mut acts = vec![0f32; 4 * hidden];
    for r in 0..rows {
        let (mut c, mut h) = (c_prev[r * hidden..][..hidden].to_vec(), vec![0f32; hidden]);
        lstm_cell_row(
            &gates[r * 4 * hidden..][..4 * hidden],
            &mut acts,
            &mut c,
            &mut h,
        );
        let (dh, dc_in) = grad[r * 2 * hidden..][..2 * hidden].split_at(hidden);
        let mut dc = dc_in.to_vec();
        let mut dg = vec![0f32; 4 * hidden];
        let cp = &c_prev[r * hidden..][..hidden];
        lstm_cell_row_backward(&acts, &c, cp, dh, &mut dc, &mut dg);
        assert_eq!(
            bits(&dgates[r * 4 * hidden..][..4 * hidden]),
            bits(&dg),
            "row {r}"
        );
        assert_eq!(bits(&dc_prev[r * hidden..][..hidden]), bits(&dc), "row {r}");
    }
    let small = lstm_backward(SMALL, hidden, &grad, &gates, &c_prev, &out);
    assert_eq!(bits(&small), bits(&joined), "the grid changed the results");
}

#[test]
fn adam_gives_the_cpu_updates_bits() {
    let n = 3 * 256 + 37;
    let k = AdamConstants {
        scale: 0.8,
        beta1: 0.9,
        beta2: 0.999,
        one_minus_beta1: 0.1,
        one_minus_beta2: 0.001,
        c1: 0.271,
        c2: 0.003,
        eps: 1e-8,
        lr: 0.002,
    };
    let c = CAdam {
        scale: k.scale,
        beta1: k.beta1,
        beta2: k.beta2,
        one_minus_beta1: k.one_minus_beta1,
        one_minus_beta2: k.one_minus_beta2,
        c1: k.c1,
        c2: k.c2,
        eps: k.eps,
        lr: k.lr,
    };
    let (p0, m0, g) = (values(n, 6, 1.0), values(n, 7, 0.1), values(n, 8, 2.0));
    let v0: Vec<f32> = values(n, 9, 0.1).iter().map(|x| x * x).collect();
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    k.update(&mut p, &mut m, &mut v, &g);
    for launch in [Launch::elements(n), SMALL] {
        let (mut gp, mut gm, mut gv) = (p0.clone(), m0.clone(), v0.clone());
        // SAFETY: four buffers of n elements.
        unsafe {
            emu_adam_update(
                launch.grid,
                launch.block,
                n as u64,
                gp.as_mut_ptr(),
                gm.as_mut_ptr(),
                gv.as_mut_ptr(),
                g.as_ptr(),
                &c,
            )
        };
        assert_eq!(bits(&gp), bits(&p), "parameters, {launch:?}");
        assert_eq!(bits(&gm), bits(&m), "first moments, {launch:?}");
        assert_eq!(bits(&gv), bits(&v), "second moments, {launch:?}");
    }
}

/// The CPU's losses of one row: `[smoothed, nll]` and the log-sum-exp.
fn cpu_row_losses(row: &[f32], y: usize, eps: f64) -> [f32; 2] {
    let (lse, sum) = row_logsumexp(row);
    let (eps, inv_v) = (eps as f32, (1.0 / row.len() as f64) as f32);
    let nll = lse - row[y];
    [(1.0 - eps) * nll + eps * (lse - sum * inv_v), nll]
}

/// Rows of logits with a vocabulary that is not a multiple of the block, one row far from 0
/// (the shift by the maximum matters) and one padded row.
fn loss_case() -> (usize, Vec<f32>, Vec<u32>, Vec<f32>) {
    let (rows, vocab) = (6, 1000);
    let mut logits = values(rows * vocab, 10, 8.0);
    for z in &mut logits[2 * vocab..3 * vocab] {
        *z += 60.0;
    }
    let targets = vec![3, 999, 0, 512, 7, 255];
    let keep = vec![1.0, 1.0, 1.0, 0.0, 1.0, 1.0];
    (vocab, logits, targets, keep)
}

#[test]
fn token_losses_agree_with_the_cpu_and_do_not_depend_on_the_grid() {
    let (vocab, logits, targets, keep) = loss_case();
    for eps in [0.0, 0.1] {
        let out = token_losses(
            Launch::rows(targets.len()),
            vocab,
            &logits,
            &targets,
            &keep,
            eps,
        );
        for (r, &y) in targets.iter().enumerate() {
            let got = [out[2 * r], out[2 * r + 1]];
            if keep[r] == 0.0 {
                assert_eq!(got, [0.0, 0.0], "padded row {r}");
                continue;
            }
            let want = cpu_row_losses(&logits[r * vocab..][..vocab], y as usize, eps);
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 2e-6 * w.abs().max(1.0),
                    "row {r}: {got:?} {want:?}"
                );
            }
        }
        let one_block = Launch {
            grid: 1,
            ..Launch::rows(1)
        };
        let again = token_losses(one_block, vocab, &logits, &targets, &keep, eps);
        assert_eq!(bits(&again), bits(&out), "the grid changed the losses");
    }
}

#[test]
fn the_logit_gradient_agrees_with_the_cpu_and_does_not_depend_on_the_grid() {
    let (vocab, logits, targets, keep) = loss_case();
    let rows = targets.len();
    // The output's gradient, zero on the padded row as the caller makes it.
    let g: Vec<f32> = values(rows * 2, 11, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &x)| x * keep[i / 2])
        .collect();
    let eps = 0.1;
    let dz = token_losses_backward(Launch::rows(rows), vocab, &logits, &targets, &g, eps);
    let (eps32, uniform) = (eps as f32, (eps / vocab as f64) as f32);
    for (r, &y) in targets.iter().enumerate() {
        let mut want = logits[r * vocab..][..vocab].to_vec();
        let (lse, _) = row_logsumexp(&want);
        let (g0, g1) = (g[2 * r], g[2 * r + 1]);
        softmax_gradient_row(&mut want, lse, g0 + g1, g0 * uniform);
        want[y as usize] = want[y as usize] - g0 * (1.0 - eps32) - g1;
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
        for (j, (d, w)) in dz[r * vocab..][..vocab].iter().zip(&want).enumerate() {
            assert!(
                (d - w).abs() <= 1e-6 * scale,
                "row {r}, logit {j}: {d} against {w}"
            );
        }
        // The gradient of a softmax row sums to g0 + g1 - g0 (1 - eps) - eps g0 - g1 = 0.
        let total: f32 = dz[r * vocab..][..vocab].iter().sum();
        assert!(
            total.abs() <= 1e-5 * (g0.abs() + g1.abs()).max(1e-3),
            "row {r}: {total}"
        );
    }
    let one_block = Launch {
        grid: 1,
        ..Launch::rows(1)
    };
    let again = token_losses_backward(one_block, vocab, &logits, &targets, &g, eps);
    assert_eq!(bits(&again), bits(&dz), "the grid changed the gradient");
}

/// The sizes of an attention case: `q [B, T, A]`, `k [B, S, A]`, `g [B, T, S]`.
#[derive(Clone, Copy)]
struct Attention {
    b: usize,
    t: usize,
    s: usize,
    a: usize,
}

impl Attention {
    /// Runs kernel `which` of attention.cu (see emulate/launchers.c) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        self,
        which: i32,
        launch: Launch,
        g: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        partials: &[f32],
        out: &mut [f32],
    ) {
        let d = |n: usize| n as u32;
        // SAFETY: every buffer has the size its kernel reads or writes for these dimensions
        // (checked by the callers below); unused ones are not read.
        unsafe {
            emu_attention(
                launch.grid,
                launch.block,
                which,
                d(self.b),
                d(self.t),
                d(self.s),
                d(self.a),
                g.as_ptr(),
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                partials.as_ptr(),
                out.as_mut_ptr(),
            )
        }
    }

    fn scores(self, launch: Launch, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.b * self.t * self.s];
        self.run(0, launch, &[], q, k, v, &[], &mut out);
        out
    }

    /// `[dq | dk | dv]`, the four launches in order, each with `launch` or its own shape.
    fn gradients(self, small: bool, g: &[f32], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let Attention { b, t, s, a } = self;
        let shape = |n: usize| if small { SMALL } else { Launch::elements(n) };
        let mut joined = vec![f32::NAN; b * (t + s) * a + a];
        let mut partials = vec![f32::NAN; b * a];
        self.run(1, shape(b * t * a), g, q, k, v, &[], &mut joined);
        self.run(2, shape(b * s * a), g, q, k, v, &[], &mut joined);
        self.run(3, shape(b * a), g, q, k, v, &[], &mut partials);
        self.run(4, shape(a), &[], &[], &[], &[], &partials, &mut joined);
        joined
    }
}

/// Sizes with a width that is not a multiple of 16 lanes and more than one lane group.
const ATTENTION: Attention = Attention {
    b: 3,
    t: 4,
    s: 5,
    a: 37,
};

#[test]
fn attention_scores_give_the_cpu_kernels_bits() {
    let Attention { b, t, s, a } = ATTENTION;
    let (q, k, v) = (
        values(b * t * a, 12, 2.0),
        values(b * s * a, 13, 2.0),
        values(a, 14, 1.0),
    );
    let out = ATTENTION.scores(Launch::elements(b * t * s), &q, &k, &v);
    let mut want = vec![0f32; b * t * s];
    for bi in 0..b {
        for ti in 0..t {
            let row = &mut want[(bi * t + ti) * s..][..s];
            additive_row(
                &q[(bi * t + ti) * a..][..a],
                &k[bi * s * a..][..s * a],
                &v,
                row,
            );
        }
    }
    assert_eq!(bits(&out), bits(&want));
    assert_eq!(
        bits(&ATTENTION.scores(SMALL, &q, &k, &v)),
        bits(&out),
        "the grid changed the scores"
    );
}

#[test]
fn attention_gradients_give_the_cpu_kernels_bits() {
    let Attention { b, t, s, a } = ATTENTION;
    let (q, k, v) = (
        values(b * t * a, 15, 2.0),
        values(b * s * a, 16, 2.0),
        values(a, 17, 1.0),
    );
    // The upstream gradient, 0 on the last source position of every row (padding).
    let g: Vec<f32> = values(b * t * s, 18, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % s == s - 1 { 0.0 } else { x })
        .collect();
    let joined = ATTENTION.gradients(false, &g, &q, &k, &v);
    // gnmt-ops' ScoreGradients: each batch row in t, s order, dv summed in batch order.
    let (mut dq, mut dk, mut dv) = (vec![0f32; b * t * a], vec![0f32; b * s * a], vec![0f32; a]);
    for bi in 0..b {
        let mut dv_b = vec![0f32; a];
        for ti in 0..t {
            for si in 0..s {
                let gg = g[(bi * t + ti) * s + si];
                if gg == 0.0 {
                    continue;
                }
                let (qr, kr) = (&q[(bi * t + ti) * a..][..a], &k[(bi * s + si) * a..][..a]);
                let dqr = &mut dq[(bi * t + ti) * a..][..a];
                let dkr = &mut dk[(bi * s + si) * a..][..a];
                additive_row_backward(qr, kr, &v, gg, dqr, dkr, &mut dv_b);
            }
        }
        for (acc, x) in dv.iter_mut().zip(dv_b) {
            *acc += x;
        }
    }
    let want: Vec<f32> = dq.into_iter().chain(dk).chain(dv).collect();
    assert_eq!(bits(&joined), bits(&want));
    let small = ATTENTION.gradients(true, &g, &q, &k, &v);
    assert_eq!(
        bits(&small),
        bits(&joined),
        "the grid changed the gradients"
    );
}

/// `(tokens, log_probs)` of the top-k kernel.
fn top_k(
    launch: Launch,
    vocab: usize,
    k: usize,
    normalise: bool,
    logits: &[f32],
) -> (Vec<u32>, Vec<f32>) {
    let rows = logits.len() / vocab;
    let (mut tokens, mut log_probs) = (vec![u32::MAX; rows * k], vec![f32::NAN; rows * k]);
    // SAFETY: `rows` rows of `vocab` logits; `rows * k` outputs each; k <= MAX_TOP, vocab.
    unsafe {
        emu_top_tokens(
            launch.grid,
            launch.block,
            rows as u32,
            vocab as u32,
            k as u32,
            i32::from(normalise),
            logits.as_ptr(),
            tokens.as_mut_ptr(),
            log_probs.as_mut_ptr(),
        )
    };
    (tokens, log_probs)
}

/// Rows of logits on a grid of 1/64 with many exact ties, so ranking and tie-breaking (lower
/// id first) are checked exactly; vocabularies below, at and far above the block.
#[test]
fn top_tokens_rank_as_the_cpu_does_and_do_not_depend_on_the_grid() {
    for (vocab, k) in [
        (7, 7),
        (256, 5),
        (1000, 1),
        (3001, 12),
        (3001, crate::top_tokens::MAX_TOP),
    ] {
        let rows = 4;
        let logits: Vec<f32> = values(rows * vocab, vocab as u64, 6.0)
            .iter()
            .map(|x| (x * 4.0).round() / 64.0)
            .collect();
        let (tokens, log_probs) = top_k(Launch::rows(rows), vocab, k, true, &logits);
        let cpu = top_tokens(&logits, vocab, k);
        for r in 0..rows {
            let (want_t, want_l): (Vec<u32>, Vec<f32>) = cpu.row(r).unzip();
            assert_eq!(
                &tokens[r * k..][..k],
                &want_t[..],
                "vocab {vocab}, k {k}, row {r}"
            );
            for (g, w) in log_probs[r * k..][..k].iter().zip(&want_l) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "vocab {vocab}, row {r}: {g} {w}"
                );
            }
        }
        let one_block = Launch {
            grid: 1,
            ..Launch::rows(1)
        };
        let again = top_k(one_block, vocab, k, true, &logits);
        assert_eq!(
            (bits(&again.1), &again.0),
            (bits(&log_probs), &tokens),
            "the grid changed them"
        );
        // Scores ranked as they are: the CPU's values exactly.
        let (tokens, scores) = top_k(Launch::rows(rows), vocab, k, false, &logits);
        let cpu = top_scores(&logits, vocab, k);
        let (want_t, want_s): (Vec<u32>, Vec<f32>) = (0..rows).flat_map(|r| cpu.row(r)).unzip();
        assert_eq!(
            (tokens, bits(&scores)),
            (want_t, bits(&want_s)),
            "vocab {vocab}, k {k}"
        );
    }
}

/// The kernel drops what the CPU drops: the same ChaCha20 words (a generator with a stream id,
/// part-way through a block), the same products, on any grid; single values, and whole
/// tokens' vectors (word dropout: one word per `repeat` values).
#[test]
fn dropout_gives_the_cpu_masks_bits() {
    for repeat in [1, 5] {
        let n = repeat * (16 * 40 + 7);
        let x = values(n, 19, 3.0);
        let mut rng = ChaCha20Rng::seed_from_u64(1234);
        rng.set_stream(5);
        rng.set_word_pos(16 * 1000 + 9);
        let p = 0.3f32;
        let (keep, start) = (1.0 - p, rng.get_word_pos());
        let seed = rng.get_seed();
        let mask: Vec<f32> = draw_mask(&mut rng, p, n / repeat)
            .into_iter()
            .flat_map(|m| std::iter::repeat_n(m, repeat))
            .collect();
        let want = times_mask(&x, &mask);
        let s = CDropout {
            key: std::array::from_fn(|i| {
                u32::from_le_bytes(seed[4 * i..][..4].try_into().unwrap())
            }),
            stream: rng.get_stream(),
            first_block: (start / 16) as u64,
            offset: (start % 16) as u32,
            threshold: keep * (1u32 << 24) as f32,
            scale: 1.0 / keep,
        };
        let blocks = crate::dropout::blocks(n / repeat, s.offset);
        for launch in [Launch::elements(blocks), SMALL] {
            let mut out = vec![f32::NAN; n];
            // SAFETY: n values in and out, n a multiple of repeat.
            unsafe {
                emu_dropout(
                    launch.grid,
                    launch.block,
                    n as u64,
                    repeat as u64,
                    x.as_ptr(),
                    out.as_mut_ptr(),
                    &s,
                )
            };
            assert_eq!(bits(&out), bits(&want), "repeat {repeat}, {launch:?}");
        }
        let dropped = want.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - 0.3).abs() < 0.06, "dropped {dropped}");
    }
}

/// The carrying cell: stepped rows give the plain cell's bits (forward and backward), carried
/// rows pass state and gradient through unchanged, on any grid.
#[test]
fn the_carrying_cell_steps_or_carries_each_row() {
    let (rows, hidden) = (5, 23);
    let n = rows * hidden;
    let gates = values(rows * 4 * hidden, 20, 6.0);
    let (c_prev, h_prev) = (values(n, 21, 2.0), values(n, 22, 1.0));
    let grad = values(rows * 2 * hidden, 23, 1.0);
    let keep = [1.0f32, 0.0, 1.0, 0.0, 0.0];
    let carry = |launch: Launch, backward: bool, out: &[f32]| {
        let len = if backward { 6 * n } else { 2 * n };
        let mut result = vec![f32::NAN; len];
        // SAFETY: every buffer holds `rows` rows of its width; `keep` one flag per row.
        unsafe {
            emu_lstm_cell_carry(
                launch.grid,
                launch.block,
                i32::from(backward),
                rows as u32,
                hidden as u32,
                grad.as_ptr(),
                gates.as_ptr(),
                c_prev.as_ptr(),
                h_prev.as_ptr(),
                out.as_ptr(),
                keep.as_ptr(),
                result.as_mut_ptr(),
            )
        };
        result
    };
    let launch = Launch::elements(n);
    let out = carry(launch, false, &[]);
    let stepped = lstm_forward(launch, hidden, &gates, &c_prev);
    let plain = lstm_backward(launch, hidden, &grad, &gates, &c_prev, &stepped);
    let joined = carry(launch, true, &out);
    let (dg, rest) = joined.split_at(4 * n);
    let (dc, dh) = rest.split_at(n);
    for (r, &k) in keep.iter().enumerate() {
        let (o, s) = (
            &out[r * 2 * hidden..][..2 * hidden],
            &stepped[r * 2 * hidden..][..2 * hidden],
        );
        let row = |v: &[f32], width: usize| v[r * width..][..width].to_vec();
        if k == 0.0 {
            assert_eq!(
                bits(&o[..hidden]),
                bits(&row(&h_prev, hidden)),
                "row {r}: h carried"
            );
            assert_eq!(
                bits(&o[hidden..]),
                bits(&row(&c_prev, hidden)),
                "row {r}: c carried"
            );
            assert!(
                row(dg, 4 * hidden).iter().all(|&x| x == 0.0),
                "row {r}: no gate gradient"
            );
            let g = row(&grad, 2 * hidden);
            assert_eq!(
                bits(&row(dc, hidden)),
                bits(&g[hidden..]),
                "row {r}: dc passed"
            );
            assert_eq!(
                bits(&row(dh, hidden)),
                bits(&g[..hidden]),
                "row {r}: dh passed"
            );
        } else {
            assert_eq!(bits(o), bits(s), "row {r}: stepped");
            assert_eq!(
                bits(&row(dg, 4 * hidden)),
                bits(&plain[r * 4 * hidden..][..4 * hidden])
            );
            assert_eq!(
                bits(&row(dc, hidden)),
                bits(&plain[4 * n + r * hidden..][..hidden])
            );
            assert!(
                row(dh, hidden).iter().all(|&x| x == 0.0),
                "row {r}: dh_prev"
            );
        }
    }
    assert_eq!(
        bits(&carry(SMALL, false, &[])),
        bits(&out),
        "the grid changed the step"
    );
    assert_eq!(
        bits(&carry(SMALL, true, &out)),
        bits(&joined),
        "the grid changed the gradient"
    );
}
