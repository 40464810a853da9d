//! `translate`: text in, translations out, one line per line.
fn main() -> std::process::ExitCode {
    gnmt_cli::main_with(|| {
        gnmt_cli::parse_or_exit::<gnmt_cli::cmd::translate::TranslateArgs>().run()
    })
}
