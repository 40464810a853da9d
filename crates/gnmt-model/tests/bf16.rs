//! bf16 and int8 matrix products through the whole model: a precision each model carries, so
//! these run beside the f32 tests.

use candle::{DType, Tensor};
use gnmt_model::{Gnmt, Kernels, Precision};

use crate::common::{
    assert_decoding_ignores_batch_mates, inputs, max_abs_diff, model, nll, tiny64,
};

/// Loss, gradients and decoding steps with bf16 products stay close to f32 (bf16 keeps 8 bits
/// of mantissa, so about 1% relative), and are not equal to them (the products really ran in
/// bf16).
#[test]
fn bf16_products_track_f32_through_training_and_decoding() {
    let cfg = tiny64();
    let (m, varmap) = model(&cfg, DType::F32);
    let x = inputs(DType::F32);
    let run = |m: &Gnmt| {
        let (logits, _) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
        let loss = nll(&logits, &x.tgt_out);
        let grads = loss.backward().unwrap();
        let vars = varmap.all_vars();
        let grads: Vec<Tensor> = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
        let memory = m.encode(&x.src, &x.src_mask).unwrap();
        let state = m.start_state(&memory).unwrap();
        let bos = Tensor::new(&[2u32, 2, 2], &candle::Device::Cpu).unwrap();
        let (log_probs, _, _) = m.step(&bos, &state).unwrap();
        (loss.to_scalar::<f32>().unwrap(), grads, log_probs)
    };
    let (loss32, grads32, step32) = run(&m);
    let (loss16, grads16, step16) = run(&m.clone().with_kernels(Kernels::Fused(Precision::Bf16)));
    assert_eq!(
        m.kernels(),
        Kernels::Fused(Precision::F32),
        "the f32 model is left as it was"
    );

    assert!(
        loss16 != loss32,
        "bf16 products left the loss bit-identical"
    );
    assert!(
        ((loss16 - loss32) / loss32).abs() < 0.01,
        "loss {loss16} (bf16) vs {loss32} (f32)"
    );
    for (g16, g32) in grads16.iter().zip(&grads32) {
        let scale = g32
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let diff = max_abs_diff(g16, g32);
        assert!(
            diff <= 0.05 * scale + 1e-6,
            "gradient differs by {diff} (scale {scale})"
        );
    }
    let diff = max_abs_diff(&step16, &step32);
    assert!(
        diff > 0.0 && diff < 0.05,
        "decoding log-probabilities differ by {diff}"
    );
}

/// A sentence decodes to the same bits alone and in a padded batch (the bf16 kernel sums every
/// dot product in one fixed order, whatever the row count).
#[test]
fn bf16_decoding_does_not_depend_on_the_batch() {
    let cfg = tiny64();
    let (m, _) = model(&cfg, DType::F32);
    assert_decoding_ignores_batch_mates(&m.with_kernels(Kernels::Fused(Precision::Bf16)));
}

/// int8 products (decoding only): a decoding step's log-probabilities stay close to f32's
/// (127 levels per row), and a sentence decodes to the same bits alone and in a padded batch
/// (each row of activations has its own scale; integer sums are exact).
#[test]
fn int8_decoding_tracks_f32_and_does_not_depend_on_the_batch() {
    let cfg = tiny64();
    let (m, _) = model(&cfg, DType::F32);
    let x = inputs(DType::F32);
    let step = |m: &Gnmt| {
        let memory = m.encode(&x.src, &x.src_mask).unwrap();
        let state = m.start_state(&memory).unwrap();
        let bos = Tensor::new(&[2u32, 2, 2], &candle::Device::Cpu).unwrap();
        m.step(&bos, &state).unwrap().0
    };
    let int8 = m.clone().with_kernels(Kernels::Fused(Precision::Int8));
    let diff = max_abs_diff(&step(&int8), &step(&m));
    assert!(
        diff > 0.0 && diff < 0.05,
        "decoding log-probabilities differ by {diff}"
    );
    assert_decoding_ignores_batch_mates(&int8);
}
