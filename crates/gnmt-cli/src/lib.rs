//! The command-line front end: argument types and the `run` of each command. The binaries in
//! `src/bin/` only parse and dispatch, so every command is also callable from tests.

pub mod bench;
pub mod checked;
pub mod cmd;
pub mod decoding;
pub mod device;
pub mod models;
pub mod plot;
pub mod rate;
pub mod run_log;
pub mod shard;
pub mod study;

use clap::{Parser, Subcommand};

/// gnmt: GNMT neural machine translation (Wu et al. 2016) in Rust.
#[derive(Debug, Parser)]
#[command(name = "gnmt", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for parallel work (default: all cores).
    #[arg(long, global = true, value_parser = checked::threads())]
    pub threads: Option<usize>,
    /// Precision of the matrix products: f32; bf16 operands with f32 sums (twice the
    /// multiply-adds per instruction on CPUs with AVX512-BF16; slow elsewhere); for decoding
    /// only, int8 operands quantized per row with exact integer sums (four times, on CPUs with
    /// AVX512-VNNI; `--quantize int8` says the same); on a GPU with the fused kernels, tf32
    /// (f32 products on the tensor cores); or auto: the fastest of these that was measured to
    /// train (decode) as well as f32 on this kind of CPU, named in the log.
    /// [default: auto for `train` (unless its config file sets `matmul`) and `bench train`;
    /// for decoding, int8 for a model folder stored as int8 on CPUs with AVX512-VNNI; f32
    /// elsewhere]
    #[arg(long, alias = "quantize", global = true, value_enum)]
    pub matmul: Option<Matmul>,
    /// The operations models run on: fused (fast; on a GPU the CUDA kernels of the LSTM cell,
    /// attention scores, decoding's attention step, loss, top-k, dropout, the embedding
    /// gradient and Adam, the references elsewhere), or reference (their
    /// composite candle references, f32 only: the correctness baseline, several times slower
    /// on the CPU).
    /// [default: fused on the CPU, reference on a GPU; or the training config's `kernels`]
    #[arg(long, global = true, value_enum)]
    pub kernels: Option<KernelsArg>,
    /// Where models compute: cpu, cuda, cuda:N (a GPU; needs a build with the `cuda`
    /// feature) or auto (the first GPU if there is one, else the CPU).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: device::DeviceArg,
    #[command(subcommand)]
    pub command: Command,
}

/// The global flags that choose how models compute, as given (`None`: not given).
#[derive(Debug, Clone, Copy, Default)]
pub struct ComputeFlags {
    pub matmul: Option<Matmul>,
    pub kernels: Option<KernelsArg>,
    pub device: device::DeviceArg,
    /// No line on stderr saying what `--matmul auto` picked (a command's `-q`).
    pub quiet: bool,
}

impl ComputeFlags {
    /// The device `--device` names, opened.
    pub fn device(self) -> anyhow::Result<candle::Device> {
        self.device.open()
    }

    /// The kernels a decoding command's models run on `device`: `--kernels` (default: fused
    /// on the CPU, reference elsewhere) with products in `--matmul` (default f32; `auto` as
    /// [`Matmul::for_decoding`] decides). Warns when bf16 or int8 will be slow on this CPU.
    pub fn kernels_on(self, device: &candle::Device) -> anyhow::Result<gnmt_model::Kernels> {
        let quiet = self.quiet;
        self.kernels_with(device, |m, fused_on_cpu| {
            m.for_decoding(fused_on_cpu, quiet)
        })
    }

    /// How a decoding command's models compute on `device`: on `--kernels`, in the products
    /// `--matmul` gives (`auto` as [`Matmul::for_decoding`] decides, said once) or, where it
    /// gives none, in those each model folder was stored for
    /// ([`models::DecodingKernels::for_storage`]).
    pub fn decoding_on(self, device: &candle::Device) -> anyhow::Result<models::DecodingKernels> {
        let choice = kernel_choice(self.kernels.map(Into::into), device)?;
        let fused_on_cpu = choice == gnmt_model::KernelChoice::Fused && device.is_cpu();
        let given = self
            .matmul
            .map(|m| m.for_decoding(fused_on_cpu, self.quiet));
        if let Some(precision) = given {
            if device.is_cpu() {
                warn_if_slow(precision);
            }
            products_fit(device, precision)?;
            choice.with(precision).map_err(anyhow::Error::msg)?;
        }
        Ok(models::DecodingKernels::new(choice, given, fused_on_cpu))
    }

