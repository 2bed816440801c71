//! `deployment.toml`: how one model's versions share its unversioned traffic. It sits next to
//! `config.pbtxt` (which stays Triton's) and is read with the model, so it reloads like the
//! rest of the repository; a bad file fails the (re)load and the old routing keeps serving.
//!
//! ```toml
//! stable = 1                    # answers unversioned requests (default: the highest READY)
//! killed = [3]                  # kill switch: these versions answer nothing
//!
//! [canary]
//! version = 2
//! weight = 5.0                  # percent of unversioned traffic
//!
//! [sticky]
//! parameter = "user_id"         # or: header = "x-user-id"; the key's hash picks the arm
//! ```

use std::collections::BTreeSet;

use serde::Deserialize;

/// File name, next to `config.pbtxt`.
pub const FILE_NAME: &str = "deployment.toml";

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentFile {
    /// The version that answers unversioned requests.
    pub stable: Option<i64>,
    /// Versions switched off: requests naming them fail, routing never picks them.
    #[serde(default)]
    pub killed: Vec<i64>,
    pub canary: Option<CanaryFile>,
    pub sticky: Option<StickyFile>,
    /// Shadow versions: each gets a copy of sampled unversioned requests.
    #[serde(default)]
    pub shadow: Vec<ShadowFile>,
}

/// `[[shadow]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowFile {
    pub version: i64,
    /// Percent of routed requests copied to the shadow (default 100).
    pub sample_percent: Option<f64>,
    /// Shadow requests in flight at most; more are dropped and counted (default 16).
    pub max_in_flight: Option<usize>,
    /// A shadow answer later than this is dropped and counted (default 1000).
    pub timeout_ms: Option<u64>,
    pub compare: Option<CompareFile>,
}

/// `[shadow.compare]`: how a pair of answers is scored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareFile {
    /// The output holding the score (default: the first output).
    pub output: Option<String>,
    /// Flat index of the score in that output (default 0).
    pub element: Option<usize>,
    /// Decision: score > threshold. Without one, any difference beyond the tolerances diverges.
    pub threshold: Option<f64>,
    /// Float outputs agree when |a - b| <= abs_tolerance + rel_tolerance * |a| (defaults 1e-6, 1e-4).
    pub abs_tolerance: Option<f64>,
    pub rel_tolerance: Option<f64>,
    /// What the divergence log gets: "all" compared pairs (default) or only "divergent" ones.
    pub log: Option<String>,
}

/// `[canary.check]`: the stable version re-runs a sample of the canary's requests, so the
/// `min_agreement` gate compares both decisions on the same input (like a shadow).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    /// Percent of canary requests re-run on stable (default 100).
    pub sample_percent: Option<f64>,
    /// Checks in flight at most; more are skipped and counted (default 16).
    pub max_in_flight: Option<usize>,
    /// A check answer later than this is dropped and counted (default 1000).
    pub timeout_ms: Option<u64>,
}

/// `[canary]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub version: i64,
    /// Percent of unversioned traffic, 0 to 100.
    pub weight: Option<f64>,
    /// Step weights in percent, increasing, ending at 100 (instead of `weight`).
    pub steps: Option<Vec<f64>>,
    /// Minimum duration of a step, seconds (default 600).
    pub step_min_seconds: Option<f64>,
    /// Canary requests in a step before it may end (default 1000).
    pub step_min_requests: Option<usize>,
    /// What a breached gate does: "rollback" (default) or "pause".
    pub on_gate_failure: Option<String>,
    pub gates: Option<GatesFile>,
    /// The score the `max_psi` and `min_agreement` gates read, and the decision threshold.
    pub compare: Option<CompareFile>,
    pub check: Option<CheckFile>,
}

/// `[canary.gates]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatesFile {
    /// Sliding window, seconds (default 60).
    pub window_seconds: Option<f64>,
    /// Canary requests in the window before gates are judged (default 100).
    pub min_requests: Option<usize>,
    pub max_error_rate: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    /// Largest PSI of the canary's scores against stable's (needs `[canary.compare]`).
    pub max_psi: Option<f64>,
    /// Quantile bins of the PSI (default 10).
    pub psi_bins: Option<usize>,
    /// Smallest share of checked canary requests whose decision stable agrees with (0..1,
    /// needs `[canary.compare]`).
    pub min_agreement: Option<f64>,
}

