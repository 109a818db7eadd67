//! exec provider: hooks in tests/dns/*.sh run through /bin/sh, against the test BIND.

use std::collections::HashMap;
use std::time::Duration;

use certfleet_tests::dns::*;
use certfleet_worker::dns01::{Dns01Provider, DnsError, ExecConfig, ExecProvider, RetryKind};
use tokio::time::Instant;

fn hook(name: &str) -> String {
    format!("{}/dns/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A base environment like a worker's: its secrets must not reach the hook.
fn worker_env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        (
            "PATH",
            std::env::var("PATH")
                .unwrap_or_else(|_| "/usr/bin:/bin".into())
                .as_str(),
        ),
        ("HOME", "/root"),
        ("LANG", "C.UTF-8"),
        ("AWS_SECRET_ACCESS_KEY", "leak-me"),
        ("CERTFLEET_AMQP_URL", "amqp://u:pw@x"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn exec_provider(script: &str, pass: &[&str], env: HashMap<String, String>) -> ExecProvider {
    let mut c = ExecConfig::new("/bin/sh");
    c.args = vec![hook(script)];
    c.pass_env = pass.iter().map(|s| s.to_string()).collect();
    c.base_env = Some(env);
    c.timeout = Duration::from_secs(20);
    ExecProvider::new(c).unwrap()
}

fn nsupdate_provider(secret: &str) -> ExecProvider {
    ensure_bind();
    exec_provider(
        "nsupdate-hook.sh",
        &["NSUPDATE_KEY", "NSUPDATE_ZONE"],
        worker_env(&[("NSUPDATE_KEY", secret), ("NSUPDATE_ZONE", "proto.test")]),
    )
}

#[tokio::test]
async fn present_and_cleanup_through_an_nsupdate_hook() {
    let p = nsupdate_provider(SECRET_B64);
    let check = propagation();
    let fqdn = format!("_acme-challenge.exec-{}.proto.test.", run_id());
    let (a, b) = (value43("exec-apex"), value43("exec-wild"));
    p.present(&fqdn, "proto.test.", &a).await.unwrap();
    p.present(&fqdn, "proto.test.", &b).await.unwrap();
    for v in [&a, &b] {
        check
            .wait_for_txt(&fqdn, "proto.test.", v, WAIT, INTERVAL)
            .await
            .unwrap();
    }
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(dig_txt(&fqdn), both);
    p.cleanup(&fqdn, "proto.test.", &a).await.unwrap();
    assert_eq!(dig_txt(&fqdn), vec![b.clone()]);
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    p.cleanup(&fqdn, "proto.test.", &b).await.unwrap();
    assert!(dig_txt(&fqdn).is_empty());
}

/// The hook maps the server's NOTAUTH (bad TSIG key) to exit 2: the job fails at once.
#[tokio::test]
async fn hook_reporting_a_permanent_failure_is_not_retried() {
    let p = nsupdate_provider("crgCXfUWdxgrmRxFnTdMiFrG9XoBD9/mZSQ3hsHzgTk=");
    let fqdn = "_acme-challenge.exec-badkey.proto.test.";
    let err = p.present(fqdn, "proto.test.", "v").await.unwrap_err();
    assert!(
        matches!(&err, DnsError::Rejected(m) if m.contains("exit status 2") && m.contains("NOTAUTH")),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(dig_txt(fqdn).is_empty());
}

#[tokio::test]
async fn only_allowlisted_variables_reach_the_hook() {
    let dump = std::env::temp_dir().join(format!("dns01-exec-env-{}", run_id()));
    let dump_s = dump.display().to_string();
    let mut c = ExecConfig::new("/bin/sh");
    c.args = vec!["-c".into(), "env > \"$DUMP_TO\"".into(), "env-dump".into()];
    c.pass_env = vec!["DUMP_TO".into(), "DNS_API_TOKEN".into()];
    c.base_env = Some(worker_env(&[
        ("DUMP_TO", &dump_s),
        ("DNS_API_TOKEN", "for-the-hook"),
    ]));
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("leak-me") && !debug.contains("pw@x"),
        "{debug}"
    );
    let p = ExecProvider::new(c).unwrap();
    p.present("_acme-challenge.env.example.", "example.", "v")
        .await
        .unwrap();
    let text = std::fs::read_to_string(&dump).unwrap();
    let _ = std::fs::remove_file(&dump);
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("DNS_API_TOKEN"), Some(&"for-the-hook"));
    assert_eq!(vars.get("HOME"), Some(&"/root"));
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"));
    assert!(vars.contains_key("PATH"));
    assert!(
        !text.contains("leak-me") && !text.contains("amqp://"),
        "{text}"
    );
    // Only the allowed names, plus what the shell itself sets.
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "DUMP_TO",
        "DNS_API_TOKEN",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    for name in vars.keys() {
        assert!(allowed.contains(name), "unexpected {name} in {text}");
    }
}

/// With no injected map the worker's own environment is the base: cargo's variables
/// reach the hook only when listed.
#[tokio::test]
async fn the_process_environment_is_filtered_too() {
    let dump = std::env::temp_dir().join(format!("dns01-exec-penv-{}", run_id()));
    let mut c = ExecConfig::new("/bin/sh");
    c.args = vec![
        "-c".into(),
        format!("env > '{}'", dump.display()),
        "env-dump".into(),
    ];
    c.pass_env = vec!["CARGO_PKG_NAME".into()];
    ExecProvider::new(c)
        .unwrap()
        .cleanup("x.example.", "example.", "v")
        .await
        .unwrap();
    let text = std::fs::read_to_string(&dump).unwrap();
    let _ = std::fs::remove_file(&dump);
    assert!(text.contains("CARGO_PKG_NAME=certfleet-tests"), "{text}");
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    assert!(!text.contains("CARGO_MANIFEST_DIR"), "{text}");
}

/// Processes whose process group is `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            members.push(pid);
        }
    }
    members
}