    /// [`ComputeFlags::kernels_on`] for training, where `--matmul` defaults to `auto` (as
    /// [`Matmul::for_training`] decides), as in `gnmt train`'s configuration: a benchmark
    /// without `--matmul` measures what training runs.
    pub fn training_kernels_on(
        self,
        device: &candle::Device,
    ) -> anyhow::Result<gnmt_model::Kernels> {
        let flags = Self {
            matmul: Some(self.matmul.unwrap_or(Matmul::Auto)),
            ..self
        };
        flags.kernels_with(device, |m, fused_on_cpu| {
            m.for_training(fused_on_cpu, false)
        })
    }

    fn kernels_with(
        self,
        device: &candle::Device,
        resolve: impl FnOnce(Matmul, bool) -> gnmt_model::Precision,
    ) -> anyhow::Result<gnmt_model::Kernels> {
        let choice = kernel_choice(self.kernels.map(Into::into), device)?;
        let fused_on_cpu = choice == gnmt_model::KernelChoice::Fused && device.is_cpu();
        let precision = self
            .matmul
            .map_or(gnmt_model::Precision::F32, |m| resolve(m, fused_on_cpu));
        if device.is_cpu() {
            warn_if_slow(precision);
        }
        products_fit(device, precision)?;
        choice.with(precision).map_err(anyhow::Error::msg)
    }
}

/// Refuses int8 products off the CPU (a GPU multiplies through cuBLAS in f32, or with the
/// fused kernels in bf16 or TF32, f32 weights and sums) and TF32 on the CPU (which has no
/// TF32 unit).
pub fn products_fit(
    device: &candle::Device,
    precision: gnmt_model::Precision,
) -> anyhow::Result<()> {
    if !device.is_cpu() && precision == gnmt_model::Precision::Int8 {
        anyhow::bail!(
            "--matmul int8: on {} the products are f32, bf16 or tf32 (cuBLAS); give one of \
             these",
            device::name(device)
        )
    }
    if device.is_cpu() && precision == gnmt_model::Precision::Tf32 {
        anyhow::bail!(
            "--matmul tf32: TF32 is a GPU's tensor-core format; on the CPU give f32, bf16 or \
             auto"
        )
    }
    Ok(())
}

/// The kernels to run on `device`, `given` by `--kernels` or the training config: fused on the
/// CPU; on a GPU the reference unless fused is asked for (the CUDA kernels of
/// `gnmt-cuda-kernels` where they exist, the composites elsewhere: not yet the default there,
/// as no GPU has run them).
pub fn kernel_choice(
    given: Option<gnmt_model::KernelChoice>,
    device: &candle::Device,
) -> anyhow::Result<gnmt_model::KernelChoice> {
    use gnmt_model::KernelChoice;
    match (given, device.is_cpu()) {
        (None, true) => Ok(KernelChoice::Fused),
        (None, false) => Ok(KernelChoice::Reference),
        (Some(k), _) => Ok(k),
    }
}

/// `--kernels`: see [`gnmt_model::Kernels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsArg {
    Fused,
    Reference,
}

impl From<KernelsArg> for gnmt_model::KernelChoice {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Fused => gnmt_model::KernelChoice::Fused,
            KernelsArg::Reference => gnmt_model::KernelChoice::Reference,
        }
    }
}

/// `--matmul`: see [`gnmt_model::Precision`]; `auto` picks one by the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Matmul {
    F32,
    Bf16,
    Tf32,
    Int8,
    Auto,
}

impl Matmul {
    /// The precision to train in: `auto` as [`gnmt_model::Precision::auto_for_training`]
    /// decides where the fused kernels run on the CPU (the reference kernels and GPUs compute
    /// in f32), said on stderr unless `quiet`.
    pub fn for_training(self, fused_on_cpu: bool, quiet: bool) -> gnmt_model::Precision {
        self.resolve(fused_on_cpu, || {
            announce(gnmt_model::Precision::auto_for_training(), quiet)
        })
    }

    /// The precision to decode in: `auto` as [`gnmt_model::Precision::auto_for_decoding`]
    /// decides, as for training, said on stderr unless `quiet`.
    pub fn for_decoding(self, fused_on_cpu: bool, quiet: bool) -> gnmt_model::Precision {
        self.resolve(fused_on_cpu, || {
            announce(gnmt_model::Precision::auto_for_decoding(), quiet)
        })
    }

    fn resolve(
        self,
        fused_on_cpu: bool,
        auto: impl FnOnce() -> gnmt_model::Precision,
    ) -> gnmt_model::Precision {
        match self.fixed() {
            Some(precision) => precision,
            None if fused_on_cpu => auto(),
            None => gnmt_model::Precision::F32,
        }
    }

    fn fixed(self) -> Option<gnmt_model::Precision> {
        match self {
            Matmul::F32 => Some(gnmt_model::Precision::F32),
            Matmul::Bf16 => Some(gnmt_model::Precision::Bf16),
            Matmul::Tf32 => Some(gnmt_model::Precision::Tf32),
            Matmul::Int8 => Some(gnmt_model::Precision::Int8),
            Matmul::Auto => None,
        }
    }
}

