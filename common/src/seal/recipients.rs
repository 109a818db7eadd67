//! Keys encrypted to their readers: age (X25519) recipients chosen by
//! certificate name, and the identities that open them.
//!
//! The recipients file (`CERTFLEET_RECIPIENTS_FILE`) says which server
//! groups may read which certificates, one rule per line:
//!
//! ```text
//! # pattern   recipient...
//! *.shop.example.com  age1...web-shop  age1...admin
//! *                   age1...admin
//! ```
//!
//! A pattern is `*` (every name), `*.ZONE` (every name under ZONE, at any
//! depth, not ZONE itself) or one exact certificate name. A certificate's
//! key is encrypted to the recipients of every line whose pattern matches
//! its name; a name no line matches cannot be stored (the job fails with an
//! error naming it). Workers hold only this file (public keys); a webserver
//! holds only its own identity file (`CERTFLEET_IDENTITY_FILE`, lines of
//! `AGE-SECRET-KEY-1...`, as `age-keygen` or `certfleet keys identity`
//! writes them) and opens only what was encrypted to it.
//!
//! The plaintext inside the age file is the place it was written for
//! (`name/version`), a newline, and the PEM: a ciphertext copied to another
//! name or version does not open there (the AES scheme binds the same
//! context as associated data).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::str::FromStr as _;

use age::secrecy::ExposeSecret as _;

use super::SealError;
use crate::secret::Secret;

/// First line of the plaintext, so a future layout can be told apart.
const MAGIC: &str = "certfleet-key-v1";

/// Which names a recipients line covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// `*`: every name.
    All,
    /// `*.ZONE`: names ending in `.ZONE` (any depth).
    Under(String),
    /// One name.
    Exact(String),
}

impl NamePattern {
    /// Parses a pattern; returns why it is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::All);
        }
        let (under, name) = match s.strip_prefix("*.") {
            Some(zone) => (true, zone),
            None => (false, s),
        };
        if name.contains('*') {
            return Err(format!(
                "{s:?}: '*' only as the whole pattern or as its first label (*.example.com)"
            ));
        }
        let lower = name.to_ascii_lowercase();
        crate::CertName::from_domain(&lower)
            .map_err(|e| format!("{s:?} is not a name or *.ZONE pattern: {e}"))?;
        Ok(if under {
            Self::Under(lower)
        } else {
            Self::Exact(lower)
        })
    }

    /// Whether `name` is covered.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Exact(n) => n == name,
            Self::Under(zone) => name
                .strip_suffix(zone.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Under(z) => write!(f, "*.{z}"),
            Self::Exact(n) => f.write_str(n),
        }
    }
}

/// One line of the recipients file.
#[derive(Debug, Clone)]
struct Rule {
    pattern: NamePattern,
    recipients: Vec<age::x25519::Recipient>,
}

/// The parsed recipients file.
#[derive(Debug, Clone)]
pub struct Recipients {
    rules: Vec<Rule>,
}

impl Recipients {
    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let pattern = words.next().unwrap_or_default();
            let pattern =
                NamePattern::parse(pattern).map_err(|e| format!("line {}: {e}", i + 1))?;
            let recipients = words
                .map(|w| {
                    age::x25519::Recipient::from_str(w).map_err(|e| {
                        let shown: String = w.chars().take(12).collect();
                        format!(
                            "line {}: {shown:?}... is not an age X25519 recipient (age1...): {e}",
                            i + 1
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if recipients.is_empty() {
                return Err(format!(
                    "line {}: pattern {pattern} has no recipient (age1...)",
                    i + 1
                ));
            }
            rules.push(Rule {
                pattern,
                recipients,
            });
        }
        if rules.is_empty() {
            return Err("no rule (lines of `pattern recipient...`)".into());
        }
        Ok(Self { rules })
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text)
    }

    /// The recipients of `name`: every matching line's, each once, in
    /// their text form's order.
    pub fn for_name(&self, name: &str) -> Vec<age::x25519::Recipient> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.pattern.matches(name)) {
            for r in &rule.recipients {
                if seen.insert(r.to_string()) {
                    out.push(r.clone());
                }
            }
        }
        out.sort_by_key(|r| r.to_string());
        out
    }
}

/// The identities this process opens keys with.
#[derive(Clone, Default)]
pub struct Identities {
    ids: Vec<age::x25519::Identity>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} for {:?})", self.ids.len(), self.public())
    }
}

impl Identities {
    /// Parses an identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
    /// The error names the line, never its text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut ids = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                format!(
                    "line {}: not an age X25519 identity (AGE-SECRET-KEY-1...)",
                    i + 1
                )
            })?;
            ids.push(id);
        }
        if ids.is_empty() {
            return Err("no identity (AGE-SECRET-KEY-1... lines)".into());
        }
        Ok(Self { ids })
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The recipients (public keys) of these identities.
    pub fn public(&self) -> Vec<String> {
        self.ids.iter().map(|i| i.to_public().to_string()).collect()
    }
}

/// A new identity: its file line (secret) and its recipient (public).
pub fn generate() -> (Secret<String>, String) {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    (
        Secret::new(id.to_string().expose_secret().to_string()),
        public,
    )
}

