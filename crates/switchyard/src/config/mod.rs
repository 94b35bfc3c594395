//! Configuration: one TOML file, parsed into [`raw`] types, then validated into
//! [`Config`], whose values cannot be invalid, so nothing downstream re-checks them.
//!
//! Every error names the field path (`models.support-chat.deployments[1]`) and, when
//! the file is at hand, the line it sits on.

mod channel;
pub mod contract;
mod credentials;
mod native;
pub mod policy;
mod raw;
mod secret;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use channel::{Channel, PiiOutput, MAX_STOP_SEQUENCES};
pub use contract::{Commitment, Contract, ContractPeriod};
pub use credentials::{
    AzureEntra, GoogleAuthorizedUser, GoogleServiceAccount, ProviderCredentials,
};
pub use secret::Secret;

use policy::{Budget, PiiMode, Policy};

use crate::types::Price;

/// A configuration error: what is wrong, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, when the configuration came from one.
    pub file: Option<PathBuf>,
    /// Dotted path of the offending field, e.g. `providers.openai.api_key`.
    pub path: String,
    /// 1-based line of the field in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        } else if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub ledger: LedgerConfig,
    pub keys: Vec<ApiKey>,
    pub providers: Vec<Arc<Provider>>,
    pub deployments: Vec<Arc<Deployment>>,
    /// Logical models by name.
    pub models: BTreeMap<String, Arc<LogicalModel>>,
    pub breaker: BreakerConfig,
    pub admin: AdminConfig,
    pub governance: GovernanceSettings,
    pub images: ImagesConfig,
    /// Shared run-time state (`[state]`); `None`: in-process state.
    pub state: Option<StateConfig>,
    /// Which engine holds the key store and the ledger.
    pub storage: StorageConfig,
    /// Metrics and traces (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// Channel profiles by name (`[channels.NAME]`).
    pub channels: BTreeMap<String, Arc<Channel>>,
    /// Contracts by name (`[contracts.NAME]`).
    pub contracts: BTreeMap<String, Arc<Contract>>,
}

impl Config {
    /// The contracts, in name order.
    pub fn contract_list(&self) -> Vec<Arc<Contract>> {
        self.contracts.values().cloned().collect()
    }
}

/// Who may read `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// The admin token.
    Admin,
    /// Anyone who reaches the address.
    None,
}

/// Metrics and traces (`[telemetry]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub metrics: bool,
    /// `None`: `/metrics` is served on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    pub metrics_auth: MetricsAuth,
    pub key_labels: bool,
    pub team_labels: bool,
    /// `None`: no traces.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// How often the batch exporter sends.
    pub export_interval: Duration,
    /// 0.0 to 1.0.
    pub sampling_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            metrics: true,
            metrics_listen: None,
            metrics_auth: MetricsAuth::Admin,
            key_labels: true,
            team_labels: true,
            otlp_endpoint: None,
            service_name: "switchyard".to_owned(),
            export_interval: Duration::from_millis(5000),
            sampling_ratio: 1.0,
        }
    }
}

/// Where replicas share their run-time state (`[state]`).
#[derive(Debug, Clone)]
pub struct StateConfig {
    pub redis_url: Secret,
    /// Prefix of every key and channel, e.g. `switchyard:`.
    pub prefix: String,
    pub on_unavailable: OnUnavailable,
    /// Longest wait for one Redis call.
    pub timeout: Duration,
}

/// What a replica does while its shared state is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Serve with in-process state.
    Local,
    /// Refuse requests with 503 `state_unavailable`.
    Closed,
}

impl OnUnavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::Closed => "closed",
        }
    }
}

/// Which database engine holds the key store and the ledger (`[storage]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// SQLite files: `ledger.path` and `governance.store`.
    #[default]
    Sqlite,
    /// One PostgreSQL database for both.
    Postgres(PostgresConfig),
}

/// How to reach the PostgreSQL database of `[storage] kind = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL; it may carry a password, so it never prints.
    pub url: Secret,
    /// Most pooled connections.
    pub max_connections: u32,
    /// Connecting, or waiting for a pooled connection.
    pub connect_timeout: Duration,
}

/// Default of `storage.max_connections`.
const DEFAULT_PG_MAX_CONNECTIONS: u32 = 10;
/// Default of `storage.connect_timeout_ms`.
const DEFAULT_PG_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// How the gateway fetches image URLs for providers that need bytes (`[images]`).
#[derive(Debug, Clone)]
pub struct ImagesConfig {
    pub max_bytes: usize,
    /// Most bytes fetched for all the images of one request together.
    pub max_total_bytes: usize,
    pub timeout: Duration,
    /// Hosts or addresses exempt from the private-address refusal.
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// `None`: the admin API is off (only team-scoped spend reads work).
    pub token: Option<Secret>,
}

/// When a deployment's circuit breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub window: u32,
    pub open_for: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// How long `/readyz` fails before the listener closes, on shutdown.
    pub drain_grace: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The SQLite file. None: no ledger is kept, or (with `[storage] kind =
    /// "postgres"`, see `enabled`) the ledger is in the database.
    pub path: Option<PathBuf>,
    /// Whether a ledger is kept at all (`ledger.enabled`).
    pub enabled: bool,
    /// Requests older than this many days are deleted (`ledger.retention_days`).
    pub retention_days: Option<u32>,
    /// What a request does when the ledger's queue is full.
    pub on_overload: OnOverload,
    /// With [`OnOverload::Block`], the longest a request waits for room in the queue.
    pub max_wait: Duration,
    /// How many days a stored response is kept (`ledger.responses_ttl_days`).
    pub responses_ttl_days: u32,
}

/// What a request does with its ledger row when the writer's queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnOverload {
    /// Wait for room (bounded by `ledger.max_wait_ms`) rather than lose the row.
    #[default]
    Block,
    /// Never wait: the row is dropped and counted.
    Drop,
}

/// Default of `ledger.max_wait_ms`: as long as the writer waits for another
/// process's write lock, so a lock held that long does not cost a row.
pub const DEFAULT_LEDGER_MAX_WAIT_MS: u64 = 5_000;
/// Most `ledger.max_wait_ms` may be: a request should not hang on accounting longer.
const MAX_LEDGER_MAX_WAIT_MS: u64 = 60_000;
/// Default of `ledger.responses_ttl_days`: OpenAI keeps stored responses 30 days.
pub const DEFAULT_RESPONSES_TTL_DAYS: u32 = 30;
/// Most `ledger.responses_ttl_days` may be: ten years, far beyond any use, and small
/// enough that the expiry in milliseconds can never overflow.
const MAX_RESPONSES_TTL_DAYS: u32 = 3650;

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub key: Secret,
    pub policy: Policy,
    pub budgets: Vec<Budget>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub api_key: Option<Secret>,
    /// A credential obtained and renewed at run time, used instead of `api_key`.
    pub credentials: Option<ProviderCredentials>,
    /// openai, azure: `POST /v1/responses` may go to the provider's own Responses API
    /// (`responses_api`, default true); always false for other kinds.
    pub responses_api: bool,
    /// An `openai` provider whose base URL is OpenAI's own API rather than a server
    /// that speaks its protocol (see [`is_openai_itself`]); known at load, since the
    /// request path asks on every call.
    pub openai_itself: bool,
}

/// Whether a provider of this kind is OpenAI's own API.
pub fn is_openai_itself(kind: &ProviderKind) -> bool {
    let ProviderKind::OpenAi { base_url } = kind else {
        return false;
    };
    reqwest::Url::parse(base_url)
        .ok()
        .and_then(|u| {
            u.host_str()
                .map(|h| h.eq_ignore_ascii_case("api.openai.com"))
        })
        .unwrap_or(false)
}

impl Provider {
    /// The URL the provider is reached at, and the field that sets it.
    pub fn base_url(&self) -> (&str, &'static str) {
        self.kind.base_url()
    }
}

