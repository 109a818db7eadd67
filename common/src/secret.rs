//! A wrapper for values that must never be printed.

use std::fmt;

/// A secret value (a password, an encryption key, an EAB HMAC key).
///
/// `Debug` and `Display` print `***`, so a whole configuration can be logged
/// at startup. Reach the value with [`Secret::expose`], and only where it is
/// handed to the library that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself. Never log what this returns.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `bytes` random bytes, base64url without padding: passwords, tokens and
/// session ids (`None` only if the system random source fails).
pub fn random_token(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).ok()?;
    Some(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        buf,
    ))
}

/// A URL whose password (if any) is hidden when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    /// Wraps a parsed URL.
    pub fn new(url: url::Url) -> Self {
        Self(url)
    }

    /// The full URL, password included. Never log what this returns.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Setting a password only fails for URLs that cannot have one.
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_password_hidden() -> Result<(), url::ParseError> {
        let u = SecretUrl::new(url::Url::parse("amqp://user:pw@host:5672/vh")?);
        assert_eq!(u.redacted(), "amqp://user:***@host:5672/vh");
        assert!(!format!("{u:?}").contains("pw"));
        assert_eq!(u.expose(), "amqp://user:pw@host:5672/vh");
        Ok(())
    }
}
