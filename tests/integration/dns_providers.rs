//! The dns-01 providers and the propagation check against a private,
//! authoritative-only BIND 9 of their own (`tests/dns/start-bind.sh`, on
//! 127.0.0.155:53, zones `proto.test` and `deleg.test`), and fake DNS APIs
//! (`certfleet_tests::dns`) that implement each provider's documented API
//! and apply every record change to that BIND.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod acmedns;
mod cloudflare;
mod digitalocean;
mod exec;
mod propagation;
mod rfc2136;
mod route53;