/// Whether `url` is plain `http://` to a host other than this machine, so that what
/// it carries (the credential, the prompts) crosses a network unencrypted.
fn is_insecure_remote(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    if parsed.scheme() != "http" {
        return false;
    }
    let Some(host) = parsed.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => {
            // `localhost` and its subdomains resolve to loopback (RFC 6761).
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            !(name == "localhost" || name.ends_with(".localhost"))
        }
    }
}

/// Something valid but unwise in a configuration, for `config check` and the log at
/// start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Dotted path of the field, e.g. `providers.vllm.base_url`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any server that speaks its API. `base_url` has no trailing slash.
    OpenAi { base_url: String },
    /// Azure OpenAI. `endpoint` has no trailing slash.
    Azure { endpoint: String, api: AzureApi },
    /// Anthropic Messages. `base_url` (no `/v1`, no trailing slash) and the
    /// `anthropic-version` header.
    Anthropic { base_url: String, version: String },
    /// AWS Bedrock Runtime (Converse). Signed with SigV4 unless the provider has an
    /// `api_key` (a Bedrock API key, sent as a bearer token).
    Bedrock {
        base_url: String,
        region: String,
        credentials: Option<AwsCredentials>,
    },
    /// Mistral's chat API: OpenAI-shaped at `base_url` (with `/v1`), with Mistral's
    /// differences.
    Mistral { base_url: String },
    /// The Gemini API (`{base_url}/{api_version}/models/{model}:generateContent`), with
    /// `x-goog-api-key`.
    Gemini {
        base_url: String,
        api_version: String,
    },
    /// Vertex AI (`{base_url}/{api_version}/projects/{project}/locations/{location}/
    /// publishers/google/models/{model}:generateContent`), with a bearer token.
    Vertex {
        base_url: String,
        api_version: String,
        project: String,
        location: String,
    },
}

/// Static AWS credentials for SigV4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl ProviderKind {
    /// The URL the provider is reached at, and the field that sets it.
    pub fn base_url(&self) -> (&str, &'static str) {
        match self {
            ProviderKind::Azure { endpoint, .. } => (endpoint, "endpoint"),
            ProviderKind::OpenAi { base_url }
            | ProviderKind::Anthropic { base_url, .. }
            | ProviderKind::Bedrock { base_url, .. }
            | ProviderKind::Mistral { base_url }
            | ProviderKind::Gemini { base_url, .. }
            | ProviderKind::Vertex { base_url, .. } => (base_url, "base_url"),
        }
    }

    /// The provider's `gen_ai.provider.name` in OpenTelemetry's GenAI conventions.
    pub fn gen_ai_name(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi { .. } => "openai",
            ProviderKind::Azure { .. } => "azure.ai.openai",
            ProviderKind::Anthropic { .. } => "anthropic",
            ProviderKind::Bedrock { .. } => "aws.bedrock",
            ProviderKind::Gemini { .. } => "gcp.gemini",
            ProviderKind::Vertex { .. } => "gcp.vertex_ai",
            ProviderKind::Mistral { .. } => "mistral_ai",
        }
    }

    /// The low-cardinality name used in headers, logs and the ledger.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi { .. } => "openai",
            ProviderKind::Azure { .. } => "azure",
            ProviderKind::Anthropic { .. } => "anthropic",
            ProviderKind::Bedrock { .. } => "bedrock",
            ProviderKind::Gemini { .. } => "gemini",
            ProviderKind::Vertex { .. } => "vertex",
            ProviderKind::Mistral { .. } => "mistral",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureApi {
    /// `/openai/deployments/{deployment}/…?api-version=…`
    Deployments { api_version: String },
    /// `/openai/v1/…` with the deployment name as `model`.
    V1,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    /// Position in `Config::deployments`; indexes per-deployment runtime state
    /// (health, breaker, latency) without a map lookup.
    pub index: usize,
    pub name: String,
    pub provider: Arc<Provider>,
    /// The model (Azure: deployment) name the provider knows.
    pub upstream_model: String,
    pub region: Option<String>,
    pub price: Price,
    pub timeouts: Timeouts,
    pub quota: Quota,
    pub capabilities: Capabilities,
    pub data_tags: Vec<String>,
    /// The tag this deployment's reasoning state carries (Gemini's thought signatures,
    /// Claude's thinking blocks), from its provider kind and upstream model; `None` for
    /// kinds that issue none. Computed once here: every answer of such a deployment,
    /// and routing's affinity check, reads it.
    pub reasoning_issuer: Option<String>,
    /// The contract that covers this deployment, if any (at most one does).
    pub contract: Option<Arc<Contract>>,
    /// What a call costs here: the contract's price, or else the list price.
    pub effective_price: Price,
    /// Header values and limiter keys made of the names, built once here rather than
    /// on every request.
    pub derived: DerivedNames,
    /// The upstream URLs and auth header, built on first use and kept (see
    /// [`UpstreamCache`]).
    pub upstream: UpstreamCache,
}

/// An absolute `http`/`https` URL as a request target. Text that is not a valid
/// request target as it stands (a space in a path, a non-ASCII host) is normalised
/// as a browser would (percent-encoding, IDNA) and tried again.
pub fn parse_url(text: &str) -> Result<http::Uri, String> {
    let uri = http::Uri::try_from(text).or_else(|_| {
        let normalised = reqwest::Url::parse(text).map_err(|e| format!("invalid URL: {e}"))?;
        http::Uri::try_from(normalised.as_str()).map_err(|e| format!("invalid URL: {e}"))
    })?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err("invalid URL: not an absolute http or https URL".to_owned()),
    }
}

/// A deployment's upstream request parts that never change while its configuration
/// runs: each endpoint's parsed URL and the static key's auth header. Built by the
/// provider adapter on first use (it knows the formats) and reused by every call.
#[derive(Debug, Clone, Default)]
pub struct UpstreamCache {
    urls: [std::sync::OnceLock<Option<http::Uri>>; 4],
    auth: std::sync::OnceLock<Option<(http::HeaderName, http::HeaderValue)>>,
}

impl UpstreamCache {
    /// The URL kept in `slot` (one per endpoint), made by `make` the first time; `None`
    /// when it does not parse (the caller then goes the slow way, which reports it).
    pub fn url(&self, slot: usize, make: impl FnOnce() -> String) -> Option<http::Uri> {
        self.urls
            .get(slot)?
            .get_or_init(|| parse_url(&make()).ok())
            .clone()
    }

    /// The static key's auth header, made by `make` the first time.
    pub fn auth(
        &self,
        make: impl FnOnce() -> Option<(http::HeaderName, http::HeaderValue)>,
    ) -> Option<&(http::HeaderName, http::HeaderValue)> {
        self.auth.get_or_init(make).as_ref()
    }
}

/// What every answer and every quota check of a deployment says of its names.
#[derive(Debug, Clone)]
pub struct DerivedNames {
    /// `x-switchyard-deployment` and `x-switchyard-provider` (`None` for a name that
    /// is not a valid header value).
    pub deployment_header: Option<http::HeaderValue>,
    pub provider_header: Option<http::HeaderValue>,
    /// The limiter's keys of the deployment's granted quota.
    pub rpm_key: Arc<str>,
    pub tpm_key: Arc<str>,
}

impl DerivedNames {
    pub fn of(deployment: &str, provider: &str) -> DerivedNames {
        DerivedNames {
            deployment_header: http::HeaderValue::from_str(deployment).ok(),
            provider_header: http::HeaderValue::from_str(provider).ok(),
            rpm_key: Arc::from(format!("deployment:{deployment}:rpm")),
            tpm_key: Arc::from(format!("deployment:{deployment}:tpm")),
        }
    }
}