/// `[sticky]`: exactly one of the two.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    /// A request parameter (string or integer) whose value is the key.
    pub parameter: Option<String>,
    /// A request header (HTTP) or metadata key (gRPC) whose value is the key.
    pub header: Option<String>,
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Parameter(String),
    /// Lower-case header name.
    Header(String),
}

/// A validated deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployment {
    pub stable: Option<i64>,
    /// (version, weight in basis points: 0..=10_000).
    pub canary: Option<(i64, u32)>,
    pub killed: BTreeSet<i64>,
    pub sticky: Option<StickyKey>,
    pub shadows: Vec<ShadowSpec>,
    /// The canary's gates, if any.
    pub gates: Option<super::gates::GateSpec>,
    /// The canary's steps, if it steps.
    pub steps: Option<super::gates::StepSpec>,
    pub on_failure: super::gates::OnFailure,
    /// `[canary.compare]`: the canary's score, for the PSI and agreement gates.
    pub canary_compare: Option<CompareSpec>,
    /// The stable version's re-runs of canary requests, when `min_agreement` is a gate.
    pub canary_check: Option<ShadowSpec>,
}

/// A validated `[[shadow]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    pub version: i64,
    /// Basis points of requests copied (0..=10 000).
    pub sample_bp: u32,
    pub max_in_flight: usize,
    pub timeout: std::time::Duration,
    pub compare: CompareSpec,
}

/// A validated `[shadow.compare]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSpec {
    /// The score's output (None: the first output of the response).
    pub output: Option<String>,
    pub element: usize,
    pub threshold: Option<f64>,
    pub abs_tolerance: f64,
    pub rel_tolerance: f64,
    /// Every compared pair goes to the divergence log, not only diverging ones.
    pub log_all: bool,
}

/// Parses and validates `text` against the versions that loaded and the model's output
/// names. Every error names the key and the value.
pub fn parse(text: &str, loaded: &[i64], outputs: &[String]) -> Result<Deployment, String> {
    let file: DeploymentFile =
        toml::from_str(text).map_err(|e| format!("{FILE_NAME}: {}", e.to_string().trim()))?;
    validate(file, loaded, outputs)
}

