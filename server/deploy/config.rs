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
    /// Shadow versions (not implemented yet: refused with a clear error).
    #[serde(default)]
    pub shadow: Vec<toml::Value>,
}

/// `[canary]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub version: i64,
    /// Percent of unversioned traffic, 0 to 100.
    pub weight: Option<f64>,
    /// Step weights (not implemented yet: refused with a clear error).
    pub steps: Option<Vec<f64>>,
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
}

/// Parses and validates `text` against the versions that loaded. Every error names the key
/// and the value.
pub fn parse(text: &str, loaded: &[i64]) -> Result<Deployment, String> {
    let file: DeploymentFile =
        toml::from_str(text).map_err(|e| format!("{FILE_NAME}: {}", e.to_string().trim()))?;
    validate(file, loaded)
}

fn validate(file: DeploymentFile, loaded: &[i64]) -> Result<Deployment, String> {
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
    if !file.shadow.is_empty() {
        return err("[[shadow]]: shadow versions are not implemented yet".into());
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
            if c.steps.is_some() {
                return err(
                    "canary.steps: stepped rollouts are not implemented yet; use canary.weight"
                        .into(),
                );
            }
            let Some(w) = c.weight else {
                return err("[canary]: canary.weight is required".into());
            };
            if !(0.0..=100.0).contains(&w) || w.is_nan() {
                return err(format!(
                    "canary.weight = {w}: must be a percent between 0 and 100"
                ));
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
        )
        .unwrap();
        assert_eq!(d.stable, Some(1));
        assert_eq!(d.canary, Some((2, 550)));
        assert_eq!(d.sticky, Some(StickyKey::Header("x-user".into())));
        assert!(d.killed.contains(&3));
        assert_eq!(parse("", &[1]).unwrap(), Deployment::default());
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
                "canary.weight is required",
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
            ("[[shadow]]\nversion = 2", "not implemented"),
            (
                "stable = 1\n[canary]\nversion = 2\nsteps = [1.0, 5.0]",
                "canary.steps",
            ),
            ("killed = [0]", "killed"),
        ];
        for (text, want) in cases {
            let e = parse(text, &[1, 2]).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with(FILE_NAME), "{e}");
        }
    }
}
