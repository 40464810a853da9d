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
    let (out, last) = ours.forward(&x, None, false).unwrap();
    let states = reference.seq(&x).unwrap();
    for (t, s) in states.iter().enumerate() {
        assert!(
            max_abs_diff(&out.i((.., t, ..)).unwrap(), s.h()) < 1e-6,
            "step {t}"
        );
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
        let (out, last) = ours.forward(&x, Some(&mask), reverse).unwrap();
        // Row 1 alone, unpadded, must give the same outputs on its real steps.
        let alone = x.i((1..2, 0..3, ..)).unwrap();
        let (out_alone, last_alone) = ours.forward(&alone, None, reverse).unwrap();
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
