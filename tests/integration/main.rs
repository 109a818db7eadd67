//! Integration tests against the real services of `scripts/stack.sh`.
//! One binary, one module per area (ripgrep's layout).

mod agent_checks;
mod cli;
mod clusters;
mod dashboard;
mod dns01;
mod dns_providers;
mod eab;
mod faults;
mod fixtures;
mod freeze;
mod hostile;
mod import;
mod issue;
mod issuers;
mod keys;
mod limits;
mod own_key;
mod profiles;
mod prometheus;
mod renew;
mod responder;
mod rollout;
mod secrets;
mod servers;
mod services;
mod silent_broker;
mod soak;
mod storage;
mod tls;
mod tls_alpn;
mod watch;
