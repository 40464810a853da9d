//! Every operation of this crate on a device, with the kernels that device runs, against its
//! composite reference on the CPU: forward values and the gradient of every float input. What
//! `gnmt check-device` runs first; a new backend is correct when it passes.
//!
//! Each case draws its inputs from a seeded generator on the CPU, copies them to the device,
//! and runs the operation twice: on the CPU with [`Kernels::Reference`] (the baseline) and on
//! the device with the kernels under test. The gradients are those of `sum(out * r)` for a
//! fixed random `r` per output, so every element of every output reaches the inputs.
//!
//! Errors are normwise: `max |device - reference| <= tolerance * max |reference|` per
//! quantity. Sums run in different orders on different kernels, so f32 results agree to
//! rounding (about 1e-6 of the scale), not bit for bit; bf16 products keep 8 bits of mantissa.

use candle::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::additive::additive_scores;
use crate::attention_step::{self, Source};
use crate::attention_weights::attention_weights;
use crate::concat::cat_last;
use crate::embedding::TokenEmbedding;
use crate::lstm::carry::lstm_cell_carry;
use crate::lstm::cell::{lstm_cell, lstm_cell_step};
use crate::lstm::{lstm_layer, LstmWeights};
use crate::matmul::{batched_matmul, linear};
use crate::softmax_loss::{log_softmax_rows, token_losses};
use crate::step_matrix::StepMatrix;
use crate::{param_grads, Dropout, Kernels, Precision};

/// The normwise tolerance of results computed with `kernels`.
pub fn tolerance(kernels: Kernels) -> f64 {
    match kernels.precision() {
        Precision::F32 => 1e-4,
        Precision::Bf16 => 3e-2,
        // 10 bits of mantissa in the operands, 3 more than bf16.
        Precision::Tf32 => 1e-2,
        // 127 levels per row or column: about twice bf16's 8 bits of mantissa in error.
        Precision::Int8 => 6e-2,
    }
}

/// One quantity of one case: an output or an input's gradient.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The case, e.g. `lstm_layer reverse`.
    pub case: String,
    /// `out 0`, `d w_ih`, ...
    pub quantity: String,
    /// `max |device - reference|`.
    pub max_error: f64,
    /// `max |reference|`.
    pub scale: f64,
    pub tolerance: f64,
}

impl Comparison {
    /// Compares `got` against `reference` (same shape; any float dtype, any device).
    pub fn of(
        case: &str,
        quantity: &str,
        got: &Tensor,
        reference: &Tensor,
        tolerance: f64,
    ) -> Result<Self> {
        if got.dims() != reference.dims() {
            candle::bail!(
                "{case} {quantity}: shape {:?} on the device, {:?} on the reference",
                got.dims(),
                reference.dims()
            )
        }
        let got = flat_f64(got)?;
        let reference = flat_f64(reference)?;
        let max_error = got
            .iter()
            .zip(&reference)
            .map(|(g, r)| {
                if g.is_finite() {
                    (g - r).abs()
                } else {
                    f64::INFINITY
                }
            })
            .fold(0.0, f64::max);
        let scale = reference.iter().fold(0.0f64, |m, r| m.max(r.abs()));
        Ok(Self {
            case: case.to_string(),
            quantity: quantity.to_string(),
            max_error,
            scale,
            tolerance,
        })
    }

    /// The error relative to the reference's scale (the error itself when the scale is 0).
    pub fn relative_error(&self) -> f64 {
        if self.scale > 0.0 {
            self.max_error / self.scale
        } else {
            self.max_error
        }
    }

    pub fn passed(&self) -> bool {
        self.relative_error() <= self.tolerance
    }
}

fn flat_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.flatten_all()?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .to_vec1()
}

/// What an input is: a float the gradients are taken of, a float that takes none (a mask),
/// or token ids below a bound.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Float,
    Mask,
    Ids(u32),
}

/// One input: its name, shape and kind.
#[derive(Debug, Clone)]
struct Input {
    name: &'static str,
    dims: Vec<usize>,
    kind: Kind,
}

fn float(name: &'static str, dims: &[usize]) -> Input {
    Input {
        name,
        dims: dims.to_vec(),
        kind: Kind::Float,
    }
}

/// A `[B, T]` padding mask; row `b` keeps `T - b` steps (at least one).
fn mask(name: &'static str, dims: &[usize]) -> Input {
    Input {
        name,
        dims: dims.to_vec(),
        kind: Kind::Mask,
    }
}

fn ids(name: &'static str, dims: &[usize], below: u32) -> Input {
    Input {
        name,
        dims: dims.to_vec(),
        kind: Kind::Ids(below),
    }
}

type Run = Box<dyn Fn(&[Tensor], Kernels) -> Result<Vec<Tensor>>>;

