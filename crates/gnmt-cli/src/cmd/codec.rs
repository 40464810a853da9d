use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use gnmt_tokenizer::Vocab;

#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The tokenizer.json to use.
    #[arg(long)]
    pub vocab: PathBuf,
    /// Print pieces instead of ids.
    #[arg(long)]
    pub pieces: bool,
}

impl EncodeArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let vocab = Vocab::load(&self.vocab)?;
        for_each_line(|n, line, out| {
            let ids = vocab
                .encode(line)
                .with_context(|| format!("stdin line {n}"))?;
            if self.pieces {
                writeln!(out, "{}", vocab.pieces(&ids).join(" "))?;
            } else {
                writeln!(
                    out,
                    "{}",
                    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
                )?;
            }
            Ok(())
        })
    }
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The tokenizer.json to use.
    #[arg(long)]
    pub vocab: PathBuf,
}

impl DecodeArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let vocab = Vocab::load(&self.vocab)?;
        let size = vocab.size();
        for_each_line(|n, line, out| {
            let ids = line
                .split_whitespace()
                .map(|t| match t.parse::<u32>() {
                    Ok(id) if (id as usize) < size => Ok(id),
                    _ => anyhow::bail!("stdin line {n}: {t:?} is not a token id below {size}"),
                })
                .collect::<anyhow::Result<Vec<u32>>>()?;
            writeln!(out, "{}", vocab.decode(&ids)?)?;
            Ok(())
        })
    }
}

/// Runs `f(line_number, line, stdout)` over stdin, flushing after every line so the command
/// works interactively and in pipes. Invalid UTF-8 stops it with the line and byte offset:
/// ids of replacement characters would silently stand for text that was not there.
fn for_each_line(
    mut f: impl FnMut(usize, &str, &mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut offset = 0;
    for (i, line) in stdin.split(b'\n').enumerate() {
        let line = line.context("reading stdin")?;
        let text = std::str::from_utf8(&line).map_err(|e| {
            gnmt_tokenizer::io::utf8_error(Path::new("stdin"), i + 1, offset, &line, e)
        })?;
        f(i + 1, text.trim_end_matches('\r'), &mut out)?;
        out.flush()?;
        offset += line.len() + 1;
    }
    Ok(())
}