/// Says what `--matmul auto` chose and why.
fn announce(choice: gnmt_kernels::precision::AutoChoice, quiet: bool) -> gnmt_model::Precision {
    if !quiet {
        eprintln!(
            "matrix products in {} (--matmul auto: {})",
            choice.precision, choice.reason
        );
    }
    choice.precision
}

/// Warns when products in `precision` will be slow on this CPU.
pub fn warn_if_slow(precision: gnmt_model::Precision) {
    if precision == gnmt_model::Precision::Bf16 && !gnmt_kernels::gemm::accelerated() {
        eprintln!(
            "warning: this CPU lacks AVX512-BF16: bf16 products run a portable version, slower than f32"
        );
    }
    if precision == gnmt_model::Precision::Int8 && !gnmt_kernels::gemm::accelerated_int8() {
        eprintln!(
            "warning: this CPU lacks AVX512-VNNI: int8 products run a portable version, slower than f32"
        );
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a shared subword vocabulary on source and target text.
    Vocab(cmd::vocab::VocabArgs),
    /// Encode text (stdin) into token ids or pieces (stdout), one line per line.
    Encode(cmd::codec::EncodeArgs),
    /// Decode token ids (stdin) into text (stdout), one line per line.
    Decode(cmd::codec::DecodeArgs),
    /// Check, encode and binarize a parallel corpus; print what was kept and the batch plan.
    Prepare(cmd::prepare::PrepareArgs),
    /// Write a synthetic parallel corpus (copy or reverse task).
    Synth(cmd::synth::SynthArgs),
    /// Train (or resume training) a GNMT model on a parallel corpus.
    Train(Box<cmd::train::TrainArgs>),
    /// Translate a source file and score it against a reference (BLEU, chrF).
    Eval(cmd::eval::EvalArgs),
    /// BLEU of a hypothesis file against one or more reference files (sacreBLEU-compatible).
    Bleu(cmd::score::MetricArgs),
    /// chrF (or chrF++ with --word-order 2) against one or more reference files.
    Chrf(cmd::score::MetricArgs),
    /// Score a translation: sacreBLEU-compatible BLEU and chrF with signatures.
    Score(cmd::score::ScoreArgs),
    /// Write a model folder to ship: average checkpoints, store as f16, set decoding defaults.
    Export(cmd::export::ExportArgs),
    /// Learn a lexical table (lex.s2t) from a parallel corpus, for translate --shortlist.
    Shortlist(cmd::shortlist::ShortlistArgs),
    /// Draw a run folder's training curves (loss, BLEU, per-layer gradient norms) as PNG.
    Plot(cmd::plot::PlotArgs),
    /// Experiments on the architecture, with a written report.
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// Serve translations over HTTP (LibreTranslate's API and a native one).
    Serve(cmd::serve::ServeArgs),
    /// Every operation and the whole network on --device against the CPU reference.
    CheckDevice(cmd::check_device::CheckDeviceArgs),
    /// Benchmarks (not tests): data pipeline, training step, translation.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a shell completion script for gnmt or translate.
    Completions(cmd::docs::CompletionsArgs),
    /// Write man pages for gnmt, each of its commands, and translate.
    Man(cmd::docs::ManArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        let group = gnmt_dist::world();
        anyhow::ensure!(
            !group.is_distributed() || matches!(self.command, Command::Train(_)),
            "of gnmt's commands only `train` runs as a job of several processes ({} were \
             started); run the others once, without mpirun or srun",
            group.size()
        );
        init_threads(self.threads)?;
        let compute = ComputeFlags {
            matmul: self.matmul,
            kernels: self.kernels,
            device: self.device,
            quiet: false,
        };
        // A server waits for its whole life: on a pool worker it would hold that worker, and
        // decoding (on the pool, from the server's decoding threads) would run one thread
        // short (half the throughput on two cores). It runs on the main thread instead.
        let waits = matches!(
            self.command,
            Command::Serve(_) | Command::Bench(bench::BenchCommand::Serve(_))
        );
        let run = move || match self.command {
            Command::Vocab(a) => a.run(),
            Command::Encode(a) => a.run(),
            Command::Decode(a) => a.run(),
            Command::Prepare(a) => a.run(),
            Command::Synth(a) => a.run(),
            Command::Score(a) => a.run(),
            Command::Bleu(a) => a.run_bleu(),
            Command::Chrf(a) => a.run_chrf(),
            Command::Eval(a) => a.run(compute),
            Command::Train(a) => (*a).run(compute),
            Command::Export(a) => a.run(),
            Command::Shortlist(a) => a.run(),
            Command::Plot(a) => a.run(),
            Command::Study(a) => a.run(),
            Command::Bench(a) => a.run(compute),
            Command::CheckDevice(a) => a.run(compute),
            Command::Serve(a) => a.run(compute),
            Command::Completions(a) => a.run(),
            Command::Man(a) => a.run(),
        };
        if waits {
            run()
        } else {
            on_pool(run)
        }
    }
}

/// Runs `f` on one of the global pool's worker threads, so that the parallel work it starts is
/// split where it runs. From a thread outside the pool, every parallel operation is handed to
/// the pool while the caller sleeps until it ends: two context switches per operation, tens
/// of thousands per training step, and on two threads a third thread taking turns with the
/// workers.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Sizes rayon's global pool once, before any parallel work, and keeps candle's own
/// element-wise pool empty.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    // candle reads these when it first runs an op: its matmuls use RAYON_NUM_THREADS; its
    // element-wise ops run on a pool of its own, CANDLE_NUM_THREADS - 1 threads besides the
    // caller's (all cores by default). That pool stays empty unless the user asks otherwise:
    // its threads spin between ops and take the cores from rayon's workers, which run our
    // fused ops.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // The processes of a job on one machine share its cores.
    let local = gnmt_dist::world().local_size();
    let threads = threads.or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (local > 1).then(|| (cores / local).max(1))
    });
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1"); // also checked when parsed
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
}

