//! Certificate requests: validating one (`issue`'s arguments, a line of a
//! bulk file) and parsing whole bulk files, all before anything connects.

use std::collections::HashMap;

use certfleet_common::domain;
use certfleet_common::{CertName, ChallengeType, Job, KeyType};

use super::error::{LineError, RequestError, SubmitError};

/// A validated request for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The certificate's name.
    pub(crate) name: CertName,
    /// Normalized domains, first one first, without duplicates.
    pub(crate) domains: Vec<String>,
    /// Key type.
    pub(crate) key_type: KeyType,
    /// Challenge type.
    pub(crate) challenge: ChallengeType,
    /// Job options (`profile`).
    pub(crate) options: std::collections::BTreeMap<String, String>,
}

impl Request {
    /// Validates a request: domains normalized ([`domain::normalize_domains`]),
    /// wildcards only with dns-01 (RFC 8555 §7.1.3), the name given or
    /// derived from the first domain.
    ///
    /// # Errors
    /// The first rule the request breaks.
    pub(crate) fn new<S: AsRef<str>>(
        domains: &[S],
        name: Option<&str>,
        key_type: KeyType,
        challenge: ChallengeType,
    ) -> Result<Self, RequestError> {
        let domains = domain::normalize_domains(domains)?;
        let wildcard = domains.iter().find(|d| domain::is_wildcard(d));
        if let Some(w) = wildcard
            && !challenge.proves_wildcards()
        {
            return Err(RequestError::WildcardNeedsDns01(w.clone()));
        }
        let name = match name {
            Some(n) => CertName::parse(n)?,
            None => CertName::from_domain(&domains[0])?,
        };
        Ok(Self {
            name,
            domains,
            key_type,
            challenge,
            options: Default::default(),
        })
    }

    /// The same request asking the issuer `ca` first.
    ///
    /// # Errors
    /// A name that is not an issuer name.
    pub(crate) fn with_ca(mut self, ca: Option<&str>) -> Result<Self, String> {
        if let Some(c) = ca {
            certfleet_common::job::check_issuer(c)?;
            self.options
                .insert(certfleet_common::job::OPTION_CA.into(), c.into());
        }
        Ok(self)
    }

    /// The same request ordered with the operator's CSR (its key type),
    /// and with `--key-file` the operator's key sealed for the name.
    ///
    /// # Errors
    /// The CSR names other domains than the request.
    pub(crate) fn with_csr(
        mut self,
        csr: &certfleet_common::csr::Csr,
        sealed: Option<&certfleet_common::seal::SealedKey>,
    ) -> Result<Self, String> {
        if !csr.names_are(&self.domains) {
            return Err(format!(
                "the CSR names {}, the request {}",
                csr.domains.join(", "),
                self.domains.join(", ")
            ));
        }
        self.key_type = csr.key_type;
        self.options
            .insert(certfleet_common::job::OPTION_CSR.into(), csr.encode());
        if let Some(key) = sealed {
            let json = serde_json::to_string(key).map_err(|e| format!("the sealed key: {e}"))?;
            self.options
                .insert(certfleet_common::job::OPTION_KEY.into(), json);
        }
        Ok(self)
    }

    /// The same request ordered with the ACME profile `profile`.
    ///
    /// # Errors
    /// A name that is not a profile name.
    pub(crate) fn with_profile(mut self, profile: Option<&str>) -> Result<Self, String> {
        if let Some(p) = profile {
            certfleet_common::job::check_profile(p)?;
            self.options
                .insert(certfleet_common::job::OPTION_PROFILE.into(), p.into());
        }
        Ok(self)
    }

    /// The job for this request.
    pub(crate) fn job(&self, reason: &str) -> Job {
        Job {
            name: self.name.clone(),
            domains: self.domains.clone(),
            key_type: self.key_type,
            challenge: self.challenge,
            reason: reason.to_string(),
            options: self.options.clone(),
        }
    }
}

