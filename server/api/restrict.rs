//! Restricted API categories (`--http-restricted-api`, `--grpc-restricted-protocol`), as
//! Triton spells them: `<category>[,<category>...]:<key>=<value>`. A request to an API in a
//! restricted category must carry header (gRPC: metadata) `<key>` with exactly `<value>`.
//!
//! Switchyard addition: a value written `@<path>` is read from that file (surrounding
//! whitespace trimmed), so the secret need not appear in the process list. `@@` starts a
//! literal value beginning with `@`.

use std::collections::HashMap;

/// The API groups Triton can restrict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
}

impl Category {
    const ALL: [(&'static str, Category); 9] = [
        ("health", Category::Health),
        ("metadata", Category::Metadata),
        ("inference", Category::Inference),
        ("shared-memory", Category::SharedMemory),
        ("model-config", Category::ModelConfig),
        ("model-repository", Category::ModelRepository),
        ("statistics", Category::Statistics),
        ("trace", Category::Trace),
        ("logging", Category::Logging),
    ];

    fn parse(s: &str) -> Option<Category> {
        Category::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }
}

/// The header (key, value) each restricted category requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    rules: HashMap<Category, (String, String)>,
}

impl Restrictions {
    /// Parses every `--*-restricted-*` argument. A category named twice is an error.
    pub fn parse(specs: &[String]) -> Result<Self, String> {
        let mut rules = HashMap::new();
        for spec in specs {
            let (cats, kv) = spec.split_once(':').ok_or_else(|| {
                format!("restricted API '{spec}' must look like <category,...>:<key>=<value>")
            })?;
            let (key, value) = kv.split_once('=').ok_or_else(|| {
                format!("restricted API '{spec}' must look like <category,...>:<key>=<value>")
            })?;
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err(format!("restricted API '{spec}' has an empty header key"));
            }
            let value = resolve_value(value)?;
            for cat in cats.split(',').map(str::trim) {
                let c = Category::parse(cat).ok_or_else(|| {
                    format!(
                        "unknown restricted API category '{cat}'; expected one of: {}",
                        Category::ALL.map(|(n, _)| n).join(", ")
                    )
                })?;
                if rules.insert(c, (key.clone(), value.clone())).is_some() {
                    return Err(format!("restricted API category '{cat}' is given twice"));
                }
            }
        }
        Ok(Restrictions { rules })
    }

    /// Checks a request in `category`; `header` looks a header up by lower-case name.
    /// On refusal, the message Triton gives.
    pub fn check<'a>(
        &self,
        category: Category,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), String> {
        match self.rules.get(&category) {
            None => Ok(()),
            Some((key, value)) if header(key) == Some(value.as_str()) => Ok(()),
            Some((key, _)) => Err(format!("This API is restricted, expecting header '{key}'")),
        }
    }
}

fn resolve_value(v: &str) -> Result<String, String> {
    if let Some(literal) = v.strip_prefix("@@") {
        return Ok(format!("@{literal}"));
    }
    match v.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read restricted API secret file '{path}': {e}")),
        None => Ok(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triton_syntax_and_checks_exactly() {
        let r =
            Restrictions::parse(&["model-repository,statistics:Admin-Key=s3cret".into()]).unwrap();
        let with = |v: &'static str| move |k: &str| (k == "admin-key").then_some(v);
        assert!(r.check(Category::Inference, |_| None).is_ok());
        assert!(r.check(Category::ModelRepository, with("s3cret")).is_ok());
        assert!(r.check(Category::Statistics, with("s3cret")).is_ok());
        let e = r
            .check(Category::ModelRepository, with("s3cre"))
            .unwrap_err();
        assert_eq!(e, "This API is restricted, expecting header 'admin-key'");
        assert!(r.check(Category::ModelRepository, with("s3cret ")).is_err());
        assert!(r.check(Category::ModelRepository, |_| None).is_err());
    }

    #[test]
    fn rejects_bad_specs() {
        for bad in ["inference", "inference:key", "bogus:k=v", "inference:=v"] {
            assert!(Restrictions::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(Restrictions::parse(&["inference:a=1".into(), "inference:b=2".into()]).is_err());
    }

    #[test]
    fn secret_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "abc\n").unwrap();
        let r = Restrictions::parse(&[format!("logging:k=@{}", f.display())]).unwrap();
        assert!(r.check(Category::Logging, |_| Some("abc")).is_ok());
        let lit = Restrictions::parse(&["logging:k=@@x".into()]).unwrap();
        assert!(lit.check(Category::Logging, |_| Some("@x")).is_ok());
        assert!(Restrictions::parse(&["logging:k=@/nonexistent/x".into()]).is_err());
    }
}