/// See [`Deployment::reasoning_issuer`].
pub fn reasoning_issuer_of(kind: &ProviderKind, upstream_model: &str) -> Option<String> {
    let kind = match kind {
        ProviderKind::Gemini { .. } => "gemini",
        ProviderKind::Vertex { .. } => "vertex",
        ProviderKind::Anthropic { .. } => "anthropic",
        ProviderKind::Bedrock { .. } => "bedrock",
        ProviderKind::OpenAi { .. } | ProviderKind::Azure { .. } | ProviderKind::Mistral { .. } => {
            return None
        }
    };
    Some(crate::types::reasoning::issuer_tag(kind, upstream_model))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub total: Duration,
}

/// Provider-granted quota; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub tools: bool,
    pub vision: bool,
    pub json_schema: bool,
    pub context_window: Option<u64>,
    pub max_output: Option<u64>,
}

/// Output tokens assumed for a request that sets no maximum: the default of
/// `governance.default_max_output_tokens`, which routing and admission both use.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;

/// Settings from the `[governance]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernanceSettings {
    /// The store's SQLite file; `None` when neither `governance.store` nor a ledger is set
    /// (then only the config file's `[[keys]]` exist).
    pub store: Option<PathBuf>,
    /// Whether content may be logged at all; policies can only narrow it.
    pub log_content: bool,
    /// PII mode for keys whose policies set none.
    pub pii: PiiMode,
    /// Custom PII patterns: (label, regex).
    pub pii_patterns: Vec<(String, String)>,
    /// Output tokens assumed when a request sets no maximum (for limits and budgets).
    pub default_max_output_tokens: u64,
    /// How often the store's change counter is polled.
    pub refresh: Duration,
}

impl Default for GovernanceSettings {
    fn default() -> Self {
        GovernanceSettings {
            store: None,
            log_content: false,
            pii: PiiMode::Off,
            pii_patterns: Vec::new(),
            default_max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            refresh: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogicalModel {
    pub name: String,
    pub strategy: Strategy,
    /// The deployments, in configuration order.
    pub targets: Vec<Target>,
    /// Constraints that hold for every request to this model.
    pub constraints: Constraints,
    /// Per-model overrides of the deployments' timeouts.
    pub first_byte_timeout: Option<Duration>,
    pub total_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub hedge_after: Option<Duration>,
    /// What a stream that breaks after content was relayed does.
    pub stream_recovery: StreamRecovery,
    /// Under `priority`, deployments with an unburned commitment go first.
    pub prefer_commitments: bool,
    /// The response cache, when the model opts in (`cache = { … }`).
    pub cache: Option<CacheSettings>,
    /// Shadow evaluation of a candidate deployment (`[models.NAME.shadow]`).
    pub shadow: Option<Arc<Shadow>>,
}

/// The similarity from which two text answers agree, unless a shadow says otherwise.
pub const DEFAULT_AGREE_AT: f64 = 0.8;

/// `[models.NAME.shadow]`, validated.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub candidate: Arc<Deployment>,
    pub sample_rate: f64,
    pub budget_nano_usd_per_day: i64,
    pub agree_at: f64,
    /// The model a mirrored request is dispatched to: the candidate alone, one
    /// attempt, no hedge, the parent model's constraints.
    pub model: Arc<LogicalModel>,
    /// With `embeddings = "DEPLOYMENT"`: where text answers' embeddings come from.
    /// Without, text is compared by word overlap.
    pub embeddings: Option<ShadowEmbeddings>,
}

/// `[models.NAME.shadow] embeddings`: the deployment, and the one-deployment model
/// the comparison's embeddings call is dispatched to (built like `Shadow::model`).
#[derive(Debug, Clone)]
pub struct ShadowEmbeddings {
    pub deployment: Arc<Deployment>,
    pub model: Arc<LogicalModel>,
}

impl PartialEq for Shadow {
    fn eq(&self, other: &Shadow) -> bool {
        self.candidate.name == other.candidate.name
            && self.sample_rate == other.sample_rate
            && self.budget_nano_usd_per_day == other.budget_nano_usd_per_day
            && self.agree_at == other.agree_at
            && self.embeddings.as_ref().map(|e| &e.deployment.name)
                == other.embeddings.as_ref().map(|e| &e.deployment.name)
    }
}

/// `[models.NAME] cache`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub ttl: Duration,
    /// Most bytes of answers kept for the model; a larger answer is not kept.
    pub max_bytes: u64,
    /// Whether answers to requests with a non-zero temperature are reused too.
    pub any_temperature: bool,
}

/// The cache's size when no model sets `max_bytes`: 64 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// `[models.NAME] stream_recovery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamRecovery {
    /// The stream ends with one error event.
    #[default]
    Off,
    /// The next eligible deployment continues the partial answer.
    Continue,
}

impl LogicalModel {
    /// The timeouts an attempt on `deployment` gets for this model.
    pub fn timeouts_for(&self, deployment: &Deployment) -> Timeouts {
        Timeouts {
            connect: deployment.timeouts.connect,
            first_byte: self
                .first_byte_timeout
                .unwrap_or(deployment.timeouts.first_byte),
            total: self.total_timeout.unwrap_or(deployment.timeouts.total),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Priority,
    Weighted,
    Latency,
    Cost,
}

impl Strategy {
    pub fn label(self) -> &'static str {
        match self {
            Strategy::Priority => "priority",
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::Cost => "cost",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub deployment: Arc<Deployment>,
    pub tier: u32,
    pub weight: u32,
}

/// Where a request may go: regions and data tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    /// `None`: anywhere.
    pub allowed_regions: Option<Vec<String>>,
    pub required_tags: Vec<String>,
}

impl Constraints {
    /// Whether `d`'s region is allowed (no list: any region, a deployment without
    /// one included).
    pub fn region_allows(&self, d: &Deployment) -> bool {
        self.allowed_regions.as_ref().is_none_or(|allowed| {
            d.region
                .as_ref()
                .is_some_and(|r| allowed.iter().any(|a| a == r))
        })
    }

    /// The first required tag `d` does not carry.
    pub fn missing_tag(&self, d: &Deployment) -> Option<&str> {
        self.required_tags
            .iter()
            .find(|tag| !d.data_tags.iter().any(|t| t == *tag))
            .map(String::as_str)
    }

    /// Whether `d` may carry data under these constraints (region and tags).
    pub fn admits(&self, d: &Deployment) -> bool {
        self.region_allows(d) && self.missing_tag(d).is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: u64 = 16 * 1024 * 1024;
// Grace and drain together leave 5 s of a 30 s orchestrator grace period for the
// ledger's flush.
const DEFAULT_DRAIN_GRACE_MS: u64 = 5_000;
const DEFAULT_DRAIN_MS: u64 = 20_000;
const DEFAULT_CONNECT_MS: u64 = 5_000;
const DEFAULT_POOL_IDLE_MS: u64 = 90_000;
const DEFAULT_POOL_MAX_IDLE: usize = 256;
const DEFAULT_FIRST_BYTE_MS: u64 = 60_000;
const DEFAULT_TOTAL_MS: u64 = 600_000;
/// Two images at the per-image default, base64 in memory at about 4/3 of that.
const DEFAULT_IMAGES_TOTAL_BYTES: usize = 50 * 1024 * 1024;

impl Config {
    /// Every channel with its objectives, for the channel report.
    pub fn channel_objectives(&self) -> Vec<(String, Option<Duration>, Option<Duration>)> {
        self.channels
            .values()
            .map(|c| (c.name.clone(), c.ttft_slo, c.total_slo))
            .collect()
    }

    /// The channel profile named `name`.
    pub fn channel(&self, name: &str) -> Option<&Arc<Channel>> {
        self.channels.get(name)
    }

    /// Reads, parses and validates a file, taking secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            path: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&src, |name| std::env::var(name).ok()).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and validates TOML text; `env` resolves `${VAR}` references.
    pub fn parse(src: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(src).map_err(|e| from_toml_error(src, &e))?;
        validate(raw, &env).map_err(|mut e| {
            e.line = line_of(src, &e.path);
            e
        })
    }

    pub fn model(&self, name: &str) -> Option<&Arc<LogicalModel>> {
        self.models.get(name)
    }

    /// What is allowed but unwise: providers reached over plain HTTP off this machine
    /// (permitted by their `allow_insecure_http`).
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        self.providers
            .iter()
            .filter_map(|p| {
                let (url, field) = p.base_url();
                is_insecure_remote(url).then(|| ConfigWarning {
                    path: format!("providers.{}.{field}", path_key(&p.name)),
                    message: format!(
                        "`{url}` is plain http:// to another machine: the credential and \
                         the prompts cross the network in clear text"
                    ),
                })
            })
            .collect()
    }
}

fn from_toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| line_at(src, span.start));
    // toml's message carries the serde path for type and unknown-field errors; the
    // first line of its Display repeats the position, which we report ourselves.
    ConfigError {
        file: None,
        path: String::new(),
        line,
        message: e.message().trim().to_owned(),
    }
}

fn line_at(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds the line of a dotted field path (`a.b[2].c`) in the TOML source.
fn line_of(src: &str, path: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(src).ok()?;
    let mut item = doc.as_item();
    let mut best = None;
    for segment in path_segments(path) {
        let next = match segment {
            Segment::Key(k) => item.get(k),
            Segment::Index(i) => item.get(i),
        };
        let Some(next) = next else { break };
        item = next;
        if let Some(span) = item.span() {
            best = Some(span.start);
        }
    }
    best.map(|offset| line_at(src, offset))
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// A table key as it appears in a field path: quoted when it holds a dot, as TOML
/// writes it (`models."gpt-4.1".deployments[0]`), so the path stays unambiguous.
fn path_key(name: &str) -> String {
    if name.contains('.') || name.contains('"') {
        format!("{name:?}")
    } else {
        name.to_owned()
    }
}

/// Splits `a."b.c"[2].d` into keys and indexes.
fn path_segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let Some((key, after)) = quoted.split_once('"') else {
                break;
            };
            out.push(Segment::Key(key));
            rest = after;
        } else if let Some(indexed) = rest.strip_prefix('[') {
            let Some((index, after)) = indexed.split_once(']') else {
                break;
            };
            if let Ok(n) = index.parse() {
                out.push(Segment::Index(n));
            }
            rest = after;
        } else if let Some(next) = rest.strip_prefix('.') {
            rest = next;
        } else {
            let (key, after) = rest
                .find(['.', '['])
                .and_then(|end| rest.split_at_checked(end))
                .unwrap_or((rest, ""));
            out.push(Segment::Key(key));
            rest = after;
        }
    }
    out
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: None,
        path: path.into(),
        line: None,
        message: message.into(),
    }
}

