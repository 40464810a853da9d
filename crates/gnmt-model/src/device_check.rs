//! The whole network on a device, with the kernels that device runs, against the reference on
//! the CPU: a training batch's per-token losses (dropout and label smoothing on) and every
//! parameter's gradient, then decoding steps' log-probabilities and attention. The second half
//! of `gnmt check-device`, after [`gnmt_ops::device_check`]'s operations one by one.
//!
//! Both sides start from the same seeded parameters, batch and dropout stream, so they compute
//! the same function; decoding feeds both the reference's best tokens so they stay on the same
//! path.

use candle::{DType, Device, Result, Tensor};
pub use gnmt_ops::device_check::{check_all as check_ops, tolerance, Comparison};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::{init_model, mask_from_lengths, param_grads, Dropout, Gnmt, Kernels, ModelConfig};
use crate::{AttentionQuery, PairBatch};

/// Sentence lengths of the check's batch: uneven, so padding is exercised.
const SOURCE_LENGTHS: [usize; 4] = [7, 3, 5, 1];
const TARGET_LENGTHS: [usize; 4] = [6, 4, 2, 5];
const DECODING_STEPS: usize = 4;

/// The `tiny` preset's layout (bidirectional bottom layer, residual connections) at 16 units.
fn check_config(query: AttentionQuery) -> ModelConfig {
    ModelConfig {
        vocab_size: 40,
        embedding_dim: 12,
        hidden_size: 16,
        attention_size: 10,
        attention_query: query,
        ..ModelConfig::tiny()
    }
}

/// Random ids in `[4, vocab)` (past the special tokens), 0 past each row's length.
fn padded_ids(rng: &mut ChaCha20Rng, lengths: &[usize], vocab: usize) -> Result<Tensor> {
    let width = lengths.iter().copied().max().unwrap_or(0);
    let ids: Vec<u32> = lengths
        .iter()
        .flat_map(|&len| (0..width).map(move |j| (j, len)))
        .map(|(j, len)| {
            if j < len {
                rng.random_range(4..vocab as u32)
            } else {
                0
            }
        })
        .collect();
    Tensor::from_vec(ids, (lengths.len(), width), &Device::Cpu)
}

/// A training batch on the CPU, drawn from `seed`.
fn batch(cfg: &ModelConfig, seed: u64) -> Result<PairBatch> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let cpu = &Device::Cpu;
    let (s, t) = (
        SOURCE_LENGTHS.iter().max().copied().unwrap_or(0),
        TARGET_LENGTHS.iter().max().copied().unwrap_or(0),
    );
    Ok(PairBatch {
        src: padded_ids(&mut rng, &SOURCE_LENGTHS, cfg.vocab_size)?,
        src_mask: mask_from_lengths(&SOURCE_LENGTHS, s, DType::F32, cpu)?,
        tgt_in: padded_ids(&mut rng, &TARGET_LENGTHS, cfg.vocab_size)?,
        tgt_out: padded_ids(&mut rng, &TARGET_LENGTHS, cfg.vocab_size)?,
        tgt_mask: mask_from_lengths(&TARGET_LENGTHS, t, DType::F32, cpu)?,
    })
}

fn to_device(batch: &PairBatch, device: &Device) -> Result<PairBatch> {
    Ok(PairBatch {
        src: batch.src.to_device(device)?,
        src_mask: batch.src_mask.to_device(device)?,
        tgt_in: batch.tgt_in.to_device(device)?,
        tgt_out: batch.tgt_out.to_device(device)?,
        tgt_mask: batch.tgt_mask.to_device(device)?,
    })
}

/// What one side computed: losses, gradients by parameter name, then per decoding step the
/// log-probabilities and attention.
struct Results {
    losses: Tensor,
    gradients: Vec<(String, Tensor)>,
    steps: Vec<(Tensor, Tensor)>,
}

