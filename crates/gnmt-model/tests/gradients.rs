use candle::{DType, Device, Tensor};
use gnmt_model::{AttentionQuery, ModelConfig};

use crate::common::{inputs, model, nll};

/// Analytic gradients (candle autograd through our LSTM, attention and masking) against
/// central finite differences, in f64, for every parameter tensor of the tiny model: the
/// entry with the largest gradient and two others with non-negligible gradients.
#[test]
fn analytic_gradients_match_finite_differences() {
    let tiny = crate::common::tiny8();
    for cfg in [
        tiny.clone(),
        ModelConfig {
            attention_query: AttentionQuery::Previous,
            ..tiny
        },
    ] {
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
            "{:?}: worst relative error {:e} at {}",
            cfg.attention_query, worst.0, worst.1
        );
    }
}