/// What one run of a case gives: its outputs, then the gradients of its float inputs, named.
struct Ran {
    outputs: Vec<Tensor>,
    gradients: Vec<(String, Tensor)>,
}

/// An operation to check: its inputs and what it computes from them with given kernels.
pub struct Case {
    name: String,
    inputs: Vec<Input>,
    /// Whether to compare gradients (decoding's operations have none).
    backward: bool,
    run: Run,
}

impl Case {
    fn new(
        name: &str,
        inputs: Vec<Input>,
        backward: bool,
        run: impl Fn(&[Tensor], Kernels) -> Result<Vec<Tensor>> + 'static,
    ) -> Self {
        Self {
            name: name.to_string(),
            inputs,
            backward,
            run: Box::new(run),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The case's inputs on the CPU, drawn from `seed`.
    fn draw_inputs(&self, seed: u64) -> Result<Vec<Tensor>> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        self.inputs
            .iter()
            .map(|input| {
                let n: usize = input.dims.iter().product();
                let dims = input.dims.as_slice();
                match input.kind {
                    Kind::Float => {
                        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                        Tensor::from_vec(v, dims, &Device::Cpu)
                    }
                    Kind::Mask => {
                        let steps = *dims.last().unwrap_or(&1);
                        let v: Vec<f32> = (0..n)
                            .map(|i| {
                                let (row, step) = (i / steps, i % steps);
                                f32::from(step < steps.saturating_sub(row).max(1))
                            })
                            .collect();
                        Tensor::from_vec(v, dims, &Device::Cpu)
                    }
                    Kind::Ids(below) => {
                        let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..below)).collect();
                        Tensor::from_vec(v, dims, &Device::Cpu)
                    }
                }
            })
            .collect()
    }

    /// Runs the case on `device` with `kernels`: its outputs, then the gradients of its float
    /// inputs (named), all on `device`.
    fn run_on(
        &self,
        inputs: &[Tensor],
        weights_seed: u64,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Ran> {
        let mut vars = Vec::new();
        let mut placed = Vec::new();
        for (input, t) in self.inputs.iter().zip(inputs) {
            let t = t.to_device(device)?;
            if matches!(input.kind, Kind::Float) && self.backward {
                let var = Var::from_tensor(&t)?;
                placed.push(var.as_tensor().clone());
                vars.push((input.name, var));
            } else {
                placed.push(t);
            }
        }
        let outputs = (self.run)(&placed, kernels)?;
        if !self.backward {
            return Ok(Ran {
                outputs,
                gradients: Vec::new(),
            });
        }
        let mut rng = ChaCha20Rng::seed_from_u64(weights_seed);
        let mut loss = Tensor::zeros((), DType::F32, device)?;
        for out in &outputs {
            let r: Vec<f32> = (0..out.elem_count())
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let r = Tensor::from_vec(r, out.dims(), device)?.to_dtype(out.dtype())?;
            loss = (loss + out.mul(&r)?.sum_all()?.to_dtype(DType::F32)?)?;
        }
        let grads = param_grads::backward(&loss)?;
        let gradients = vars
            .into_iter()
            .map(|(name, var)| match grads.get(var.as_tensor()) {
                Some(g) => Ok((format!("d {name}"), g.clone())),
                None => candle::bail!("{}: {name} got no gradient", self.name),
            })
            .collect::<Result<_>>()?;
        Ok(Ran { outputs, gradients })
    }

    /// This case on `device` with `kernels` against the reference on the CPU.
    pub fn check(&self, device: &Device, kernels: Kernels, seed: u64) -> Result<Vec<Comparison>> {
        let inputs = self.draw_inputs(seed)?;
        let reference = self.run_on(&inputs, seed + 1, &Device::Cpu, Kernels::Reference)?;
        let got = self.run_on(&inputs, seed + 1, device, kernels)?;
        let tol = tolerance(kernels);
        let mut comparisons = Vec::new();
        for (k, (got, reference)) in got.outputs.iter().zip(&reference.outputs).enumerate() {
            let quantity = format!("out {k}");
            comparisons.push(Comparison::of(&self.name, &quantity, got, reference, tol)?);
        }
        for ((quantity, got), (_, reference)) in got.gradients.iter().zip(&reference.gradients) {
            comparisons.push(Comparison::of(&self.name, quantity, got, reference, tol)?);
        }
        Ok(comparisons)
    }
}

/// Sizes of the cases: small, but with every dimension distinct so a transposed index shows.
const B: usize = 3;
const T: usize = 5;
const S: usize = 4;
const IN: usize = 7;
const H: usize = 8;
const A: usize = 6;
const V: usize = 11;

