//! What `validate` collects: every problem at once, each with the key it is about.

use std::fmt;

use super::Mode;

/// One thing wrong with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key it is about, e.g. `sqs.max_messages` (the first one, when a rule ties several).
    pub key: String,
    /// What is wrong and how to fix it, naming the key: the line `sluice validate` prints.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The problems found so far, in the order the rules were checked.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Adds a problem unless `ok`.
    pub fn check(&mut self, ok: bool, key: &str, message: impl Into<String>) {
        if !ok {
            self.push(key, message);
        }
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when there is none; otherwise all of them as one error.
    pub fn into_result(self) -> Result<(), InvalidConfig> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(self.0))
        }
    }
}

/// A config that does not pass its checks: every problem, each naming its key. Said as
/// `invalid config:` and one `  - …` line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(pub Vec<Problem>);

impl InvalidConfig {
    /// Whether a problem is about `key`.
    pub fn names(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid config:")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidConfig {}

/// A section's own rules, for a process that runs as `mode`. Rules that tie sections together
/// live in `Settings::check_across`.
pub trait Check {
    fn check(&self, mode: Mode, problems: &mut Problems);
}

/// A DynamoDB table name: 3-255 of a-z A-Z 0-9 _ . -
pub fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A duration as the config writes it (`1m 30s`), for messages.
pub fn human(d: std::time::Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}