fn millis(value: Option<u64>, default: u64, path: &str) -> Result<Duration, ConfigError> {
    match value {
        Some(0) => Err(err(path, "must be greater than 0")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Ok(Duration::from_millis(default)),
    }
}

/// A `price` table (USD per million tokens) as integer nano-USD; `at` is its path.
fn validate_price(p: &raw::RawPrice, at: &str) -> Result<Price, ConfigError> {
    let input = price_per_mtok(p.input, &format!("{at}.input"))?.unwrap_or(0);
    Ok(Price {
        input_per_mtok: input,
        output_per_mtok: price_per_mtok(p.output, &format!("{at}.output"))?.unwrap_or(0),
        cached_input_per_mtok: price_per_mtok(p.cached_input, &format!("{at}.cached_input"))?
            .unwrap_or(input),
        cache_write_per_mtok: price_per_mtok(p.cache_write, &format!("{at}.cache_write"))?,
        reasoning_per_mtok: price_per_mtok(p.reasoning, &format!("{at}.reasoning"))?,
    })
}

fn price_per_mtok(value: Option<f64>, path: &str) -> Result<Option<u64>, ConfigError> {
    let Some(usd) = value else { return Ok(None) };
    if !usd.is_finite() || usd < 0.0 {
        return Err(err(
            path,
            "must be a non-negative number of USD per million tokens",
        ));
    }
    if usd > 1_000_000.0 {
        return Err(err(path, "is implausibly large (USD per million tokens)"));
    }
    // Prices have at most nine decimals in nano-USD; rounding the f64 restores the
    // exact decimal the file meant (0.15 -> 150_000_000).
    Ok(Some((usd * 1e9).round() as u64))
}

fn validate_url(value: &str, path: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(trimmed.to_owned()),
        _ => Err(err(
            path,
            format!("`{value}` is not an http:// or https:// URL"),
        )),
    }
}