/// Runs the check's computations on `device` with `kernels`; decoding feeds `tokens[k]` at
/// step `k` (the reference's choices), or this side's own best tokens when `None`.
fn run(
    cfg: &ModelConfig,
    seed: u64,
    device: &Device,
    kernels: Kernels,
    tokens: Option<&[Vec<u32>]>,
) -> Result<(Results, Vec<Vec<u32>>)> {
    let (model, varmap) = init_model(cfg, seed, 0.3, DType::F32, device)?;
    let model: Gnmt = model.with_kernels(kernels);
    let batch = to_device(&batch(cfg, seed + 1)?, device)?;
    let mut dropout = Dropout::new(0.2, seed + 2);
    let losses = model.token_losses(&batch, 0.1, Some(&mut dropout))?;
    let grads = param_grads::backward(&losses.sum_all()?)?;
    let vars = varmap.data().lock().expect("the varmap's lock").clone();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let gradients = names
        .into_iter()
        .map(|name| match grads.get(&vars[name]) {
            Some(g) => Ok((format!("d {name}"), g.clone())),
            None => candle::bail!("model check: {name} got no gradient"),
        })
        .collect::<Result<Vec<_>>>()?;

    let memory = model.encode(&batch.src, &batch.src_mask)?;
    let mut state = model.start_state(&memory)?;
    let rows = SOURCE_LENGTHS.len();
    let mut fed = vec![vec![2u32; rows]]; // <s>
    let mut steps = Vec::new();
    for k in 0..DECODING_STEPS {
        let input = Tensor::new(fed[k].as_slice(), device)?;
        let (log_probs, attention, next) = model.step(&input, &state)?;
        let best: Vec<u32> = log_probs.argmax(1)?.to_device(&Device::Cpu)?.to_vec1()?;
        fed.push(match tokens {
            Some(given) => given[k + 1].clone(),
            None => best,
        });
        steps.push((log_probs, attention));
        state = next;
    }
    Ok((
        Results {
            losses,
            gradients,
            steps,
        },
        fed,
    ))
}

/// The network on `device` with `kernels` against the reference on the CPU, for both
/// attention queries (GNMT v2's current bottom output and the paper's previous one).
pub fn check_model(device: &Device, kernels: Kernels, seed: u64) -> Result<Vec<Comparison>> {
    let tol = tolerance(kernels);
    let mut all = Vec::new();
    for (query, label) in [
        (AttentionQuery::Current, "model"),
        (AttentionQuery::Previous, "model (previous query)"),
    ] {
        let cfg = check_config(query);
        let (reference, fed) = run(&cfg, seed, &Device::Cpu, Kernels::Reference, None)?;
        let (got, _) = run(&cfg, seed, device, kernels, Some(&fed))?;
        all.push(Comparison::of(
            label,
            "losses",
            &got.losses,
            &reference.losses,
            tol,
        )?);
        for ((name, g), (_, r)) in got.gradients.iter().zip(&reference.gradients) {
            all.push(Comparison::of(label, name, g, r, tol)?);
        }
        for (k, ((lp, at), (ref_lp, ref_at))) in got.steps.iter().zip(&reference.steps).enumerate()
        {
            all.push(Comparison::of(
                label,
                &format!("step {k} log-probs"),
                lp,
                ref_lp,
                tol,
            )?);
            all.push(Comparison::of(
                label,
                &format!("step {k} attention"),
                at,
                ref_at,
                tol,
            )?);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precision;

    #[test]
    fn the_fused_network_matches_the_reference_on_the_cpu() {
        let found = check_model(&Device::Cpu, Kernels::Fused(Precision::F32), 9).unwrap();
        let params = crate::parameter_specs(&check_config(AttentionQuery::Current))
            .unwrap()
            .len();
        // Per query: losses, every parameter's gradient, and two quantities per step.
        assert_eq!(found.len(), 2 * (1 + params + 2 * DECODING_STEPS));
        for c in &found {
            assert!(c.passed(), "{c:?}");
            assert!(
                c.scale > 0.0,
                "{} {}: nothing to compare",
                c.case,
                c.quantity
            );
        }
    }

    #[test]
    fn bf16_products_pass_within_their_tolerance() {
        for c in check_model(&Device::Cpu, Kernels::Fused(Precision::Bf16), 9).unwrap() {
            assert!(c.passed(), "{c:?}");
        }
    }
}