/// Parses one line of a bulk file:
/// `DOMAIN [DOMAIN...] [name=NAME] [key=TYPE] [challenge=TYPE]`, `#` to the
/// end of the line is a comment. `Ok(None)` for a blank or comment line.
///
/// # Errors
/// Why the line is not a valid request.
pub(crate) fn parse_line(line: &str) -> Result<Option<Request>, String> {
    let content = line.find('#').map_or(line, |i| &line[..i]);
    let mut domains: Vec<&str> = Vec::new();
    let mut name: Option<&str> = None;
    let mut key_type: Option<KeyType> = None;
    let mut challenge: Option<ChallengeType> = None;
    let mut profile: Option<&str> = None;
    for token in content.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            domains.push(token);
            continue;
        };
        let duplicate = || format!("{key}= given twice");
        match key {
            "name" => {
                if name.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            "key" => {
                if key_type.replace(value.parse()?).is_some() {
                    return Err(duplicate());
                }
            }
            "challenge" => {
                if challenge.replace(value.parse()?).is_some() {
                    return Err(duplicate());
                }
            }
            "profile" => {
                if profile.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            other => {
                return Err(format!(
                    "unknown option {other:?} (name=NAME, key=TYPE, challenge=TYPE or profile=NAME)"
                ));
            }
        }
    }
    if domains.is_empty() {
        return if name.is_none() && key_type.is_none() && challenge.is_none() && profile.is_none() {
            Ok(None)
        } else {
            Err("no domain names on this line".into())
        };
    }
    Request::new(
        &domains,
        name,
        key_type.unwrap_or_default(),
        challenge.unwrap_or(ChallengeType::Http01),
    )
    .map_err(|e| match e {
        RequestError::WildcardNeedsDns01(w) => {
            format!("wildcard names need challenge=dns-01 ({w})")
        }
        other => other.to_string(),
    })?
    .with_profile(profile)
    .map(Some)
}

