use candle::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use gnmt_model::{
    init_varmap, mask_from_lengths, parameter_count, parameter_specs, Dropout, Gnmt, ModelConfig,
};

use crate::common::{both_queries, ids, inputs, max_abs_diff, model};

#[test]
fn a_sentence_alone_and_in_a_padded_batch_agree() {
    for cfg in both_queries() {
        let (m, _) = model(&cfg, DType::F32);
        let x = inputs(DType::F32);
        let (logits, attn) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
        // Row 1 has 2 source and 2 target tokens; alone it needs no padding at all.
        let src = ids(&[&[8, 3]], 2);
        let mask = mask_from_lengths(&[2], 2, DType::F32, &Device::Cpu).unwrap();
        let tgt = ids(&[&[2, 19]], 2);
        let (alone, attn_alone) = m.forward(&src, &mask, &tgt, None).unwrap();
        assert!(
            max_abs_diff(&logits.i((1..2, 0..2, ..)).unwrap(), &alone) < 1e-5,
            "{cfg:?}"
        );
        assert!(max_abs_diff(&attn.i((1..2, 0..2, 0..2)).unwrap(), &attn_alone) < 1e-5);
        // Padded source positions get exactly zero attention.
        let padded: f32 = attn
            .i((1, .., 2..))
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(padded, 0.0);
    }
}

#[test]
fn teacher_forcing_equals_step_by_step_decoding() {
    for cfg in both_queries() {
        let (m, _) = model(&cfg, DType::F32);
        let x = inputs(DType::F32);
        let (logits, attn) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, 2).unwrap();
        let mut state = m
            .start_state(&m.encode(&x.src, &x.src_mask).unwrap())
            .unwrap();
        for t in 0..4 {
            let tokens = x.tgt_in.i((.., t)).unwrap().contiguous().unwrap();
            let (step_logp, step_attn, next) = m.step(&tokens, &state).unwrap();
            assert!(
                max_abs_diff(&step_logp, &logp.i((.., t, ..)).unwrap()) < 1e-5,
                "{cfg:?} step {t}"
            );
            assert!(max_abs_diff(&step_attn, &attn.i((.., t, ..)).unwrap()) < 1e-6);
            state = next;
        }
    }
}

#[test]
fn top_tokens_are_the_best_log_probabilities_of_a_step_bit_for_bit() {
    for cfg in both_queries() {
        let (m, _) = model(&cfg, DType::F32);
        let x = inputs(DType::F32);
        let encoded = m.encode(&x.src, &x.src_mask).unwrap();
        let weights = m.decoding_weights().unwrap();
        let mut state = m.start_state_with(&encoded, &weights).unwrap();
        for t in 0..4 {
            let tokens = x.tgt_in.i((.., t)).unwrap().contiguous().unwrap();
            let (logp, attn, next) = m.step(&tokens, &state).unwrap();
            let (top, top_attn, top_next) = m.step_top_tokens(&tokens, &state, 6).unwrap();
            assert_eq!(max_abs_diff(&attn, &top_attn), 0.0);
            let rows: Vec<Vec<f32>> = logp.to_vec2().unwrap();
            for (r, row) in rows.iter().enumerate() {
                let mut want: Vec<(u32, f32)> = row
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (i as u32, v))
                    .collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                want.truncate(6);
                assert_eq!(
                    top.row(r).collect::<Vec<_>>(),
                    want,
                    "{cfg:?} step {t} row {r}"
                );
            }
            assert_eq!(max_abs_diff(&next.layers[0].h, &top_next.layers[0].h), 0.0);
            state = next;
        }
    }
}

