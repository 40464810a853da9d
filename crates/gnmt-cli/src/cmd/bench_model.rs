//! `gnmt bench model`: forward + backward throughput of a preset on synthetic batches, at
//! each requested thread count, with the FLOP count per target token and the achieved rate.
//! Each thread count runs in a child process, so the thread pools are sized from the start.

use std::time::Instant;

use anyhow::Context;
use candle::{DType, Device, Tensor};
use clap::Args;
use gnmt_model::{init_model, mask_from_lengths, parameter_count, ModelConfig};
use rand::{Rng, SeedableRng};

#[derive(Debug, Args)]
pub struct BenchModelArgs {
    /// Model preset (see models/presets).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Sentence pairs per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Sentence lengths are drawn uniformly from MIN..=MAX tokens (source and target).
    #[arg(long, default_value_t = 16)]
    pub min_len: usize,
    #[arg(long, default_value_t = 32)]
    pub max_len: usize,
    /// Timed training steps per thread count (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads_list: Vec<usize>,
    /// Run one measurement in this process (used by the parent run).
    #[arg(long, hide = true)]
    pub single: bool,
}

impl BenchModelArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let cfg = ModelConfig::preset(&self.preset).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            1 <= self.min_len && self.min_len <= self.max_len,
            "need 1 <= --min-len <= --max-len"
        );
        if self.single {
            return self.measure(&cfg);
        }
        println!(
            "bench model: preset {} ({} parameters), batch {} pairs of {}-{} tokens, {} timed steps",
            self.preset,
            parameter_count(&cfg)?,
            self.batch,
            self.min_len,
            self.max_len,
            self.steps
        );
        let exe = std::env::current_exe()?;
        let mut rates = Vec::new();
        for &threads in &self.threads_list {
            let out = std::process::Command::new(&exe)
                .args([
                    "--threads",
                    &threads.to_string(),
                    "bench",
                    "model",
                    "--single",
                ])
                .args(["--preset", &self.preset, "--batch", &self.batch.to_string()])
                .args([
                    "--min-len",
                    &self.min_len.to_string(),
                    "--max-len",
                    &self.max_len.to_string(),
                ])
                .args(["--steps", &self.steps.to_string()])
                .output()
                .context("running the measurement process")?;
            let text = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(
                out.status.success(),
                "measurement failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            print!("{text}");
            if let Some(rate) = text.lines().find_map(|l| l.strip_prefix("tokens_per_s=")) {
                rates.push((threads, rate.trim().parse::<f64>()?));
            }
        }
        if let (Some(&(t0, r0)), true) = (rates.first(), rates.len() > 1) {
            for &(t, r) in &rates[1..] {
                println!("{t} threads vs {t0}: {:.2}x", r / r0);
            }
        }
        Ok(())
    }

    fn measure(&self, cfg: &ModelConfig) -> anyhow::Result<()> {
        let device = Device::Cpu;
        let (model, _params) = init_model(cfg, 1, 0.04, DType::F32, &device)?;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let mut lengths = |n: usize| -> Vec<usize> {
            (0..n)
                .map(|_| rng.random_range(self.min_len..=self.max_len))
                .collect()
        };
        let (src_len, tgt_len) = (lengths(self.batch), lengths(self.batch));
        let (s, t) = (
            *src_len.iter().max().unwrap_or(&1),
            *tgt_len.iter().max().unwrap_or(&1),
        );
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let mut ids = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| rng.random_range(4..cfg.vocab_size as u32))
                .collect()
        };
        let src = Tensor::from_vec(ids(self.batch * s), (self.batch, s), &device)?;
        let tgt_in = Tensor::from_vec(ids(self.batch * t), (self.batch, t), &device)?;
        let tgt_out = Tensor::from_vec(ids(self.batch * t), (self.batch, t), &device)?;
        let src_mask = mask_from_lengths(&src_len, s, DType::F32, &device)?;
        let tgt_mask = mask_from_lengths(&tgt_len, t, DType::F32, &device)?;

        let step = || -> anyhow::Result<usize> {
            let loss = gnmt_train::batch_loss(
                &model, &src, &src_mask, &tgt_in, &tgt_out, &tgt_mask, 0.1, None,
            )?;
            loss.mean()?.backward()?;
            Ok(loss.tokens)
        };
        step()?; // warm-up: allocator, thread pools
        let start = Instant::now();
        let mut tokens = 0;
        for _ in 0..self.steps {
            tokens += step()?;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = tokens as f64 / secs;
        let mean_src = src_len.iter().sum::<usize>() as f64 / self.batch as f64;
        let src_per_tgt =
            src_len.iter().sum::<usize>() as f64 / tgt_len.iter().sum::<usize>() as f64;
        let flops = 3.0 * cfg.forward_flops_per_target_token(mean_src, src_per_tgt);
        println!(
            "threads={} (candle {}): {:.0} target tokens/s, {:.1} ms/step, {:.2} MFLOP/token (fwd+bwd), {:.1} GFLOP/s",
            rayon::current_num_threads(),
            candle::utils::get_num_threads(),
            rate,
            1000.0 * secs / self.steps as f64,
            flops / 1e6,
            rate * flops / 1e9
        );
        println!("tokens_per_s={rate}");
        Ok(())
    }
}