fn validate(
    raw: raw::RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        err(
            "server.listen",
            format!("`{listen_text}` is not an address like 127.0.0.1:8080"),
        )
    })?;
    let max_body = raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 {
        return Err(err("server.max_body_bytes", "must be greater than 0"));
    }
    let server = ServerConfig {
        listen,
        max_body_bytes: usize::try_from(max_body).unwrap_or(usize::MAX),
        drain_grace: match raw.server.drain_grace_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_millis(DEFAULT_DRAIN_GRACE_MS),
        },
        drain_timeout: millis(
            raw.server.drain_timeout_ms,
            DEFAULT_DRAIN_MS,
            "server.drain_timeout_ms",
        )?,
    };
    let upstream = UpstreamConfig {
        connect_timeout: millis(
            raw.upstream.connect_timeout_ms,
            DEFAULT_CONNECT_MS,
            "upstream.connect_timeout_ms",
        )?,
        pool_idle_timeout: millis(
            raw.upstream.pool_idle_timeout_ms,
            DEFAULT_POOL_IDLE_MS,
            "upstream.pool_idle_timeout_ms",
        )?,
        pool_max_idle_per_host: raw
            .upstream
            .pool_max_idle_per_host
            .unwrap_or(DEFAULT_POOL_MAX_IDLE),
    };
    let default_timeouts = Timeouts {
        connect: match raw.timeouts.connect_ms {
            Some(_) => millis(raw.timeouts.connect_ms, 0, "timeouts.connect_ms")?,
            None => upstream.connect_timeout,
        },
        first_byte: millis(
            raw.timeouts.first_byte_ms,
            DEFAULT_FIRST_BYTE_MS,
            "timeouts.first_byte_ms",
        )?,
        total: millis(raw.timeouts.total_ms, DEFAULT_TOTAL_MS, "timeouts.total_ms")?,
    };
    let storage = validate_storage(raw.storage, env)?;
    if matches!(storage, StorageConfig::Postgres(_)) {
        // One database holds everything; a file named as well would be silently
        // ignored, so it is refused instead.
        if raw.ledger.path.is_some() {
            return Err(err(
                "ledger.path",
                "is not used with [storage] kind = \"postgres\" (the ledger is in the database); remove it",
            ));
        }
        if raw.governance.store.is_some() {
            return Err(err(
                "governance.store",
                "is not used with [storage] kind = \"postgres\" (the key store is in the database); remove it",
            ));
        }
    }
    let mut ledger = validate_ledger(raw.ledger)?;
    if matches!(storage, StorageConfig::Postgres(_)) {
        ledger.path = None;
    }

    let mut keys = Vec::with_capacity(raw.keys.len());
    let mut seen_names = HashMap::new();
    for (i, k) in raw.keys.into_iter().enumerate() {
        if k.name.trim().is_empty() {
            return Err(err(format!("keys[{i}].name"), "must not be empty"));
        }
        if let Some(first) = seen_names.insert(k.name.clone(), i) {
            return Err(err(
                format!("keys[{i}].name"),
                format!("`{}` is already the name of keys[{first}]", k.name),
            ));
        }
        let key = Secret::resolve(&k.key, &format!("keys[{i}].key"), env)?;
        if key.expose().len() < 8 {
            return Err(err(
                format!("keys[{i}].key"),
                "is shorter than 8 characters; use a long random key",
            ));
        }
        if let Err((field, message)) = k.policy.validate() {
            return Err(err(format!("keys[{i}].policy.{field}"), message));
        }
        let mut budgets = Vec::with_capacity(k.budgets.len());
        for (j, b) in k.budgets.iter().enumerate() {
            budgets.push(
                b.validate()
                    .map_err(|(field, m)| err(format!("keys[{i}].budgets[{j}].{field}"), m))?,
            );
        }
        keys.push(ApiKey {
            name: k.name,
            key,
            policy: k.policy,
            budgets,
        });
    }
    let admin = AdminConfig {
        token: match raw.admin.token.as_deref() {
            Some(t) => {
                let token = Secret::resolve(t, "admin.token", env)?;
                if token.expose().len() < 16 {
                    return Err(err(
                        "admin.token",
                        "is shorter than 16 characters; use a long random token",
                    ));
                }
                Some(token)
            }
            None => None,
        },
    };
    let governance = validate_governance(raw.governance, &ledger)?;

    let mut providers: BTreeMap<String, Arc<Provider>> = BTreeMap::new();
    for (name, p) in raw.providers {
        let at = format!("providers.{}", path_key(&name));
        native::reject_foreign_fields(&p, &at)?;
        let kind = match p.kind.as_str() {
            "openai" => {
                if p.endpoint.is_some() || p.api.is_some() || p.api_version.is_some() {
                    return Err(err(
                        format!("{at}.kind"),
                        "`openai` takes `base_url`; `endpoint`, `api` and `api_version` are for `azure`",
                    ));
                }
                let Some(base_url) = p.base_url.as_deref() else {
                    return Err(err(
                        format!("{at}.base_url"),
                        "is required for kind `openai` (e.g. https://api.openai.com/v1)",
                    ));
                };
                ProviderKind::OpenAi {
                    base_url: validate_url(base_url, &format!("{at}.base_url"))?,
                }
            }
            "azure" => {
                if p.base_url.is_some() {
                    return Err(err(
                        format!("{at}.base_url"),
                        "`azure` takes `endpoint` (https://RESOURCE.openai.azure.com)",
                    ));
                }
                let Some(endpoint) = p.endpoint.as_deref() else {
                    return Err(err(
                        format!("{at}.endpoint"),
                        "is required for kind `azure` (e.g. https://myresource.openai.azure.com)",
                    ));
                };
                let endpoint = validate_url(endpoint, &format!("{at}.endpoint"))?;
                let api = match (p.api.as_deref(), p.api_version.clone()) {
                    (Some("v1"), None) | (None, None) => AzureApi::V1,
                    (Some("v1"), Some(_)) => {
                        return Err(err(
                            format!("{at}.api_version"),
                            "is not used with api = \"v1\"; remove it",
                        ))
                    }
                    (Some("deployments") | None, Some(api_version)) if !api_version.is_empty() => {
                        AzureApi::Deployments { api_version }
                    }
                    (Some("deployments"), _) => {
                        return Err(err(
                            format!("{at}.api_version"),
                            "is required with api = \"deployments\" (e.g. 2024-10-21)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(err(format!("{at}.api_version"), "must not be empty"))
                    }
                    (Some(other), _) => {
                        return Err(err(
                            format!("{at}.api"),
                            format!("unknown value `{other}`; expected `deployments` or `v1`"),
                        ))
                    }
                };
                ProviderKind::Azure { endpoint, api }
            }
            other => match native::kind(other, &p, &at, env)? {
                Some(kind) => kind,
                None => {
                    return Err(err(
                        format!("{at}.kind"),
                        format!(
                            "unknown provider kind `{other}`; expected one of: openai, azure, {}",
                            native::KINDS.join(", ")
                        ),
                    ))
                }
            },
        };
        let (url, field) = kind.base_url();
        if is_insecure_remote(url) && p.allow_insecure_http != Some(true) {
            return Err(err(
                format!("{at}.{field}"),
                format!(
                    "`{url}` is plain http:// to another machine, which would send the \
                     credential and the prompts in clear text; use https://, or set \
                     `{at}.allow_insecure_http = true` to accept that"
                ),
            ));
        }
        let credentials = credentials::validate(&p, &kind, &at, env)?;
        let api_key = p
            .api_key
            .as_deref()
            .map(|v| Secret::resolve(v, &format!("{at}.api_key"), env))
            .transpose()?
            .or_else(|| {
                credentials
                    .is_none()
                    .then(|| native::default_api_key(&kind, env))
                    .flatten()
            });
        let needs_key = credentials.is_none();
        if matches!(kind, ProviderKind::Azure { .. }) && api_key.is_none() && needs_key {
            return Err(err(
                format!("{at}.api_key"),
                "is required for kind `azure` (e.g. \"${AZURE_OPENAI_API_KEY}\"), unless \
                 Entra ID sign-in is set (`tenant_id`, `client_id`, `client_secret`)",
            ));
        }
        if api_key.is_none() && needs_key {
            if let Some(example) = native::required_key_example(&kind) {
                return Err(err(
                    format!("{at}.api_key"),
                    format!(
                        "is required for kind `{}` (e.g. \"{example}\"){}",
                        kind.label(),
                        if matches!(
                            kind,
                            ProviderKind::Vertex { .. } | ProviderKind::Gemini { .. }
                        ) {
                            ", unless `credentials_file` or `credentials = \"adc\"` is set"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        let responses_api = match (p.responses_api, &kind) {
            (None, ProviderKind::OpenAi { .. } | ProviderKind::Azure { .. }) => true,
            (Some(on), ProviderKind::OpenAi { .. } | ProviderKind::Azure { .. }) => on,
            (None, _) => false,
            (Some(_), _) => {
                return Err(err(
                    format!("{at}.responses_api"),
                    format!(
                        "applies to kinds `openai` and `azure` only, not `{}`",
                        kind.label()
                    ),
                ))
            }
        };
        providers.insert(
            name.clone(),
            Arc::new(Provider {
                name,
                openai_itself: is_openai_itself(&kind),
                kind,
                api_key,
                credentials,
                responses_api,
            }),
        );
    }

    // Contracts first: a deployment is built with the contract that covers it.
    let provider_of: BTreeMap<String, String> = raw
        .deployments
        .iter()
        .map(|(name, d)| (name.clone(), d.provider.clone()))
        .collect();
    let mut contracts: BTreeMap<String, Arc<Contract>> = BTreeMap::new();
    let mut covering: BTreeMap<String, Arc<Contract>> = BTreeMap::new();
    for (name, c) in &raw.contracts {
        let contract = Arc::new(contract::validate_contract(name, c, &provider_of)?);
        for d in &contract.deployments {
            if let Some(other) = covering.insert(d.clone(), contract.clone()) {
                return Err(err(
                    format!("contracts.{}", path_key(name)),
                    format!(
                        "deployment `{d}` is covered by contract `{}` already (one contract per deployment)",
                        other.name
                    ),
                ));
            }
        }
        contracts.insert(name.clone(), contract);
    }

    let mut deployments: BTreeMap<String, Arc<Deployment>> = BTreeMap::new();
    for (name, d) in raw.deployments {
        let at = format!("deployments.{}", path_key(&name));
        let Some(provider) = providers.get(&d.provider) else {
            return Err(err(
                format!("{at}.provider"),
                format!(
                    "unknown provider `{}`; defined providers: {}",
                    d.provider,
                    list(providers.keys())
                ),
            ));
        };
        if d.model.trim().is_empty() {
            return Err(err(format!("{at}.model"), "must not be empty"));
        }
        let price = validate_price(&d.price, &format!("{at}.price"))?;
        let timeouts = Timeouts {
            connect: match d.timeouts.connect_ms {
                Some(_) => millis(
                    d.timeouts.connect_ms,
                    0,
                    &format!("{at}.timeouts.connect_ms"),
                )?,
                None => default_timeouts.connect,
            },
            first_byte: match d.timeouts.first_byte_ms {
                Some(_) => millis(
                    d.timeouts.first_byte_ms,
                    0,
                    &format!("{at}.timeouts.first_byte_ms"),
                )?,
                None => default_timeouts.first_byte,
            },
            total: match d.timeouts.total_ms {
                Some(_) => millis(d.timeouts.total_ms, 0, &format!("{at}.timeouts.total_ms"))?,
                None => default_timeouts.total,
            },
        };
        for (what, value) in [("rpm", d.quota.rpm), ("tpm", d.quota.tpm)] {
            if value == Some(0) {
                return Err(err(
                    format!("{at}.quota.{what}"),
                    "must be greater than 0 (omit it for no limit)",
                ));
            }
        }
        let capabilities = Capabilities {
            tools: d.capabilities.tools.unwrap_or(true),
            vision: d.capabilities.vision.unwrap_or(true),
            json_schema: d.capabilities.json_schema.unwrap_or(true),
            context_window: d.capabilities.context_window,
            max_output: d.capabilities.max_output,
        };
        for (what, value) in [
            ("context_window", capabilities.context_window),
            ("max_output", capabilities.max_output),
        ] {
            if value == Some(0) {
                return Err(err(
                    format!("{at}.capabilities.{what}"),
                    "must be greater than 0",
                ));
            }
        }
        if let Some(i) = d.data_tags.iter().position(|t| t.trim().is_empty()) {
            return Err(err(format!("{at}.data_tags[{i}]"), "must not be empty"));
        }
        let contract = covering.get(&name).cloned();
        let effective_price = contract
            .as_ref()
            .and_then(|c| c.price_of(&name))
            .unwrap_or(price);
        deployments.insert(
            name.clone(),
            Arc::new(Deployment {
                index: 0, // numbered below, once the order is final
                derived: DerivedNames::of(&name, &provider.name),
                upstream: UpstreamCache::default(),
                name,
                reasoning_issuer: reasoning_issuer_of(&provider.kind, &d.model),
                provider: provider.clone(),
                upstream_model: d.model,
                region: d.region,
                price,
                timeouts,
                quota: Quota {
                    rpm: d.quota.rpm,
                    tpm: d.quota.tpm,
                },
                capabilities,
                data_tags: d.data_tags,
                effective_price,
                contract,
            }),
        );
    }

    // Number the deployments in their final (name) order.
    for (index, d) in deployments.values_mut().enumerate() {
        if let Some(d) = Arc::get_mut(d) {
            d.index = index;
        }
    }

    let mut models = BTreeMap::new();
    for (name, m) in raw.models {
        let at = format!("models.{}", path_key(&name));
        models.insert(
            name.clone(),
            Arc::new(validate_model(name, m, &at, &deployments)?),
        );
    }

    let breaker = BreakerConfig {
        consecutive_failures: match raw.breaker.consecutive_failures {
            Some(0) => {
                return Err(err(
                    "breaker.consecutive_failures",
                    "must be greater than 0",
                ))
            }
            Some(n) => n,
            None => 5,
        },
        failure_ratio: match raw.breaker.failure_ratio {
            Some(r) if !(r > 0.0 && r <= 1.0) => {
                return Err(err(
                    "breaker.failure_ratio",
                    "must be greater than 0 and at most 1",
                ))
            }
            Some(r) => r,
            None => 0.5,
        },
        window: match raw.breaker.window {
            Some(0) => return Err(err("breaker.window", "must be greater than 0")),
            Some(n) => n,
            None => 20,
        },
        open_for: millis(raw.breaker.open_ms, 5_000, "breaker.open_ms")?,
    };

    let images = validate_images(raw.images)?;
    let state = raw.state.map(|s| validate_state(s, env)).transpose()?;
    let telemetry = validate_telemetry(raw.telemetry, admin.token.is_some())?;
    let mut channels = BTreeMap::new();
    for (name, c) in raw.channels {
        let channel = channel::validate_channel(&name, c)?;
        channels.insert(name, Arc::new(channel));
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some((field, name)) = k.policy.unknown_channel(|c| channels.contains_key(c)) {
            return Err(err(
                format!("keys[{i}].policy.{field}"),
                format!(
                    "unknown channel `{name}`; defined channels: {}",
                    list(channels.keys())
                ),
            ));
        }
    }

    Ok(Config {
        server,
        upstream,
        ledger,
        keys,
        providers: providers.into_values().collect(),
        deployments: deployments.into_values().collect(),
        models,
        breaker,
        admin,
        governance,
        images,
        storage,
        state,
        telemetry,
        channels,
        contracts,
    })
}

fn validate_telemetry(
    raw: raw::RawTelemetry,
    has_admin_token: bool,
) -> Result<TelemetryConfig, ConfigError> {
    let metrics_listen = match raw.metrics_listen.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
            err(
                "telemetry.metrics_listen",
                format!("`{text}` is not an address like 127.0.0.1:9464"),
            )
        })?),
    };
    let metrics_auth = match raw.metrics_auth.as_deref() {
        None if metrics_listen.is_some() => MetricsAuth::None,
        None | Some("admin") => MetricsAuth::Admin,
        Some("none") => MetricsAuth::None,
        Some(other) => {
            return Err(err(
                "telemetry.metrics_auth",
                format!("unknown mode `{other}`; expected admin or none"),
            ))
        }
    };
    let metrics = raw.metrics.unwrap_or(true);
    // Left to its default, `admin` without a token refuses every scrape, as `/admin`
    // does; written out, it is a mistake worth stopping at.
    if metrics
        && raw.metrics_auth.is_some()
        && metrics_auth == MetricsAuth::Admin
        && !has_admin_token
    {
        return Err(err(
            "telemetry.metrics_auth",
            "is `admin`, which needs admin.token; set it, or metrics_auth = \"none\" (with metrics_listen on a private address)",
        ));
    }
    let otlp_endpoint = match raw.otlp_endpoint {
        None => None,
        Some(url) => Some(validate_url(&url, "telemetry.otlp_endpoint")?),
    };
    let service_name = raw.service_name.unwrap_or_else(|| "switchyard".to_owned());
    if service_name.trim().is_empty() {
        return Err(err("telemetry.service_name", "must not be empty"));
    }
    let sampling_ratio = raw.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        return Err(err(
            "telemetry.sampling_ratio",
            format!("{sampling_ratio} is not between 0.0 and 1.0"),
        ));
    }
    Ok(TelemetryConfig {
        metrics,
        metrics_listen,
        metrics_auth,
        key_labels: raw.key_labels.unwrap_or(true),
        team_labels: raw.team_labels.unwrap_or(true),
        otlp_endpoint,
        service_name,
        export_interval: millis(raw.export_interval_ms, 5000, "telemetry.export_interval_ms")?,
        sampling_ratio,
    })
}

/// Longest `state.timeout_ms`: a Redis call slower than this is an outage, not a delay.
const MAX_STATE_TIMEOUT_MS: u64 = 10_000;

fn validate_state(
    raw: raw::RawState,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StateConfig, ConfigError> {
    let Some(url) = raw.redis_url.as_deref() else {
        return Err(err(
            "state.redis_url",
            "is required in [state], e.g. \"${SWITCHYARD_REDIS_URL}\"",
        ));
    };
    let redis_url = Secret::resolve(url, "state.redis_url", env)?;
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| redis_url.expose().starts_with(s));
    if !scheme_ok {
        // The value may hold a password: the message does not repeat it.
        return Err(err(
            "state.redis_url",
            "is not a redis://, rediss:// or unix:// URL",
        ));
    }
    let prefix = raw.prefix.unwrap_or_else(|| "switchyard:".to_owned());
    if prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(
            "state.prefix",
            "must be at most 64 characters, without spaces or control characters",
        ));
    }
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("local") => OnUnavailable::Local,
        Some("closed") => OnUnavailable::Closed,
        Some(other) => {
            return Err(err(
                "state.on_unavailable",
                format!("unknown mode `{other}`; expected local or closed"),
            ))
        }
    };
    let timeout = millis(raw.timeout_ms, 250, "state.timeout_ms")?;
    if timeout > Duration::from_millis(MAX_STATE_TIMEOUT_MS) {
        return Err(err(
            "state.timeout_ms",
            format!("must be at most {MAX_STATE_TIMEOUT_MS}"),
        ));
    }
    Ok(StateConfig {
        redis_url,
        prefix,
        on_unavailable,
        timeout,
    })
}

