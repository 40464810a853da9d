//! `translate`: text in, translations out, one line per line.
use clap::Parser;

fn main() -> std::process::ExitCode {
    gnmt_cli::reset_sigpipe();
    gnmt_cli::keep_freed_memory();
    gnmt_cli::exit_with(gnmt_cli::cmd::translate::TranslateArgs::parse().run())
}
