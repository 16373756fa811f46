//! The custom rules file of `serve --rules FILE`: read, checked with
//! [`crate::console::custom::parse`], and watched. Each poll reads the file and, when its bytes
//! changed, checks it again: good rules replace the ones in force, a bad file leaves them in
//! force and reports each error once (until the file changes again).

use std::path::{Path, PathBuf};

use crate::console::custom::{parse, CustomRules, Format, RuleError};

/// Largest rules file read, bytes.
pub const MAX_RULES_BYTES: u64 = 1024 * 1024;

/// Reads and checks a rules file; a read failure is one error naming the file.
pub fn load(path: &Path) -> Result<CustomRules, Vec<RuleError>> {
    let bytes = read(path)?;
    check_bytes(path, &bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, Vec<RuleError>> {
    let fail = |message: String| {
        vec![RuleError {
            at: "/".into(),
            message,
        }]
    };
    let len = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?
        .len();
    if len > MAX_RULES_BYTES {
        return Err(fail(format!("{len} bytes, at most {MAX_RULES_BYTES}")));
    }
    std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
}

fn check_bytes(path: &Path, bytes: &[u8]) -> Result<CustomRules, Vec<RuleError>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        vec![RuleError {
            at: "/".into(),
            message: format!("not UTF-8 text (byte {})", e.valid_up_to()),
        }]
    })?;
    parse(text, Format::of_path(path))
}

/// What a poll found.
#[derive(Debug, PartialEq)]
pub enum Reload {
    /// The file's bytes are what they were at the last poll.
    Unchanged,
    /// The file changed and is good: these rules should be put in force.
    Apply(CustomRules),
    /// The file changed (or cannot be read) and is bad: keep the rules in force.
    Keep(Vec<RuleError>),
}

/// A watched rules file.
#[derive(Debug)]
pub struct RulesFile {
    path: PathBuf,
    /// The bytes last checked (`None`: unreadable at the last poll).
    last: Option<Vec<u8>>,
}

impl RulesFile {
    /// Watches `path`, whose current bytes (`loaded`) are in force already.
    pub fn new(path: PathBuf, loaded: Option<Vec<u8>>) -> RulesFile {
        RulesFile { path, last: loaded }
    }

    /// Reads and checks the file at start: the rules, and a watcher that knows them.
    pub fn open(path: &Path) -> Result<(CustomRules, RulesFile), Vec<RuleError>> {
        let bytes = read(path)?;
        let rules = check_bytes(path, &bytes)?;
        Ok((rules, RulesFile::new(path.to_owned(), Some(bytes))))
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file again.
    pub fn poll(&mut self) -> Reload {
        match read(&self.path) {
            Ok(bytes) if self.last.as_ref() == Some(&bytes) => Reload::Unchanged,
            Ok(bytes) => {
                let result = check_bytes(&self.path, &bytes);
                self.last = Some(bytes);
                match result {
                    Ok(rules) => Reload::Apply(rules),
                    Err(errors) => Reload::Keep(errors),
                }
            }
            // Unreadable (being replaced, removed): report it once.
            Err(_) if self.last.is_none() => Reload::Unchanged,
            Err(errors) => {
                self.last = None;
                Reload::Keep(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::rules::RuleEngine;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tg-hub-rules-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// What the serve loop does with a poll: apply good rules, keep the last good ones.
    fn apply(engine: &mut RuleEngine, file: &mut RulesFile) -> Result<bool, Vec<String>> {
        match file.poll() {
            Reload::Unchanged => Ok(false),
            Reload::Apply(rules) => {
                engine.set_custom(rules);
                Ok(true)
            }
            Reload::Keep(errors) => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn valid_invalid_kept_and_reloaded() {
        let dir = temp_dir();
        let path = dir.join("rules.toml");
        std::fs::write(
            &path,
            "[[groups]]\nname = \"all\"\nranges.failedLogins = { max = 3 }\n",
        )
        .expect("write");
        let (rules, mut file) = RulesFile::open(&path).expect("valid");
        let mut engine = RuleEngine::default();
        engine.set_custom(rules);
        assert_eq!(engine.custom().groups[0].name, "all");
        assert_eq!(apply(&mut engine, &mut file), Ok(false), "unchanged");

        // A bad edit: one line per error, the last good rules stay.
        std::fs::write(
            &path,
            "[[groups]]\nname = \"all\"\nranges.failedLogins = { max = -1 }\nallow.ports = []\n",
        )
        .expect("write");
        let errors = apply(&mut engine, &mut file).expect_err("invalid");
        assert_eq!(
            errors,
            vec![
                "/groups/0/ranges/failedLogins/max: expected a whole number >= 0, got -1",
                "/groups/0/allow/ports: unknown allow-list (expected processes, remoteAddresses, listeningPorts)"
            ]
        );
        assert_eq!(engine.custom().groups[0].name, "all");
        assert_eq!(apply(&mut engine, &mut file), Ok(false), "reported once");

        // Fixed: reloaded.
        std::fs::write(
            &path,
            "[[groups]]\nname = \"fixed\"\nallow.listeningPorts = [22]\n",
        )
        .expect("write");
        assert_eq!(apply(&mut engine, &mut file), Ok(true));
        assert_eq!(engine.custom().groups[0].name, "fixed");

        // Removed: reported once, kept; back: reloaded.
        std::fs::remove_file(&path).expect("rm");
        assert!(apply(&mut engine, &mut file).is_err());
        assert_eq!(apply(&mut engine, &mut file), Ok(false));
        assert_eq!(engine.custom().groups[0].name, "fixed");
        std::fs::write(&path, "{\"groups\": []}").expect("write");
        assert!(
            apply(&mut engine, &mut file).is_err(),
            "JSON text in a .toml file is TOML"
        );
        let json = dir.join("rules.json");
        std::fs::write(&json, "{\"groups\": []}").expect("write");
        assert!(load(&json).expect("valid JSON").groups.is_empty());
        assert!(load(&dir.join("missing.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
