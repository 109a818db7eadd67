//! Every submitting command validates its input before it connects: a bad
//! request is a usage error with nothing published, and a good one against
//! a broker that is down is a failure, not a success.

use std::collections::HashMap;
use std::time::Duration;

use certfleet_common::amqp::BrokerError;
use certfleet_common::config::Sources;
use certfleet_common::{ChallengeType, Config, KeyType};
use tokio_util::sync::CancellationToken;

use super::bulk::{SubmitArgs, submit};
use super::error::SubmitError;
use super::issue::{IssueArgs, issue};
use super::renew::{RenewArgs, renew};

fn closed_port_config() -> Config {
    // Port 1 on loopback: nothing listens, a connection attempt fails at once.
    let env: HashMap<&str, &str> = [
        ("CERTFLEET_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("CERTFLEET_REDIS_URL", "redis://127.0.0.1:1/0"),
        ("CERTFLEET_S3_ENDPOINT", "http://127.0.0.1:1"),
    ]
    .into();
    Config::load(&Sources::new(&env)).expect("valid config")
}

fn issue_args(domains: &[&str], challenge: ChallengeType) -> IssueArgs {
    IssueArgs {
        domains: domains.iter().map(|d| (*d).to_string()).collect(),
        name: None,
        key_type: KeyType::default(),
        challenge,
        profile: None,
        ca: None,
        csr: None,
        key_file: None,
        wait: true,
        timeout: Duration::from_secs(1),
    }
}

#[tokio::test]
async fn issue_validates_before_connecting() {
    let config = closed_port_config();
    for (domains, challenge) in [
        (&["bad_domain!.example.com"][..], ChallengeType::Http01),
        (&["1.2.3.4"], ChallengeType::Http01),
        (&["*.example.com"], ChallengeType::Http01),
    ] {
        let err = issue(
            &config,
            &issue_args(domains, challenge),
            CancellationToken::new(),
        )
        .await
        .expect_err("must fail");
        assert!(err.is_usage(), "{domains:?}: {err}");
        assert!(
            matches!(err, SubmitError::Request(_)),
            "{domains:?}: {err:?}"
        );
    }
    // The same configuration with a valid request does try to connect,
    // and a broker that is down is a failure (exit 1), not success.
    let err = issue(
        &config,
        &issue_args(&["www.example.com"], ChallengeType::Http01),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(!err.is_usage(), "{err}");
    assert!(
        matches!(err, SubmitError::Broker(BrokerError::Connect { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn submit_validates_before_connecting() -> Result<(), std::io::Error> {
    let config = closed_port_config();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("certs.txt");
    std::fs::write(&path, "a.example.com\nnot a domain!\n")?;
    let args = SubmitArgs {
        file: path,
        wait: false,
        timeout: Duration::from_secs(1),
    };
    let err = submit(&config, &args, CancellationToken::new())
        .await
        .expect_err("bad line");
    assert!(
        err.is_usage() && err.to_string().contains("certs.txt:2: "),
        "{err}"
    );
    let missing = SubmitArgs {
        file: dir.path().join("nope.txt"),
        wait: false,
        timeout: Duration::from_secs(1),
    };
    let err = submit(&config, &missing, CancellationToken::new())
        .await
        .expect_err("missing file");
    assert!(err.is_usage(), "{err}");
    Ok(())
}

#[tokio::test]
async fn renew_validates_names_before_connecting() {
    let config = closed_port_config();
    let args = RenewArgs {
        names: vec!["Not A Name".into()],
        due: false,
        within: None,
        dry_run: false,
        wait: false,
        timeout: Duration::from_secs(1),
    };
    let err = renew(&config, &args, CancellationToken::new())
        .await
        .expect_err("bad name");
    assert!(err.is_usage(), "{err}");
}
