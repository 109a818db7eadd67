//! TLS settings of one service (Redis, the broker, S3): a CA file to trust
//! besides the public roots, and a client certificate with its key. Files
//! are read when the configuration loads, so a missing or unreadable one is
//! a configuration error naming its variable.

use super::sources::{ConfigError, Origin, Sources};
use super::{env_name, keys};
use crate::secret::Secret;

/// One service's TLS files.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// PEM certificates to trust (a private CA), besides the public roots.
    pub ca_pem: Option<String>,
    /// Client certificate (PEM chain) and its private key (PEM).
    pub client: Option<(String, Secret<String>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

impl TlsFiles {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.client.is_some()
    }

    /// Loads `<service>_ca_file`, `<service>_client_cert_file` and
    /// `<service>_client_key_file` (the keys given).
    ///
    /// # Errors
    /// A file that cannot be read or holds no PEM block, or a certificate
    /// without its key (or the reverse).
    pub fn load(src: &Sources<'_>, ca: &str, cert: &str, key: &str) -> Result<Self, ConfigError> {
        let pem = |what: &'static str| {
            move |path: &str| -> Result<String, String> {
                let text = std::fs::read_to_string(path.trim())
                    .map_err(|e| format!("cannot read it: {e}"))?;
                if !text.contains("-----BEGIN ") {
                    return Err(format!("holds no PEM {what}"));
                }
                Ok(text)
            }
        };
        let ca_pem = src.parse(ca, pem("certificate"))?;
        let cert_pem = src.parse(cert, pem("certificate"))?;
        let key_pem = src.parse(key, pem("private key"))?;
        let missing = |set: &str, unset: &str| ConfigError::Invalid {
            origin: Origin::Env(env_name(unset)),
            value: None,
            reason: format!("missing, but {} is set", env_name(set)),
        };
        let client = match (cert_pem, key_pem) {
            (Some(c), Some(k)) => Some((c, Secret::new(k))),
            (None, None) => None,
            (Some(_), None) => return Err(missing(cert, key)),
            (None, Some(_)) => return Err(missing(key, cert)),
        };
        Ok(Self { ca_pem, client })
    }

    /// The Redis ones.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn redis(src: &Sources<'_>) -> Result<Self, ConfigError> {
        Self::load(
            src,
            keys::REDIS_CA_FILE,
            keys::REDIS_CLIENT_CERT_FILE,
            keys::REDIS_CLIENT_KEY_FILE,
        )
    }

    /// The broker's.
    ///
    /// # Errors
    /// As [`TlsFiles::load`].
    pub fn amqp(src: &Sources<'_>) -> Result<Self, ConfigError> {
        Self::load(
            src,
            keys::AMQP_CA_FILE,
            keys::AMQP_CLIENT_CERT_FILE,
            keys::AMQP_CLIENT_KEY_FILE,
        )
    }
}

/// Refuses TLS files for a service whose URL does not use TLS: they would
/// be silently unused.
///
/// # Errors
/// Files set while `tls` is false.
pub fn only_with_tls(
    files: &TlsFiles,
    tls: bool,
    url_key: &str,
    file_key: &str,
    scheme: &str,
) -> Result<(), ConfigError> {
    if files.is_set() && !tls {
        return Err(ConfigError::Invalid {
            origin: Origin::Env(env_name(file_key)),
            value: None,
            reason: format!(
                "set, but {} does not use TLS (its scheme is not {scheme}://)",
                env_name(url_key)
            ),
        });
    }
    Ok(())
}