#[test]
fn reorder_moves_whole_hypotheses() {
    let (m, _) = model(&crate::common::tiny8(), DType::F32);
    let x = inputs(DType::F32);
    let state = m
        .start_state(&m.encode(&x.src, &x.src_mask).unwrap())
        .unwrap();
    let (_, _, s1) = m
        .step(&Tensor::new(&[2u32, 2, 2], &Device::Cpu).unwrap(), &state)
        .unwrap();
    // New row 0 is old row 2; new rows 1 and 2 are copies of old row 0 (source memory included).
    let reordered = s1
        .reorder(&Tensor::new(&[2u32, 0, 0], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(reordered.batch_size(), 3);
    let (lp, attn, _) = m
        .step(
            &Tensor::new(&[5u32, 6, 6], &Device::Cpu).unwrap(),
            &reordered,
        )
        .unwrap();
    let (lp_ref, attn_ref, _) = m
        .step(&Tensor::new(&[6u32, 9, 5], &Device::Cpu).unwrap(), &s1)
        .unwrap();
    assert_eq!(max_abs_diff(&lp.i(0).unwrap(), &lp_ref.i(2).unwrap()), 0.0);
    assert_eq!(
        max_abs_diff(&attn.i(0).unwrap(), &attn_ref.i(2).unwrap()),
        0.0
    );
    for row in [1, 2] {
        assert_eq!(
            max_abs_diff(&lp.i(row).unwrap(), &lp_ref.i(0).unwrap()),
            0.0
        );
    }
    // Reordered again, rows keep their sources through both moves: new row 0 is old row 0
    // (via the copy in row 2), new row 1 old row 2; the batch shrinks to two rows.
    let twice = reordered
        .reorder(&Tensor::new(&[2u32, 0], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(twice.batch_size(), 2);
    let (lp2, attn2, _) = m
        .step(&Tensor::new(&[6u32, 5], &Device::Cpu).unwrap(), &twice)
        .unwrap();
    for (row, old) in [(0, 0), (1, 2)] {
        assert_eq!(
            max_abs_diff(&lp2.i(row).unwrap(), &lp_ref.i(old).unwrap()),
            0.0
        );
        assert_eq!(
            max_abs_diff(&attn2.i(row).unwrap(), &attn_ref.i(old).unwrap()),
            0.0
        );
    }
    // A row that does not exist is refused.
    assert!(twice
        .reorder(&Tensor::new(&[2u32], &Device::Cpu).unwrap())
        .is_err());
}

/// Zero weights make a layer output exactly 0 (all gates 0.5, g = 0, so c = h = 0). With the
/// residual on, that layer then passes its input through unchanged: the stack equals the stack
/// without the layer. With it off, the stack's output is 0.
#[test]
fn residual_connections_add_the_layer_input_exactly() {
    let deep = ModelConfig {
        encoder_layers: 3,
        decoder_layers: 3,
        ..crate::common::tiny8()
    };
    let varmap = init_varmap(&deep, 3, 0.3, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("_l2") {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let build = |cfg: &ModelConfig| {
        Gnmt::new(
            cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap()
    };
    let shallow_enc = ModelConfig {
        encoder_layers: 2,
        ..deep.clone()
    };
    let x = inputs(DType::F32);

    let with = build(&deep).encode(&x.src, &x.src_mask).unwrap();
    let two = build(&shallow_enc).encode(&x.src, &x.src_mask).unwrap();
    assert!(max_abs_diff(with.outputs(), two.outputs()) < 1e-7);
    let off = ModelConfig {
        residual: false,
        ..deep.clone()
    };
    let without = build(&off).encode(&x.src, &x.src_mask).unwrap();
    assert_eq!(
        without
            .outputs()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );

    // Decoder: layer 3 zeroed. Residual on: same logits as a 2-layer decoder.
    let shallow_dec = ModelConfig {
        decoder_layers: 2,
        ..deep.clone()
    };
    let (l3, _) = build(&deep)
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    let (l2, _) = build(&shallow_dec)
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    assert!(max_abs_diff(&l3, &l2) < 1e-6);
    // Residual off: the top output is 0, so the logits are the output bias everywhere.
    let (l_off, _) = build(&off)
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    let bias = varmap.data().lock().unwrap()["decoder.output.bias"]
        .as_tensor()
        .clone();
    assert!(max_abs_diff(&l_off, &bias.broadcast_as(l_off.shape()).unwrap()) < 1e-7);

    // residual_from_layer = 2 adds a residual to decoder layer 2 only (encoder layer 2 is 2H
    // wide in, H out): the logits change, the encoder does not.
    let from2 = ModelConfig {
        residual_from_layer: 2,
        ..deep.clone()
    };
    let e2 = build(&from2).encode(&x.src, &x.src_mask).unwrap();
    assert!(max_abs_diff(e2.outputs(), with.outputs()) == 0.0);
    let (lf2, _) = build(&from2)
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    assert!(max_abs_diff(&lf2, &l3) > 1e-4);
}

#[test]
fn seeded_initialisation_is_reproducible() {
    let cfg = crate::common::tiny8();
    let a = init_varmap(&cfg, 11, 0.04, DType::F32, &Device::Cpu).unwrap();
    let b = init_varmap(&cfg, 11, 0.04, DType::F32, &Device::Cpu).unwrap();
    let c = init_varmap(&cfg, 12, 0.04, DType::F32, &Device::Cpu).unwrap();
    let (a, b, c) = (
        a.data().lock().unwrap(),
        b.data().lock().unwrap(),
        c.data().lock().unwrap(),
    );
    let mut differs = false;
    for (name, v) in a.iter() {
        assert_eq!(
            max_abs_diff(v.as_tensor(), b[name].as_tensor()),
            0.0,
            "{name}"
        );
        differs |= max_abs_diff(v.as_tensor(), c[name].as_tensor()) > 0.0;
        let max = v
            .as_tensor()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 0.04, "{name} has |x| = {max}");
    }
    assert!(differs);
}

#[test]
fn dropout_is_seeded_and_only_in_training() {
    let (m, _) = model(&crate::common::tiny8(), DType::F32);
    let x = inputs(DType::F32);
    let run = |d: Option<&mut Dropout>| m.forward(&x.src, &x.src_mask, &x.tgt_in, d).unwrap().0;
    let plain = run(None);
    let a = run(Some(&mut Dropout::new(0.3, 5)));
    let b = run(Some(&mut Dropout::new(0.3, 5)));
    let c = run(Some(&mut Dropout::new(0.3, 6)));
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 0.0 && max_abs_diff(&a, &plain) > 0.0);
    assert_eq!(
        max_abs_diff(&run(Some(&mut Dropout::new(0.0, 5))), &plain),
        0.0
    );
}

#[test]
fn wrong_inputs_are_errors_not_panics() {
    let (m, _) = model(&crate::common::tiny8(), DType::F32);
    let x = inputs(DType::F32);
    let floats = x.src.to_dtype(DType::F32).unwrap();
    let err = m.encode(&floats, &x.src_mask).unwrap_err().to_string();
    assert!(err.contains("src must hold u32 token ids"), "{err}");
    let err = m
        .encode(&x.src, &x.src_mask.i((.., 0..3)).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("differ in shape"), "{err}");
    let bad = ModelConfig {
        decoder_layers: 0,
        ..crate::common::tiny8()
    };
    let err = Gnmt::new(&bad, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoder_layers = 0"), "{err}");
}

/// Tensor names and shapes are the checkpoint format: a change here is a format change.
#[test]
fn parameter_names_are_pinned() {
    let listing = |cfg: &ModelConfig| {
        parameter_specs(cfg)
            .unwrap()
            .iter()
            .map(|s| format!("{} {:?}", s.name, s.shape))
            .collect::<Vec<_>>()
    };
    let tiny = listing(&crate::common::tiny8());
    let expected_tiny = [
        "decoder.attention.key.bias [8]",
        "decoder.attention.key.weight [8, 8]",
        "decoder.attention.query.weight [8, 8]",
        "decoder.attention.score.weight [1, 8]",
        "decoder.embedding.weight [64, 8]",
        "decoder.lstm.bias_hh_l0 [32]",
        "decoder.lstm.bias_hh_l1 [32]",
        "decoder.lstm.bias_hh_l2 [32]",
        "decoder.lstm.bias_ih_l0 [32]",
        "decoder.lstm.bias_ih_l1 [32]",
        "decoder.lstm.bias_ih_l2 [32]",
        "decoder.lstm.weight_hh_l0 [32, 8]",
        "decoder.lstm.weight_hh_l1 [32, 8]",
        "decoder.lstm.weight_hh_l2 [32, 8]",
        "decoder.lstm.weight_ih_l0 [32, 8]",
        "decoder.lstm.weight_ih_l1 [32, 16]",
        "decoder.lstm.weight_ih_l2 [32, 16]",
        "decoder.output.bias [64]",
        "decoder.output.weight [64, 8]",
        "encoder.embedding.weight [64, 8]",
        "encoder.lstm.bias_hh_l0 [32]",
        "encoder.lstm.bias_hh_l0_reverse [32]",
        "encoder.lstm.bias_hh_l1 [32]",
        "encoder.lstm.bias_hh_l2 [32]",
        "encoder.lstm.bias_ih_l0 [32]",
        "encoder.lstm.bias_ih_l0_reverse [32]",
        "encoder.lstm.bias_ih_l1 [32]",
        "encoder.lstm.bias_ih_l2 [32]",
        "encoder.lstm.weight_hh_l0 [32, 8]",
        "encoder.lstm.weight_hh_l0_reverse [32, 8]",
        "encoder.lstm.weight_hh_l1 [32, 8]",
        "encoder.lstm.weight_hh_l2 [32, 8]",
        "encoder.lstm.weight_ih_l0 [32, 8]",
        "encoder.lstm.weight_ih_l0_reverse [32, 8]",
        "encoder.lstm.weight_ih_l1 [32, 16]",
        "encoder.lstm.weight_ih_l2 [32, 8]",
    ];
    assert_eq!(tiny, expected_tiny);
    let small = listing(&ModelConfig::small());
    assert_eq!(small.len(), 44);
    assert!(small.contains(&"decoder.lstm.weight_ih_l3 [1024, 512]".to_string()));
    assert!(small.contains(&"encoder.lstm.weight_ih_l1 [1024, 512]".to_string()));
    // Parameter counts of the presets, pinned.
    assert_eq!(parameter_count(&crate::common::tiny8()).unwrap(), 6_544);
    assert_eq!(parameter_count(&ModelConfig::tiny()).unwrap(), 300_396);
    assert_eq!(parameter_count(&ModelConfig::small()).unwrap(), 12_069_184);
    let paper = ModelConfig::preset("gnmt-8x1024").unwrap();
    assert_eq!(parameter_count(&paper).unwrap(), 280_929_536);
}

/// Tied embeddings store one matrix where they share it: the decoder's output layer keeps
/// only its bias, and with all tied the encoder has no table of its own.
#[test]
fn tied_embeddings_are_one_parameter() {
    let names = |cfg: &ModelConfig| -> Vec<String> {
        parameter_specs(cfg)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    let untied = names(&crate::common::tiny8());
    let [decoder, all] = crate::common::tied().map(|c| names(&c));
    let without = |gone: &[&str]| -> Vec<String> {
        untied
            .iter()
            .filter(|n| !gone.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    assert_eq!(decoder, without(&["decoder.output.weight"]));
    assert_eq!(
        all,
        without(&["decoder.output.weight", "encoder.embedding.weight"])
    );
    assert_eq!(
        parameter_count(&crate::common::tied()[1]).unwrap(),
        parameter_count(&crate::common::tiny8()).unwrap() - 2 * 64 * 8
    );
    // The shared matrix is the output layer: scaling one row of it moves that word's logit.
    let cfg = &crate::common::tied()[1];
    let (m, varmap) = model(cfg, DType::F64);
    let x = crate::common::inputs(DType::F64);
    let logits = |m: &Gnmt| {
        let (l, _) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
        l
    };
    let before = logits(&m);
    let table = varmap.data().lock().unwrap()["decoder.embedding.weight"].clone();
    let rows: Vec<Vec<f64>> = table.as_tensor().to_vec2().unwrap();
    let zeroed: Vec<f64> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().map(move |&v| if i == 50 { 0.0 } else { v }))
        .collect();
    table
        .set(&Tensor::from_vec(zeroed, (64, 8), &Device::Cpu).unwrap())
        .unwrap();
    let after = logits(&m);
    let bias: Vec<f64> = varmap.data().lock().unwrap()["decoder.output.bias"]
        .as_tensor()
        .to_vec1()
        .unwrap();
    // Word 50 appears in no input, so zeroing its row changes the output layer alone: its
    // logit is now the bias, and the other words' logits stay as they were.
    let (after, before) = (
        after.flatten_to(1).unwrap().to_vec2::<f64>().unwrap(),
        before.flatten_to(1).unwrap().to_vec2::<f64>().unwrap(),
    );
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a[50], bias[50]);
        assert_ne!(b[50], bias[50]);
        assert_eq!(a[..50], b[..50]);
    }
    let err = ModelConfig {
        embedding_dim: 4,
        ..cfg.clone()
    }
    .validate()
    .unwrap_err();
    assert!(
        err.contains("tie_embeddings = all needs embedding_dim = hidden_size"),
        "{err}"
    );
}

#[test]
fn f32_decoding_does_not_depend_on_the_batch() {
    for cfg in [crate::common::tiny8(), crate::common::tiny64()] {
        let (m, _) = model(&cfg, DType::F32);
        crate::common::assert_decoding_ignores_batch_mates(&m);
    }
}
