//! Compiles the kernels twice: as C for the host emulator the tests run (always), and with the
//! `cuda` feature to PTX with nvcc, which `src/lib.rs` embeds.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The kernel files, `kernels/NAME.cu`.
const KERNELS: [&str; 7] = [
    "adam",
    "attention",
    "dropout",
    "embedding",
    "lstm",
    "softmax",
    "top_tokens",
];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=emulate");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");

    // No contraction of a multiply and an add into an FMA: the CPU kernels never do, nor
    // does nvcc with -fmad=false below.
    cc::Build::new()
        .std("c11")
        .flag("-ffp-contract=off")
        .warnings(true)
        .file("emulate/runtime.c")
        .file("emulate/launchers.c")
        .compile("gnmt_cuda_emulated");
    println!("cargo:rustc-link-lib=pthread");

    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_ptx();
    }
}

fn compile_ptx() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = compute_cap();
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    for name in KERNELS {
        let ptx = out.join(format!("{name}.ptx"));
        // IEEE division and square root, no FMA contraction, no fast math: the element-wise
        // kernels then give the CPU kernels' bits (see kernels/common.cuh).
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-fmad=false",
                "-prec-div=true",
                "-prec-sqrt=true",
            ])
            .arg(format!("-arch=sm_{arch}"))
            .arg("-o")
            .arg(&ptx)
            .arg(format!("kernels/{name}.cu"))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} (set NVCC or put nvcc on PATH): {e}"));
        assert!(status.success(), "{nvcc} failed on kernels/{name}.cu");
    }
}

/// The GPU's compute capability as nvcc spells it (`90` for an H100): CUDA_COMPUTE_CAP, or
/// what nvidia-smi reports.
fn compute_cap() -> String {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.replace('.', "");
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    match smi {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .replace('.', ""),
        _ => panic!("set CUDA_COMPUTE_CAP (90 for H100/H200): no nvidia-smi to ask"),
    }
}
