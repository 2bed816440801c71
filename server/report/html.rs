//! The HTML page: one self-contained file (inline CSS and SVG, no script, no external URL).
//! Charts are drawn by `plotters` into SVG strings. Every string that came from a log (model,
//! kind, request ids) or from the command line (paths) goes through [`escape`]; the charts
//! carry only numbers and fixed labels.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;

use plotters::prelude::*;

use super::aggregate::{Agreement, GroupSummary, Histogram, Report};
use super::text::{self, MAX_ID_CHARS};

const CHART_SIZE: (u32, u32) = (560, 300);
const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.5em 0 1em}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
th{background:#f3f3f3}td.l,th.l{text-align:left}\
section{border-top:2px solid #888;margin-top:2em}\
.charts{display:flex;flex-wrap:wrap;gap:1em}\
figure{margin:0}figcaption{font-size:90%;color:#555}\
.note{background:#fff6d5;padding:4px 8px}";

/// HTML-escapes `s` for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn page(report: &Report, files: &[PathBuf]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>switchyard shadow report</title><style>{STYLE}</style></head><body>\n\
         <h1>switchyard shadow report</h1>\n<p>{} records from {} file(s), {} malformed lines skipped.</p>\n<ul>",
        report.records,
        files.len(),
        report.malformed
    );
    for f in files {
        let _ = write!(
            h,
            "<li><code>{}</code></li>",
            escape(&f.display().to_string())
        );
    }
    h.push_str("</ul>\n");
    if report.groups.is_empty() {
        h.push_str("<p>No records.</p>\n");
    }
    for g in &report.groups {
        group(&mut h, g);
    }
    h.push_str("</body></html>\n");
    h
}

fn group(h: &mut String, g: &GroupSummary) {
    let _ = write!(
        h,
        "<section>\n<h2>{}</h2>\n<table>",
        escape(&text::title(g))
    );
    let mut row = |k: &str, v: String| {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{k}</th><td class=\"l\">{v}</td></tr>"
        );
    };
    row("records", g.records.to_string());
    row("time span", escape(&text::span(g)));
    row("agreement", escape(&text::agreement(g)));
    if let Some(t) = text::thresholds(g) {
        row("threshold", escape(&t));
    }
    row("exact mismatches", g.exact_mismatches.to_string());
    row("PSI", escape(&text::psi(g)));
    row(
        "latency ms",
        format!(
            "primary {} | shadow {}",
            text::latency(g.primary_latency.as_ref()),
            text::latency(g.shadow_latency.as_ref())
        ),
    );
    h.push_str("</table>\n");
    if g.agreement() == Agreement::OnlyDiverging {
        let _ = writeln!(
            h,
            "<p class=\"note\">{}</p>",
            escape(text::ONLY_DIVERGING_NOTE)
        );
    }
    if g.confusion.has_decisions() {
        h.push_str("<h3>Decisions</h3>\n<table><tr><th></th>");
        let labels = ["true", "false", "none"];
        let shown = g.confusion.shown();
        for s in &shown {
            let _ = write!(h, "<th>shadow {}</th>", labels[*s]);
        }
        h.push_str("</tr>");
        for p in &shown {
            let _ = write!(h, "<tr><th class=\"l\">primary {}</th>", labels[*p]);
            for s in &shown {
                let _ = write!(h, "<td>{}</td>", g.confusion.counts[*p][*s]);
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>\n");
    }
    if let Some(d) = &g.delta {
        let p = &d.percentiles;
        let _ = writeln!(
            h,
            "<h3>Score delta (shadow − primary, {} pairs)</h3>\n<table><tr><th>mean</th><th>p50</th>\
             <th>p90</th><th>p99</th><th>max |delta|</th></tr><tr><td>{:+.6}</td><td>{:+.6}</td>\
             <td>{:+.6}</td><td>{:+.6}</td><td>{:.6}</td></tr></table>",
            p.n, d.mean, p.p50, p.p90, p.p99, d.max_abs
        );
    }
    h.push_str("<div class=\"charts\">\n");
    let (pv, sv) = (g.key.primary_version, g.key.shadow_version);
    if let Some((hp, hs)) = &g.score_histograms {
        figure(
            h,
            scores_chart(hp, hs, pv, sv),
            &format!("Scores of v{pv} (primary, blue) and v{sv} (shadow, red), overlaid"),
        );
    }
    if let Some(d) = &g.delta {
        figure(
            h,
            delta_chart(&d.chart),
            "Score delta (shadow − primary) histogram",
        );
    }
    let caption = match g.agreement() {
        Agreement::Rate(_) => format!(
            "Agreement over time (% of pairs, {} ms buckets)",
            g.bucket_ms
        ),
        Agreement::OnlyDiverging => format!(
            "Diverging pairs over time ({} ms buckets): the log holds only diverging pairs",
            g.bucket_ms
        ),
    };
    figure(h, timeline_chart(g), &caption);
    h.push_str("</div>\n");
    if !g.top.is_empty() {
        let _ = write!(
            h,
            "<h3>Top {} divergent requests</h3>\n<p>By |score delta|; * marks max_abs_diff where a \
             score is missing.</p>\n<table><tr><th class=\"l\">request id</th><th class=\"l\">time</th>\
             <th>primary score</th><th>shadow score</th><th>primary</th><th>shadow</th>\
             <th>agree</th><th>|delta|</th></tr>",
            g.top.len()
        );
        for d in &g.top {
            let _ = write!(
                h,
                "<tr><td class=\"l\"><code>{}</code></td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{:.6}{}</td></tr>",
                escape(&text::printable(&d.request_id, MAX_ID_CHARS)),
                text::time(d.time_ms),
                text::score(d.primary_score),
                text::score(d.shadow_score),
                text::decision(d.primary_decision),
                text::decision(d.shadow_decision),
                d.agree,
                d.divergence,
                if d.by_score { "" } else { "*" }
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn figure(h: &mut String, svg: Result<String, String>, caption: &str) {
    h.push_str("<figure>");
    match svg {
        Ok(svg) => h.push_str(&svg),
        Err(e) => {
            let _ = write!(h, "<p>(chart not drawn: {})</p>", escape(&e));
        }
    }
    let _ = writeln!(h, "<figcaption>{}</figcaption></figure>", escape(caption));
}

/// Draws into an SVG string. The namespace attribute is dropped: inline SVG in HTML does not
/// need it, and the page then names no URL at all.
fn svg_chart(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

/// A range that plotters can draw: a constant becomes ±0.5 around it.
fn widen(lo: f64, hi: f64) -> Range<f64> {
    if hi > lo {
        lo..hi
    } else {
        lo - 0.5..hi + 0.5
    }
}

fn bars<'a>(
    h: &'a Histogram,
    style: ShapeStyle,
) -> impl Iterator<Item = Rectangle<(f64, f64)>> + 'a {
    (0..h.counts.len()).map(move |i| {
        let (x0, x1) = if h.counts.len() == 1 {
            (widen(h.lo, h.hi).start, widen(h.lo, h.hi).end)
        } else {
            h.edges(i)
        };
        Rectangle::new([(x0, 0.0), (x1, h.counts[i] as f64)], style)
    })
}

/// Axis labels with enough decimals for the axis' span (and no "-0.000").
fn label_format(span: &Range<f64>) -> impl Fn(&f64) -> String {
    let width = span.end - span.start;
    let decimals = (2.0 - width.log10().floor()).clamp(0.0, 9.0) as usize;
    move |v| {
        let s = format!("{v:.decimals$}");
        match s.strip_prefix('-') {
            Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest.to_string(),
            _ => s,
        }
    }
}

fn peak(hs: &[&Histogram]) -> f64 {
    let m = hs.iter().flat_map(|h| h.counts.iter()).copied().max();
    (m.unwrap_or(0).max(1) as f64) * 1.1
}

fn scores_chart(hp: &Histogram, hs: &Histogram, pv: i64, sv: i64) -> Result<String, String> {
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(widen(hp.lo, hp.hi), 0.0..peak(&[hp, hs]))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&label_format(&widen(hp.lo, hp.hi)))
            .light_line_style(WHITE)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("score")
            .y_desc("pairs")
            .draw()
            .map_err(|e| e.to_string())?;
        let blue = BLUE.mix(0.45).filled();
        let red = RED.mix(0.45).filled();
        chart
            .draw_series(bars(hp, blue))
            .map_err(|e| e.to_string())?
            .label(format!("primary v{pv}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], blue));
        chart
            .draw_series(bars(hs, red))
            .map_err(|e| e.to_string())?
            .label(format!("shadow v{sv}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], red));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

fn delta_chart(h: &Histogram) -> Result<String, String> {
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(widen(h.lo, h.hi), 0.0..peak(&[h]))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&label_format(&widen(h.lo, h.hi)))
            .light_line_style(WHITE)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("shadow - primary")
            .y_desc("pairs")
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars(h, GREEN.mix(0.6).filled()))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Agreement % per time bucket, or diverging pairs per bucket when the log holds only those.
fn timeline_chart(g: &GroupSummary) -> Result<String, String> {
    let rate = matches!(g.agreement(), Agreement::Rate(_));
    let points: Vec<(f64, f64)> = g
        .timeline
        .iter()
        .filter(|b| !rate || b.records > 0)
        .map(|b| {
            let x = (b.start_ms - g.first_ms) as f64 / 1e3;
            let y = if rate {
                100.0 * b.agreed as f64 / b.records as f64
            } else {
                b.records as f64
            };
            (x, y)
        })
        .collect();
    let x_end = (g.last_ms - g.first_ms) as f64 / 1e3;
    let y_range = if rate {
        0.0..100.0
    } else {
        0.0..points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1
    };
    svg_chart(|root| {
        let mut chart = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(widen(0.0, x_end), y_range)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("seconds since the first record")
            .y_desc(if rate { "agree %" } else { "diverging pairs" })
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::super::aggregate::{Aggregator, Record};
    use super::*;

    fn record(id: &str, t: u64, p: f64, s: f64) -> Record {
        Record {
            time_ms: t,
            model: "<b>m</b>".into(),
            request_id: id.into(),
            kind: "shadow".into(),
            primary_version: 1,
            shadow_version: 2,
            primary_score: Some(p),
            shadow_score: Some(s),
            primary_decision: Some(p > 0.5),
            shadow_decision: Some(s > 0.5),
            threshold: Some(0.5),
            agree: (p > 0.5) == (s > 0.5),
            max_abs_diff: Some((p - s).abs()),
            exact_mismatch: false,
            primary_latency_ms: Some(1.0),
            shadow_latency_ms: Some(1.5),
            logged: None,
        }
    }

    #[test]
    fn axis_labels() {
        let f = label_format(&(-0.2..0.2));
        assert_eq!(
            (f(&-0.0), f(&0.1), f(&-0.15)),
            ("0.000".into(), "0.100".into(), "-0.150".into())
        );
        assert_eq!(label_format(&(0.0..1000.0))(&250.0), "250");
        assert_eq!(label_format(&(0.0..1e-5))(&5e-6), "0.0000050");
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn page_is_self_contained_and_escaped() {
        let mut agg = Aggregator::new(5);
        for i in 0..200u64 {
            agg.add(record(
                &format!("r{i}"),
                1_000 + i * 10,
                0.3,
                0.3 + i as f64 / 400.0,
            ));
        }
        agg.add(record("<script>alert(1)</script>", 3_000, 0.0, 1.0));
        let page = page(&agg.finish(10), &[PathBuf::from("/tmp/<x>.jsonl")]);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<svg").count(), 3, "three charts");
        assert!(!page.contains("<script"), "no script, escaped ids");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;m&lt;/b&gt;"));
        assert!(page.contains("/tmp/&lt;x&gt;.jsonl"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(page.contains("<h3>Decisions</h3>"));
    }

    #[test]
    fn constant_and_only_diverging_groups_still_draw() {
        let mut agg = Aggregator::new(5);
        agg.add(record("a", 5, 0.9, 0.1));
        agg.add(record("b", 5, 0.9, 0.1));
        let page = page(&agg.finish(10), &[]);
        assert_eq!(page.matches("<svg").count(), 3, "{page}");
        assert!(page.contains("Diverging pairs over time"));
        assert!(page.contains("class=\"note\""));
        assert!(!page.contains("chart not drawn"));
    }
}