/// Encrypts `pem`, bound to `context`, to `recipients` (not empty).
pub(super) fn encrypt(
    recipients: &[age::x25519::Recipient],
    pem: &str,
    context: &str,
) -> Result<Vec<u8>, SealError> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|_| SealError::Crypto)?;
    let mut out = Vec::with_capacity(pem.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|_| SealError::Crypto)?;
    writer
        .write_all(format!("{MAGIC}\n{context}\n{pem}").as_bytes())
        .map_err(|_| SealError::Crypto)?;
    writer.finish().map_err(|_| SealError::Crypto)?;
    Ok(out)
}

/// Opens an age ciphertext written by [`encrypt`] for `context`.
/// `recipients` (as stored beside it) only make the error say who can.
pub(super) fn decrypt(
    identities: &Identities,
    ciphertext: &[u8],
    context: &str,
    recipients: &[String],
) -> Result<Secret<String>, SealError> {
    if identities.is_empty() {
        return Err(SealError::NoIdentity {
            recipients: recipients.join(" "),
        });
    }
    let decryptor = age::Decryptor::new_buffered(ciphertext).map_err(|_| SealError::Corrupt)?;
    let mut reader = match decryptor.decrypt(identities.ids.iter().map(|i| i as &dyn age::Identity))
    {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => {
            return Err(SealError::NotARecipient {
                recipients: recipients.join(" "),
                ours: identities.public().join(" "),
            });
        }
        Err(_) => return Err(SealError::Corrupt),
    };
    let mut plain = Vec::new();
    reader
        .read_to_end(&mut plain)
        .map_err(|_| SealError::Corrupt)?;
    let text = String::from_utf8(plain).map_err(|_| SealError::Corrupt)?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(MAGIC), Some(c), Some(pem)) if c == context => Ok(Secret::new(pem.to_string())),
        _ => Err(SealError::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() -> Result<(), String> {
        let all = NamePattern::parse("*")?;
        let under = NamePattern::parse("*.Example.com")?;
        let exact = NamePattern::parse("www.example.com")?;
        assert!(all.matches("anything.test"));
        assert!(under.matches("www.example.com"));
        assert!(under.matches("a.b.example.com"));
        assert!(!under.matches("example.com"));
        assert!(!under.matches("badexample.com"));
        assert!(exact.matches("www.example.com"));
        assert!(!exact.matches("x.www.example.com"));
        for bad in ["w*.example.com", "*.*.example.com", "", "a..b"] {
            assert!(NamePattern::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn rules_pick_recipients_by_name() -> Result<(), String> {
        let (_, a) = generate();
        let (_, b) = generate();
        let (_, admin) = generate();
        let text = format!("# groups\n*.a.test {a} {admin}\n*.b.test {b}  # web b\n* {admin}\n\n");
        let r = Recipients::parse(&text)?;
        let names = |n: &str| {
            r.for_name(n)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let mut want_a = vec![a.clone(), admin.clone()];
        want_a.sort();
        assert_eq!(names("www.a.test"), want_a);
        let mut want_b = vec![b.clone(), admin.clone()];
        want_b.sort();
        assert_eq!(names("x.b.test"), want_b);
        assert_eq!(names("c.test"), vec![admin.clone()]);
        let e = Recipients::parse(&format!("*.a.test {a}\nbad pattern x\n"))
            .err()
            .unwrap_or_default();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = Recipients::parse("*.a.test\n").err().unwrap_or_default();
        assert!(e.contains("no recipient"), "{e}");
        assert!(Recipients::parse("# nothing\n").is_err());
        Ok(())
    }

    #[test]
    fn opens_only_for_its_recipients_and_place() -> Result<(), SealError> {
        let (id_a, a) = generate();
        let (id_b, _) = generate();
        let ids_a = Identities::parse(id_a.expose()).map_err(|_| SealError::Corrupt)?;
        let ids_b = Identities::parse(id_b.expose()).map_err(|_| SealError::Corrupt)?;
        let rec = Recipients::parse(&format!("* {a}")).map_err(|_| SealError::Corrupt)?;
        let pem = "-----BEGIN PRIVATE KEY-----\nxyz\n-----END PRIVATE KEY-----\n";
        let ct = encrypt(&rec.for_name("n.test"), pem, "n.test/v1")?;
        assert!(!String::from_utf8_lossy(&ct).contains("PRIVATE KEY"));
        assert_eq!(
            decrypt(&ids_a, &ct, "n.test/v1", std::slice::from_ref(&a))?.expose(),
            pem
        );
        assert_eq!(
            decrypt(&ids_a, &ct, "m.test/v1", &[]).err(),
            Some(SealError::Corrupt)
        );
        assert!(matches!(
            decrypt(&ids_b, &ct, "n.test/v1", std::slice::from_ref(&a)),
            Err(SealError::NotARecipient { .. })
        ));
        assert!(matches!(
            decrypt(&Identities::default(), &ct, "n.test/v1", &[a]),
            Err(SealError::NoIdentity { .. })
        ));
        let e = Identities::parse("AGE-SECRET-KEY-1NOPE\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("line 1") && !e.contains("NOPE"), "{e}");
        Ok(())
    }
}