/// Parses a whole bulk file: every line is checked, and a certificate name
/// may appear only once. Returns the requests with their line numbers.
///
/// # Errors
/// Every bad line (so that one run shows them all), or
/// [`SubmitError::EmptyFile`].
pub(crate) fn parse_file(text: &str, file: &str) -> Result<Vec<(usize, Request)>, SubmitError> {
    let mut requests: Vec<(usize, Request)> = Vec::new();
    let mut errors: Vec<LineError> = Vec::new();
    let mut seen: HashMap<CertName, usize> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let error = |reason: String| LineError {
            file: file.to_string(),
            line: line_no,
            reason,
        };
        match parse_line(line) {
            Ok(None) => {}
            Ok(Some(request)) => {
                if let Some(earlier) = seen.insert(request.name.clone(), line_no) {
                    errors.push(error(format!(
                        "certificate name {} is already requested on line {earlier} (give one of them name=...)",
                        request.name
                    )));
                } else {
                    requests.push((line_no, request));
                }
            }
            Err(reason) => errors.push(error(reason)),
        }
    }
    if !errors.is_empty() {
        return Err(SubmitError::Lines(errors));
    }
    if requests.is_empty() {
        return Err(SubmitError::EmptyFile(file.to_string()));
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_common::domain::DomainError;

    fn domains(ds: &[&str]) -> Vec<String> {
        ds.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn request_defaults_and_normalizes() -> Result<(), RequestError> {
        let r = Request::new(
            &["WWW.Example.com.", "example.com", "www.example.com"],
            None,
            KeyType::default(),
            ChallengeType::Http01,
        )?;
        assert_eq!(r.name.as_str(), "www.example.com");
        assert_eq!(r.domains, domains(&["www.example.com", "example.com"]));
        let r = Request::new(
            &["bücher.example"],
            Some("books"),
            KeyType::Rsa2048,
            ChallengeType::Http01,
        )?;
        assert_eq!(r.domains, domains(&["xn--bcher-kva.example"]));
        assert_eq!(r.name.as_str(), "books");
        Ok(())
    }

    #[test]
    fn request_rules() {
        let http = ChallengeType::Http01;
        let k = KeyType::default();
        assert!(matches!(
            Request::new(&["*.example.com"], None, k, http),
            Err(RequestError::WildcardNeedsDns01(_))
        ));
        assert!(matches!(
            Request::new(&["*.example.com"], None, k, ChallengeType::TlsAlpn01),
            Err(RequestError::WildcardNeedsDns01(_))
        ));
        assert!(Request::new(&["www.example.com"], None, k, ChallengeType::TlsAlpn01).is_ok());
        assert!(
            Request::new(&["*.example.com"], None, k, http)
                .map(|_| ())
                .unwrap_err()
                .to_string()
                .starts_with("wildcard names need --challenge dns-01")
        );
        // Wildcard and apex in one certificate, with dns-01.
        let r = Request::new(
            &["example.com", "*.example.com"],
            None,
            k,
            ChallengeType::Dns01,
        )
        .expect("dns-01 takes wildcards");
        assert_eq!(r.domains, domains(&["example.com", "*.example.com"]));
        let r = Request::new(&["*.example.com"], None, k, ChallengeType::Dns01)
            .expect("a wildcard alone");
        assert_eq!(r.name.as_str(), "_wildcard.example.com");
        assert!(matches!(
            Request::new(&["10.0.0.1"], None, k, http),
            Err(RequestError::Domain(DomainError::IpLiteral(_)))
        ));
        assert!(matches!(
            Request::new(&["a.example.com"], Some("Bad/Name"), k, http),
            Err(RequestError::Domain(DomainError::CertName { .. }))
        ));
        let many: Vec<String> = (0..101).map(|i| format!("h{i}.example.com")).collect();
        assert!(Request::new(&many, None, k, http).is_err());
    }

    #[test]
    fn lines() -> Result<(), String> {
        assert_eq!(parse_line("")?, None);
        assert_eq!(parse_line("   # just a comment")?, None);
        let r = parse_line(
            "  www.example.com example.com name=site key=rsa-3072 challenge=http-01 # note",
        )?
        .ok_or("no request")?;
        assert_eq!(r.name.as_str(), "site");
        assert_eq!(r.domains, domains(&["www.example.com", "example.com"]));
        assert_eq!(r.key_type, KeyType::Rsa3072);
        assert_eq!(r.challenge, ChallengeType::Http01);
        let r = parse_line("a.example.com")?.ok_or("no request")?;
        assert_eq!(
            (r.key_type, r.challenge),
            (KeyType::EcdsaP256, ChallengeType::Http01)
        );
        Ok(())
    }

    #[test]
    fn a_line_may_name_a_profile() -> Result<(), String> {
        let r = parse_line("a.example.com profile=shortlived")?.ok_or("a request")?;
        assert_eq!(r.job("bulk").profile(), Some("shortlived"));
        let r = parse_line("b.example.com")?.ok_or("a request")?;
        assert_eq!(r.job("bulk").profile(), None);
        Ok(())
    }

    #[test]
    fn bad_lines() {
        for (line, want) in [
            ("a.example.com key=dsa", "unknown key type"),
            ("a.example.com challenge=tls-alpn-02", "unknown challenge"),
            (
                "*.example.com challenge=tls-alpn-01",
                "wildcard names need challenge=dns-01",
            ),
            ("a.example.com colour=blue", "unknown option \"colour\""),
            ("a.example.com profile=a/b", "profile \"a/b\""),
            ("a.example.com profile=x profile=y", "profile= given twice"),
            ("a.example.com name=a name=b", "name= given twice"),
            ("name=a", "no domain names"),
            ("*.example.com", "wildcard names need challenge=dns-01"),
            ("a..example.com", "empty label"),
            ("127.0.0.1", "IP address"),
        ] {
            let err = parse_line(line).map(|_| ()).expect_err(line);
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn files_report_every_bad_line() {
        let text = "# certificates\n\na.example.com\nb..example.com\nc.example.com name=a.example.com\n\nd.example.com key=x\n";
        let Err(SubmitError::Lines(errors)) = parse_file(text, "certs.txt") else {
            panic!("bad file accepted");
        };
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [4, 5, 7]);
        let shown = SubmitError::Lines(errors).to_string();
        assert!(shown.starts_with("certs.txt:4: "), "{shown}");
        assert!(
            shown.contains(
                "certs.txt:5: certificate name a.example.com is already requested on line 3"
            ),
            "{shown}"
        );
        assert!(shown.ends_with("nothing was published"));
        assert!(matches!(
            parse_file("# nothing\n\n", "-"),
            Err(SubmitError::EmptyFile(_))
        ));
        let ok = parse_file("a.example.com\n\nb.example.com c.example.com\n", "f").expect("valid");
        assert_eq!(ok.iter().map(|(l, _)| *l).collect::<Vec<_>>(), [1, 3]);
    }
}
