//! `gnmt`: vocabulary, data preparation, training and benchmarks.
fn main() -> std::process::ExitCode {
    gnmt_cli::main_with(|| gnmt_cli::parse_or_exit::<gnmt_cli::Cli>().run())
}