fn validate(
    file: DeploymentFile,
    loaded: &[i64],
    outputs: &[String],
) -> Result<Deployment, String> {
    let err = |m: String| Err(format!("{FILE_NAME}: {m}"));
    let must_be_loaded = |key: &str, v: i64| -> Result<(), String> {
        if loaded.contains(&v) {
            Ok(())
        } else {
            Err(format!(
                "{FILE_NAME}: {key} = {v}: version {v} is not loaded (the version policy loaded {loaded:?})"
            ))
        }
    };
    let mut shadows = Vec::with_capacity(file.shadow.len());
    for sh in &file.shadow {
        must_be_loaded("shadow.version", sh.version)?;
        if Some(sh.version) == file.stable {
            return err(format!(
                "shadow.version = {}: the stable version cannot shadow itself",
                sh.version
            ));
        }
        if shadows.iter().any(|s: &ShadowSpec| s.version == sh.version) {
            return err(format!("shadow.version = {}: given twice", sh.version));
        }
        let (sample_bp, max_in_flight, timeout) =
            bounds("shadow", sh.sample_percent, sh.max_in_flight, sh.timeout_ms)?;
        shadows.push(ShadowSpec {
            version: sh.version,
            sample_bp,
            max_in_flight,
            timeout,
            compare: compare_spec("shadow.compare", sh.compare.as_ref(), outputs)?,
        });
    }
    let killed: BTreeSet<i64> = file.killed.iter().copied().collect();
    if let Some(v) = file.killed.iter().find(|v| **v < 1) {
        return err(format!(
            "killed = {:?}: {v} is not a version number",
            file.killed
        ));
    }
    if let Some(stable) = file.stable {
        must_be_loaded("stable", stable)?;
        if killed.contains(&stable) {
            return err(format!(
                "killed = {:?} includes the stable version {stable}; switch stable to another version first",
                file.killed
            ));
        }
    }
    let mut gates = None;
    let mut steps = None;
    let mut canary_compare = None;
    let mut canary_check = None;
    let mut on_failure = super::gates::OnFailure::Rollback;
    let canary = match file.canary {
        None => None,
        Some(c) if file.stable.is_none() => {
            return err(format!(
                "[canary] version = {}: a canary needs `stable = <version>` to share traffic with",
                c.version
            ))
        }
        Some(c) => {
            must_be_loaded("canary.version", c.version)?;
            if Some(c.version) == file.stable {
                return err(format!(
                    "canary.version = {}: the canary must differ from stable",
                    c.version
                ));
            }
            let w = match (&c.steps, c.weight) {
                (Some(_), Some(w)) => {
                    return err(format!(
                        "canary.weight = {w}: give either canary.weight or canary.steps, not both"
                    ))
                }
                (None, None) => {
                    return err("[canary]: canary.weight or canary.steps is required".into())
                }
                (None, Some(w)) => w,
                (Some(st), None) => {
                    let increasing = st.windows(2).all(|p| p[0] < p[1]);
                    let in_range = st.iter().all(|w| *w > 0.0 && *w <= 100.0);
                    if st.is_empty() || !increasing || !in_range || st.last() != Some(&100.0) {
                        return err(format!(
                            "canary.steps = {st:?}: must be increasing percents above 0, ending at 100"
                        ));
                    }
                    let secs = c.step_min_seconds.unwrap_or(600.0);
                    if !(0.0..=30.0 * 86_400.0).contains(&secs) {
                        return err(format!(
                            "canary.step_min_seconds = {secs}: must be between 0 and 30 days"
                        ));
                    }
                    steps = Some(super::gates::StepSpec {
                        weights: st.iter().map(|w| (w * 100.0).round() as u32).collect(),
                        min_duration: std::time::Duration::from_secs_f64(secs),
                        min_requests: c.step_min_requests.unwrap_or(1000),
                    });
                    st[0]
                }
            };
            if c.steps.is_none() && (c.step_min_seconds.is_some() || c.step_min_requests.is_some())
            {
                return err(
                    "canary.step_min_seconds and step_min_requests need canary.steps".into(),
                );
            }
            if !(0.0..=100.0).contains(&w) || w.is_nan() {
                return err(format!(
                    "canary.weight = {w}: must be a percent between 0 and 100"
                ));
            }
            match c.on_gate_failure.as_deref() {
                None | Some("rollback") => {}
                Some("pause") => on_failure = super::gates::OnFailure::Pause,
                Some(other) => {
                    return err(format!(
                        "canary.on_gate_failure = \"{other}\": expected \"rollback\" or \"pause\""
                    ))
                }
            }
            if let Some(g) = &c.gates {
                gates = Some(gate_spec(g)?);
            }
            if let Some(cmp) = &c.compare {
                canary_compare = Some(compare_spec("canary.compare", Some(cmp), outputs)?);
            }
            let score_gates = gates.as_ref().is_some_and(|g: &super::gates::GateSpec| {
                g.max_psi.is_some() || g.min_agreement.is_some()
            });
            if score_gates && canary_compare.is_none() {
                return err(
                    "canary.gates.max_psi and min_agreement need [canary.compare] to name the score"
                        .into(),
                );
            }
            let agreement = gates.as_ref().is_some_and(|g| g.min_agreement.is_some());
            if agreement
                && canary_compare
                    .as_ref()
                    .is_some_and(|c| c.threshold.is_none())
            {
                return err(
                    "canary.gates.min_agreement compares decisions: [canary.compare] needs a threshold"
                        .into(),
                );
            }
            if c.check.is_some() && !agreement {
                return err("[canary.check] is only used by canary.gates.min_agreement".into());
            }
            if let (true, Some(compare)) = (agreement, &canary_compare) {
                let check = c.check.clone().unwrap_or_default();
                let (sample_bp, max_in_flight, timeout) = bounds(
                    "canary.check",
                    check.sample_percent,
                    check.max_in_flight,
                    check.timeout_ms,
                )?;
                canary_check = Some(ShadowSpec {
                    // `stable` is required with a canary (checked above).
                    version: file.stable.unwrap_or_default(),
                    sample_bp,
                    max_in_flight,
                    timeout,
                    compare: compare.clone(),
                });
            }
            Some((c.version, (w * 100.0).round() as u32))
        }
    };
    let sticky = match file.sticky {
        None => None,
        Some(StickyFile {
            parameter: Some(p),
            header: None,
        }) if !p.trim().is_empty() => Some(StickyKey::Parameter(p)),
        Some(StickyFile {
            parameter: None,
            header: Some(h),
        }) if !h.trim().is_empty() => Some(StickyKey::Header(h.trim().to_ascii_lowercase())),
        Some(s) => {
            return err(format!(
                "[sticky]: give exactly one non-empty key, parameter or header (got parameter = {:?}, header = {:?})",
                s.parameter, s.header
            ))
        }
    };
    Ok(Deployment {
        stable: file.stable,
        canary,
        killed,
        sticky,
        shadows,
        gates,
        steps,
        on_failure,
        canary_compare,
        canary_check,
    })
}

