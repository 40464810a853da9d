//! Jobs of several processes under a real `mpirun` (Open MPI; the `mpi` feature):
//! data-parallel training equals one process on the same global batch, a killed rank ends the
//! job and the rerun resumes, and a job's translation equals one process's. `.ci/mpi-check.sh`
//! installs Open MPI and runs these.

#[allow(dead_code)] // shared with tests.rs; not every helper is used here
mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{err, gnmt, losses, ok, repo_root, synth_reverse, TRAIN_TINY};

/// `mpirun --oversubscribe -np N PROGRAM ARGS` in `cwd` (as root too: CI runs as root; the
/// single-copy mechanism is off because containers forbid it).
fn mpirun(np: usize, program: &str, args: &[&str], cwd: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string(), program])
        .args(args)
        .current_dir(cwd)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("run mpirun (is Open MPI installed?)")
}

const GNMT: &str = env!("CARGO_BIN_EXE_gnmt");
const TRANSLATE: &str = env!("CARGO_BIN_EXE_translate");

/// No dropout (its masks depend on how rows are split), a consistency check after every
/// update (a job whose ranks' weights differ by one bit stops with an error), a loss logged
/// at every update.
const CONFIG: &str = r#"{
  "model": {"vocab_size": 300, "embedding_dim": 16, "hidden_size": 16, "encoder_layers": 3, "decoder_layers": 3, "attention_size": 16},
  "dropout": 0.0, "optim": {"lr": 0.005, "warmup_steps": 5},
  "data": {"max_tokens": 300},
  "log": {"log_every": 1, "valid_every": 1000, "save_every": 10, "consistency_every": 1}
}"#;

fn setup(d: &Path) {
    synth_reverse(d, "train", 400, 8, 8, 1);
    synth_reverse(d, "valid", 20, 8, 8, 2);
    std::fs::write(d.join("config.json"), CONFIG).unwrap();
}

fn train_args<'a>(run: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = TRAIN_TINY.to_vec();
    a.extend(["-o", run, "--max-steps", steps, "--quiet"]);
    a.extend(extra);
    a
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (step, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "{what}: update {}: {x} vs {y}",
            step + 1
        );
    }
}

/// 2 ranks x 1 thread train 30 updates like 1 process with the same global batch: the loss
/// of every update within 1e-5 (relative), with and without accumulation; the ranks' weights
/// are compared bit for bit after every update (`consistency_every: 1`), or the job fails.
#[test]
fn two_ranks_train_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    for extra in [&[][..], &["--accumulate", "2"][..]] {
        ok(gnmt(&train_args("one", "30", extra), d));
        let job = output(mpirun(2, GNMT, &train_args("two", "30", extra), d));
        let said = String::from_utf8_lossy(&job.stderr).into_owned();
        ok(job);
        assert!(!d.join("two/metrics.jsonl.rank1").exists());
        let (one, two) = (losses(&d.join("one")), losses(&d.join("two")));
        assert_eq!(one.len(), 30, "{said}");
        assert_close(&one, &two, &format!("accumulate {extra:?}"));
        let metrics = std::fs::read_to_string(d.join("two/metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"allreduce_ms\""));
        for run in ["one", "two"] {
            std::fs::remove_dir_all(d.join(run)).unwrap();
        }
    }
}

/// A job stopped and run again with as many ranks continues exactly, dropout included: every
/// rank's dropout stream is in the checkpoint, so 20 + 20 updates give the weights of 40.
#[test]
fn a_resumed_job_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d);
    std::fs::write(
        d.join("config.json"),
        CONFIG.replace("\"dropout\": 0.0", "\"dropout\": 0.2"),
    )
    .unwrap();
    ok(output(mpirun(
        2,
        GNMT,
        &train_args("straight", "40", &[]),
        d,
    )));
    ok(output(mpirun(
        2,
        GNMT,
        &train_args("resumed", "20", &[]),
        d,
    )));
    let state = std::fs::read_to_string(d.join("resumed/checkpoints/step-20/state.json")).unwrap();
    assert!(state.contains("rank_dropout_rngs"), "{state}");
    ok(output(mpirun(
        2,
        GNMT,
        &train_args("resumed", "40", &[]),
        d,
    )));
    assert_eq!(losses(&d.join("straight")), losses(&d.join("resumed")));
    let weights = |run: &str| std::fs::read(d.join(run).join("model.safetensors")).unwrap();
    assert!(
        weights("straight") == weights("resumed"),
        "resumed weights differ"
    );
}

