//! Names and paths a client or a config can choose, checked before anything touches the disk
//! (Triton CVE-2023-31036, CVE-2025-23316, CVE-2026-24208/9).
//!
//! - Model names are one plain path component: not empty, no surrounding whitespace, no `/`,
//!   `\`, NUL or control characters, not `.`/`..` or any name starting with `.`, at most
//!   255 bytes (NAME_MAX).
//! - Relative paths from a config or a `file:` override are made of plain components only and,
//!   where they exist, resolve (symlinks followed) inside their base directory.

use std::path::{Component, Path, PathBuf};

/// Longest model name, in bytes (POSIX NAME_MAX).
pub const MAX_MODEL_NAME_BYTES: usize = 255;

/// Checks a model name from a request, a flag or a directory listing.
pub fn validate_model_name(name: &str) -> Result<(), String> {
    let shown: String = name
        .chars()
        .take(64)
        .collect::<String>()
        .escape_debug()
        .to_string();
    let bad = |why: &str| Err(format!("invalid model name '{shown}': {why}"));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.trim().is_empty() {
        return bad("it is only whitespace");
    }
    if name.trim() != name {
        return bad("it starts or ends with whitespace");
    }
    if name.len() > MAX_MODEL_NAME_BYTES {
        return bad(&format!("it is longer than {MAX_MODEL_NAME_BYTES} bytes"));
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if name.contains(['/', '\\']) {
        return bad("it contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains a control character");
    }
    Ok(())
}

/// Checks that `rel` is a relative path of plain components (no `..`, `.`, root or prefix).
pub fn plain_relative(rel: &str, what: &str) -> Result<PathBuf, String> {
    let path = Path::new(rel);
    let odd_segment = rel
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if rel.is_empty()
        || odd_segment
        || rel.contains(['\0', '\\'])
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "{what} '{}' must be a plain relative path (no '..', no absolute path)",
            rel.escape_debug()
        ));
    }
    Ok(path.to_path_buf())
}

/// Resolves `rel` under `base` and, if it exists, checks that it stays inside `base` once
/// symlinks are followed. Returns the joined path (canonical when it exists).
pub fn inside(base: &Path, rel: &str, what: &str) -> Result<PathBuf, String> {
    let relative = plain_relative(rel, what)?;
    let joined = base.join(relative);
    match joined.canonicalize() {
        Ok(real) => {
            let base = base
                .canonicalize()
                .map_err(|e| format!("{what}: cannot resolve '{}': {e}", base.display()))?;
            if real.starts_with(&base) {
                Ok(real)
            } else {
                Err(format!(
                    "{what} '{}' resolves outside the model directory",
                    rel.escape_debug()
                ))
            }
        }
        Err(_) => Ok(joined),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        for ok in ["simple", "fraud_mlp", "a.b", "m-1", "ünï"] {
            assert!(validate_model_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "", " ", "\t", "..", ".", ".hidden", "../x", "a/b", "a\\b", " a", "a ", "a\0b", "a\nb",
            &long,
        ] {
            assert!(validate_model_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_model_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn relative_paths() {
        assert!(plain_relative("1/model.onnx", "f").is_ok());
        for bad in [
            "",
            "../x",
            "1/../../x",
            "/etc/passwd",
            "./x",
            "a/./b",
            "a\0b",
        ] {
            assert!(plain_relative(bad, "f").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_cannot_escape() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("model");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        std::fs::write(base.join("labels.txt"), b"x").unwrap();
        assert!(inside(&base, "labels.txt", "label_filename").is_ok());
        assert!(inside(&base, "missing.txt", "label_filename").is_ok());
        assert!(inside(&base, "../secret", "label_filename").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path().join("secret"), base.join("link")).unwrap();
            let e = inside(&base, "link", "label_filename").unwrap_err();
            assert!(e.contains("outside"), "{e}");
        }
    }
}
