//! The text report (stdout), and the formatting it shares with the HTML page.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::aggregate::{Agreement, Confusion, GroupSummary, Percentiles, Report};

/// Longest request id shown, in characters; longer ones are cut with "…".
pub const MAX_ID_CHARS: usize = 128;
/// Width of the longest bar of the text histogram.
const BAR_WIDTH: u64 = 40;

/// The whole text report.
pub fn render(report: &Report, files: &[PathBuf]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switchyard shadow-report: {} {}, {} records, {} malformed lines skipped",
        files.len(),
        if files.len() == 1 { "file" } else { "files" },
        report.records,
        report.malformed
    );
    for f in files {
        let _ = writeln!(out, "  {}", printable(&f.display().to_string(), usize::MAX));
    }
    if report.groups.is_empty() {
        out.push_str("\nno records\n");
    }
    for g in &report.groups {
        out.push('\n');
        group(&mut out, g);
    }
    out
}

fn group(out: &mut String, g: &GroupSummary) {
    let _ = writeln!(out, "== {} ==", title(g));
    let _ = writeln!(out, "records:          {}", g.records);
    let _ = writeln!(out, "time span:        {}", span(g));
    let _ = writeln!(out, "agreement:        {}", agreement(g));
    if let Some(t) = thresholds(g) {
        let _ = writeln!(out, "threshold:        {t}");
    }
    let _ = writeln!(out, "exact mismatches: {}", g.exact_mismatches);
    if g.agreement() == Agreement::OnlyDiverging {
        let _ = writeln!(out, "note:             {ONLY_DIVERGING_NOTE}");
    }
    if g.confusion.has_decisions() {
        confusion(out, &g.confusion);
    }
    let _ = writeln!(out, "PSI:              {}", psi(g));
    match &g.delta {
        None => {
            let _ = writeln!(out, "score delta:      n/a (no pair has both scores)");
        }
        Some(d) => {
            let p = &d.percentiles;
            let _ = writeln!(
                out,
                "score delta (shadow - primary, {} pairs):\n    mean {:+.6}  p50 {:+.6}  p90 {:+.6}  p99 {:+.6}  max |delta| {:.6}",
                p.n, d.mean, p.p50, p.p90, p.p99, d.max_abs
            );
            let peak = d.histogram.counts.iter().copied().max().unwrap_or(0).max(1);
            for (i, n) in d.histogram.counts.iter().enumerate() {
                let (lo, hi) = d.histogram.edges(i);
                let close = if i + 1 == d.histogram.counts.len() {
                    ']'
                } else {
                    ')'
                };
                let bar = "#".repeat((n * BAR_WIDTH).div_ceil(peak) as usize);
                let line = format!("    [{lo:+.4}, {hi:+.4}{close} {n:>8} {bar}");
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
    let _ = writeln!(
        out,
        "latency ms:       primary {} | shadow {}",
        latency(g.primary_latency.as_ref()),
        latency(g.shadow_latency.as_ref())
    );
    if g.top.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "top {} divergent requests (by |score delta|, else max_abs_diff *):",
        g.top.len()
    );
    let _ = writeln!(
        out,
        "    {:<24} {:<24} {:>14} {:>14} {:>8} {:>8} {:>10}",
        "request_id", "time", "primary score", "shadow score", "primary", "shadow", "|delta|"
    );
    for d in &g.top {
        let _ = writeln!(
            out,
            "    {:<24} {:<24} {:>14} {:>14} {:>8} {:>8} {:>10}",
            printable(&d.request_id, MAX_ID_CHARS),
            time(d.time_ms),
            score(d.primary_score),
            score(d.shadow_score),
            decision(d.primary_decision),
            decision(d.shadow_decision),
            format!("{:.6}{}", d.divergence, if d.by_score { "" } else { "*" }),
        );
    }
}

fn confusion(out: &mut String, c: &Confusion) {
    let labels = ["true", "false", "none"];
    let shown = c.shown();
    let _ = writeln!(out, "decisions (rows primary, columns shadow):");
    let _ = write!(out, "    {:<14}", "");
    for s in &shown {
        let _ = write!(out, " {:>13}", format!("shadow {}", labels[*s]));
    }
    out.push('\n');
    for p in &shown {
        let _ = write!(out, "    {:<14}", format!("primary {}", labels[*p]));
        for s in &shown {
            let _ = write!(out, " {:>13}", c.counts[*p][*s]);
        }
        out.push('\n');
    }
}

/// Said wherever a group's log holds no agreeing pair.
pub const ONLY_DIVERGING_NOTE: &str =
    "the log holds only diverging pairs (no agree=true record), so agreement cannot be computed; \
     PSI, score deltas and latencies describe the diverging pairs, not all compared traffic \
     ([shadow.compare] log = \"all\" writes every pair)";

/// "model | kind | primary vN -> shadow vM", printable.
pub fn title(g: &GroupSummary) -> String {
    format!(
        "{} | {} | primary v{} -> shadow v{}",
        printable(&g.key.model, MAX_ID_CHARS),
        printable(&g.key.kind, MAX_ID_CHARS),
        g.key.primary_version,
        g.key.shadow_version
    )
}

pub fn span(g: &GroupSummary) -> String {
    format!(
        "{} .. {} ({:.3} s)",
        time(g.first_ms),
        time(g.last_ms),
        (g.last_ms - g.first_ms) as f64 / 1e3
    )
}

pub fn agreement(g: &GroupSummary) -> String {
    match g.agreement() {
        Agreement::Rate(r) => format!(
            "{:.2} % ({} of {} pairs agree)",
            r * 100.0,
            g.agreed,
            g.records
        ),
        Agreement::OnlyDiverging => "n/a: the log holds only diverging pairs".into(),
    }
}

pub fn thresholds(g: &GroupSummary) -> Option<String> {
    if g.thresholds.is_empty() {
        return None;
    }
    let list: Vec<String> = g.thresholds.iter().map(|t| t.to_string()).collect();
    let more = if g.more_thresholds { ", ..." } else { "" };
    let changed = if g.thresholds.len() > 1 {
        " (changed during the log)"
    } else {
        ""
    };
    Some(format!("{}{more}{changed}", list.join(", ")))
}

pub fn psi(g: &GroupSummary) -> String {
    match g.psi {
        Some(v) => format!(
            "{v:.6} (shadow scores against primary scores, {} bins, {} pairs)",
            g.bins, g.scored_pairs
        ),
        None => "n/a (no pair has both scores)".into(),
    }
}

pub fn latency(p: Option<&Percentiles>) -> String {
    match p {
        Some(p) => format!("p50 {:.3} p99 {:.3}", p.p50, p.p99),
        None => "n/a".into(),
    }
}

pub fn score(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |v| format!("{v:.6}"))
}

pub fn decision(d: Option<bool>) -> &'static str {
    match d {
        Some(true) => "true",
        Some(false) => "false",
        None => "-",
    }
}