fn validate_storage(
    raw: raw::RawStorage,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StorageConfig, ConfigError> {
    match raw.kind.as_deref() {
        None | Some("sqlite") => {
            let unused = [
                ("storage.url", raw.url.is_some()),
                ("storage.max_connections", raw.max_connections.is_some()),
                (
                    "storage.connect_timeout_ms",
                    raw.connect_timeout_ms.is_some(),
                ),
            ];
            if let Some((field, _)) = unused.into_iter().find(|(_, set)| *set) {
                return Err(err(
                    field,
                    "is only used with kind = \"postgres\" (SQLite uses ledger.path and governance.store)",
                ));
            }
            Ok(StorageConfig::Sqlite)
        }
        Some("postgres") => {
            let Some(url) = raw.url.as_deref() else {
                return Err(err(
                    "storage.url",
                    "is required with kind = \"postgres\", e.g. url = \"${DATABASE_URL}\"",
                ));
            };
            let url = Secret::resolve(url, "storage.url", env)?;
            let value = url.expose();
            if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
                // Never echo the value: it may hold a password.
                return Err(err(
                    "storage.url",
                    "is not a postgres:// or postgresql:// URL",
                ));
            }
            let max_connections = match raw.max_connections {
                Some(0) => return Err(err("storage.max_connections", "must be greater than 0")),
                Some(n) => n,
                None => DEFAULT_PG_MAX_CONNECTIONS,
            };
            Ok(StorageConfig::Postgres(PostgresConfig {
                url,
                max_connections,
                connect_timeout: millis(
                    raw.connect_timeout_ms,
                    DEFAULT_PG_CONNECT_TIMEOUT_MS,
                    "storage.connect_timeout_ms",
                )?,
            }))
        }
        Some(other) => Err(err(
            "storage.kind",
            format!("unknown engine `{other}`; expected sqlite or postgres"),
        )),
    }
}

