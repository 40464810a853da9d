//! `gnmt bench train`: training-step throughput (forward, backward, gradient norms and clipping,
//! Adam) of a preset on a synthetic batch, at each requested thread count, with the FLOP count
//! per target token, the achieved rate, and its fraction of the peak a large matmul reaches in
//! the same process. Each thread count runs in a child process, so the thread pools are sized
//! from the start. `--torch` runs the same model, shapes and thread counts in PyTorch
//! (bench/torch_baseline.py) and prints the ratio.

use std::time::Instant;

use crate::checked::{self, whole};
use anyhow::Context;
use candle::{DType, Device, Tensor};
use clap::Args;

use super::peak::{packed_peak_gflops, peak_gflops};
use super::rounds::{measurement_output, rounds_note, Rounds};
use gnmt_model::{
    init_model, mask_from_lengths, parameter_count, Kernels, ModelConfig, PairBatch, Precision,
};
use gnmt_train::schedule::Rule;
use gnmt_train::step;
use rand::{Rng, SeedableRng};

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model preset (see models/presets).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Sentence pairs per batch.
    #[arg(long, default_value_t = 64, value_parser = checked::batch_size())]
    pub batch: usize,
    /// Sentence lengths are drawn uniformly from MIN..=MAX tokens (source and target).
    #[arg(long, default_value_t = 16, value_parser = whole::<usize>(1, 1000))]
    pub min_len: usize,
    /// Longest sentence of the batch, in tokens (at least --min-len).
    #[arg(long, default_value_t = 32, value_parser = whole::<usize>(1, 1000))]
    pub max_len: usize,
    /// Timed training steps per thread count (after one warm-up step).
    #[arg(long, default_value_t = 5, value_parser = whole::<usize>(1, 100_000))]
    pub steps: usize,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = checked::threads())]
    pub threads_list: Vec<usize>,
    /// Times to run the whole thread-count list, alternating. A shared machine's speed drifts
    /// by 10-20% within minutes, so one ratio of two runs taken a minute apart can be off by
    /// as much; with several rounds each ratio is of runs taken back to back, and the median
    /// rates and ratios are reported.
    #[arg(long, default_value_t = 1, value_parser = checked::rounds())]
    pub rounds: usize,
    /// Also run the PyTorch baseline (bench/torch_baseline.sh; installs PyTorch on first use).
    #[arg(long)]
    pub torch: bool,
    /// The baseline's precisions, each run in turn: none (f32; on a GPU with PyTorch's
    /// default TF32 settings: cuDNN's LSTM in TF32, other products f32), tf32 (every product
    /// in TF32, on a GPU) or bf16 (autocast). [default: that of --matmul; none for f32]
    #[arg(long, value_delimiter = ',', value_parser = ["none", "tf32", "bf16"])]
    pub torch_amp: Vec<String>,
    /// Run one measurement in this process (used by the parent run).
    #[arg(long, hide = true)]
    pub single: bool,
}

/// The batch shape every measurement uses: lengths drawn from a fixed seed.
fn lengths(args: &BenchTrainArgs) -> (Vec<usize>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let mut draw = |n: usize| -> Vec<usize> {
        (0..n)
            .map(|_| rng.random_range(args.min_len..=args.max_len))
            .collect()
    };
    (draw(args.batch), draw(args.batch))
}

fn join(xs: &[usize]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The rate line a measurement prints last.
fn rate_of(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("tokens_per_s="))
        .and_then(|r| r.trim().parse().ok())
}

