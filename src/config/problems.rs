//! Configuration problems, and the collector that gathers all of them in one pass.
//!
//! Validation does not stop at the first mistake: every check reports into a [`Ctx`] and goes
//! on, so `check-config` and start-up list everything wrong with a file at once (as linkerd's
//! config parser does). A check that fails yields no value; the section it belongs to is then
//! not built, and the whole load fails with a [`ConfigError`] listing every [`ConfigProblem`].

use std::{cell::RefCell, fmt};

/// One configuration problem: where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigProblem {
    /// The configuration file.
    pub file: String,
    /// The dotted key, e.g. `callers.demo.api_key_sha256`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in a configuration file (at least one), in file order; displayed one
/// per line, each as `file: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    /// The problems, at least one.
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl From<ConfigProblem> for ConfigError {
    fn from(p: ConfigProblem) -> ConfigError {
        ConfigError { problems: vec![p] }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The validation context: names the file in every problem and collects the problems.
pub(super) struct Ctx<'a> {
    file: &'a str,
    problems: RefCell<Vec<ConfigProblem>>,
}

impl<'a> Ctx<'a> {
    /// A collector for problems in `file`.
    pub(super) fn new(file: &'a str) -> Ctx<'a> {
        Ctx {
            file,
            problems: RefCell::new(Vec::new()),
        }
    }

    /// A problem at `key` (not yet reported; see [`Ctx::check`]).
    pub(super) fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Records a problem at `key`.
    pub(super) fn report(&self, key: impl Into<String>, message: impl Into<String>) {
        let p = self.err(key, message);
        self.problems.borrow_mut().push(p);
    }

    /// The value of a check that passed; a failed one is recorded and yields `None`.
    pub(super) fn check<T>(&self, r: Result<T, ConfigProblem>) -> Option<T> {
        r.map_err(|p| self.problems.borrow_mut().push(p)).ok()
    }

    /// Records `message` at `key` when `ok` is false; `Some(())` when it holds.
    pub(super) fn require(
        &self,
        ok: bool,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Option<()> {
        if ok {
            Some(())
        } else {
            self.report(key, message);
            None
        }
    }

    /// The validated value when nothing was reported, else every problem reported.
    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        let mut problems = self.problems.into_inner();
        match value {
            Some(v) if problems.is_empty() => Ok(v),
            _ => {
                // Every check that yields no value reports first; this only guards that rule.
                if problems.is_empty() {
                    problems.push(ConfigProblem {
                        file: self.file.to_owned(),
                        key: "(file)".into(),
                        message: "the configuration is incomplete".into(),
                    });
                }
                Err(ConfigError { problems })
            }
        }
    }
}
