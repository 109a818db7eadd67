//! Certificate signing requests the operator brings (`certfleet issue
//! --csr`, and the CSR `--key-file` makes): read, checked and carried in
//! the job (option [`crate::job::OPTION_CSR`]) and in the pointer, so
//! renewals send the same request again.
//!
//! A CSR is accepted when its signature verifies with its own public key
//! (the requester holds the key), its key is one certfleet orders
//! (ECDSA P-256/P-384, RSA 2048/3072/4096), and it names at least one DNS
//! name: its subjectAltName dNSNames, or without those its subject's common
//! name. The names are normalized like any job's; the first is the
//! certificate's default name.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer as _, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use crate::domain;
use crate::job::KeyType;

/// The longest CSR accepted, DER (an RSA 4096 CSR with 100 names is about
/// 4.5 KiB).
pub const MAX_CSR_LEN: usize = 8 * 1024;

/// A checked CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// As given, DER.
    pub der: Vec<u8>,
    /// Its DNS names, normalized, without duplicates: the common name
    /// first when it is one of them, then the subjectAltNames in order.
    pub domains: Vec<String>,
    /// Its SubjectPublicKeyInfo, DER: what the issued certificate must carry.
    pub spki: Vec<u8>,
    /// The type of its key.
    pub key_type: KeyType,
}

