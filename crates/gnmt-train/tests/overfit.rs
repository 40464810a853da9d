use candle::{DType, Device, Tensor};
use gnmt_model::{init_model, mask_from_lengths, Dropout, ModelConfig};
use gnmt_train::config::OptimConfig;
use gnmt_train::grads::GradStats;
use gnmt_train::label_smoothed_nll;
use gnmt_train::optim::Optimizer;
use gnmt_train::schedule::Rule;

/// The optimiser and the model together can memorise one small batch of a copy task: the
/// loss must fall close to zero. A broken update rule, a severed gradient or a masking bug
/// shows up here long before a full training run would reveal it.
#[test]
fn memorises_a_single_batch() {
    let cfg = ModelConfig {
        vocab_size: 20,
        embedding_dim: 16,
        hidden_size: 32,
        encoder_layers: 2,
        decoder_layers: 2,
        attention_size: 16,
        ..ModelConfig::tiny()
    };
    let dev = Device::Cpu;
    let (model, varmap) = init_model(&cfg, 1, 0.1, DType::F32, &dev).unwrap();
    let rows: Vec<Vec<u32>> = (0..8)
        .map(|i| {
            (0..3 + i % 4)
                .map(|j| 4 + ((i * 7 + j * 3) % 16) as u32)
                .collect()
        })
        .collect();
    let s = rows.iter().map(Vec::len).max().unwrap() + 1;
    let pad = |r: &[u32], first: Option<u32>, last: Option<u32>| -> Vec<u32> {
        let mut v: Vec<u32> = first
            .into_iter()
            .chain(r.iter().copied())
            .chain(last)
            .collect();
        v.resize(s, 0);
        v
    };
    let flat = |f: &dyn Fn(&[u32]) -> Vec<u32>| {
        Tensor::from_vec(
            rows.iter().flat_map(|r| f(r)).collect::<Vec<_>>(),
            (8, s),
            &dev,
        )
        .unwrap()
    };
    let src = flat(&|r| pad(r, None, Some(3)));
    let tgt_in = flat(&|r| pad(r, Some(2), None));
    let tgt_out = flat(&|r| pad(r, None, Some(3)));
    let lengths: Vec<usize> = rows.iter().map(|r| r.len() + 1).collect();
    let mask = mask_from_lengths(&lengths, s, DType::F32, &dev).unwrap();
    let mut opt = Optimizer::new(&varmap).unwrap();
    let o = OptimConfig {
        lr: 1e-2,
        ..Default::default()
    };
    let mut losses = Vec::new();
    for step in 0..300 {
        let (logits, _) = model
            .forward(&src, &mask, &tgt_in, Some(&mut Dropout::new(0.0, 0)))
            .unwrap();
        let loss = label_smoothed_nll(&logits, &tgt_out, &mask, 0.0)
            .unwrap()
            .mean()
            .unwrap();
        let grads = loss.backward().unwrap();
        let stats = GradStats::measure(&grads, opt.vars()).unwrap();
        assert!(stats.is_finite());
        opt.step(&grads, 1e-2, Rule::Adam, 1.0, &o).unwrap();
        if step % 50 == 0 {
            eprintln!("step {step}: loss {:.4}", loss.to_scalar::<f32>().unwrap());
        }
        losses.push(loss.to_scalar::<f32>().unwrap());
    }
    assert!(
        losses[299] < 0.05,
        "loss after 300 updates: {}",
        losses[299]
    );
}