/// Every operation of this crate, forward and (where it has one) backward.
pub fn cases() -> Vec<Case> {
    let mut cases = vec![
        Case::new(
            "linear",
            vec![
                float("x", &[B, T, IN]),
                float("w", &[H, IN]),
                float("bias", &[H]),
            ],
            true,
            |x, k| Ok(vec![linear(&x[0], &x[1], Some(&x[2]), k)?]),
        ),
        Case::new(
            "batched_matmul",
            vec![float("a", &[B, T, S]), float("b", &[B, S, H])],
            true,
            |x, k| Ok(vec![batched_matmul(&x[0], &x[1], k)?]),
        ),
        Case::new(
            "additive_scores",
            vec![
                float("q", &[B, T, A]),
                float("k", &[B, S, A]),
                float("v", &[A]),
            ],
            true,
            |x, k| Ok(vec![additive_scores(&x[0], &x[1], &x[2], k)?]),
        ),
        Case::new(
            "attention_weights",
            vec![float("scores", &[B, T, S]), mask("mask", &[B, S])],
            true,
            |x, k| Ok(vec![attention_weights(&x[0], &x[1], k)?]),
        ),
        Case::new(
            "cat_last",
            vec![float("a", &[B, T, H]), float("b", &[B, T, A])],
            true,
            |x, k| Ok(vec![cat_last(&x[0], &x[1], k)?]),
        ),
        Case::new("dropout", vec![float("x", &[B, T, H])], true, |x, k| {
            Ok(vec![Dropout::new(0.3, 5).apply(&x[0], k)?])
        }),
        Case::new(
            "dropout_cat",
            vec![float("a", &[B, T, H]), float("b", &[B, T, A])],
            true,
            |x, k| Ok(vec![Dropout::new(0.3, 5).apply_cat(&x[0], &x[1], k)?]),
        ),
        Case::new(
            "embedding",
            vec![float("table", &[V, H]), ids("ids", &[B, T], V as u32)],
            true,
            |x, k| Ok(vec![TokenEmbedding::new(x[0].clone())?.forward(&x[1], k)?]),
        ),
        Case::new(
            "lstm_cell",
            vec![float("gates", &[B, 4 * H]), float("c_prev", &[B, H])],
            true,
            |x, k| {
                let (h, c) = lstm_cell(&x[0], &x[1], k)?;
                Ok(vec![h, c])
            },
        ),
        Case::new(
            "lstm_cell_carry",
            vec![
                float("gates", &[B, 4 * H]),
                float("c_prev", &[B, H]),
                float("h_prev", &[B, H]),
                mask("keep", &[B, 2]),
            ],
            true,
            |x, k| {
                // The mask's second column: row 0 steps, the others carry their state.
                let keep = x[3].narrow(1, 1, 1)?;
                let (h, c) = lstm_cell_carry(&x[0], &x[1], &x[2], &keep, k)?;
                Ok(vec![h, c])
            },
        ),
        Case::new(
            "token_losses",
            vec![
                float("x", &[B * T, H]),
                float("weight", &[V, H]),
                float("bias", &[V]),
                ids("targets", &[B * T], V as u32),
                mask("keep", &[B, T]),
            ],
            true,
            |x, k| {
                let keep = x[4].flatten_all()?;
                Ok(vec![token_losses(
                    &x[0], &x[1], &x[2], &x[3], &keep, 0.1, k,
                )?])
            },
        ),
        Case::new(
            "log_softmax_rows",
            vec![float("logits", &[B * T, V])],
            false,
            |x, k| Ok(vec![log_softmax_rows(&(&x[0] * 4.0)?, k)?]),
        ),
        Case::new(
            "lstm_cell_step",
            vec![float("gates", &[B, 4 * H]), float("c_prev", &[B, H])],
            false,
            |x, k| {
                let (h, c) = lstm_cell_step(&x[0], &x[1], k)?;
                Ok(vec![h, c])
            },
        ),
        Case::new(
            "step_matrix",
            vec![
                float("x", &[B, IN]),
                float("w", &[IN, H]),
                float("bias", &[H]),
            ],
            false,
            |x, k| {
                Ok(vec![
                    StepMatrix::new(x[1].clone(), Some(x[2].clone()), k)?.apply(&x[0])?
                ])
            },
        ),
        Case::new(
            "attention_step",
            vec![
                float("q", &[B, A]),
                float("v", &[A]),
                float("keys", &[B, S, A]),
                float("values", &[B, S, H]),
                mask("mask", &[B, S]),
            ],
            false,
            attention_step_case,
        ),
    ];
    for reverse in [false, true] {
        let name = if reverse {
            "lstm_layer reverse"
        } else {
            "lstm_layer"
        };
        cases.push(Case::new(
            name,
            vec![
                float("x", &[B, T, IN]),
                float("w_ih", &[4 * H, IN]),
                float("w_hh", &[4 * H, H]),
                float("b_ih", &[4 * H]),
                float("b_hh", &[4 * H]),
                mask("mask", &[B, T]),
            ],
            true,
            move |x, k| {
                let weights = LstmWeights {
                    w_ih: &x[1],
                    w_hh: &x[2],
                    b_ih: &x[3],
                    b_hh: &x[4],
                };
                Ok(vec![lstm_layer(
                    &x[0],
                    &weights,
                    Some(&x[5]),
                    reverse,
                    k,
                    None,
                )?])
            },
        ));
    }
    cases
}