/// Restores the default action for SIGPIPE, so `gnmt ... | head` ends quietly like any Unix
/// filter instead of panicking on a closed stdout (Rust ignores SIGPIPE by default).
pub fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at the start of main, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Keeps freed memory in the process instead of returning it to the kernel. Training allocates
/// and frees tensors of tens of megabytes every step; by default glibc serves each from a fresh
/// `mmap`, and the page faults of touching it cost a tenth of a training step. Trimming is off
/// altogether (-1): a `gnmt-v2-4x1024` step frees more than a gigabyte at once, and with a
/// 1 GB threshold glibc handed it back every step, only to fault it in again (a fifth of the
/// step).
///
/// Both settings hold only for the main arena: glibc gives every other thread an arena of its
/// own, made of 64 MB heaps that it unmaps as soon as one is empty (whatever the trim
/// threshold) and that cannot hold a block bigger than 64 MB at all (served by `mmap`, freed by
/// `munmap`). Commands run on a worker of the thread pool ([`on_pool`]), so without a single
/// arena every large tensor came from such a heap: a `gnmt-v2-4x1024` step page-faulted in
/// fresh memory and, on two threads, stopped both cores for the TLB shootdowns of each unmap
/// (bf16, 2 threads: 340 -> 404 target tokens/s with one arena). Allocation here is a few
/// large blocks per operation, so the one arena's lock is not contended. Call at the start of
/// main.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// The command line, or for `--help`, `--version` and mistakes, clap's message and exit: after
/// leaving MPI, so that under `mpirun` such an exit is not taken for a crash.
pub fn parse_or_exit<P: Parser>() -> P {
    P::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        gnmt_dist::finalize();
        std::process::exit(e.exit_code())
    })
}

/// What both binaries' `main` does around `run`: process settings, joining the job an MPI
/// launcher started (if any), and the exit. An error is printed once, on stderr; in a job it
/// names the rank and ends every rank (a rank that panics does too), so none is left waiting
/// in a collective.
pub fn main_with(run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    reset_sigpipe();
    keep_freed_memory();
    let group = match gnmt_dist::init() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if group.is_distributed() {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprint!("{}", group.label());
            report(info);
            group.abort(101);
        }));
    }
    match run() {
        Ok(()) => {
            gnmt_dist::finalize();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}{e:#}", group.label());
            if group.is_distributed() {
                group.abort(1);
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--matmul`, training's kernels take `auto`'s precision (bf16 where the CPU
    /// multiplies bf16 fast, f32 elsewhere), as `gnmt train` does; a given `--matmul` wins.
    #[test]
    fn training_without_matmul_takes_autos_choice() {
        let cpu = candle::Device::Cpu;
        let none = ComputeFlags {
            quiet: true,
            ..ComputeFlags::default()
        };
        let auto = gnmt_model::Precision::auto_for_training().precision;
        assert_eq!(none.training_kernels_on(&cpu).unwrap().precision(), auto);
        let f32_given = ComputeFlags {
            matmul: Some(Matmul::F32),
            ..none
        };
        let got = f32_given.training_kernels_on(&cpu).unwrap().precision();
        assert_eq!(got, gnmt_model::Precision::F32);
        // The reference kernels compute in f32 whatever auto would pick on the CPU.
        let reference = ComputeFlags {
            kernels: Some(KernelsArg::Reference),
            ..none
        };
        let got = reference.training_kernels_on(&cpu).unwrap().precision();
        assert_eq!(got, gnmt_model::Precision::F32);
    }
}