/// Sampling, in-flight cap and timeout of a `[[shadow]]` or `[canary.check]`:
/// (basis points, cap, timeout).
fn bounds(
    table: &str,
    sample_percent: Option<f64>,
    max_in_flight: Option<usize>,
    timeout_ms: Option<u64>,
) -> Result<(u32, usize, std::time::Duration), String> {
    let pct = sample_percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&pct) || pct.is_nan() {
        return Err(format!(
            "{FILE_NAME}: {table}.sample_percent = {pct}: must be between 0 and 100"
        ));
    }
    let max_in_flight = max_in_flight.unwrap_or(16);
    if max_in_flight == 0 || max_in_flight > 100_000 {
        return Err(format!(
            "{FILE_NAME}: {table}.max_in_flight = {max_in_flight}: must be between 1 and 100000"
        ));
    }
    let timeout_ms = timeout_ms.unwrap_or(1000);
    if timeout_ms == 0 || timeout_ms > 600_000 {
        return Err(format!(
            "{FILE_NAME}: {table}.timeout_ms = {timeout_ms}: must be between 1 and 600000"
        ));
    }
    Ok((
        (pct * 100.0).round() as u32,
        max_in_flight,
        std::time::Duration::from_millis(timeout_ms),
    ))
}

/// A `[shadow.compare]` or `[canary.compare]` table, validated (`table` names it in errors).
fn compare_spec(
    table: &str,
    c: Option<&CompareFile>,
    outputs: &[String],
) -> Result<CompareSpec, String> {
    let none = CompareFile {
        output: None,
        element: None,
        threshold: None,
        abs_tolerance: None,
        rel_tolerance: None,
        log: None,
    };
    let c = c.unwrap_or(&none);
    if let Some(o) = &c.output {
        if !outputs.contains(o) {
            return Err(format!(
                "{FILE_NAME}: {table}.output = \"{o}\": the model has no such output (outputs: {outputs:?})"
            ));
        }
    }
    let tol = |key: &str, v: Option<f64>, default: f64| -> Result<f64, String> {
        let v = v.unwrap_or(default);
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("{FILE_NAME}: {table}.{key} = {v}: must be >= 0"))
        }
    };
    if let Some(t) = c.threshold.filter(|t| !t.is_finite()) {
        return Err(format!(
            "{FILE_NAME}: {table}.threshold = {t}: must be a finite number"
        ));
    }
    let log_all = match c.log.as_deref() {
        None | Some("all") => true,
        Some("divergent") => false,
        Some(other) => {
            return Err(format!(
                "{FILE_NAME}: {table}.log = \"{other}\": expected \"all\" or \"divergent\""
            ))
        }
    };
    Ok(CompareSpec {
        output: c.output.clone(),
        element: c.element.unwrap_or(0),
        threshold: c.threshold,
        abs_tolerance: tol("abs_tolerance", c.abs_tolerance, 1e-6)?,
        rel_tolerance: tol("rel_tolerance", c.rel_tolerance, 1e-4)?,
        log_all,
    })
}

