//! What a version must prove before it is switched in on a webserver.
//!
//! `pull` and `watch` install only the version the name's pointer names
//! when it is read (`sync`), and only after [`check`] passed on it:
//!
//! - the bundle is the one the pointer was written for: same name, same
//!   version, and (when the bundle records one) the same job;
//! - the certificate is the version: its serial is the pointer's, and its
//!   notBefore and serial give the version id (`storage::version_id`), so a
//!   bundle whose certificate was swapped does not pass;
//! - the private key is the certificate's (their public keys are equal);
//!   a bundle without one passes only when the pointer says the certificate
//!   was ordered with the operator's CSR (`issue --csr`), which holds it;
//! - the certificate covers every domain of the pointer (SAN dNSName
//!   entries; a `*.` entry covers one label);
//! - it is valid now: notBefore − [`CLOCK_SKEW`] ≤ now ≤ notAfter;
//! - the chain verifies: the leaf is signed by the first chain certificate,
//!   each chain certificate by the next (x509-parser on aws-lc-rs). The chain
//!   is not checked against a root store: the webserver's clients do that;
//!   what is checked here is that the files hang together.
//!
//! A failure is a reason in words (never key material). The serial the hook
//! is told comes from here (the parsed certificate), never from an event
//! or the pointer's text.

use std::time::Duration;

use certfleet_common::Secret;
use certfleet_common::storage::version_id;
use certfleet_common::{Bundle, Pointer};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::private_key::PrivateKey;

/// How far in the future a certificate's notBefore may be: webserver and CA
/// clocks differ by seconds, sometimes minutes. notAfter gets no grace: an
/// expired certificate is of no use to anyone.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What a version that passed [`check`] tells about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The leaf's serial, lower-case hex without leading zeros (as the
    /// worker writes it).
    pub(crate) serial: String,
}

/// Checks `bundle` (with its opened key) against the `pointer` that named
/// it, at `now`. See the module doc for the list.
///
/// # Errors
/// Why the version must not be installed.
pub(crate) fn check(
    pointer: &Pointer,
    bundle: &Bundle,
    key_pem: Option<&Secret<String>>,
    now: OffsetDateTime,
) -> Result<Checked, String> {
    if bundle.name != pointer.name || bundle.version != pointer.version {
        return Err(format!(
            "the pointer names {} version {} but its bundle holds {} version {}",
            pointer.name, pointer.version, bundle.name, bundle.version
        ));
    }
    if let Some(job) = bundle.job_id
        && job != pointer.job_id
    {
        return Err(format!(
            "the bundle was stored by job {job}, the pointer by job {}",
            pointer.job_id
        ));
    }
    let mut ders = certificates(&bundle.cert_pem, "certificate")?;
    if ders.is_empty() {
        return Err("the bundle holds no certificate".into());
    }
    ders.extend(certificates(&bundle.chain_pem, "chain")?);
    let mut parsed = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            let what = if i == 0 {
                "the certificate".to_string()
            } else {
                format!("chain certificate {i}")
            };
            format!("{what} does not parse: {e}")
        })?;
        parsed.push(cert);
    }
    let leaf = &parsed[0];

    let serial = certfleet_common::serial_stored(leaf.raw_serial());
    if serial != pointer.serial {
        return Err(format!(
            "the pointer says serial {}, the certificate's is {serial}",
            pointer.serial
        ));
    }
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    let expected = version_id(not_before, &serial);
    if expected != pointer.version {
        return Err(format!(
            "the certificate (notBefore {not_before}, serial {serial}) is version {expected}, not {}",
            pointer.version
        ));
    }
    check_validity(not_before, not_after, now)?;
    check_domains(leaf, &pointer.domains)?;
    // None: the operator holds the key (`issue --csr`); the CA checked the
    // CSR's signature, so the certificate carries the operator's public key.
    // Any other certificate comes with its key.
    match key_pem {
        Some(key_pem) => check_key(leaf, key_pem)?,
        None if pointer.csr.is_some() => {}
        None => {
            return Err(
                "the bundle holds no private key, and the certificate was not ordered with the operator's CSR"
                    .into(),
            );
        }
    }
    check_chain(&parsed)?;
    Ok(Checked { serial })
}

/// The DER of every certificate in `pem`; any other block is refused.
fn certificates(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| format!("the {what} PEM does not parse: {e}"))?;
        if block.label != "CERTIFICATE" {
            return Err(format!("the {what} PEM holds a {:?} block", block.label));
        }
        out.push(block.contents);
    }
    Ok(out)
}

fn check_validity(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<(), String> {
    if now + CLOCK_SKEW < not_before {
        return Err(format!(
            "the certificate is not valid yet (notBefore {not_before}, now {now})"
        ));
    }
    if now > not_after {
        return Err(format!(
            "the certificate has expired (notAfter {not_after}, now {now})"
        ));
    }
    Ok(())
}

/// Whether SAN entry `san` covers `domain` (both compared in lower case;
/// `*.example.com` covers `www.example.com` and itself, not `example.com`
/// nor `a.b.example.com`).
fn covers(san: &str, domain: &str) -> bool {
    let (san, domain) = (san.to_ascii_lowercase(), domain.to_ascii_lowercase());
    if san == domain {
        return true;
    }
    match (san.strip_prefix("*."), domain.split_once('.')) {
        (Some(base), Some((label, rest))) => !label.is_empty() && label != "*" && rest == base,
        _ => false,
    }
}

fn check_domains(leaf: &X509Certificate<'_>, domains: &[String]) -> Result<(), String> {
    if domains.is_empty() {
        return Err("the pointer lists no domains".into());
    }
    let san = leaf
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's SAN extension does not parse: {e}"))?;
    let names: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(*d),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let missing: Vec<&str> = domains
        .iter()
        .map(String::as_str)
        .filter(|d| !names.iter().any(|n| covers(n, d)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the certificate does not cover {} (its names: {})",
            missing.join(", "),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }
}

/// The public key (as in a certificate's SubjectPublicKeyInfo bit string)
/// of a PEM private key: PKCS#8, SEC 1 or PKCS#1; ECDSA P-256/P-384, RSA or
/// Ed25519.
/// Whether `key_pem` is the private key of `leaf` (also used by `import`).
pub(crate) fn check_key(
    leaf: &X509Certificate<'_>,
    key_pem: &Secret<String>,
) -> Result<(), String> {
    let key = PrivateKey::from_pem(key_pem.expose().as_bytes())
        .map_err(|e| format!("the private key {e}"))?;
    if key.public_key() == leaf.public_key().subject_public_key.data.as_ref() {
        Ok(())
    } else {
        Err("the private key does not match the certificate".into())
    }
}

/// Each certificate is signed by the next one (the last one is not checked
/// against anything: no root store here).
fn check_chain(certs: &[X509Certificate<'_>]) -> Result<(), String> {
    for (i, pair) in certs.windows(2).enumerate() {
        let (child, issuer) = (&pair[0], &pair[1]);
        if let Err(e) = child.verify_signature(Some(issuer.public_key())) {
            let child = if i == 0 {
                "the certificate".to_string()
            } else {
                format!("chain certificate {i}")
            };
            return Err(format!(
                "the chain does not verify: {child} ({}) is not signed by chain certificate {} ({}): {e}",
                pair[0].subject(),
                i + 1,
                issuer.subject()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