async fn timeout_case(ignore_term: bool) {
    let pids = std::env::temp_dir().join(format!("dns01-exec-pids-{}-{ignore_term}", run_id()));
    let mut c = ExecConfig::new("/bin/sh");
    c.args = vec![hook("sleepy-hook.sh")];
    c.pass_env = vec!["PIDS_TO".into(), "IGNORE_TERM".into()];
    c.base_env = Some(worker_env(&[
        ("PIDS_TO", &pids.display().to_string()),
        ("IGNORE_TERM", if ignore_term { "1" } else { "0" }),
    ]));
    c.timeout = Duration::from_secs(1);
    c.kill_grace = Duration::from_millis(500);
    let p = ExecProvider::new(c).unwrap();
    let started = Instant::now();
    let err = p
        .present("_acme-challenge.slow.example.", "example.", "v")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            DnsError::Retryable {
                kind: RetryKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("sleepy hook started"), "{err}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let text = std::fs::read_to_string(&pids).unwrap();
    let _ = std::fs::remove_file(&pids);
    let ids: Vec<u32> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    // The background child was reparented when the hook died; give init a moment to reap.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = group_members(ids[0]);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of group {} still alive: {left:?}",
            ids[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{}", ids[1])).exists()
            || group_members(ids[0]).is_empty()
    );
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    timeout_case(false).await;
}

#[tokio::test]
async fn timeout_kills_a_group_that_ignores_sigterm() {
    timeout_case(true).await;
}

#[tokio::test]
async fn exit_statuses_and_stderr_tail() {
    for (code, permanent) in [("2", true), ("1", false), ("3", false)] {
        let p = exec_provider(
            "exit-hook.sh",
            &["EXIT_CODE"],
            worker_env(&[("EXIT_CODE", code)]),
        );
        let err = p
            .present("_acme-challenge.exit.example.", "example.", "v")
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.is_retryable(), !permanent, "{code}: {err:?}");
        if permanent {
            assert!(matches!(err, DnsError::Rejected(_)), "{err:?}");
        } else {
            assert!(
                matches!(
                    err,
                    DnsError::Retryable {
                        kind: RetryKind::ServerFailure,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        assert!(msg.contains(&format!("exit status {code}")), "{msg}");
        assert!(msg.contains("LAST-MARKER: zone example.test not managed here (present _acme-challenge.exit.example.)"), "{msg}");
        // Only the tail: the start of a long stderr is cut, stdout is not used.
        assert!(
            !msg.contains("FIRST-MARKER") && !msg.contains("stdout of the hook"),
            "{msg}"
        );
        assert!(!msg.contains("leak-me"));
    }
}

#[tokio::test]
async fn missing_command_is_a_config_error() {
    let p = ExecProvider::new(ExecConfig::new("/nonexistent/dns-hook")).unwrap();
    let err = p
        .present("_acme-challenge.x.example.", "example.", "v")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DnsError::Config(m) if m.contains("/nonexistent/dns-hook") && m.contains("not found")),
        "{err:?}"
    );
}