fn gate_spec(g: &GatesFile) -> Result<super::gates::GateSpec, String> {
    let bad =
        |k: &str, v: f64, want: &str| Err(format!("{FILE_NAME}: canary.gates.{k} = {v}: {want}"));
    let window = g.window_seconds.unwrap_or(60.0);
    if !(window > 0.0 && window <= 86_400.0) {
        return bad("window_seconds", window, "must be between 0 and 86400");
    }
    let min_requests = g.min_requests.unwrap_or(100);
    if min_requests == 0 {
        return bad("min_requests", 0.0, "must be at least 1");
    }
    if let Some(v) = g.max_error_rate.filter(|v| !(0.0..=1.0).contains(v)) {
        return bad("max_error_rate", v, "must be a fraction from 0 to 1");
    }
    if let Some(v) = g.max_p99_ms.filter(|v| !(*v > 0.0 && v.is_finite())) {
        return bad("max_p99_ms", v, "must be a positive number of milliseconds");
    }
    if let Some(v) = g.max_p99_ratio.filter(|v| !(*v > 0.0 && v.is_finite())) {
        return bad("max_p99_ratio", v, "must be a positive ratio");
    }
    if let Some(v) = g.max_psi.filter(|v| !(*v > 0.0 && v.is_finite())) {
        return bad(
            "max_psi",
            v,
            "must be a positive number (0.1 small, 0.25 large shift)",
        );
    }
    let psi_bins = g.psi_bins.unwrap_or(crate::deploy::psi::DEFAULT_BINS);
    if !(2..=100).contains(&psi_bins) {
        return bad("psi_bins", psi_bins as f64, "must be between 2 and 100");
    }
    if let Some(v) = g.min_agreement.filter(|v| !(0.0..=1.0).contains(v)) {
        return bad("min_agreement", v, "must be a fraction from 0 to 1");
    }
    if g.max_error_rate.is_none()
        && g.max_p99_ms.is_none()
        && g.max_p99_ratio.is_none()
        && g.max_psi.is_none()
        && g.min_agreement.is_none()
    {
        return Err(format!(
            "{FILE_NAME}: [canary.gates] names no gate (max_error_rate, max_p99_ms, max_p99_ratio, max_psi, min_agreement)"
        ));
    }
    Ok(super::gates::GateSpec {
        window: std::time::Duration::from_secs_f64(window),
        min_requests,
        max_error_rate: g.max_error_rate,
        max_p99_ms: g.max_p99_ms,
        max_p99_ratio: g.max_p99_ratio,
        max_psi: g.max_psi,
        psi_bins,
        min_agreement: g.min_agreement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let d = parse(
            "stable = 1\nkilled = [3]\n[canary]\nversion = 2\nweight = 5.5\n[sticky]\nheader = \"X-User\"\n",
            &[1, 2, 3],
            &[],
        )
        .unwrap();
        assert_eq!(d.stable, Some(1));
        assert_eq!(d.canary, Some((2, 550)));
        assert_eq!(d.sticky, Some(StickyKey::Header("x-user".into())));
        assert!(d.killed.contains(&3));
        assert_eq!(parse("", &[1], &[]).unwrap(), Deployment::default());
        let sh = parse(
            "stable = 1\n[[shadow]]\nversion = 2\nsample_percent = 50.0\n[shadow.compare]\noutput = \"p\"\nelement = 1\nthreshold = 0.85\n",
            &[1, 2],
            &["p".into()],
        )
        .unwrap();
        assert_eq!(sh.shadows[0].sample_bp, 5_000);
        assert_eq!(sh.shadows[0].compare.threshold, Some(0.85));
        assert_eq!(sh.shadows[0].max_in_flight, 16);
        assert!(sh.shadows[0].compare.log_all);
        let gated = parse(
            "stable = 1\n[canary]\nversion = 2\nweight = 5.0\n[canary.gates]\nmax_psi = 0.2\nmin_agreement = 0.95\n[canary.compare]\noutput = \"p\"\nelement = 1\nthreshold = 0.5\nlog = \"divergent\"\n[canary.check]\nsample_percent = 50.0\n",
            &[1, 2],
            &["p".into()],
        )
        .unwrap();
        let check = gated.canary_check.unwrap();
        assert_eq!((check.version, check.sample_bp), (1, 5_000));
        assert_eq!(check.compare.element, 1);
        assert!(!check.compare.log_all);
        assert_eq!(gated.gates.unwrap().psi_bins, 10);
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let cases = [
            ("stabel = 1", "stabel"),
            ("stable = 4", "stable = 4"),
            ("stable = \"1\"", "stable"),
            ("stable = 1\nkilled = [1]", "killed = [1]"),
            (
                "stable = 1\n[canary]\nversion = 2\nweight = 150.0",
                "canary.weight = 150",
            ),
            (
                "stable = 1\n[canary]\nversion = 2",
                "canary.weight or canary.steps is required",
            ),
            (
                "stable = 1\n[canary]\nversion = 9\nweight = 1.0",
                "canary.version = 9",
            ),
            ("[canary]\nversion = 2\nweight = 1.0", "needs `stable"),
            (
                "stable = 2\n[canary]\nversion = 2\nweight = 1.0",
                "canary.version = 2",
            ),
            (
                "stable = 1\n[canary]\nversion = 2\nweight = 1.0\nbogus = 1",
                "bogus",
            ),
            ("[sticky]\nparameter = \"a\"\nheader = \"b\"", "exactly one"),
            ("[sticky]\nparameter = \" \"", "exactly one"),
            (
                "stable = 1\n[[shadow]]\nversion = 1",
                "cannot shadow itself",
            ),
            (
                "[[shadow]]\nversion = 2\nsample_percent = 101.0",
                "shadow.sample_percent = 101",
            ),
            (
                "[[shadow]]\nversion = 2\nmax_in_flight = 0",
                "shadow.max_in_flight = 0",
            ),
            (
                "[[shadow]]\nversion = 2\n[shadow.compare]\noutput = \"nope\"",
                "shadow.compare.output = \"nope\"",
            ),
            (
                "[[shadow]]\nversion = 2\n[shadow.compare]\nabs_tolerance = -1.0",
                "abs_tolerance = -1",
            ),
            (
                "stable = 1\n[canary]\nversion = 2\nsteps = [1.0, 5.0]",
                "canary.steps",
            ),
            ("killed = [0]", "killed"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmax_error_rate = 2.0", "canary.gates.max_error_rate = 2"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nwindow_seconds = 5.0", "names no gate"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\non_gate_failure = \"hold\"", "on_gate_failure = \"hold\""),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmax_psi = 0.2", "need [canary.compare]"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmax_psi = -1.0\n[canary.compare]\noutput = \"p\"", "canary.gates.max_psi = -1"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmin_agreement = 1.5\n[canary.compare]\noutput = \"p\"", "canary.gates.min_agreement = 1.5"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmin_agreement = 0.9\n[canary.compare]\noutput = \"p\"", "needs a threshold"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmax_psi = 0.2\npsi_bins = 1\n[canary.compare]\noutput = \"p\"", "canary.gates.psi_bins = 1"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmax_psi = 0.2\n[canary.compare]\noutput = \"q\"", "canary.compare.output = \"q\""),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.check]\nsample_percent = 5.0", "[canary.check] is only used"),
            ("stable = 1\n[canary]\nversion = 2\nweight = 1.0\n[canary.gates]\nmin_agreement = 0.9\n[canary.compare]\noutput = \"p\"\nthreshold = 0.5\n[canary.check]\ntimeout_ms = 0", "canary.check.timeout_ms = 0"),
            ("[[shadow]]\nversion = 2\n[shadow.compare]\nlog = \"some\"", "shadow.compare.log = \"some\""),
        ];
        for (text, want) in cases {
            let e = parse(text, &[1, 2], &["p".into()]).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with(FILE_NAME), "{e}");
        }
    }
}
