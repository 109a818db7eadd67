//! Where values come from: flags, then the environment, then the TOML file
//! ([`Sources`]), each value with its [`Origin`] so an error can name it.
//! The environment is read through the [`Env`] trait, so tests use a
//! `HashMap` instead of `std::env::set_var` (linkerd2-proxy's `Strings`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::keys::{self, ENV_CONFIG, env_name, is_secret};

/// Source of environment variables.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|s| (*s).to_string())
    }
}

/// Where a value came from; printed in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A key in the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Env(name) => f.write_str(name),
            Origin::File { path, key } => write!(f, "{key} in {}", path.display()),
        }
    }
}

/// A configuration error: always names the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("{origin}{shown}: {reason}", shown = value.as_ref().map(|v| format!("={v:?}")).unwrap_or_default())]
    Invalid {
        /// Where it came from.
        origin: Origin,
        /// The value, unless it is secret.
        value: Option<String>,
        /// Why it was refused.
        reason: String,
    },
    /// The TOML file could not be read or parsed.
    #[error("configuration file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A secret was given as a command-line flag, where `ps` would show it.
    #[error("--{flag} is a secret and cannot be a flag (anyone can read flags with ps); set {env} or use a file", flag = .0.replace('_', "-"), env = env_name(.0))]
    SecretFlag(String),
}

/// The raw layer: values as strings with their origin, not yet validated.
pub struct Sources<'a> {
    flags: HashMap<String, String>,
    env: &'a dyn Env,
    file: Option<(PathBuf, toml::Table)>,
}

impl<'a> Sources<'a> {
    /// Sources with the given environment and no flags or file.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            flags: HashMap::new(),
            env,
            file: None,
        }
    }

    /// Adds a flag value for a setting key (ignored when `None`).
    ///
    /// # Errors
    /// A secret setting given as a flag.
    pub fn flag(mut self, key: &str, value: Option<impl ToString>) -> Result<Self, ConfigError> {
        if let Some(value) = value {
            if is_secret(key) {
                return Err(ConfigError::SecretFlag(key.to_string()));
            }
            self.flags.insert(key.to_string(), value.to_string());
        }
        Ok(self)
    }

    /// Loads the TOML file named by `path`, or else by `CERTFLEET_CONFIG`.
    ///
    /// # Errors
    /// An unreadable file, bad TOML, an unknown key or a value that is not a
    /// string, number or boolean.
    pub fn file(mut self, path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => match self.env.get(ENV_CONFIG) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => return Ok(self),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.clone(),
                reason: e.message().to_string(),
            })?;
        for (key, value) in &table {
            if !keys::ALL.contains(&key.as_str()) {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: format!("unknown key {key:?}"),
                });
            }
            if value.is_table() || value.is_array() {
                return Err(ConfigError::File {
                    path: path.clone(),
                    reason: format!("{key} must be a string, number or boolean"),
                });
            }
        }
        self.file = Some((path, table));
        Ok(self)
    }

    /// A variable of the environment that is not a setting of ours (the
    /// AWS credential variables, `RUST_LOG`): read through the same [`Env`],
    /// so tests can give it, and empty counts as unset.
    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).filter(|v| !v.is_empty())
    }

    /// The raw value of a setting and where it came from: flag, then
    /// environment, then file.
    pub fn raw(&self, key: &str) -> Option<(String, Origin)> {
        if let Some(v) = self.flags.get(key) {
            return Some((v.clone(), Origin::Flag(key.replace('_', "-"))));
        }
        let env = env_name(key);
        if let Some(v) = self.env.get(&env).filter(|v| !v.is_empty()) {
            return Some((v, Origin::Env(env)));
        }
        let (path, table) = self.file.as_ref()?;
        let value = table.get(key)?;
        let text = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Some((
            text,
            Origin::File {
                path: path.clone(),
                key: key.to_string(),
            },
        ))
    }

    /// Parses the value of `key`, if it is set anywhere; an error names
    /// the origin and, unless the key is secret, the value.
    ///
    /// # Errors
    /// The parser's reason, with the origin.
    pub fn parse<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((raw, origin)) = self.raw(key) else {
            return Ok(None);
        };
        parse(&raw)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid {
                value: (!is_secret(key)).then_some(raw),
                origin,
                reason,
            })
    }

    /// Like [`Sources::parse`], with `default` (written as a user would
    /// write it) when the key is unset.
    ///
    /// # Errors
    /// The parser's reason, with the origin.
    pub fn parse_or<T>(
        &self,
        key: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.parse(key, &parse)? {
            Some(v) => Ok(v),
            None => parse(default).map_err(|reason| ConfigError::Invalid {
                origin: Origin::Env(env_name(key)),
                value: Some(default.to_string()),
                reason: format!("built-in default is invalid: {reason}"),
            }),
        }
    }
}