/// Decoding's attention step: fused, one pass per row (on the CPU, or on a GPU in f32);
/// otherwise (and as the reference) the composite the model's reference path runs: scores,
/// masked softmax, weighted sum.
fn attention_step_case(x: &[Tensor], kernels: Kernels) -> Result<Vec<Tensor>> {
    let (q, v, keys, values, mask) = (&x[0], &x[1], &x[2], &x[3], &x[4]);
    if attention_step::runs_fused(q, kernels) {
        let source = Source { keys, values, mask };
        let (context, weights) = attention_step::attend(q, v, source, None)?;
        return Ok(vec![context, weights]);
    }
    let scores = additive_scores(&q.unsqueeze(1)?, keys, v, kernels)?; // [B, 1, S]
    let masked_out = ((mask - 1.0)? * 1e9)?.unsqueeze(1)?; // 0 real, -1e9 padding
    let weights = candle_nn::ops::softmax(&scores.broadcast_add(&masked_out)?, D::Minus1)?;
    let context = batched_matmul(&weights, values, kernels)?;
    Ok(vec![context.squeeze(1)?, weights.squeeze(1)?])
}

/// Every case on `device` with `kernels` against the CPU reference.
pub fn check_all(device: &Device, kernels: Kernels, seed: u64) -> Result<Vec<Comparison>> {
    let mut all = Vec::new();
    for case in cases() {
        let found = case
            .check(device, kernels, seed)
            .map_err(|e| candle::Error::Msg(format!("{}: {e}", case.name())))?;
        all.extend(found);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUSED: Kernels = Kernels::Fused(Precision::F32);

    #[test]
    fn every_fused_op_matches_its_reference_on_the_cpu() {
        let found = check_all(&Device::Cpu, FUSED, 3).unwrap();
        for c in &found {
            assert!(c.passed(), "{c:?}");
            assert!(
                c.scale > 0.0,
                "{} {}: nothing to compare",
                c.case,
                c.quantity
            );
        }
        // Every case compared its outputs, and those with a backward pass every float input.
        for case in cases() {
            let compared: Vec<_> = found.iter().filter(|c| c.case == case.name()).collect();
            let outputs = compared
                .iter()
                .filter(|c| c.quantity.starts_with("out"))
                .count();
            assert!(outputs >= 1, "{}: no output compared", case.name());
            let floats = case
                .inputs
                .iter()
                .filter(|i| matches!(i.kind, Kind::Float))
                .count();
            let grads = compared.len() - outputs;
            assert_eq!(
                grads,
                if case.backward { floats } else { 0 },
                "{}",
                case.name()
            );
        }
    }

    #[test]
    fn the_reference_checked_against_itself_is_exact() {
        for c in check_all(&Device::Cpu, Kernels::Reference, 4).unwrap() {
            assert_eq!(c.max_error, 0.0, "{c:?}");
        }
    }

    #[test]
    fn a_wrong_result_fails() {
        // An LSTM cell whose forget gate is read one unit off: the error the check exists for.
        let case = Case::new(
            "lstm_cell shifted",
            vec![float("gates", &[B, 4 * H]), float("c_prev", &[B, H])],
            true,
            |x, k| match k {
                Kernels::Reference => {
                    let (h, c) = lstm_cell(&x[0], &x[1], k)?;
                    Ok(vec![h, c])
                }
                Kernels::Fused(_) => {
                    let gates = x[0].roll(1, 1)?;
                    let (h, c) = lstm_cell(&gates, &x[1], k)?;
                    Ok(vec![h, c])
                }
            },
        );
        let found = case.check(&Device::Cpu, FUSED, 1).unwrap();
        assert!(found.iter().any(|c| !c.passed()), "{found:?}");
        // A non-finite value is never within tolerance.
        let nan = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
        let one = Tensor::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
        assert!(!Comparison::of("c", "out 0", &nan, &one, 1e-4)
            .unwrap()
            .passed());
    }

    #[test]
    fn bf16_products_pass_within_their_tolerance() {
        for c in check_all(&Device::Cpu, Kernels::Fused(Precision::Bf16), 6).unwrap() {
            assert!(c.passed(), "{c:?}");
        }
    }
}
