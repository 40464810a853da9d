//! Translating one of N parts of a large file (`translate --shard I/N`), as Slurm job arrays
//! and the ranks of an MPI job do: the parts are contiguous runs of lines, so the parts'
//! outputs concatenated in order are the whole file's translation (translations do not depend
//! on which lines share a batch). A finished part leaves a marker beside its output, so a rerun
//! of the same array or job skips it.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

/// Part `index` of `count` (`I/N` on the command line, I from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Parses `I/N` (clap's value parser for `--shard`).
pub fn parse(s: &str) -> Result<Shard, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not I/N (for example 0/4: the first of 4 parts)"))?;
    let number = |x: &str| {
        x.trim()
            .parse::<usize>()
            .map_err(|_| format!("{s:?}: {x:?} is not a whole number"))
    };
    let (index, count) = (number(i)?, number(n)?);
    if count == 0 || count > 1_000_000 {
        return Err(format!("{s:?}: N must be from 1 to 1000000"));
    }
    if index >= count {
        return Err(format!(
            "{s:?}: I counts from 0, so it must be below N ({count})"
        ));
    }
    Ok(Shard { index, count })
}

impl Shard {
    /// The part a Slurm job array's task translates, when this process is one:
    /// `SLURM_ARRAY_TASK_ID` counted from `SLURM_ARRAY_TASK_MIN`, of `SLURM_ARRAY_TASK_COUNT`.
    pub fn from_slurm_array(var: impl Fn(&str) -> Option<String>) -> Option<Shard> {
        let number = |name: &str| var(name)?.trim().parse::<usize>().ok();
        let id = number("SLURM_ARRAY_TASK_ID")?;
        let count = number("SLURM_ARRAY_TASK_COUNT")?;
        let min = number("SLURM_ARRAY_TASK_MIN").unwrap_or(0);
        let index = id.checked_sub(min)?;
        (index < count).then_some(Shard { index, count })
    }

    /// Lines `[start, end)` of this part of `lines`: part k starts at line `k * lines / N`.
    pub fn lines(&self, lines: u64) -> std::ops::Range<u64> {
        let start = |k: usize| (k as u128 * lines as u128 / self.count as u128) as u64;
        start(self.index)..start(self.index + 1)
    }
}

/// Where this part lies in the input file: its lines and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub lines: std::ops::Range<u64>,
    pub bytes: std::ops::Range<u64>,
}

/// The lines of `input`, counted in one pass; a last line without a newline counts.
pub fn count_lines(input: &Path) -> anyhow::Result<u64> {
    let (mut total, mut last) = (0u64, b'\n');
    scan(input, |chunk| {
        total += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        last = *chunk.last().unwrap_or(&last);
        true
    })?;
    Ok(total + (last != b'\n') as u64)
}

/// All of `input`, which has `lines` lines, as one part.
pub fn whole(input: &Path, lines: u64) -> anyhow::Result<Part> {
    let size = std::fs::metadata(input)
        .with_context(|| format!("reading {}", input.display()))?
        .len();
    Ok(Part {
        lines: 0..lines,
        bytes: 0..size,
    })
}

/// Finds `shard`'s part of `input`, a file of `total_lines` lines: where its first and last
/// lines lie, reading the file up to the part's end only.
pub fn locate(input: &Path, shard: Shard, total_lines: u64) -> anyhow::Result<Part> {
    let lines = shard.lines(total_lines);
    // The byte offsets at which lines `lines.start` and `lines.end` begin.
    let (mut line, mut offset) = (0u64, 0u64);
    let (mut start, mut end) = (None, None);
    let mut note = |line: u64, offset: u64| {
        if line == lines.start && start.is_none() {
            start = Some(offset);
        }
        if line == lines.end && end.is_none() {
            end = Some(offset);
        }
    };
    note(0, 0);
    scan(input, |chunk| {
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                line += 1;
                note(line, offset + i as u64 + 1);
            }
        }
        offset += chunk.len() as u64;
        line < lines.end
    })?;
    let bytes = start.unwrap_or(offset)..end.unwrap_or(offset);
    Ok(Part { lines, bytes })
}

/// Feeds `input`'s bytes to `f`, a chunk at a time, while `f` says to go on.
fn scan(input: &Path, mut f: impl FnMut(&[u8]) -> bool) -> anyhow::Result<()> {
    let mut r =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .with_context(|| format!("reading {}", input.display()))?;
        if n == 0 || !f(&buf[..n]) {
            return Ok(());
        }
    }
}

/// A reader of `part`'s bytes of `input`.
pub fn open_part(input: &Path, part: &Part) -> anyhow::Result<Box<dyn std::io::BufRead + Send>> {
    let mut file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    file.seek(SeekFrom::Start(part.bytes.start))?;
    Ok(Box::new(BufReader::new(
        file.take(part.bytes.end - part.bytes.start),
    )))
}

/// The marker beside `output` that says it holds a finished part.
pub fn marker_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".done");
    output.with_file_name(name)
}