fn validate_images(raw: raw::RawImages) -> Result<ImagesConfig, ConfigError> {
    let max_bytes = match raw.max_bytes {
        Some(0) => return Err(err("images.max_bytes", "must be greater than 0")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => 20 * 1024 * 1024,
    };
    let max_total_bytes = match raw.max_total_bytes {
        Some(0) => return Err(err("images.max_total_bytes", "must be greater than 0")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => DEFAULT_IMAGES_TOTAL_BYTES,
    };
    let timeout = millis(raw.timeout_ms, 10_000, "images.timeout_ms")?;
    for (i, h) in raw.allow_hosts.iter().enumerate() {
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
        if bare.is_empty() || bare.contains(['/', ' ', '@']) || (bare.contains(':') && !is_ip) {
            return Err(err(
                format!("images.allow_hosts[{i}]"),
                format!("`{h}` is not a host name or an IP address (no scheme, port or path)"),
            ));
        }
    }
    Ok(ImagesConfig {
        max_bytes,
        max_total_bytes,
        timeout,
        allow_hosts: raw
            .allow_hosts
            .into_iter()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .collect(),
    })
}

fn validate_ledger(l: raw::RawLedger) -> Result<LedgerConfig, ConfigError> {
    let on_overload = match l.on_overload.as_deref() {
        None | Some("block") => OnOverload::Block,
        Some("drop") => OnOverload::Drop,
        Some(other) => {
            return Err(err(
                "ledger.on_overload",
                format!("unknown mode `{other}`; expected block or drop"),
            ))
        }
    };
    let max_wait_ms = l.max_wait_ms.unwrap_or(DEFAULT_LEDGER_MAX_WAIT_MS);
    if !(1..=MAX_LEDGER_MAX_WAIT_MS).contains(&max_wait_ms) {
        return Err(err(
            "ledger.max_wait_ms",
            format!("must be between 1 and {MAX_LEDGER_MAX_WAIT_MS}"),
        ));
    }
    if l.retention_days == Some(0) {
        return Err(err(
            "ledger.retention_days",
            "must be at least 1 (leave it out to keep everything)",
        ));
    }
    let responses_ttl_days = l.responses_ttl_days.unwrap_or(DEFAULT_RESPONSES_TTL_DAYS);
    if !(1..=MAX_RESPONSES_TTL_DAYS).contains(&responses_ttl_days) {
        return Err(err(
            "ledger.responses_ttl_days",
            format!("must be between 1 and {MAX_RESPONSES_TTL_DAYS}"),
        ));
    }
    Ok(LedgerConfig {
        responses_ttl_days,
        enabled: l.enabled.unwrap_or(true),
        retention_days: l.retention_days,
        path: if l.enabled.unwrap_or(true) {
            Some(PathBuf::from(l.path.as_deref().unwrap_or("switchyard.db")))
        } else {
            None
        },
        on_overload,
        max_wait: Duration::from_millis(max_wait_ms),
    })
}

fn validate_governance(
    g: raw::RawGovernance,
    ledger: &LedgerConfig,
) -> Result<GovernanceSettings, ConfigError> {
    let defaults = GovernanceSettings::default();
    let pii = match g.pii.as_deref() {
        Some(s) => PiiMode::parse(s).ok_or_else(|| {
            err(
                "governance.pii",
                format!("unknown mode `{s}`; expected off, log, redact or block"),
            )
        })?,
        None => defaults.pii,
    };
    let mut patterns = Vec::with_capacity(g.pii_patterns.len());
    for (i, p) in g.pii_patterns.into_iter().enumerate() {
        let at = format!("governance.pii_patterns[{i}]");
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if p.name.is_empty() || !p.name.bytes().all(word) {
            return Err(err(
                format!("{at}.name"),
                "must be letters, digits and `_` (it names the placeholder)",
            ));
        }
        // Compiled here only to be checked; the guardrail compiles its own copy.
        if let Err(e) = regex::Regex::new(&p.pattern) {
            return Err(err(
                format!("{at}.pattern"),
                format!("is not a valid regular expression: {e}"),
            ));
        }
        patterns.push((p.name, p.pattern));
    }
    let refresh = millis(
        g.refresh_ms,
        u64::try_from(defaults.refresh.as_millis()).unwrap_or(250),
        "governance.refresh_ms",
    )?;
    if refresh > Duration::from_secs(1) {
        return Err(err(
            "governance.refresh_ms",
            "must be at most 1000 (revocations must take effect within a second)",
        ));
    }
    let default_max_output_tokens = match g.default_max_output_tokens {
        Some(0) => {
            return Err(err(
                "governance.default_max_output_tokens",
                "must be greater than 0",
            ))
        }
        Some(n) => n,
        None => defaults.default_max_output_tokens,
    };
    Ok(GovernanceSettings {
        store: g.store.map(PathBuf::from).or_else(|| ledger.path.clone()),
        log_content: g.log_content.unwrap_or(defaults.log_content),
        pii,
        pii_patterns: patterns,
        default_max_output_tokens,
        refresh,
    })
}

fn validate_model(
    name: String,
    m: raw::RawModel,
    at: &str,
    deployments: &BTreeMap<String, Arc<Deployment>>,
) -> Result<LogicalModel, ConfigError> {
    let strategy = match m.strategy.as_deref() {
        None | Some("priority") => Strategy::Priority,
        Some("weighted") => Strategy::Weighted,
        Some("latency") => Strategy::Latency,
        Some("cost") => Strategy::Cost,
        Some(other) => {
            return Err(err(
                format!("{at}.strategy"),
                format!("unknown strategy `{other}`; expected priority, weighted, latency or cost"),
            ))
        }
    };
    if m.deployments.is_empty() {
        return Err(err(
            format!("{at}.deployments"),
            "must name at least one deployment",
        ));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(m.deployments.len());
    for (i, t) in m.deployments.into_iter().enumerate() {
        let (dep, tier, weight) = match t {
            raw::RawTarget::Name(n) => (n, None, None),
            raw::RawTarget::Table(t) => (t.name, t.tier, t.weight),
        };
        let path = format!("{at}.deployments[{i}]");
        let Some(d) = deployments.get(&dep) else {
            return Err(err(
                path,
                format!(
                    "unknown deployment `{dep}`; defined deployments: {}",
                    list(deployments.keys())
                ),
            ));
        };
        if targets.iter().any(|r| r.deployment.name == dep) {
            return Err(err(path, format!("`{dep}` is listed twice")));
        }
        if weight == Some(0) {
            return Err(err(format!("{path}.weight"), "must be greater than 0"));
        }
        let default_tier = match strategy {
            Strategy::Priority => u32::try_from(i).unwrap_or(u32::MAX),
            _ => 0,
        };
        targets.push(Target {
            deployment: d.clone(),
            tier: tier.unwrap_or(default_tier),
            weight: weight.unwrap_or(1),
        });
    }
    let constraints = Constraints {
        allowed_regions: m.allowed_regions,
        required_tags: m.required_tags,
    };
    // A model whose own constraints exclude every deployment can never answer.
    let any_eligible = targets.iter().any(|t| constraints.admits(&t.deployment));
    if !any_eligible {
        return Err(err(
            format!("{at}.allowed_regions"),
            "no deployment of this model satisfies its allowed_regions and required_tags",
        ));
    }
    let retry = RetryPolicy {
        max_attempts: match m.retry.max_attempts {
            Some(0) => {
                return Err(err(
                    format!("{at}.retry.max_attempts"),
                    "must be at least 1",
                ))
            }
            Some(n) => n,
            None => u32::try_from(targets.len() + 1).unwrap_or(6).min(6),
        },
        base_backoff: millis(
            m.retry.base_backoff_ms,
            100,
            &format!("{at}.retry.base_backoff_ms"),
        )?,
        max_backoff: millis(
            m.retry.max_backoff_ms,
            2_000,
            &format!("{at}.retry.max_backoff_ms"),
        )?,
    };
    let optional = |v: Option<u64>, field: &str| -> Result<Option<Duration>, ConfigError> {
        v.map(|_| millis(v, 0, &format!("{at}.{field}")))
            .transpose()
    };
    let stream_recovery = match m.stream_recovery.as_deref() {
        None | Some("off") => StreamRecovery::Off,
        Some("continue") => StreamRecovery::Continue,
        Some(other) => {
            return Err(err(
                format!("{at}.stream_recovery"),
                format!("unknown stream_recovery `{other}`; expected \"continue\" or \"off\""),
            ))
        }
    };
    let shadow = match m.shadow {
        None => None,
        Some(raw_shadow) => Some(Arc::new(validate_shadow(
            raw_shadow,
            at,
            &name,
            &constraints,
            deployments,
        )?)),
    };
    let cache = match m.cache {
        None => None,
        Some(c) => {
            let Some(ttl_s) = c.ttl_s else {
                return Err(err(
                    format!("{at}.cache.ttl_s"),
                    "is required: how long an answer is reused, in seconds",
                ));
            };
            policy::check_cache_ttl(ttl_s).map_err(|m| err(format!("{at}.cache.ttl_s"), m))?;
            if c.max_bytes == Some(0) {
                return Err(err(format!("{at}.cache.max_bytes"), "must be at least 1"));
            }
            Some(CacheSettings {
                ttl: Duration::from_secs(ttl_s),
                max_bytes: c.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES),
                any_temperature: c.any_temperature.unwrap_or(false),
            })
        }
    };
    if m.timeouts.connect_ms.is_some() {
        return Err(err(
            format!("{at}.timeouts.connect_ms"),
            "is a property of the deployment (its connection), not of the model",
        ));
    }
    Ok(LogicalModel {
        name,
        strategy,
        targets,
        constraints,
        first_byte_timeout: optional(m.timeouts.first_byte_ms, "timeouts.first_byte_ms")?,
        total_timeout: optional(m.timeouts.total_ms, "timeouts.total_ms")?,
        retry,
        hedge_after: optional(m.hedge_after_ms, "hedge_after_ms")?,
        stream_recovery,
        prefer_commitments: m.prefer_commitments,
        cache,
        shadow,
    })
}

/// `[models.NAME.shadow]`: its candidate must exist; the rate and the daily budget
/// are required.
fn validate_shadow(
    s: raw::RawShadow,
    at: &str,
    model: &str,
    constraints: &Constraints,
    deployments: &BTreeMap<String, Arc<Deployment>>,
) -> Result<Shadow, ConfigError> {
    let at = format!("{at}.shadow");
    let Some(name) = s.deployment else {
        return Err(err(
            format!("{at}.deployment"),
            "is required: the candidate deployment",
        ));
    };
    let Some(candidate) = deployments.get(&name).cloned() else {
        return Err(err(
            format!("{at}.deployment"),
            format!(
                "unknown deployment `{name}`; defined deployments: {}",
                list(deployments.keys())
            ),
        ));
    };
    let sample_rate = match s.sample_rate {
        Some(r) if r.is_finite() && (0.0..=1.0).contains(&r) => r,
        Some(_) => {
            return Err(err(
                format!("{at}.sample_rate"),
                "must be a share from 0 to 1",
            ))
        }
        None => {
            return Err(err(
                format!("{at}.sample_rate"),
                "is required: the share of requests mirrored, 0 to 1",
            ))
        }
    };
    let budget = match &s.budget_usd {
        None => {
            return Err(err(
                format!("{at}.budget_usd"),
                "is required: what the candidate's calls may cost per day",
            ))
        }
        Some(policy::UsdAmount::Number(n)) => crate::types::money::usd_f64_to_nano(*n),
        Some(policy::UsdAmount::Text(t)) => crate::types::money::parse_usd(t),
    }
    .ok_or_else(|| {
        err(
            format!("{at}.budget_usd"),
            "must be a non-negative amount of USD, e.g. 5 or \"5.00\"",
        )
    })?;
    let agree_at = match s.agree_at {
        None => DEFAULT_AGREE_AT,
        Some(a) if a.is_finite() && (0.0..=1.0).contains(&a) => a,
        Some(_) => return Err(err(format!("{at}.agree_at"), "must be from 0 to 1")),
    };
    let embeddings = match s.embeddings {
        None => None,
        Some(name) => match deployments.get(&name) {
            Some(d) => Some(ShadowEmbeddings {
                deployment: d.clone(),
                model: Arc::new(one_shot(model, d, constraints)),
            }),
            None => {
                return Err(err(
                    format!("{at}.embeddings"),
                    format!(
                        "unknown deployment `{name}`; defined deployments: {}",
                        list(deployments.keys())
                    ),
                ))
            }
        },
    };
    Ok(Shadow {
        model: Arc::new(one_shot(model, &candidate, constraints)),
        candidate,
        sample_rate,
        budget_nano_usd_per_day: budget,
        agree_at,
        embeddings,
    })
}

/// A model named `model` whose only deployment is `d`: one attempt, no hedge, no
/// cache, `constraints` (what shadow calls are dispatched to).
fn one_shot(model: &str, d: &Arc<Deployment>, constraints: &Constraints) -> LogicalModel {
    LogicalModel {
        name: model.to_owned(),
        strategy: Strategy::Priority,
        targets: vec![Target {
            deployment: d.clone(),
            tier: 0,
            weight: 1,
        }],
        constraints: constraints.clone(),
        first_byte_timeout: None,
        total_timeout: None,
        retry: RetryPolicy {
            max_attempts: 1,
            base_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        },
        hedge_after: None,
        stream_recovery: StreamRecovery::Off,
        prefer_commitments: false,
        cache: None,
        shadow: None,
    }
}

fn list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
