//! The whole model on the reference kernels (plain candle operations, the baseline of every
//! backend) against the fused ones: training losses, every parameter's gradient, and decoding
//! steps.

use candle::{DType, Device, Tensor};
use gnmt_model::{Gnmt, Kernels, Precision};

use crate::common::{inputs, model, pair_batch};

const FUSED: Kernels = Kernels::Fused(Precision::F32);

/// Per-token losses `[B * T, 2]` with dropout and label smoothing, and every parameter's
/// gradient of their sum (collected as the trainer collects them), as f64.
fn losses_and_gradients(
    m: &Gnmt,
    varmap: &candle_nn::VarMap,
    dtype: DType,
) -> (Vec<f64>, Vec<(String, Vec<f64>)>) {
    let mut dropout = gnmt_model::Dropout::new(0.2, 11);
    let losses = m
        .token_losses(&pair_batch(dtype), 0.1, Some(&mut dropout))
        .unwrap();
    let grads = gnmt_model::param_grads::backward(&losses.sum_all().unwrap()).unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    let mut names: Vec<String> = vars.keys().cloned().collect();
    names.sort();
    let grads = names
        .into_iter()
        .map(|name| {
            let g = grads
                .get(&vars[&name])
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            (name, flat(g))
        })
        .collect();
    (flat(&losses), grads)
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `|a - b| <= tol * (1 + |b|)` element by element, or a panic naming `what`.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: reference {x} vs fused {y}"
        );
    }
}

/// Same losses and gradients for every parameter, both attention layouts, in f64 (to rounding:
/// the two sum in different orders) and f32 (the precision training runs in).
#[test]
fn reference_kernels_train_like_the_fused_ones() {
    for cfg in crate::common::both_queries() {
        for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-5)] {
            let (m, varmap) = model(&cfg, dtype);
            assert_eq!(m.kernels(), FUSED, "a new model runs the fused kernels");
            let (fused_losses, fused_grads) = losses_and_gradients(&m, &varmap, dtype);
            let reference = m.clone().with_kernels(Kernels::Reference);
            assert_eq!(reference.kernels(), Kernels::Reference);
            let (ref_losses, ref_grads) = losses_and_gradients(&reference, &varmap, dtype);
            let what = format!("{:?} {dtype:?}", cfg.attention_query);
            assert!(fused_losses.iter().any(|&l| l > 0.0), "{what}: no loss");
            assert_close(&ref_losses, &fused_losses, tol, &format!("{what} losses"));
            for ((name, r), (_, f)) in ref_grads.iter().zip(&fused_grads) {
                assert!(f.iter().any(|&g| g != 0.0), "{what} {name}: zero gradient");
                assert_close(r, f, tol, &format!("{what} {name}"));
            }
        }
    }
}

/// Decoding steps on the reference kernels give the fused steps' log-probabilities, attention
/// and top tokens, step after step.
#[test]
fn reference_kernels_decode_like_the_fused_ones() {
    for cfg in crate::common::both_queries() {
        let (m, _) = model(&cfg, DType::F32);
        let reference = m.clone().with_kernels(Kernels::Reference);
        let x = inputs(DType::F32);
        let run = |m: &Gnmt| {
            let memory = m.encode(&x.src, &x.src_mask).unwrap();
            let mut state = m.start_state(&memory).unwrap();
            let mut tokens = Tensor::new(&[2u32, 2, 2], &Device::Cpu).unwrap();
            let mut steps = Vec::new();
            for _ in 0..4 {
                let (top, _, _) = m.step_top_tokens(&tokens, &state, 3).unwrap();
                let (log_probs, attention, next) = m.step(&tokens, &state).unwrap();
                tokens = Tensor::new(top.best(), &Device::Cpu).unwrap();
                steps.push((flat(&log_probs), flat(&attention), top.best()));
                state = next;
            }
            steps
        };
        for (k, (r, f)) in run(&reference).iter().zip(run(&m)).enumerate() {
            let what = format!("{:?} step {k}", cfg.attention_query);
            assert_close(&r.0, &f.0, 1e-5, &format!("{what} log-probabilities"));
            assert_close(&r.1, &f.1, 1e-5, &format!("{what} attention"));
            assert_eq!(r.2, f.2, "{what}: best tokens");
        }
    }
}
