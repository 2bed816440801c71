//! `switchyard shadow-report LOG... [--html FILE] [--top N] [--bins N]`: reads divergence
//! logs (`deploy::shadow::DivergenceLog`) offline and reports, per (model, kind, primary
//! version, shadow version): agreement, decision confusion, PSI, score deltas, latencies and
//! the most divergent requests; optionally as an HTML page with charts.
//!
//! - [`read`]: which files, line by line (malformed lines counted, long lines bounded).
//! - [`aggregate`]: records → figures (pure, tested).
//! - [`text`]: the stdout report; [`html`]: the page (`plotters` SVG charts).
//!
//! It runs without a tokio runtime and without the server: `main.rs` dispatches here when
//! the first argument is `shadow-report`.

pub mod aggregate;
pub mod html;
pub mod read;
pub mod text;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::builder::TypedValueParser as _;
use clap::Parser;

use crate::deploy::psi::DEFAULT_BINS;

/// Report on shadow/canary divergence logs (`<--shadow-log-dir>/divergence.jsonl*`).
///
/// Exit codes: 0 done, 1 the output could not be written, 2 bad arguments or an input that
/// cannot be read.
// Its own clap struct rather than a field of `config::Args`: it is a separate offline tool
// with no environment variables, and the server's flags stay exactly as they are.
#[derive(Debug, Clone, Parser)]
#[command(name = "shadow-report", bin_name = "switchyard shadow-report", version)]
pub struct ReportArgs {
    /// Divergence logs: files, or directories (their divergence.jsonl* files are read,
    /// oldest rotated first).
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
    /// Also write a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Most divergent requests listed per group.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Quantile bins of the PSI.
    #[arg(long, default_value_t = DEFAULT_BINS, value_parser = clap::value_parser!(u16).range(2..).map(usize::from))]
    pub bins: usize,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no divergence.jsonl files in directory '{}'", .0.display())]
    NoLogs(PathBuf),
    #[error("cannot write '{}': {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReportError {
    /// The process exit code: 2 for input problems, 1 for output ones.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReportError::Read { .. } | ReportError::NoLogs(_) => 2,
            ReportError::Write { .. } => 1,
        }
    }
}

/// The subcommand's entry point: `argv` starts with `shadow-report`. Returns the exit code
/// (clap exits by itself, with 2, on bad arguments and 0 on `--help`).
pub fn main(argv: impl IntoIterator<Item = OsString>) -> i32 {
    let args = ReportArgs::parse_from(argv);
    match run(&args, &mut std::io::stdout().lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Reads the logs, writes the text report to `out` and the page to `--html`.
pub fn run(args: &ReportArgs, out: &mut impl Write) -> Result<(), ReportError> {
    let files = read::log_files(&args.logs)?;
    let mut agg = aggregate::Aggregator::new(args.top);
    for f in &files {
        read::read_file(f, &mut agg)?;
    }
    let report = agg.finish(args.bins);
    out.write_all(text::render(&report, &files).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| ReportError::Write {
            path: "<stdout>".into(),
            source,
        })?;
    if let Some(path) = &args.html {
        std::fs::write(path, html::page(&report, &files)).map_err(|source| ReportError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a = ReportArgs::try_parse_from(["shadow-report", "/logs"]).unwrap();
        assert_eq!((a.top, a.bins, a.html), (10, DEFAULT_BINS, None));
        let a = ReportArgs::try_parse_from([
            "shadow-report",
            "a.jsonl",
            "b",
            "--html",
            "o.html",
            "--top=3",
            "--bins",
            "20",
        ])
        .unwrap();
        assert_eq!(a.logs.len(), 2);
        assert_eq!((a.top, a.bins), (3, 20));
        assert!(ReportArgs::try_parse_from(["shadow-report"]).is_err());
        assert!(ReportArgs::try_parse_from(["shadow-report", "x", "--bins=1"]).is_err());
    }

    #[test]
    fn run_reads_a_directory_and_writes_the_page() {
        let d = tempfile::tempdir().unwrap();
        let line = |id: &str, agree: bool| {
            format!(
                "{{\"time_ms\":1700000000000,\"model\":\"m\",\"request_id\":\"{id}\",\"kind\":\"shadow\",\
                 \"primary_version\":1,\"shadow_version\":2,\"primary_score\":0.9,\"shadow_score\":0.1,\
                 \"primary_decision\":true,\"shadow_decision\":{agree},\"threshold\":0.5,\"agree\":{agree},\
                 \"max_abs_diff\":0.8,\"max_rel_diff\":0.9,\"exact_mismatch\":false,\
                 \"primary_latency_ms\":1.0,\"shadow_latency_ms\":2.0}}\n"
            )
        };
        std::fs::write(d.path().join("divergence.jsonl.1"), line("old", false)).unwrap();
        std::fs::write(
            d.path().join("divergence.jsonl"),
            line("new", true) + "garbage\n",
        )
        .unwrap();
        let html = d.path().join("out.html");
        let args = ReportArgs {
            logs: vec![d.path().to_path_buf()],
            html: Some(html.clone()),
            top: 5,
            bins: 10,
        };
        let mut out = Vec::new();
        run(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("2 files, 2 records, 1 malformed lines skipped"),
            "{text}"
        );
        assert!(text.contains("50.00 % (1 of 2 pairs agree)"), "{text}");
        assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
        let bad = ReportArgs {
            html: Some(d.path().join("no/such/dir/out.html")),
            ..args
        };
        assert_eq!(run(&bad, &mut Vec::new()).unwrap_err().exit_code(), 1);
    }
}
