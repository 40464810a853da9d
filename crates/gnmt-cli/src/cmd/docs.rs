//! `gnmt completions SHELL` and `gnmt man`: shell completions and man pages for both programs,
//! generated from the same clap definitions that parse their command lines.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

/// The two installed programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Program {
    Gnmt,
    Translate,
}

impl Program {
    fn command(self) -> clap::Command {
        match self {
            Program::Gnmt => crate::Cli::command(),
            Program::Translate => super::translate::TranslateArgs::command(),
        }
    }
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
    /// The program to complete.
    #[arg(long, value_enum, default_value_t = Program::Gnmt)]
    pub program: Program,
}

impl CompletionsArgs {
    /// Writes the completion script to stdout, e.g. `gnmt completions bash >
    /// ~/.local/share/bash-completion/completions/gnmt`.
    pub fn run(self) -> anyhow::Result<()> {
        let mut cmd = self.program.command();
        let name = cmd.get_name().to_string();
        clap_complete::generate(self.shell, &mut cmd, name, &mut std::io::stdout());
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Folder for the pages: gnmt.1, one gnmt-COMMAND.1 per command, and translate.1
    /// (e.g. ~/.local/share/man/man1).
    #[arg(short, long)]
    pub output: PathBuf,
}

impl ManArgs {
    pub fn run(self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.output)
            .with_context(|| format!("creating {}", self.output.display()))?;
        let mut written = 0;
        for program in [Program::Gnmt, Program::Translate] {
            let cmd = program.command();
            let name = cmd.get_name().to_string();
            written += write_pages(&self.output, cmd, &name)?;
        }
        println!("{}: {written} man pages", self.output.display());
        Ok(())
    }
}

/// The page of `cmd` as `name.1`, and one for each subcommand below it as `name-sub.1`.
fn write_pages(dir: &Path, cmd: clap::Command, name: &str) -> anyhow::Result<usize> {
    let cmd = cmd.name(name.to_string());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    gnmt_tokenizer::io::write_atomic(&dir.join(format!("{name}.1")), &page)?;
    let mut written = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        written += write_pages(dir, sub.clone(), &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(written)
}
