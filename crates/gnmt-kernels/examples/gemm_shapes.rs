//! GFLOP/s of the packed GEMM on the products a training step of `gnmt-v2-4x1024` makes
//! (batch 64, 32 steps: 2048 rows), or with `SMALL` set in the environment those of `small`
//! (1,536 real target tokens), or with `DECODE` set those of one decoding step of `small`
//! (a batch of 32 sentences, greedy or beam 5); packing included, best of five; and the time
//! packing `B` takes.
//!
//! `[SMALL=1|DECODE=1] cargo run --release -p gnmt-kernels --example gemm_shapes [threads] [f32|bf16|int8]`
use std::time::Instant;

use gnmt_kernels::gemm::{gemm, Format, PackedB, View};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(1, |t| t.parse().expect("threads"));
    let format = match args.next().as_deref() {
        Some("bf16") => Format::Bf16,
        Some("int8") => Format::Int8,
        _ => Format::F32,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");
    // (what, m, n, k, A transposed, B transposed)
    let small = std::env::var("SMALL").is_ok();
    let decode = std::env::var("DECODE").is_ok();
    let small_shapes = [
        ("input projection x W^T", 1536, 1024, 512, false, true),
        ("its dX = dG W", 1536, 512, 1024, false, false),
        ("its dW = dG^T X", 1024, 512, 1536, true, false),
        ("recurrent step, 64 rows", 64, 1024, 256, false, false),
        ("recurrent step, 32 rows", 32, 1024, 256, false, false),
        ("its dh = dG W_hh, 32 rows", 32, 256, 1024, false, false),
        ("logits x W^T", 1536, 8000, 256, false, true),
        ("their dX = dZ W", 1536, 256, 8000, false, false),
        ("their dW = dZ^T X", 8000, 256, 1536, true, false),
    ];
    let decode_shapes = [
        ("square 2048^3", 2048, 2048, 2048, false, false),
        ("LSTM step, greedy", 32, 1024, 512, false, true),
        ("LSTM step, beam 5", 160, 1024, 512, false, true),
        ("attention query, beam 5", 160, 256, 256, false, true),
        ("logits, greedy", 32, 8000, 256, false, true),
        ("logits, beam 5", 160, 8000, 256, false, true),
        ("square 2048^3, again", 2048, 2048, 2048, false, false),
    ];
    let shapes = [
        ("square 2048^3", 2048, 2048, 2048, false, false),
        ("input projection x W^T", 2048, 4096, 1024, false, true),
        ("its dX = dG W", 2048, 1024, 4096, false, false),
        ("its dW = dG^T X", 4096, 1024, 2048, true, false),
        ("recurrent step h W_hh^T", 64, 4096, 1024, false, false),
        ("its dh = dG W_hh", 64, 1024, 4096, false, false),
        ("logits x W^T", 2048, 32000, 1024, false, true),
        ("their dX = dZ W", 2048, 1024, 32000, false, false),
        ("their dW = dZ^T X", 32000, 1024, 2048, true, false),
    ];
    let chosen: &[(&str, usize, usize, usize, bool, bool)] = if decode {
        &decode_shapes
    } else if small {
        &small_shapes
    } else {
        &shapes
    };
    for &(what, m, n, k, at, bt) in chosen {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 64.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i % 89) as f32 - 44.0) / 64.0)
            .collect();
        let mut c = vec![0f32; m * n];
        let mut best = f64::MAX;
        let mut best_prepacked = f64::MAX;
        let mut best_packing = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            let packed = PackedB::new(View::new(&b, k, n, bt), format);
            let mid = Instant::now();
            gemm(&mut c, false, View::new(&a, m, k, at), &packed, threads);
            let end = Instant::now();
            best = best.min((end - start).as_secs_f64());
            best_prepacked = best_prepacked.min((end - mid).as_secs_f64());
            best_packing = best_packing.min((mid - start).as_secs_f64());
        }
        let flop = 2.0 * (m * n * k) as f64;
        println!(
            "{what:28} {m:>6} x {n:>6} x {k:>6}: {:6.1} GFLOP/s ({:6.1} with B packed before; packing B {:.3} ms)",
            flop / best / 1e9,
            flop / best_prepacked / 1e9,
            best_packing * 1e3
        );
    }
}