impl BenchTrainArgs {
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        let kernels = compute.training_kernels_on(&device)?;
        anyhow::ensure!(
            kernels.precision() != gnmt_model::Precision::Int8,
            "--matmul int8 is for decoding: training computes in f32, bf16 or tf32"
        );
        let cfg = ModelConfig::preset(&self.preset).map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            1 <= self.min_len && self.min_len <= self.max_len,
            "need 1 <= --min-len <= --max-len"
        );
        if self.single {
            return self.measure(&cfg, kernels, &device);
        }
        println!(
            "bench train: preset {} ({} parameters), batch {} pairs of {}-{} tokens, {} timed steps",
            self.preset,
            parameter_count(&cfg)?,
            self.batch,
            self.min_len,
            self.max_len,
            self.steps
        );
        let exe = std::env::current_exe()?;
        let rounds = Rounds::run(self.rounds, self.threads_list.len(), |round, i| {
            if self.rounds > 1 && i == 0 {
                println!("round {}:", round + 1);
            }
            let text =
                self.measure_in_child(&exe, self.threads_list[i], kernels, compute.device)?;
            print!("{text}");
            rate_of(&text).context("the measurement printed no rate")
        })?;
        let rates: Vec<(usize, f64)> = self
            .threads_list
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, rounds.median_rate(i)))
            .collect();
        if self.rounds > 1 {
            for &(t, rate) in &rates {
                println!(
                    "threads={t}: median of {} rounds {rate:.0} target tokens/s",
                    self.rounds
                );
            }
        }
        for (i, &t) in self.threads_list.iter().enumerate().skip(1) {
            let t0 = self.threads_list[0];
            println!(
                "{t} threads vs {t0}: {:.2}x{}",
                rounds.median_ratio(i, 0),
                rounds_note(&rounds)
            );
        }
        if self.torch {
            self.torch_baseline(&cfg, &rates, kernels, &device)?;
        }
        Ok(())
    }

    /// One `--single` measurement at `threads` threads in a child process; its output.
    fn measure_in_child(
        &self,
        exe: &std::path::Path,
        threads: usize,
        kernels: Kernels,
        device: crate::device::DeviceArg,
    ) -> anyhow::Result<String> {
        measurement_output(
            std::process::Command::new(exe)
                .args([
                    "--threads",
                    &threads.to_string(),
                    "--matmul",
                    kernels.precision().name(),
                    "--kernels",
                    kernels.name(),
                    "--device",
                    &device.to_string(),
                    "bench",
                    "train",
                    "--single",
                ])
                .args(["--preset", &self.preset, "--batch", &self.batch.to_string()])
                .args([
                    "--min-len",
                    &self.min_len.to_string(),
                    "--max-len",
                    &self.max_len.to_string(),
                ])
                .args(["--steps", &self.steps.to_string()]),
        )
    }

    /// The same model, batch and steps in PyTorch, on the same device: at each of our thread
    /// counts on the CPU, once on a GPU.
    fn torch_baseline(
        &self,
        cfg: &ModelConfig,
        ours: &[(usize, f64)],
        kernels: Kernels,
        device: &Device,
    ) -> anyhow::Result<()> {
        // A benchmark for developers: the script lives in the source tree this was built from.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = root.join("bench/torch_baseline.sh");
        let preset = tempfile::NamedTempFile::new()?;
        serde_json::to_writer(preset.as_file(), cfg)?;
        let (src_len, tgt_len) = lengths(self);
        let torch_device = match device.location() {
            candle::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cpu".to_string(),
        };
        let mut amps = self.torch_amp.clone();
        if amps.is_empty() {
            amps.push(match kernels.precision() {
                gnmt_model::Precision::Bf16 => "bf16".to_string(),
                gnmt_model::Precision::Tf32 => "tf32".to_string(),
                gnmt_model::Precision::F32 => "none".to_string(),
                gnmt_model::Precision::Int8 => unreachable!("refused above"),
            });
        }
        let runs = ours
            .iter()
            .flat_map(|&ours| amps.iter().map(move |amp| (ours, amp)));
        for ((threads, rate), amp) in runs {
            let out = std::process::Command::new("bash")
                .arg(&script)
                .arg("--config")
                .arg(preset.path())
                .args(["--src-len", &join(&src_len), "--tgt-len", &join(&tgt_len)])
                .args(["--threads", &threads.to_string()])
                .args(["--steps", &self.steps.to_string()])
                .args(["--device", &torch_device, "--amp", amp])
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            anyhow::ensure!(out.status.success(), "PyTorch baseline failed:\n{text}");
            println!("{}", text.lines().next().unwrap_or_default());
            let theirs = rate_of(&text).context("the baseline printed no rate")?;
            println!(
                "ours vs PyTorch (amp {amp}) at {threads} threads: {:.2}x",
                rate / theirs
            );
        }
        Ok(())
    }

    fn measure(&self, cfg: &ModelConfig, kernels: Kernels, device: &Device) -> anyhow::Result<()> {
        let device = device.clone();
        let (model, params) = init_model(cfg, 1, 0.04, DType::F32, &device)?;
        let model = model.with_kernels(kernels);
        let mut optimizer = gnmt_train::optim::Optimizer::new(&params)?;
        optimizer.use_gpu_kernels(!kernels.is_reference());
        let optim = gnmt_train::config::OptimConfig::default();
        let (src_len, tgt_len) = lengths(self);
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
        let batch = PairBatch {
            src,
            src_mask: mask_from_lengths(&src_len, s, DType::F32, &device)?,
            tgt_in,
            tgt_out,
            tgt_mask: mask_from_lengths(&tgt_len, t, DType::F32, &device)?,
        };

        let mut dropout = gnmt_model::Dropout::new(0.2, 1);
        // Seconds spent in the forward pass, the backward pass and the update (clipping
        // included), over the timed steps.
        let mut phases = [0f64; 3];
        // What one training update does (gnmt_train::step), minus data loading and logging.
        let mut step = |phases: &mut [f64; 3]| -> anyhow::Result<usize> {
            let t0 = Instant::now();
            let loss = step::forward(&model, &batch, 0.1, Some(&mut dropout))?;
            let t1 = Instant::now();
            let g = step::backward(loss, &optimizer)?;
            let t2 = Instant::now();
            step::update(&mut optimizer, &g, 1e-4, Rule::Adam, &optim)?;
            device.synchronize()?; // a GPU's update is queued, not done
            let t3 = Instant::now();
            for (p, (a, b)) in phases.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3)]) {
                *p += (b - a).as_secs_f64();
            }
            Ok(g.tokens)
        };
        step(&mut [0.0; 3])?; // warm-up: allocator, thread pools
        let start = Instant::now();
        let mut tokens = 0;
        for _ in 0..self.steps {
            tokens += step(&mut phases)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = tokens as f64 / secs;
        let mean_src = src_len.iter().sum::<usize>() as f64 / self.batch as f64;
        let src_per_tgt =
            src_len.iter().sum::<usize>() as f64 / tgt_len.iter().sum::<usize>() as f64;
        let flops = 3.0 * cfg.forward_flops_per_target_token(mean_src, src_per_tgt);
        let peak = peak_gflops(&device)?;
        println!(
            "threads={} ({}): {:.0} target tokens/s, {:.1} ms/step, {:.2} MFLOP/token (fwd+bwd), {:.1} GFLOP/s = {:.0}% of the {:.0} GFLOP/s a 2048^3 matmul reaches",
            rayon::current_num_threads(),
            kernels,
            rate,
            1000.0 * secs / self.steps as f64,
            flops / 1e6,
            rate * flops / 1e9,
            100.0 * rate * flops / 1e9 / peak,
            peak
        );
        let ms = |s: f64| 1000.0 * s / self.steps as f64;
        println!(
            "  per step: forward {:.1} ms, backward {:.1} ms, clipping and update {:.1} ms",
            ms(phases[0]),
            ms(phases[1]),
            ms(phases[2])
        );
        if kernels == Kernels::Fused(Precision::Bf16) {
            let bf16_peak = packed_peak_gflops(Precision::Bf16)?;
            println!(
                "bf16 products: {:.0}% of the {:.0} GFLOP/s a 2048^3 bf16 product reaches",
                100.0 * rate * flops / 1e9 / bf16_peak,
                bf16_peak
            );
        }
        println!("tokens_per_s={rate}");
        Ok(())
    }
}
