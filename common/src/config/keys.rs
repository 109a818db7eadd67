//! The contract's names: every setting's file key, and from it the
//! environment variable (`CERTFLEET_` + the key in upper case) and the flag
//! (`--` + the key with dashes). Scripts, the chart and operators depend on
//! these names; add more, keep these. Which binary reads which setting is
//! decided by its section ([`super::Config`] for every binary, the worker's
//! own sections in the worker crate), not here: a TOML file shared by the
//! roles may hold every key.

macro_rules! settings {
    ($( $(#[$doc:meta])* $konst:ident = $key:literal, $secret:literal; )*) => {
        $( $(#[$doc])* pub const $konst: &str = $key; )*
        /// All keys, for checking a TOML file for typos.
        pub const ALL: &[&str] = &[$($key),*];
        /// Whether each key of [`ALL`] is secret (never printed, never a flag).
        const SECRET_FLAGS: &[bool] = &[$( $secret ),*];
    };
}

settings! {
    /// Broker URL with vhost: `amqp://user:pass@host:5672/vhost`.
    AMQP_URL = "amqp_url", true;
    /// `redis://host:port/db`, or
    /// `redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`.
    REDIS_URL = "redis_url", true;
    /// Password of the sentinels themselves (`requirepass` on each
    /// sentinel), when `redis_url` is a `redis+sentinel://` one.
    REDIS_SENTINEL_PASSWORD = "redis_sentinel_password", true;
    /// PEM CA file trusted for `rediss://` (besides the public roots).
    REDIS_CA_FILE = "redis_ca_file", false;
    /// Client certificate (PEM) for `rediss://`.
    REDIS_CLIENT_CERT_FILE = "redis_client_cert_file", false;
    /// Its private key (PEM).
    REDIS_CLIENT_KEY_FILE = "redis_client_key_file", false;
    /// PEM CA file trusted for `amqps://` (besides the public roots).
    AMQP_CA_FILE = "amqp_ca_file", false;
    /// Client certificate (PEM) for `amqps://`.
    AMQP_CLIENT_CERT_FILE = "amqp_client_cert_file", false;
    /// Its private key (PEM, PKCS#8).
    AMQP_CLIENT_KEY_FILE = "amqp_client_key_file", false;
    /// PEM CA file trusted for an `https://` S3 endpoint.
    S3_CA_FILE = "s3_ca_file", false;
    /// Client certificate (PEM) for an `https://` S3 endpoint.
    S3_CLIENT_CERT_FILE = "s3_client_cert_file", false;
    /// Its private key (PEM).
    S3_CLIENT_KEY_FILE = "s3_client_key_file", false;
    /// Prefix of every Redis key (default `certfleet:`).
    REDIS_PREFIX = "redis_prefix", false;
    /// Bucket holding certificates and account data.
    S3_BUCKET = "s3_bucket", false;
    /// Endpoint of an S3-compatible server (AWS when unset).
    S3_ENDPOINT = "s3_endpoint", false;
    /// Region (default `us-east-1`).
    S3_REGION = "s3_region", false;
    /// Path-style addressing (`true` for MinIO, moto, Ceph).
    S3_PATH_STYLE = "s3_path_style", false;
    /// Prefix of every object key (default empty).
    S3_PREFIX = "s3_prefix", false;
    /// ACME directory URL (default Let's Encrypt staging).
    ACME_DIRECTORY = "acme_directory", false;
    /// Several CAs, tried in order: `NAME=DIRECTORY_URL,...`.
    ACME_ISSUERS = "acme_issuers", false;
    /// A CA rate-limiting for longer than this falls back to the next one.
    ACME_FALLBACK_AFTER = "acme_fallback_after", false;
    /// Extra PEM roots to trust for the ACME server.
    ACME_CA_CERTS = "acme_ca_certs", false;
    /// Account contact address.
    ACME_EMAIL = "acme_email", false;
    /// External account binding key id (ZeroSSL, Google).
    ACME_EAB_KID = "acme_eab_kid", false;
    /// External account binding HMAC key, base64url.
    ACME_EAB_HMAC_KEY = "acme_eab_hmac_key", true;
    /// Where a worker answers `/.well-known/acme-challenge/`.
    HTTP01_LISTEN = "http01_listen", false;
    /// The shortest wait between two reads of a certificate's ARI window,
    /// whatever the CA's Retry-After.
    ARI_RECHECK_MIN = "ari_recheck_min", false;
    /// Where a worker answers tls-alpn-01 handshakes (none: not at all).
    TLSALPN01_LISTEN = "tlsalpn01_listen", false;
    /// Where a worker serves `/metrics`, `/healthz`, `/readyz`.
    METRICS_LISTEN = "metrics_listen", false;
    /// Orders in flight per worker (= AMQP prefetch).
    CONCURRENCY = "concurrency", false;
    /// Attempts before a job is dead-lettered.
    MAX_ATTEMPTS = "max_attempts", false;
    /// How long in-flight jobs may run on after SIGTERM.
    SHUTDOWN_GRACE = "shutdown_grace", false;
    /// Lifetime of a name's lease in Redis (refreshed at a third of it).
    LEASE_TTL = "lease_ttl", false;
    /// Run the renewal due-scan this often inside the worker.
    SCHEDULE_EVERY = "schedule_every", false;
    /// Routing-key patterns the worker's queue is bound to.
    WORKER_BINDINGS = "worker_bindings", false;
    /// The work queue this worker consumes (one per pool of workers).
    WORK_QUEUE = "work_queue", false;
    /// Versions kept per certificate besides the current one.
    HISTORY = "history", false;
    /// 32-byte key (base64) to encrypt private keys at rest.
    ENCRYPTION_KEY = "encryption_key", true;
    /// File holding the encryption key.
    ENCRYPTION_KEY_FILE = "encryption_key_file", false;
    /// Who may read which certificate's key: lines of `pattern age1...`
    /// (workers, `import`, `keys reseal`).
    RECIPIENTS_FILE = "recipients_file", false;
    /// This server's age identities (`AGE-SECRET-KEY-1...` lines), opening
    /// the keys encrypted to it (`pull`, `watch`, `keys reseal`).
    IDENTITY_FILE = "identity_file", false;
    /// `true`: a worker may store private keys unencrypted (no recipients
    /// file, no encryption key); it warns at start.
    INSECURE_PLAINTEXT_KEYS = "insecure_plaintext_keys", false;
    /// Fleet-wide cap on new orders per account: `COUNT/DURATION` or `off`.
    RATE_ORDERS = "rate_orders", false;
    /// Fleet-wide cap on failed validations per hostname: `COUNT/DURATION` or `off`.
    RATE_FAILED_VALIDATIONS = "rate_failed_validations", false;
    /// New certificates per registered domain (Let's Encrypt: 50 per 7 days).
    RATE_CERTS_PER_DOMAIN = "rate_certs_per_domain", false;
    /// New certificates per exact set of names (Let's Encrypt: 5 per 7 days).
    RATE_DUPLICATES = "rate_duplicates", false;
    /// RabbitMQ management API (`server add|list|remove`), e.g.
    /// `http://127.0.0.1:15672`; credentials in it, else the broker URL's.
    /// Default: the broker's host, port 15672 (https for amqps).
    RABBITMQ_MGMT_URL = "rabbitmq_mgmt_url", true;
    /// `text` or `json` logs.
    LOG_FORMAT = "log_format", false;
    /// Log filter (`tracing` directives such as `info,certfleet=debug`);
    /// `RUST_LOG` is read when it is unset.
    LOG = "log", false;
    /// dns-01 provider for every zone not named in `dns01_zones`:
    /// `rfc2136`, `digitalocean`, `cloudflare`, `route53`, `acme-dns` or `exec`.
    DNS01_PROVIDER = "dns01_provider", false;
    /// Providers of particular zones: `ZONE=PROVIDER[,ZONE=PROVIDER...]`
    /// (a fleet whose zones live at different DNS hosts).
    DNS01_ZONES = "dns01_zones", false;
    /// Recursive resolvers for zone, CNAME and nameserver look-ups:
    /// `host:port[,host:port...]` (default: the system's).
    DNS01_RESOLVERS = "dns01_resolvers", false;
    /// How long to wait until every authoritative server serves the value.
    DNS01_PROPAGATION_TIMEOUT = "dns01_propagation_timeout", false;
    /// TTL of the TXT records, seconds.
    DNS01_TTL = "dns01_ttl", false;
    /// `exec` provider: the command run as `CMD present|cleanup FQDN VALUE`.
    DNS01_EXEC = "dns01_exec", false;
    /// `exec` provider: how long one run may take.
    DNS01_EXEC_TIMEOUT = "dns01_exec_timeout", false;
    /// `exec` provider: further variables passed to the command (names).
    DNS01_EXEC_ENV = "dns01_exec_env", false;
    /// `rfc2136`: the primary nameserver taking updates, `host[:port]`.
    RFC2136_NAMESERVER = "rfc2136_nameserver", false;
    /// `rfc2136`: TSIG key name.
    RFC2136_TSIG_KEY = "rfc2136_tsig_key", false;
    /// `rfc2136`: TSIG secret, base64.
    RFC2136_TSIG_SECRET = "rfc2136_tsig_secret", true;
    /// `rfc2136`: file holding the TSIG secret.
    RFC2136_TSIG_SECRET_FILE = "rfc2136_tsig_secret_file", false;
    /// `rfc2136`: TSIG algorithm (`hmac-sha256`, `hmac-sha384`, `hmac-sha512`).
    RFC2136_TSIG_ALGORITHM = "rfc2136_tsig_algorithm", false;
    /// `digitalocean`: API token.
    DIGITALOCEAN_TOKEN = "digitalocean_token", true;
    /// `digitalocean`: file holding the API token.
    DIGITALOCEAN_TOKEN_FILE = "digitalocean_token_file", false;
    /// `digitalocean`: API base URL (tests, proxies).
    DIGITALOCEAN_API_URL = "digitalocean_api_url", false;
    /// `cloudflare`: API token (Zone.DNS edit).
    CLOUDFLARE_API_TOKEN = "cloudflare_api_token", true;
    /// `cloudflare`: file holding the API token.
    CLOUDFLARE_API_TOKEN_FILE = "cloudflare_api_token_file", false;
    /// `cloudflare`: API base URL (tests, proxies).
    CLOUDFLARE_API_URL = "cloudflare_api_url", false;
    /// `route53`: hosted zone id (default: found by the zone's name).
    ROUTE53_HOSTED_ZONE_ID = "route53_hosted_zone_id", false;
    /// `route53`: API endpoint (tests, VPC endpoints); credentials come from
    /// the standard AWS chain.
    ROUTE53_ENDPOINT = "route53_endpoint", false;
    /// `acme-dns`: the acme-dns server's API URL.
    ACMEDNS_API_URL = "acmedns_api_url", false;
    /// `acme-dns`: JSON file of the registered accounts (lego's
    /// `ACME_DNS_STORAGE_PATH` format); it holds passwords.
    ACMEDNS_STORAGE = "acmedns_storage", false;
}

/// The environment variable of a setting key.
pub fn env_name(key: &str) -> String {
    format!("CERTFLEET_{}", key.to_ascii_uppercase())
}

/// Whether a key's value is secret: never printed, never accepted as a flag.
pub(crate) fn is_secret(key: &str) -> bool {
    ALL.iter()
        .zip(SECRET_FLAGS)
        .any(|(k, secret)| *secret && *k == key)
}

/// Environment variable naming the TOML file.
pub const ENV_CONFIG: &str = "CERTFLEET_CONFIG";

/// Variable read for the log filter when `CERTFLEET_LOG` is unset.
pub const ENV_RUST_LOG: &str = "RUST_LOG";
