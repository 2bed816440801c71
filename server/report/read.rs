//! Finding and reading divergence logs.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::aggregate::{Aggregator, Record};
use super::ReportError;

/// The log's file name; rotated files are `divergence.jsonl.1` (newest) … `.N` (oldest).
pub const LOG_NAME: &str = "divergence.jsonl";

/// Longest line read. A longer one is skipped as malformed without being held in memory
/// (a record is a few hundred bytes; only a request id can make it long).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The files to read, in order: a file argument as given; a directory's `divergence.jsonl*`
/// files oldest first (`.N` … `.1`, then `divergence.jsonl`).
pub fn log_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path).map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
        // (rotation index, path); the live file is index 0.
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ReportError::Read {
                path: path.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(index) = rotation_index(name) {
                found.push((index, entry.path()));
            }
        }
        if found.is_empty() {
            return Err(ReportError::NoLogs(path.clone()));
        }
        found.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        files.extend(found.into_iter().map(|(_, p)| p));
    }
    Ok(files)
}

/// 0 for `divergence.jsonl`, N for `divergence.jsonl.N`, `None` for any other name.
fn rotation_index(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(LOG_NAME)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix('.')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Reads one log file into `agg`.
pub fn read_file(path: &Path, agg: &mut Aggregator) -> Result<(), ReportError> {
    let err = |source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    read_lines(BufReader::new(file), agg).map_err(err)
}

/// Parses every line of `r`: records go to `agg`, anything else is counted as malformed.
/// Blank lines are ignored.
pub fn read_lines(mut r: impl BufRead, agg: &mut Aggregator) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE_BYTES {
            // Too long: drop the rest of it unread into memory.
            r.skip_until(b'\n')?;
            agg.malformed_line();
            continue;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(rec) => agg.add(rec),
            Err(_) => agg.malformed_line(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"time_ms":1700000000000,"model":"m","request_id":"r1","kind":"shadow","primary_version":1,"shadow_version":2,"primary_score":0.9,"shadow_score":0.2,"primary_decision":true,"shadow_decision":false,"threshold":0.5,"agree":false,"max_abs_diff":0.7,"max_rel_diff":0.77,"exact_mismatch":false,"primary_latency_ms":1.5,"shadow_latency_ms":2.5}"#;

    fn read(text: &[u8]) -> (u64, u64) {
        let mut agg = Aggregator::new(5);
        read_lines(text, &mut agg).unwrap();
        let rep = agg.finish(10);
        (rep.records, rep.malformed)
    }

    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let missing_field = GOOD.replace(r#""agree":false,"#, "");
        let wrong_type = GOOD.replace(r#""primary_version":1"#, r#""primary_version":"1""#);
        let text = format!(
            "{GOOD}\nnot json\n\n{{\"time_ms\":1}}\n{missing_field}\n{wrong_type}\n\u{0}\u{ff}\n{GOOD}"
        );
        assert_eq!(read(text.as_bytes()), (2, 5));
        // Invalid UTF-8, and a truncated last line (a writer cut off mid-line).
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(b"\n\xff\xfe\n");
        bytes.extend_from_slice(&GOOD.as_bytes()[..40]);
        assert_eq!(read(&bytes), (1, 2));
    }

    #[test]
    fn nulls_and_unknown_fields_are_accepted() {
        let nulls = GOOD
            .replace(r#""primary_score":0.9"#, r#""primary_score":null"#)
            .replace(r#""threshold":0.5"#, r#""threshold":null"#)
            .replace(r#""exact_mismatch":false,"#, r#""new_field":[1,2],"#);
        assert_eq!(read(nulls.as_bytes()), (1, 0));
    }

    #[test]
    fn overlong_lines_are_skipped() {
        let long = format!("{GOOD}\n{}\n{GOOD}\n", "x".repeat(MAX_LINE_BYTES * 2 + 17));
        assert_eq!(read(long.as_bytes()), (2, 1));
        let unterminated = format!("{GOOD}\n{}", "y".repeat(MAX_LINE_BYTES + 1));
        assert_eq!(read(unterminated.as_bytes()), (1, 1));
    }

    #[test]
    fn rotated_names() {
        assert_eq!(rotation_index("divergence.jsonl"), Some(0));
        assert_eq!(rotation_index("divergence.jsonl.3"), Some(3));
        assert_eq!(rotation_index("divergence.jsonl.12"), Some(12));
        assert_eq!(rotation_index("divergence.jsonl."), None);
        assert_eq!(rotation_index("divergence.jsonl.tmp"), None);
        assert_eq!(rotation_index("divergence.jsonlx"), None);
        assert_eq!(rotation_index("other.jsonl"), None);
    }

    #[test]
    fn directories_list_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        for name in [
            "divergence.jsonl",
            "divergence.jsonl.1",
            "divergence.jsonl.10",
            "divergence.jsonl.2",
            "notes.txt",
        ] {
            std::fs::write(d.path().join(name), "").unwrap();
        }
        let names: Vec<String> = log_files(&[d.path().to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "divergence.jsonl.10",
                "divergence.jsonl.2",
                "divergence.jsonl.1",
                "divergence.jsonl"
            ]
        );
        let empty = tempfile::tempdir().unwrap();
        let e = log_files(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(matches!(e, ReportError::NoLogs(_)), "{e}");
        let e = log_files(&[d.path().join("missing.jsonl")]).unwrap_err();
        assert!(matches!(e, ReportError::Read { .. }), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
