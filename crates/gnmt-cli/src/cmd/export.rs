//! `gnmt export`: a model folder to ship, from one or several trained ones. Several are
//! averaged parameter by parameter (checkpoint averaging, as fairseq's
//! `average_checkpoints.py` or Marian's `--exponential-smoothing` offer); parameters can be
//! stored as f16 to halve the size (loading converts them back to f32); the decoding defaults
//! in generation.json can be set.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle::{DType, Device, Tensor};
use clap::{Args, ValueEnum};
use gnmt_model::checkpoint;
use gnmt_tokenizer::FolderLock;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model folders (e.g. RUN/checkpoints/step-N, RUN/best); several are averaged. They must
    /// share the architecture and the vocabulary.
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// The model folder to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Storage precision of the parameters: f32, f16 or bf16 (half the size), or int8
    /// (matrices as 8-bit rows with a scale each, vectors f32: half of f16; decode it with
    /// `--matmul int8`, which multiplies exactly the stored integers). `--quantize int8` is
    /// the same option.
    #[arg(long, alias = "quantize", value_enum, default_value_t = Storage::F32)]
    pub storage: Storage,
    // The decoding settings written to generation.json (default: the first model's).
    #[command(flatten)]
    pub decoding: crate::decoding::DecodingFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Storage {
    F32,
    F16,
    Bf16,
    Int8,
}

impl ExportArgs {
    pub fn run(self) -> anyhow::Result<()> {
        // Taken before reading: exporting into a run folder that a trainer is writing, or
        // into a folder another export is writing, would mix two models' files.
        let _lock = FolderLock::acquire(&self.output, "model folder")?;
        let device = Device::Cpu;
        let load = |p: &PathBuf| {
            checkpoint::load(p, DType::F64, &device)
                .with_context(|| format!("loading {}", p.display()))
        };
        let first = load(&self.models[0])?;
        let mut sums: HashMap<String, Tensor> = first.tensors.clone();
        let mut steps = vec![first.step];
        for path in &self.models[1..] {
            let other = load(path)?;
            anyhow::ensure!(
                other.config == first.config,
                "{} has another architecture than {}",
                path.display(),
                self.models[0].display()
            );
            anyhow::ensure!(
                other.tokenizer_json == first.tokenizer_json,
                "{} has another vocabulary than {}",
                path.display(),
                self.models[0].display()
            );
            for (name, t) in other.tensors {
                let sum = sums.get_mut(&name).context("parameter sets differ")?;
                *sum = (&*sum + t)?;
            }
            steps.push(other.step);
        }
        // Averaged in f64, so the order of the models does not matter to f32 precision.
        let n = self.models.len() as f64;
        let averaged = sums
            .into_iter()
            .map(|(name, t)| Ok((name, (t / n)?.to_dtype(DType::F32)?)))
            .collect::<candle::Result<HashMap<_, _>>>()?;
        let mut generation = first.generation.clone();
        self.decoding.apply(
            &mut generation.beam_size,
            &mut generation.alpha,
            &mut generation.beta,
        );
        generation
            .validate()
            .map_err(|e| anyhow::anyhow!("generation settings: {e}"))?;
        let storage = match self.storage {
            Storage::F32 => checkpoint::Storage::Float(DType::F32),
            Storage::F16 => checkpoint::Storage::Float(DType::F16),
            Storage::Bf16 => checkpoint::Storage::Float(DType::BF16),
            Storage::Int8 => checkpoint::Storage::Int8,
        };
        checkpoint::save(
            &self.output,
            &first.config,
            &averaged,
            &first.tokenizer_json,
            &generation,
            *steps.iter().max().unwrap_or(&0),
            storage,
        )?;
        println!(
            "{}: {} model(s) averaged (updates {:?}), stored as {:?}, beam {} alpha {} beta {}",
            self.output.display(),
            self.models.len(),
            steps,
            storage,
            generation.beam_size,
            generation.alpha,
            generation.beta
        );
        Ok(())
    }
}
