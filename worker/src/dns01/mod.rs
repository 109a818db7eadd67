//! dns-01 challenge support (RFC 8555 §8.4).
//!
//! - [`provider`]: the [`Dns01Provider`] interface every DNS backend implements, and the
//!   typed [`DnsError`] whose [`Disposition`] says whether a job fails or is retried.
//! - [`rfc2136`]: a provider doing RFC 2136 dynamic updates signed with TSIG.
//! - [`digitalocean`], [`cloudflare`], [`acmedns`]: providers for those HTTP APIs.
//! - [`route53`]: AWS Route 53 through aws-sdk-route53.
//! - [`exec`]: an operator's command (lego's exec contract).
//! - [`propagation`]: challenge names, CNAME following, the SOA walk to the zone, the zone's
//!   authoritative servers, and waiting until all of them serve the value.
//! - `http` (private): the JSON-over-HTTPS client of the HTTP providers, and [`ApiSecret`].
//! - `txt` (private): TXT quoting for APIs taking presentation format.
//! - `transport` (private): one UDP/TCP exchange with one DNS server.
//!
//! - `settings`: the dns-01 section of the worker's configuration.
//! - `solver`: provider per zone, the Redis record of presented values, the
//!   propagation wait and cleanup, for the order flow (`acme::order`).
//!
//! The flow for one identifier: `challenge_fqdn` → `follow_cnames` → `find_zone` →
//! record → `present` → `wait_for_txt` → (ACME validation) → `cleanup`.

pub mod acmedns;
pub mod cloudflare;
pub mod digitalocean;
pub mod exec;
mod http;
pub mod propagation;
pub mod provider;
pub mod rfc2136;
pub mod route53;
pub mod settings;
mod solver;
mod transport;
mod txt;

pub use acmedns::{AcmeDnsAccount, AcmeDnsConfig, AcmeDnsProvider};
pub use cloudflare::{CloudflareConfig, CloudflareProvider};
pub use digitalocean::{DigitalOceanConfig, DigitalOceanProvider};
pub use exec::{ExecConfig, ExecProvider};
pub use http::Secret as ApiSecret;
pub use propagation::{
    AuthServer, Propagation, PropagationConfig, challenge_fqdn, parse_resolv_conf, system_resolvers,
};
pub use provider::{Disposition, Dns01Provider, DnsError, DnsFuture, RetryKind};
pub use rfc2136::{Rfc2136Config, Rfc2136Provider, TsigAlg, TsigSecret};
pub use route53::{AwsStaticCredentials, Route53Config, Route53Provider};
pub(crate) use solver::{SolveError, Solver};