impl Csr {
    /// Reads a PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or
    /// DER CSR.
    ///
    /// # Errors
    /// A reason in words when it is not a CSR certfleet can order with.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(b"-----") || bytes.trim_ascii_start().starts_with(b"-----") {
            let block = x509_parser::pem::Pem::iter_from_buffer(bytes)
                .next()
                .ok_or("no PEM block")?
                .map_err(|e| format!("the PEM does not parse: {e}"))?;
            if !block.label.ends_with("CERTIFICATE REQUEST") {
                return Err(format!(
                    "a {:?} block, not a CERTIFICATE REQUEST",
                    block.label
                ));
            }
            return Self::from_der(&block.contents);
        }
        Self::from_der(bytes)
    }

    /// Reads a DER CSR.
    ///
    /// # Errors
    /// A reason in words when it is not a CSR certfleet can order with.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        if der.len() > MAX_CSR_LEN {
            return Err(format!("{} bytes: larger than {MAX_CSR_LEN}", der.len()));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| format!("not a certificate signing request: {e}"))?;
        if !rest.is_empty() {
            return Err("trailing bytes after the request".into());
        }
        csr.verify_signature()
            .map_err(|_| "its signature does not verify with its own public key".to_string())?;
        let info = &csr.certification_request_info;
        let key_type = match info.subject_pki.parsed() {
            Ok(PublicKey::EC(point)) => match point.key_size() {
                256 => KeyType::EcdsaP256,
                384 => KeyType::EcdsaP384,
                n => return Err(format!("an ECDSA key of {n} bits (P-256 or P-384 only)")),
            },
            Ok(PublicKey::RSA(rsa)) => match rsa.key_size() {
                2048 => KeyType::Rsa2048,
                3072 => KeyType::Rsa3072,
                4096 => KeyType::Rsa4096,
                n => return Err(format!("an RSA key of {n} bits (2048, 3072 or 4096 only)")),
            },
            _ => {
                return Err("its key is neither ECDSA P-256/P-384 nor RSA 2048/3072/4096".into());
            }
        };
        let mut sans = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => sans.push((*d).to_string()),
                        other => {
                            return Err(format!(
                                "it asks for {other} (only DNS names are ordered)"
                            ));
                        }
                    }
                }
            }
        }
        let cn = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string);
        let mut wanted = Vec::new();
        match &cn {
            Some(cn) if sans.is_empty() || sans.iter().any(|s| s.eq_ignore_ascii_case(cn)) => {
                wanted.push(cn.clone());
            }
            Some(cn) => {
                return Err(format!(
                    "its common name {cn:?} is not among its subjectAltNames"
                ));
            }
            None => {}
        }
        wanted.extend(sans);
        let mut domains: Vec<String> = Vec::new();
        for w in &wanted {
            let d = domain::normalize_domain(w).map_err(|e| format!("name {w:?}: {e}"))?;
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        if domains.is_empty() {
            return Err("it names no DNS name (no subjectAltName, no common name)".into());
        }
        if domains.len() > crate::domain::MAX_DOMAINS {
            return Err(format!(
                "it names {} DNS names (at most {})",
                domains.len(),
                crate::domain::MAX_DOMAINS
            ));
        }
        Ok(Self {
            der: der.to_vec(),
            domains,
            spki: info.subject_pki.raw.to_vec(),
            key_type,
        })
    }

    /// As a job option and in the pointer: base64 of the DER.
    pub fn encode(&self) -> String {
        B64.encode(&self.der)
    }

    /// From [`Csr::encode`]'s form.
    ///
    /// # Errors
    /// Not base64, or not a CSR certfleet can order with.
    pub fn decode(text: &str) -> Result<Self, String> {
        if text.len() > MAX_CSR_LEN * 4 / 3 + 4 {
            return Err("too long".into());
        }
        let der = B64.decode(text).map_err(|_| "not base64".to_string())?;
        Self::from_der(&der)
    }

    /// Whether `cert_der` carries this request's public key.
    pub fn matches_certificate(&self, cert_der: &[u8]) -> bool {
        x509_parser::parse_x509_certificate(cert_der)
            .is_ok_and(|(_, cert)| cert.public_key().raw == self.spki.as_slice())
    }

    /// Whether it asks for exactly `domains` (in any order).
    pub fn names_are(&self, domains: &[String]) -> bool {
        let mut a: Vec<&String> = self.domains.iter().collect();
        let mut b: Vec<&String> = domains.iter().collect();
        a.sort();
        b.sort();
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn csr_of(key: &KeyPair, names: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.serialize_request(key).expect("csr").der().to_vec()
    }

    #[test]
    fn names_key_type_and_round_trip() -> Result<(), String> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(|e| e.to_string())?;
        let der = csr_of(
            &key,
            &["b.example.com", "WWW.Example.com"],
            Some("www.example.com"),
        );
        let csr = Csr::from_der(&der)?;
        assert_eq!(csr.domains, ["www.example.com", "b.example.com"]);
        assert_eq!(csr.key_type, KeyType::EcdsaP384);
        assert_eq!(Csr::decode(&csr.encode())?, csr);
        assert!(csr.names_are(&["b.example.com".into(), "www.example.com".into()]));
        assert!(!csr.names_are(&["b.example.com".into()]));
        let pem = pem_of(&der);
        assert_eq!(Csr::from_pem_or_der(pem.as_bytes())?, csr);
        // The certificate of the same key matches, another key's does not.
        let cert = CertificateParams::new(vec!["www.example.com".into()])
            .map_err(|e| e.to_string())?
            .self_signed(&key)
            .map_err(|e| e.to_string())?;
        assert!(csr.matches_certificate(cert.der()));
        let other = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = CertificateParams::new(vec!["www.example.com".into()])
            .map_err(|e| e.to_string())?
            .self_signed(&other)
            .map_err(|e| e.to_string())?;
        assert!(!csr.matches_certificate(cert.der()));
        Ok(())
    }

    fn pem_of(der: &[u8]) -> String {
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            B64.encode(der)
        )
    }

    #[test]
    fn refusals_say_why() -> Result<(), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        // Only a common name: that is the name.
        let csr = Csr::from_der(&csr_of(&key, &[], Some("cn.example.com")))?;
        assert_eq!(csr.domains, ["cn.example.com"]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (csr_of(&key, &[], None), "names no DNS name"),
            (
                csr_of(&key, &["a.example.com"], Some("other.example.com")),
                "not among its subjectAltNames",
            ),
            (
                csr_of(&key, &["bad_name!.example.com"], None),
                "name \"bad_name!",
            ),
            (b"garbage".to_vec(), "not a certificate signing request"),
        ];
        for (der, want) in cases {
            let err = Csr::from_der(&der).err().ok_or("accepted")?;
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        // A flipped bit in the signed part: the signature fails.
        let mut der = csr_of(&key, &["a.example.com"], None);
        let at = der.len() / 2;
        der[at] ^= 1;
        assert!(Csr::from_der(&der).is_err());
        let err =
            Csr::from_pem_or_der(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .err()
                .ok_or("accepted")?;
        assert!(err.contains("not a CERTIFICATE REQUEST"), "{err}");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| e.to_string())?;
        let err = Csr::from_der(&csr_of(&ed, &["a.example.com"], None))
            .err()
            .ok_or("accepted")?;
        assert!(err.contains("neither ECDSA"), "{err}");
        Ok(())
    }
}