/// The process ids of rank `rank` of jobs running `GNMT` in `cwd`, from /proc.
fn rank_pids(rank: usize, cwd: &Path) -> Vec<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let proc = Path::new("/proc").join(pid.to_string());
            let exe = std::fs::read_link(proc.join("exe")).ok();
            let here = std::fs::read_link(proc.join("cwd")).ok();
            let env = std::fs::read(proc.join("environ")).unwrap_or_default();
            exe.as_deref() == Some(Path::new(GNMT))
                && here.as_deref() == Some(cwd)
                && env.split(|&b| b == 0).any(|v| v == want.as_bytes())
        })
        .collect()
}

/// Killing one rank (SIGKILL, mid-run) ends the whole job within seconds, naming the rank; the
/// same command as a single process then resumes from the last checkpoint (the data position
/// is global, so the number of ranks may change).
#[test]
fn a_killed_rank_ends_the_job_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = &dir.path().canonicalize().unwrap();
    setup(d);
    let mut job = mpirun(2, GNMT, &train_args("run", "1000000", &[]), d);
    let mut job = job
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !d.join("run/checkpoints/step-20").is_dir() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let victims = rank_pids(1, d);
    assert_eq!(victims.len(), 1, "rank 1's process");
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &victims[0].to_string()])
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the job outlived its rank by 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut said = String::new();
    std::io::Read::read_to_string(&mut job.stderr.take().unwrap(), &mut said).unwrap();
    assert!(said.contains("rank 1"), "{said}");
    assert!(rank_pids(0, d).is_empty(), "rank 0 is still running");
    let newest = gnmt_train_latest(d);
    assert!(newest >= 20);
    let steps = (newest + 5).to_string();
    let mut args = train_args("run", &steps, &[]);
    args.retain(|a| *a != "--quiet");
    let resumed = gnmt(&args, d);
    let said = String::from_utf8_lossy(&resumed.stderr).into_owned();
    ok(resumed);
    assert!(
        said.contains(&format!("resuming from run/checkpoints/step-{newest}")),
        "{said}"
    );
    assert!(d
        .join(format!("run/checkpoints/step-{}", newest + 5))
        .is_dir());
}

fn gnmt_train_latest(d: &Path) -> u64 {
    std::fs::read_dir(d.join("run/checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .max()
        .unwrap()
}

/// `mpirun -np 2 translate -i FILE -o OUT` writes one output in input order, byte for byte
/// one process's; run again, it finds the output done. Commands that do not run as a job, and
/// a job's translate without files, are refused.
#[test]
fn a_job_translates_one_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = repo_root().join("models/multi30k-en-de");
    let m = model.to_str().unwrap();
    let lines = [
        "A man in a blue shirt is standing on a ladder.",
        "",
        "Two dogs run through the snow.",
        "A little girl climbs into a wooden playhouse.",
        "Several people are waiting at a bus stop in the rain.",
        "A woman plays the guitar on a street corner.",
        "   ",
        "The children are playing football in the park.",
    ];
    std::fs::write(d.join("in.en"), lines.join("\n") + "\n").unwrap();
    let single = Command::new(TRANSLATE)
        .args([
            "-m",
            m,
            "-i",
            "in.en",
            "-o",
            "one.de",
            "-q",
            "--threads",
            "1",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    ok(single);
    let args = ["-m", m, "-i", "in.en", "-o", "job.de", "--threads", "1"];
    ok(output(mpirun(2, TRANSLATE, &args, d)));
    assert_eq!(
        std::fs::read_to_string(d.join("job.de")).unwrap(),
        std::fs::read_to_string(d.join("one.de")).unwrap()
    );
    assert!(
        !d.join("job.de.part-0-of-2").exists(),
        "parts are removed once joined"
    );
    let again = output(mpirun(2, TRANSLATE, &args, d));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already translated"));
    let e = err(output(mpirun(2, TRANSLATE, &["-m", m, "-i", "in.en"], d)));
    assert!(e.contains("needs -i FILE and -o FILE"), "{e}");
    let e = err(output(mpirun(
        2,
        GNMT,
        &["bleu", "-i", "job.de", "one.de"],
        d,
    )));
    assert!(e.contains("only `train` runs as a job"), "{e}");
    // Help is printed by every rank and ends the job normally.
    let help = output(mpirun(2, GNMT, &["train", "--help"], d));
    assert_eq!(
        String::from_utf8_lossy(&help.stdout)
            .matches("Train (or resume training)")
            .count(),
        2
    );
    ok(help);
}
