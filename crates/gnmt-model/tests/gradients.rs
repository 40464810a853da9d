use candle::{DType, Device, Tensor};

use crate::common::{inputs, model, nll};

/// Analytic gradients (candle autograd through our LSTM, attention and masking) against
/// central finite differences, in f64, for every parameter tensor of the tiny model: the
/// entry with the largest gradient and two others with non-negligible gradients. Tied
/// embeddings included: a shared matrix's gradient is the sum over its uses.
#[test]
fn analytic_gradients_match_finite_differences() {
    for cfg in crate::common::gradient_layouts() {
        let (m, varmap) = model(&cfg, DType::F64);
        let x = inputs(DType::F64);
        let loss = || -> f64 {
            let (logits, _) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
            nll(&logits, &x.tgt_out).to_scalar::<f64>().unwrap()
        };
        let (logits, _) = m.forward(&x.src, &x.src_mask, &x.tgt_in, None).unwrap();
        let grads = nll(&logits, &x.tgt_out).backward().unwrap();

        let vars = varmap.data().lock().unwrap().clone();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut worst = (0.0f64, String::new());
        for name in names {
            let var = &vars[name];
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
            let max = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(max > 0.0, "{name}: gradient is identically zero");
            let argmax = g.iter().position(|v| v.abs() == max).unwrap();
            let significant: Vec<usize> = (0..g.len())
                .filter(|&i| g[i].abs() >= 1e-3 * max && i != argmax)
                .collect();
            let mut picks = vec![argmax];
            picks.extend(
                significant
                    .iter()
                    .step_by((significant.len() / 2).max(1))
                    .take(2),
            );

            let original: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.as_tensor().shape().clone();
            let set = |values: &[f64]| {
                var.set(&Tensor::from_slice(values, &shape, &Device::Cpu).unwrap())
                    .unwrap()
            };
            // Five-point stencil: truncation error O(h^4), round-off ~1e-16 * loss / h.
            let h = 1e-3;
            for i in picks {
                let at = |delta: f64| {
                    let mut v = original.clone();
                    v[i] = original[i] + delta;
                    set(&v);
                    loss()
                };
                let numeric =
                    (-at(2.0 * h) + 8.0 * at(h) - 8.0 * at(-h) + at(-2.0 * h)) / (12.0 * h);
                set(&original);
                let rel = (g[i] - numeric).abs() / g[i].abs().max(numeric.abs()).max(1e-6);
                assert!(rel < 1e-4, "{name}[{i}]: analytic {} vs numeric {numeric} (relative error {rel:e}) in {cfg:?}", g[i]);
                if rel > worst.0 {
                    worst = (rel, format!("{name}[{i}]"));
                }
            }
        }
        eprintln!(
            "{:?}, tied {:?}: worst relative error {:e} at {}",
            cfg.attention_query, cfg.tie_embeddings, worst.0, worst.1
        );
    }
}

/// The training loss's gradients collected through [`gnmt_model::param_grads::backward`] (the
/// fused ops hand their parameters' gradients over directly) are candle's own, to the bit, for
/// every parameter: both attention layouts, f32 and f64, with dropout and label smoothing.
#[test]
fn collected_parameter_gradients_are_candles_own() {
    for cfg in crate::common::gradient_layouts() {
        for dtype in [DType::F32, DType::F64] {
            let (m, varmap) = model(&cfg, dtype);
            let batch = crate::common::pair_batch(dtype);
            // A fresh graph per backward pass (the fused ops keep forward results for one).
            let loss = || {
                let mut dropout = gnmt_model::Dropout::new(0.2, 11);
                m.token_losses(&batch, 0.1, Some(&mut dropout))
                    .unwrap()
                    .sum_all()
                    .unwrap()
            };
            let plain = loss().backward().unwrap();
            let collected = gnmt_model::param_grads::backward(&loss()).unwrap();
            let vars = varmap.data().lock().unwrap().clone();
            assert!(vars.len() > 20, "{} parameters", vars.len());
            assert_eq!(vars.len(), gnmt_model::parameter_specs(&cfg).unwrap().len());
            for (name, var) in &vars {
                let values = |g: &candle::backprop::GradStore| -> Vec<f64> {
                    g.get(var)
                        .unwrap_or_else(|| panic!("{name} got no gradient"))
                        .flatten_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                };
                let (a, b) = (values(&plain), values(&collected));
                assert!(a.iter().any(|&v| v != 0.0), "{name}: zero gradient");
                assert_eq!(
                    a, b,
                    "{name} ({dtype:?}, {:?}, tied {:?})",
                    cfg.attention_query, cfg.tie_embeddings
                );
            }
        }
    }
}
