//! The configuration file as written: serde types that mirror the TOML exactly.
//!
//! Nothing here is trusted. [`super::validate`] turns these into the types the
//! gateway runs on, and every check lives there, once.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole `switchyard.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HTTP server the applications talk to.
    #[serde(default)]
    pub server: RawServer,
    /// The pooled HTTP client that talks to the providers.
    #[serde(default)]
    pub upstream: RawUpstream,
    /// Default timeouts for every deployment; a deployment may override each.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Where the usage ledger is written.
    #[serde(default)]
    pub ledger: RawLedger,
    /// API keys accepted from applications (`[[keys]]`).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Provider endpoints and credentials (`[providers.NAME]`).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Deployments: a provider × an upstream model, with its price (`[deployments.NAME]`).
    #[serde(default)]
    pub deployments: BTreeMap<String, RawDeployment>,
    /// Logical models: the names applications ask for (`[models.NAME]`).
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on, e.g. `"127.0.0.1:8080"` or `"0.0.0.0:8080"`. Default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 16 MiB.
    pub max_body_bytes: Option<u64>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in ms. Default 30000.
    pub drain_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// TCP (and TLS) connect timeout towards providers, in ms. Default 5000.
    pub connect_timeout_ms: Option<u64>,
    /// How long an idle pooled connection is kept, in ms. Default 90000.
    pub pool_idle_timeout_ms: Option<u64>,
    /// Most idle connections kept per provider host. Default 256.
    pub pool_max_idle_per_host: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Time allowed until the first byte of the answer (for streams: the first event), in ms.
    pub first_byte_ms: Option<u64>,
    /// Time allowed for the whole upstream call, streams included, in ms.
    pub total_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    /// SQLite file for the ledger; created with its tables if missing. Default `switchyard.db`.
    pub path: Option<String>,
    /// Set to false to keep no ledger at all. Default true.
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// A name for the key: it appears in the ledger and in `switchyard spend`.
    pub name: String,
    /// The secret itself, normally `"${ENV_VAR}"`.
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai` (also any OpenAI-compatible server: vLLM, llama.cpp, Ollama…) or `azure`.
    pub kind: String,
    /// openai: the API base including `/v1`, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// azure: the resource endpoint, e.g. `https://myres.openai.azure.com`.
    pub endpoint: Option<String>,
    /// azure: `deployments` (classic, needs `api_version`) or `v1` (the `/openai/v1` path).
    /// Default: `deployments` when `api_version` is set, else `v1`.
    pub api: Option<String>,
    /// azure classic: the `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: Option<String>,
    /// The credential, as `"${ENV_VAR}"`. Optional for servers that need none (a local vLLM).
    pub api_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// Name of an entry under `[providers]`.
    pub provider: String,
    /// The model as the provider names it (for Azure: the deployment name).
    pub model: String,
    /// Where it runs, e.g. `eu-west`; informational for now, routing uses it later.
    pub region: Option<String>,
    /// USD per million tokens.
    #[serde(default)]
    pub price: RawPrice,
    /// Overrides of the default `[timeouts]`.
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    /// USD per million prompt tokens that were not read from the provider's cache.
    pub input: Option<f64>,
    /// USD per million completion tokens.
    pub output: Option<f64>,
    /// USD per million prompt tokens read from the provider's cache. Default: `input`.
    pub cached_input: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Deployments that serve this model, in order of preference: the next one is tried
    /// when one fails with a retryable error before anything reached the client.
    pub deployments: Vec<String>,
}
