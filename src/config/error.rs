//! The configuration's errors, and how a figment error is rendered: every
//! error with its key and where it came from, and a "did you mean" for a
//! misspelt key.

use super::raw::ENV_PREFIX;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Rendered by [`describe`]: every error, each with its key and its source.
    #[error("{}", describe(.0))]
    Load(Box<figment::Error>),
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A reload that cannot be applied without a restart.
    #[error("{0}")]
    RestartRequired(String),
    /// A key whose path holds a name from the file (`issuers.<name>.…`).
    #[error("`{key}`: {message}")]
    InvalidAt { key: String, message: String },
    /// More than one invalid key: each on its own line.
    #[error("{} invalid settings:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// "`cache.max_ttl` from environment variable TOKENGATE_CACHE__MAX_TTL: invalid
/// duration ..." — the key an operator must fix and where it came from.
pub(super) fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = match &e.metadata {
                None => "built-in defaults".to_owned(),
                Some(md) => match &md.source {
                    Some(figment::Source::File(p)) => format!("file {}", p.display()),
                    _ if md.name.contains(ENV_PREFIX) && !key.is_empty() => format!(
                        "environment variable {ENV_PREFIX}{}",
                        key.to_ascii_uppercase().replace('.', "__")
                    ),
                    _ => md.name.to_string(),
                },
            };
            let kind = match &e.kind {
                // figment's own text nests backticks (``expected `one of `a`, `b```);
                // say it plainly, with the closest known key.
                figment::error::Kind::UnknownField(found, known) => unknown_key(found, known),
                other => other.to_string(),
            };
            if key.is_empty() {
                format!("{kind} (in {source})")
            } else {
                format!("`{key}` from {source}: {kind}")
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// "unknown key `client_idd`; did you mean `client_id`? (known keys here: `url`, ...)".
pub(super) fn unknown_key(found: &str, known: &[&str]) -> String {
    let mut msg = format!("unknown key `{found}`");
    if let Some(near) = closest(found, known) {
        msg.push_str(&format!("; did you mean `{near}`?"));
    }
    if !known.is_empty() {
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        msg.push_str(&format!(" (known keys here: {list})"));
    }
    msg
}

/// The known key nearest to `found` (edit distance, case-insensitive), if it
/// is near enough to be a typo: at most 2 edits, or a third of the length.
pub(super) fn closest<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    let found = found.to_ascii_lowercase();
    let limit = 2.max(found.chars().count() / 3);
    known
        .iter()
        .map(|k| (edit_distance(&found, &k.to_ascii_lowercase()), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (insert, delete, substitute), over chars.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

impl ConfigError {
    pub(super) fn invalid_at(key: String, message: impl Into<String>) -> Self {
        Self::InvalidAt {
            key,
            message: message.into(),
        }
    }

    pub(super) fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

/// The invalid keys found so far, so that `validate()` names them all at
/// once instead of one per start-up attempt.
#[derive(Default)]
pub(super) struct Errors(Vec<ConfigError>);

impl Errors {
    /// The value, or `None` with its error recorded.
    pub(super) fn take<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        result.map_err(|e| self.push(e)).ok()
    }

    /// Records `error`; a [`ConfigError::Several`] from a section's own
    /// collector is flattened, so every invalid key is one line of the report.
    pub(super) fn push(&mut self, error: ConfigError) {
        match error {
            ConfigError::Several(all) => all.into_iter().for_each(|e| self.push(e)),
            e => self.0.push(e),
        }
    }

    /// `value` if nothing was recorded, else every error. For a section's
    /// validator: it checks all of its keys, then returns what it built.
    pub(super) fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        self.into_result().map(|()| value())
    }

    /// How many errors are recorded (to tell whether a check just added one).
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Records `key: message` unless `ok`.
    pub(super) fn check(&mut self, ok: bool, key: &'static str, message: impl Into<String>) {
        if !ok {
            self.push(ConfigError::invalid(key, message));
        }
    }

    /// `Ok` without errors; one error as itself; several as [`ConfigError::Several`].
    pub(super) fn into_result(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }
}
