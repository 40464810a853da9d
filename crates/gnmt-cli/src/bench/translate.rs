//! `gnmt bench translate`: decoding speed and peak memory on a test set, for greedy and
//! beam search at each thread count. Every measurement runs in its own process, so thread
//! pools are sized from the start and peak memory is that run's own.

use std::path::PathBuf;
use std::time::Instant;

use crate::checked;
use anyhow::Context;
use candle::Device;
use clap::Args;
use gnmt_model::{Kernels, Precision};
use gnmt_tokenizer::Lines;

use super::peak::{packed_peak_gflops, peak_gflops};
use super::rounds::{measurement_output, rounds_note, Rounds};
use crate::models::DecodingKernels;

#[derive(Debug, Args)]
pub struct BenchTranslateArgs {
    /// Model folder.
    #[arg(short, long)]
    pub model: PathBuf,
    /// Source sentences (default: Multi30k test_2016_flickr.en).
    #[arg(long)]
    pub src: Option<PathBuf>,
    /// Beam sizes to measure (1 is greedy).
    #[arg(long, value_delimiter = ',', default_value = "1,5", value_parser = checked::beam_size())]
    pub beams: Vec<usize>,
    /// Thread counts to measure, each in its own process.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = checked::threads())]
    pub threads_list: Vec<usize>,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 32, value_parser = checked::batch_size())]
    pub batch_size: usize,
    /// Times to run every configuration, alternating; the median rates and the median of each
    /// round's thread-count ratios are reported (a one-second greedy run's ratio moves by 0.2
    /// from one run to the next on a shared machine).
    #[arg(long, default_value_t = 1, value_parser = checked::rounds())]
    pub rounds: usize,
    /// With --shortlist, every configuration is measured twice, over the whole vocabulary and
    /// over shortlists, and the speed-ups are reported.
    #[command(flatten)]
    pub shortlist: crate::models::ShortlistFlags,
    /// Measure one configuration in this process (used by the parent run).
    #[arg(long, hide = true, value_parser = checked::beam_size())]
    pub single: Option<usize>,
}

/// One measured configuration: beam size, thread count, over shortlists or not.
#[derive(Debug, Clone, Copy)]
struct Config {
    beam: usize,
    threads: usize,
    shortlisted: bool,
}

impl BenchTranslateArgs {
    pub fn run(self, compute: crate::ComputeFlags) -> anyhow::Result<()> {
        let device = compute.device()?;
        // Without --matmul, each measurement decodes in the products the folder was stored
        // for, as `translate` does.
        let decoding = compute.decoding_on(&device)?;
        let src = super::source_or_multi30k_test(&self.src)?;
        if let Some(beam) = self.single {
            return self.measure(&src, beam, decoding, &device);
        }
        println!(
            "bench translate: {} on {}",
            self.model.display(),
            src.display()
        );
        let exe = std::env::current_exe()?;
        let variants: &[bool] = match self.shortlist.shortlist {
            Some(_) => &[false, true],
            None => &[false],
        };
        let configs: Vec<Config> = self
            .beams
            .iter()
            .flat_map(|&beam| {
                self.threads_list.iter().flat_map(move |&threads| {
                    variants.iter().map(move |&shortlisted| Config {
                        beam,
                        threads,
                        shortlisted,
                    })
                })
            })
            .collect();
        let rounds = Rounds::run(self.rounds, configs.len(), |round, i| {
            if self.rounds > 1 && i == 0 {
                println!("round {}:", round + 1);
            }
            let Config {
                beam,
                threads,
                shortlisted,
            } = configs[i];
            let shortlist_args = match shortlisted {
                true => self.shortlist.to_args(),
                false => Vec::new(),
            };
            let text = measurement_output(
                std::process::Command::new(&exe)
                    .args(["--threads", &threads.to_string()])
                    .args(decoding.to_args())
                    .args(["--device", &compute.device.to_string()])
                    .args(["bench", "translate"])
                    .arg("-m")
                    .arg(&self.model)
                    .arg("--src")
                    .arg(&src)
                    .args([
                        "--batch-size",
                        &self.batch_size.to_string(),
                        "--single",
                        &beam.to_string(),
                    ])
                    .args(shortlist_args),
            )?;
            print!("{text}");
            text.lines()
                .find_map(|l| l.strip_prefix("sentences_per_s="))
                .and_then(|r| r.trim().parse().ok())
                .context("the measurement printed no rate")
        })?;
        // Configuration i is (beam, thread count, variant), the variant varying fastest.
        let per_beam = self.threads_list.len() * variants.len();
        for (i, c) in configs.iter().enumerate() {
            let what = match c.shortlisted {
                true => "over shortlists",
                false => "over the vocabulary",
            };
            if self.rounds > 1 {
                println!(
                    "beam {}, threads {} {what}: median of {} rounds {:.1} sentences/s",
                    c.beam,
                    c.threads,
                    self.rounds,
                    rounds.median_rate(i)
                );
            }
            let first = i - i % per_beam + i % variants.len();
            if i != first {
                println!(
                    "beam {} {what}: {} threads vs {}: {:.2}x{}",
                    c.beam,
                    c.threads,
                    configs[first].threads,
                    rounds.median_ratio(i, first),
                    rounds_note(&rounds)
                );
            }
            if c.shortlisted {
                println!(
                    "beam {}, threads {}: shortlists vs the whole vocabulary: {:.2}x{}",
                    c.beam,
                    c.threads,
                    rounds.median_ratio(i, i - 1),
                    rounds_note(&rounds)
                );
            }
        }
        Ok(())
    }