/// What a finished part's marker records: the input (path, size, modification time), the part,
/// and the translation settings; a rerun skips the part only when all of it still holds and
/// the output has the size it had.
pub fn marker(
    input: &Path,
    shard: Shard,
    part: &Part,
    settings: &str,
) -> anyhow::Result<serde_json::Value> {
    let meta = std::fs::metadata(input).with_context(|| format!("reading {}", input.display()))?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().to_string());
    Ok(json!({
        "input": std::fs::canonicalize(input).unwrap_or(input.to_path_buf()),
        "input_bytes": meta.len(),
        "input_modified_ns": modified,
        "shard": shard.to_string(),
        "lines": [part.lines.start, part.lines.end],
        "settings": settings,
    }))
}

/// Whether `output` already holds the part `expected` describes.
pub fn is_done(output: &Path, expected: &serde_json::Value) -> bool {
    let Ok(text) = std::fs::read_to_string(marker_path(output)) else {
        return false;
    };
    let Ok(mut saved) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let output_bytes = saved
        .as_object_mut()
        .and_then(|m| m.remove("output_bytes"))
        .and_then(|v| v.as_u64());
    let size = std::fs::metadata(output).ok().map(|m| m.len());
    saved == *expected && output_bytes.is_some() && output_bytes == size
}

/// Writes the marker of a finished part (after its output is in place).
pub fn mark_done(output: &Path, mut record: serde_json::Value) -> anyhow::Result<()> {
    let size = std::fs::metadata(output)
        .with_context(|| format!("reading {}", output.display()))?
        .len();
    record["output_bytes"] = size.into();
    let path = marker_path(output);
    gnmt_tokenizer::io::write_atomic(&path, record.to_string().as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_refuse_clearly() {
        assert_eq!(parse("0/4"), Ok(Shard { index: 0, count: 4 }));
        assert_eq!(parse(" 3 / 4 "), Ok(Shard { index: 3, count: 4 }));
        assert!(parse("4/4").unwrap_err().contains("below N"));
        assert!(parse("1/0").unwrap_err().contains("from 1"));
        assert!(parse("2").unwrap_err().contains("I/N"));
        assert!(parse("a/2").unwrap_err().contains("whole number"));
    }

    #[test]
    fn parts_cover_every_line_once_in_order() {
        for lines in [0u64, 1, 5, 7, 100] {
            for count in 1..=9 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.lines(lines);
                    assert_eq!(r.start, next);
                    assert!(r.end - r.start <= lines / count as u64 + 1);
                    next = r.end;
                }
                assert_eq!(next, lines);
            }
        }
    }

    #[test]
    fn slurm_array_tasks_count_from_the_array_minimum() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Shard::from_slurm_array(env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
        ]));
        assert_eq!(s, Some(Shard { index: 2, count: 4 }));
        let plain = Shard::from_slurm_array(env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ]));
        assert_eq!(plain, Some(Shard { index: 0, count: 2 }));
        assert_eq!(Shard::from_slurm_array(env(&[])), None);
    }

    /// The parts' bytes, read back, are the file's lines in order, with or without a final
    /// newline, and with empty lines.
    #[test]
    fn parts_read_back_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "a\nbb\n\nccc\nd\n",
            "a\nbb\n\nccc\nd",
            "",
            "\n\n\n",
            "one line",
        ] {
            let path = dir.path().join("in.txt");
            std::fs::write(&path, text).unwrap();
            for count in 1..=6 {
                let mut joined = Vec::new();
                let total = count_lines(&path).unwrap();
                for index in 0..count {
                    let part = locate(&path, Shard { index, count }, total).unwrap();
                    let mut bytes = Vec::new();
                    open_part(&path, &part)
                        .unwrap()
                        .read_to_end(&mut bytes)
                        .unwrap();
                    let lines = bytes.split(|&b| b == b'\n').count() as u64
                        - (bytes.is_empty() || bytes.ends_with(b"\n")) as u64;
                    assert_eq!(
                        lines,
                        part.lines.end - part.lines.start,
                        "{text:?} {index}/{count}"
                    );
                    joined.extend(bytes);
                }
                assert_eq!(joined, text.as_bytes(), "{count} parts");
            }
        }
    }

    #[test]
    fn a_marker_holds_only_while_input_part_settings_and_output_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
        std::fs::write(&input, "a\nb\n").unwrap();
        let shard = Shard { index: 1, count: 2 };
        let part = locate(&input, shard, count_lines(&input).unwrap()).unwrap();
        let record = marker(&input, shard, &part, "beam 5").unwrap();
        assert!(!is_done(&output, &record));
        std::fs::write(&output, "B\n").unwrap();
        mark_done(&output, record.clone()).unwrap();
        assert!(is_done(&output, &record));
        let other = marker(&input, shard, &part, "beam 4").unwrap();
        assert!(!is_done(&output, &other), "other settings");
        std::fs::write(&output, "B!\n").unwrap();
        assert!(!is_done(&output, &record), "the output changed");
    }
}