/// `s` cut to `max` characters, control characters (a terminal escape sequence in a
/// client's request id, a newline) shown escaped.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// UTC time of milliseconds since the Unix epoch: `2024-05-01 12:00:00.000Z`.
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{Aggregator, Record};
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(time(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20.000Z");
        assert_eq!(time(4_102_444_799_999), "2099-12-31 23:59:59.999Z");
    }

    #[test]
    fn printable_escapes_and_cuts() {
        assert_eq!(printable("a\u{1b}[2Jb\n", 100), "a\\u{1b}[2Jb\\n");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("<script>", 100), "<script>");
    }

    fn record(id: &str, agree: bool) -> Record {
        Record {
            time_ms: 1_700_000_000_000,
            model: "m\u{7}".into(),
            request_id: id.into(),
            kind: "shadow".into(),
            primary_version: 1,
            shadow_version: 2,
            primary_score: Some(0.9),
            shadow_score: Some(if agree { 0.8 } else { 0.1 }),
            primary_decision: Some(true),
            shadow_decision: Some(agree),
            threshold: Some(0.5),
            agree,
            max_abs_diff: Some(0.1),
            exact_mismatch: false,
            primary_latency_ms: Some(1.0),
            shadow_latency_ms: None,
            logged: None,
        }
    }

    #[test]
    fn report_text() {
        let mut agg = Aggregator::new(2);
        agg.add(record("a", true));
        agg.add(record("b\u{1b}", false));
        agg.malformed_line();
        let text = render(&agg.finish(10), &[PathBuf::from("x.jsonl")]);
        assert!(text.starts_with(
            "switchyard shadow-report: 1 file, 2 records, 1 malformed lines skipped\n"
        ));
        assert!(
            text.contains("== m\\u{7} | shadow | primary v1 -> shadow v2 =="),
            "{text}"
        );
        assert!(text.contains("agreement:        50.00 % (1 of 2 pairs agree)"));
        assert!(text.contains("threshold:        0.5\n"));
        assert!(
            text.contains("    primary true               1             1\n"),
            "{text}"
        );
        assert!(text.contains("primary p50 1.000 p99 1.000 | shadow n/a"));
        assert!(text.contains("b\\u{1b}"));
        assert!(!text.contains('\u{1b}'));
        let mut agg = Aggregator::new(2);
        agg.add(record("b", false));
        let text = render(&agg.finish(10), &[]);
        assert!(text.contains("agreement:        n/a: the log holds only diverging pairs"));
        assert!(!text.contains("0.00 %"));
    }
}