    fn measure(
        &self,
        src: &std::path::Path,
        beam: usize,
        decoding: DecodingKernels,
        device: &Device,
    ) -> anyhow::Result<()> {
        let load = Instant::now();
        let mut t = decoding.load(&self.model, device)?;
        let kernels = t.kernels()[0];
        self.shortlist.apply(&mut t)?;
        let load_s = load.elapsed().as_secs_f64();
        let mut o = t.default_options();
        o.beam_size = beam;
        let lines = Lines::read(src)?;
        let refs: Vec<&str> = lines.iter().collect();
        let start = Instant::now();
        let results = t.translate(&refs, &o, self.batch_size, 250)?;
        let secs = start.elapsed().as_secs_f64();
        let tokens: usize = results
            .iter()
            .filter_map(|r| r.nbest.first())
            .map(|b| b.hypothesis.tokens.len())
            .sum();
        // Peak memory first: the matmuls measuring the machine's peak allocate their own.
        let memory = peak_memory().unwrap_or_else(|| "unknown".into());
        // Forward FLOPs of the work actually done (padding included), against the peak
        // measured by a matmul in this process after the timed run.
        let gflops = t.work().flops(t.config()) / secs / 1e9;
        let peak = peak_gflops(device)?;
        let mut rate = format!(
            "{gflops:.1} GFLOP/s = {:.0}% of the {peak:.0} GFLOP/s a 2048^3 matmul reaches",
            100.0 * gflops / peak
        );
        if let Kernels::Fused(precision @ (Precision::Bf16 | Precision::Int8)) = kernels {
            let own_peak = packed_peak_gflops(precision)?;
            rate += &format!(
                " ({:.0}% of the {precision} product's {own_peak:.0})",
                100.0 * gflops / own_peak
            );
        }
        println!(
            "beam {beam}, threads {}, {}{}: {} sentences in {secs:.2}s: {:.1} sentences/s, {:.0} target tokens/s, {} hypothesis steps, {rate}; model load {load_s:.2}s; peak memory {memory}",
            rayon::current_num_threads(),
            kernels,
            match self.shortlist.shortlist {
                Some(_) => ", shortlists",
                None => "",
            },
            lines.len(),
            lines.len() as f64 / secs,
            tokens as f64 / secs,
            t.work().row_steps(),
        );
        println!("sentences_per_s={}", lines.len() as f64 / secs);
        Ok(())
    }
}

/// Peak resident memory of this process (Linux: VmHWM).
fn peak_memory() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(format!("{:.0} MB", kb / 1024.0))
}
