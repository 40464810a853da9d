use candle::{DType, Device, IndexOp, Tensor};
use candle_nn::rnn::LSTMState;
use candle_nn::{VarBuilder, VarMap, RNN};
use gnmt_model::lstm::{Lstm, LstmState};

use crate::common::max_abs_diff;

fn random(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic pseudo-random values without an RNG dependency in the test.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 + 1) * 2654435761 * (seed + 3)) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn layers(input: usize, hidden: usize) -> (Lstm, candle_nn::LSTM) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let reference = candle_nn::lstm(input, hidden, Default::default(), vb.clone()).unwrap();
    // Non-zero biases so that their handling is checked too.
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let seed = name.len() as u64;
        var.set(&random(var.dims(), seed)).unwrap();
    }
    (Lstm::new(input, hidden, "l0", &vb).unwrap(), reference)
}

#[test]
fn matches_candle_nn_lstm_step_by_step() {
    let (ours, reference) = layers(6, 5);
    let x = random(&[3, 7, 6], 11);
    let out = ours.forward(&x, None, false).unwrap();
    let (stepwise, last) = ours.forward_stepwise(&x, None, false).unwrap();
    let states = reference.seq(&x).unwrap();
    for (t, s) in states.iter().enumerate() {
        for o in [&out, &stepwise] {
            assert!(
                max_abs_diff(&o.i((.., t, ..)).unwrap(), s.h()) < 1e-6,
                "step {t}"
            );
        }
    }
    assert!(max_abs_diff(&last.c, states.last().unwrap().c()) < 1e-6);
    // The single-step form agrees as well.
    let zero = LstmState::zeros(3, 5, DType::F32, &Device::Cpu).unwrap();
    let ours1 = ours.step(&x.i((.., 0, ..)).unwrap(), &zero).unwrap();
    let theirs1 = reference
        .step(
            &x.i((.., 0, ..)).unwrap(),
            &LSTMState::new(zero.h.clone(), zero.c.clone()),
        )
        .unwrap();
    assert!(max_abs_diff(&ours1.h, theirs1.h()) < 1e-6);
}

#[test]
fn padded_steps_carry_the_state_and_change_nothing() {
    let (ours, _) = layers(4, 3);
    let x = random(&[2, 6, 4], 5);
    let lengths = [6, 3];
    let mask = gnmt_model::mask_from_lengths(&lengths, 6, DType::F32, &Device::Cpu).unwrap();
    for reverse in [false, true] {
        let out = ours.forward(&x, Some(&mask), reverse).unwrap();
        let (stepwise, last) = ours.forward_stepwise(&x, Some(&mask), reverse).unwrap();
        assert!(max_abs_diff(&out, &stepwise) < 1e-6, "reverse={reverse}");
        // Row 1 alone, unpadded, must give the same outputs on its real steps.
        let alone = x.i((1..2, 0..3, ..)).unwrap();
        let out_alone = ours.forward(&alone, None, reverse).unwrap();
        let (_, last_alone) = ours.forward_stepwise(&alone, None, reverse).unwrap();
        assert!(
            max_abs_diff(&out.i((1..2, 0..3, ..)).unwrap(), &out_alone) < 1e-6,
            "reverse={reverse}"
        );
        assert!(
            max_abs_diff(&last.h.i(1..2).unwrap(), &last_alone.h) < 1e-6,
            "reverse={reverse}"
        );
        if !reverse {
            // Forward: padded steps repeat the last real output.
            for t in 3..6 {
                assert!(
                    max_abs_diff(&out.i((1, t, ..)).unwrap(), &out.i((1, 2, ..)).unwrap()) == 0.0
                );
            }
        }
    }
}

/// The fused sequence against the step-by-step reference: outputs and the gradients of every
/// parameter and of the input, in f32 and f64, with ragged padding, in both directions, with
/// the batch split over several threads.
#[test]
fn fused_sequence_matches_the_stepwise_reference_with_gradients() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        for dtype in [DType::F32, DType::F64] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
            let layer = Lstm::new(4, 5, "l0", &vb).unwrap();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let values = random(var.dims(), name.len() as u64)
                    .to_dtype(dtype)
                    .unwrap();
                var.set(&values).unwrap();
            }
            let x =
                candle::Var::from_tensor(&random(&[5, 6, 4], 9).to_dtype(dtype).unwrap()).unwrap();
            let lengths = [6, 3, 1, 6, 4];
            let mask = gnmt_model::mask_from_lengths(&lengths, 6, dtype, &Device::Cpu).unwrap();
            let weight = random(&[5, 6, 5], 4).to_dtype(dtype).unwrap();
            for reverse in [false, true] {
                for masked in [false, true] {
                    let m = masked.then_some(&mask);
                    let run = |out: Tensor| {
                        let loss = (out.clone() * &weight).unwrap().sum_all().unwrap();
                        let grads = loss.backward().unwrap();
                        let mut all = vec![out];
                        all.push(grads.get(&x).unwrap().clone());
                        for var in varmap.all_vars() {
                            all.push(grads.get(&var).unwrap().clone());
                        }
                        all
                    };
                    let fused = run(layer.forward(&x, m, reverse).unwrap());
                    let stepwise = run(layer.forward_stepwise(&x, m, reverse).unwrap().0);
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    for (k, (a, b)) in fused.iter().zip(&stepwise).enumerate() {
                        let diff = max_abs_diff(a, b);
                        assert!(
                            diff < tol,
                            "{dtype:?} reverse={reverse} masked={masked} tensor {k}: {diff}"
                        );
                    }
                }
            }
        }
    });
}

/// A loaded (constant) layer keeps its weights packed between calls; a training one (`Var`s)
/// packs them at every call. Both give the same bits, in every precision, padded or not, both
/// directions, also after the kernels change (the kept packing is then remade).
#[test]
fn a_loaded_layer_keeps_its_packed_weights_and_gives_the_same_bits() {
    use gnmt_model::{Kernels, Precision};
    let (input, hidden) = (40, 24);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    candle_nn::lstm(input, hidden, Default::default(), vb.clone()).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        var.set(&random(var.dims(), name.len() as u64)).unwrap();
    }
    let mut training = Lstm::new(input, hidden, "l0", &vb).unwrap();
    // The same values as constants, as a loaded model holds them.
    let constants = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(constants, DType::F32, &Device::Cpu);
    let mut loaded = Lstm::new(input, hidden, "l0", &vb).unwrap();
    let x = random(&[3, 7, input], 9);
    let mask = gnmt_model::mask_from_lengths(&[7, 4, 1], 7, DType::F32, &Device::Cpu).unwrap();
    for precision in [
        Precision::F32,
        Precision::Bf16,
        Precision::Int8,
        Precision::F32,
    ] {
        training.set_kernels(Kernels::Fused(precision));
        loaded.set_kernels(Kernels::Fused(precision));
        assert!(
            !loaded.keeps_packed_weights(),
            "a change of kernels drops them"
        );
        for reverse in [false, true] {
            for mask in [None, Some(&mask)] {
                let want = training.forward(&x, mask, reverse).unwrap();
                // Twice: the first call packs and keeps the weights, the second reuses them.
                for _ in 0..2 {
                    let got = loaded.forward(&x, mask, reverse).unwrap();
                    assert!(loaded.keeps_packed_weights() && !training.keeps_packed_weights());
                    assert_eq!(
                        max_abs_diff(&got, &want),
                        0.0,
                        "{precision:?}, reverse {reverse}, mask {}",
                        mask.is_some()
                    );
                }
            }
        }
    }
}
