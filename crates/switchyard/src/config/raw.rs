//! The configuration file as written: serde types that mirror the TOML exactly.
//!
//! Nothing here is trusted. [`super::validate`] turns these into the types the
//! gateway runs on, and every check lives there, once.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::policy::UsdAmount;

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
    /// API keys accepted from applications (`[[keys]]`). These are static keys; virtual
    /// keys are created with `switchyard keys create` or the admin API.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// The admin API under `/admin`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Keys, teams, policies, budgets and the PII guardrail.
    #[serde(default)]
    pub governance: RawGovernance,
    /// Provider endpoints and credentials (`[providers.NAME]`).
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Deployments: a provider × an upstream model, with its price (`[deployments.NAME]`).
    #[serde(default)]
    pub deployments: BTreeMap<String, RawDeployment>,
    /// Logical models: the names applications ask for (`[models.NAME]`).
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    /// Circuit-breaker settings shared by every deployment.
    #[serde(default)]
    pub breaker: RawBreaker,
    /// Image URLs the gateway fetches itself, for providers that take only image
    /// bytes (Bedrock).
    #[serde(default)]
    pub images: RawImages,
    /// Run-time state shared by replicas (rate limits, quotas, budgets, provider
    /// exhaustion, breakers) in Redis. Without it each process keeps its own, in memory.
    pub state: Option<RawState>,
    /// Which database engine holds the key store and the ledger.
    #[serde(default)]
    pub storage: RawStorage,
    /// Prometheus metrics (`GET /metrics`) and OTLP trace export.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Channel profiles (`[channels.NAME]`: voice, chat, email…): latency objectives,
    /// a standard system prompt, output limits and output checks, chosen by the key's
    /// policy (`channel`) or the `x-switchyard-channel` header where the policy allows.
    #[serde(default)]
    pub channels: BTreeMap<String, RawChannel>,
    /// Contracts with providers (`[contracts.NAME]`): commitments, caps and
    /// contracted prices for the deployments they cover.
    #[serde(default)]
    pub contracts: BTreeMap<String, RawContract>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContract {
    /// Deployments the contract covers, by name.
    #[serde(default)]
    pub deployments: Vec<String>,
    /// A provider whose every deployment the contract covers (with `deployments`, both).
    pub provider: Option<String>,
    /// `"month"` (default): the terms renew each calendar month (UTC). Or give a
    /// single term with `start` and `end` instead.
    pub period: Option<String>,
    /// First day of a single term, UTC (`"2027-01-01"`).
    pub start: Option<String>,
    /// Last day of a single term, UTC, included (`"2027-12-31"`).
    pub end: Option<String>,
    /// Committed spend per period, paid whether used or not (at contracted prices),
    /// e.g. `5000` or `"5000.00"`. The `cost` strategy treats a covered deployment as
    /// free at the margin until it is burned.
    pub commitment_usd: Option<UsdAmount>,
    /// Committed tokens (prompt and completion) per period, instead.
    pub commitment_tokens: Option<u64>,
    /// Provisioned throughput (Azure PTU, Bedrock provisioned throughput), instead: a
    /// fixed cost per hour; what the covered deployments serve costs nothing more.
    pub provisioned_usd_per_hour: Option<UsdAmount>,
    /// Spend per period (at contracted prices) never to be exceeded: a request whose
    /// reservation would cross it skips the covered deployments.
    pub cap_usd: Option<UsdAmount>,
    /// Contracted prices by deployment name (`[contracts.NAME.prices.DEPLOYMENT]`,
    /// fields as a deployment's `price`); they replace the list price in the ledger's
    /// effective cost, in budgets and in the `cost` strategy.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// Time-to-first-token objective, in ms. Deployments whose recent p90 time to
    /// first token misses it are tried last, and a first call that has produced no
    /// first token by then is hedged on the next deployment.
    pub ttft_slo_ms: Option<u64>,
    /// Whole-answer objective, in ms; reported against (`switchyard channels report`).
    pub total_slo_ms: Option<u64>,
    /// A system prompt placed before the application's own messages, whichever
    /// provider answers (brand voice, safety rules).
    pub system_prompt: Option<String>,
    /// Most output tokens per answer: a request asking for more (or for no limit) is
    /// capped to this.
    pub max_output_tokens: Option<u32>,
    /// Stop sequences added to every request's own (at most 4 in all).
    #[serde(default)]
    pub stop: Vec<String>,
    /// The PII guardrail on answers: `off` (default), `redact` (typed placeholders,
    /// also in streams, across chunk boundaries) or `block` (the answer is withheld
    /// and ends with `finish_reason: "content_filter"`).
    pub pii_output: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Serve `GET /metrics` (Prometheus text format). Default true.
    pub metrics: Option<bool>,
    /// A separate address for `/metrics`, e.g. `"127.0.0.1:9464"`; then the main
    /// listener does not serve it. Default: the main listener (`server.listen`).
    pub metrics_listen: Option<String>,
    /// Who may scrape: `admin` (the admin token as `Authorization: Bearer`; needs
    /// `admin.token`; left to the default without a token, every scrape gets 403) or
    /// `none` (anyone who reaches the address). Default `admin` on the main listener,
    /// `none` on `metrics_listen`.
    pub metrics_auth: Option<String>,
    /// Label request, cost and budget metrics with the caller's key id (`key`).
    /// Default true; turn it off when there are many keys.
    pub key_labels: Option<bool>,
    /// Label request, cost and budget metrics with the caller's team (`team`).
    /// Default true.
    pub team_labels: Option<bool>,
    /// OTLP/HTTP (protobuf) collector to export traces to, e.g.
    /// `"http://127.0.0.1:4318/v1/traces"` (the full path). Default none: no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default `switchyard`.
    pub service_name: Option<String>,
    /// How often the exporter sends the spans queued, in ms (in batches of up to 512;
    /// requests never wait for it). Default 5000.
    pub export_interval_ms: Option<u64>,
    /// Fraction of new traces sampled, 0.0 to 1.0; a request that comes with a
    /// `traceparent` follows its sampled flag. Default 1.0.
    pub sampling_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Redis URL, as `"${SWITCHYARD_REDIS_URL}"` (`redis://[:password@]host:port/db`, or
    /// `rediss://` for TLS). Required in `[state]`.
    pub redis_url: Option<String>,
    /// Prefix of every key and channel the gateway uses, so that several gateways (or
    /// other programs) can share one Redis. Default `switchyard:`.
    pub prefix: Option<String>,
    /// What a replica does while Redis is unreachable: `local` keeps serving with its
    /// own in-process state (limits and budgets then count per replica) and says so in
    /// the log and on `/readyz`; `closed` answers 503 `state_unavailable` to requests
    /// until Redis is back. Default `local`.
    pub on_unavailable: Option<String>,
    /// Longest wait for one Redis call, in ms; a call that takes longer counts as Redis
    /// being unreachable. Default 250.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// `sqlite` (the default: files named by `ledger.path` and `governance.store`) or
    /// `postgres` (one database holds the key store and the ledger; `ledger.path` and
    /// `governance.store` must then be left out).
    pub kind: Option<String>,
    /// postgres: the connection URL, as `"${DATABASE_URL}"`, e.g.
    /// `postgres://switchyard:PASSWORD@db.internal:5432/switchyard`. Required for
    /// postgres; not allowed for sqlite.
    pub url: Option<String>,
    /// postgres: most connections this gateway opens (the ledger writer, the key store,
    /// reports and the change listener share them). Default 10.
    pub max_connections: Option<u32>,
    /// postgres: how long connecting, or waiting for a free pooled connection, may
    /// take, in ms. Default 5000.
    pub connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImages {
    /// Largest image fetched, in bytes; a larger one is refused with 400. Default 20 MiB.
    pub max_bytes: Option<u64>,
    /// Most bytes fetched for all the images of one request together; the request is
    /// refused with 400 once its images pass it (the gateway holds them in memory, as
    /// base64, while the request is served). Default 50 MiB.
    pub max_total_bytes: Option<u64>,
    /// Time allowed for one image fetch (resolution, connect, body), in ms. Default 10000.
    pub timeout_ms: Option<u64>,
    /// Hosts or IP addresses that may be fetched even though they are private,
    /// loopback or link-local (refused otherwise), e.g. `["127.0.0.1", "images.internal"]`.
    /// Default none.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on, e.g. `"127.0.0.1:8080"` or `"0.0.0.0:8080"`. Default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 16 MiB.
    pub max_body_bytes: Option<u64>,
    /// On SIGTERM/SIGINT, how long `/readyz` fails while the gateway still accepts and
    /// serves requests, before the listener closes, in ms: the time load balancers need
    /// to see the failing check and stop sending. Default 5000; 0 closes at once.
    pub drain_grace_ms: Option<u64>,
    /// After the grace, how long in-flight requests may take to finish, in ms. Default
    /// 20000, so that the grace, the drain and the ledger's flush fit the 30 s an
    /// orchestrator (Kubernetes' `terminationGracePeriodSeconds`) waits before killing.
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
    /// TCP (and TLS) connect timeout, in ms. Default: `upstream.connect_timeout_ms`.
    pub connect_ms: Option<u64>,
    /// Time allowed until the first byte of the answer (for streams: the first event), in ms.
    pub first_byte_ms: Option<u64>,
    /// Time allowed for the whole upstream call, streams included, in ms.
    pub total_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    /// SQLite file for the ledger; created with its tables if missing. Default `switchyard.db`.
    /// Not used with `[storage] kind = "postgres"`, where the database holds the ledger.
    pub path: Option<String>,
    /// Set to false to keep no ledger at all. Default true.
    pub enabled: Option<bool>,
    /// What a finishing request does when the writer's queue is full (the database is
    /// slower than the traffic, or locked by another process): `block` waits for room,
    /// up to `max_wait_ms`, so that no audit row is lost; `drop` never waits and loses
    /// the row instead. Either way every lost row is counted and reported at shutdown,
    /// and budgets are charged whether or not the row was written. Default `block`.
    pub on_overload: Option<String>,
    /// With `on_overload = "block"`, the longest a request waits for room in the queue,
    /// in ms; after that its row is dropped and counted. Between 1 and 60000. Default
    /// 5000, as long as the writer itself waits for another process's write lock.
    pub max_wait_ms: Option<u64>,
    /// Delete requests (with their attempts and content) that started more than this
    /// many days ago, at least 1. A background task deletes them in small batches, at
    /// start and every hour, so that the writer is never held up for long. Default:
    /// keep everything.
    pub retention_days: Option<u32>,
    /// How many days a stored response of the Responses API (`store: true`) is kept,
    /// for `previous_response_id`, `GET /v1/responses/{id}` and its input items; after
    /// that it is as good as deleted. Between 1 and 3650. Default 30, as OpenAI keeps
    /// them. A change applies to responses stored from then on.
    pub responses_ttl_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// A name for the key: it appears in the ledger and in `switchyard spend`.
    pub name: String,
    /// The secret itself, normally `"${ENV_VAR}"`.
    pub key: String,
    /// The key's policy: `models`, `max_tokens`, `allowed_regions`, `required_tags`,
    /// `log_content`, `pii`, `rpm`, `tpm`, `model_limits` (see `governance/policy.rs`).
    #[serde(default)]
    pub policy: super::policy::Policy,
    /// Spend caps: `[{ period = "month", limit_usd = 25 }]` (`day`, `month`, `total`; UTC).
    #[serde(default)]
    pub budgets: Vec<super::policy::BudgetInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token of the admin API, as `"${SWITCHYARD_ADMIN_TOKEN}"` (at least 16
    /// characters). Without it, `/admin` answers 403 to everyone except a virtual key
    /// reading its own team's spend.
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGovernance {
    /// SQLite file for teams and virtual keys. Default: the ledger's file (`ledger.path`).
    /// Not used with `[storage] kind = "postgres"`, where the database holds them.
    pub store: Option<String>,
    /// Whether prompt and response content may be kept in the ledger at all (table
    /// `request_content`); a policy's `log_content = false` turns it off for its keys.
    /// Default false.
    pub log_content: Option<bool>,
    /// PII guardrail for keys whose policies set none: `off`, `log`, `redact`, `block`.
    /// Default `off`.
    pub pii: Option<String>,
    /// Custom PII patterns, e.g. `[{ name = "employee_id", pattern = "EMP-\\d{6}" }]`;
    /// redacted as `[EMPLOYEE_ID_1]`.
    #[serde(default)]
    pub pii_patterns: Vec<RawPiiPattern>,
    /// Output tokens assumed for a request that sets no `max_tokens`, when charging token
    /// limits and reserving budget. Default 4096.
    pub default_max_output_tokens: Option<u64>,
    /// How often a running gateway checks the store for changed keys and teams, in ms
    /// (a revoked key stops working within this). Default 250, at most 1000. With
    /// `[storage] kind = "postgres"` changes are announced instead (LISTEN/NOTIFY) and
    /// seen at once.
    pub refresh_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPiiPattern {
    /// The placeholder's name (letters, digits, `_`), upper-cased: `[NAME_1]`.
    pub name: String,
    /// A regular expression (Rust `regex` syntax).
    pub pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `openai` (also any OpenAI-compatible server: vLLM, llama.cpp, Ollama…), `azure`,
    /// `anthropic`, `bedrock`, `gemini` (the Gemini API), `vertex` (Vertex AI).
    pub kind: String,
    /// openai: the API base including `/v1`, e.g. `https://api.openai.com/v1`.
    /// anthropic: the API base without `/v1`; default `https://api.anthropic.com`.
    /// bedrock: default `https://bedrock-runtime.{region}.amazonaws.com`.
    /// gemini: default `https://generativelanguage.googleapis.com`. vertex: default
    /// `https://{location}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com`
    /// for `global`).
    pub base_url: Option<String>,
    /// azure: the resource endpoint, e.g. `https://myres.openai.azure.com`.
    pub endpoint: Option<String>,
    /// azure: `deployments` (classic, needs `api_version`) or `v1` (the `/openai/v1` path).
    /// Default: `deployments` when `api_version` is set, else `v1`.
    pub api: Option<String>,
    /// azure classic: the `api-version` query parameter, e.g. `2024-10-21`.
    /// gemini: the path version, default `v1beta`. vertex: default `v1`.
    pub api_version: Option<String>,
    /// The credential, as `"${ENV_VAR}"`. Optional for servers that need none (a local vLLM);
    /// required for `azure`, `anthropic` and `gemini`. bedrock: a Bedrock API key, used
    /// instead of SigV4. vertex: an OAuth2 access token; default
    /// `$GOOGLE_OAUTH_ACCESS_TOKEN`.
    pub api_key: Option<String>,
    /// anthropic: the `anthropic-version` header. Default `2023-06-01`.
    pub anthropic_version: Option<String>,
    /// bedrock: the AWS region, e.g. `us-east-1`. Default: `$AWS_REGION`, then
    /// `$AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// bedrock: the AWS access key id, as `"${ENV_VAR}"`. Default: `$AWS_ACCESS_KEY_ID`.
    /// Not needed when `api_key` (a Bedrock API key, sent as a bearer token) is set.
    pub access_key_id: Option<String>,
    /// bedrock: the AWS secret access key, as `"${ENV_VAR}"`. Default:
    /// `$AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// bedrock: the session token of temporary credentials, as `"${ENV_VAR}"`.
    /// Default: `$AWS_SESSION_TOKEN` when the keys also come from the environment.
    pub session_token: Option<String>,
    /// vertex: the Google Cloud project id.
    pub project: Option<String>,
    /// vertex: the location, e.g. `us-central1`, or `global`.
    pub location: Option<String>,
    /// Allows an `http://` `base_url` (azure: `endpoint`) that points off this machine.
    /// Without TLS the credential and every prompt cross the network in clear text, so
    /// the gateway refuses to start with one unless this is `true`; `config check`
    /// still warns. Loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) need no
    /// permission. Default false.
    pub allow_insecure_http: Option<bool>,
    /// openai, azure: whether `POST /v1/responses` goes to the provider's own Responses
    /// API (`true`) or is translated to Chat Completions (`false`, for an
    /// OpenAI-compatible server without `/responses`). Default true (azure classic:
    /// from `api_version` 2025-03-01 on, the first with the Responses API).
    pub responses_api: Option<bool>,
    /// vertex, gemini: path of a Google service-account JSON key file (`"type":
    /// "service_account"`), used instead of `api_key`: the gateway signs a JWT with its
    /// `private_key`, exchanges it at its `token_uri` for an access token, and renews the
    /// token before it expires. A relative path is taken from the working directory.
    pub credentials_file: Option<String>,
    /// vertex, gemini: `"adc"` for Application Default Credentials, used instead of
    /// `api_key`: the key file named by `$GOOGLE_APPLICATION_CREDENTIALS` (a service
    /// account, or an `authorized_user` with a refresh token as `gcloud auth
    /// application-default login` writes), else gcloud's own file of that kind
    /// (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`, `application_default_credentials.json`),
    /// else the metadata server of the machine (`$GCE_METADATA_HOST`, default
    /// `metadata.google.internal`). Tokens are renewed before they expire.
    pub credentials: Option<String>,
    /// azure: the Entra ID (Azure AD) tenant, for client-credentials sign-in instead of
    /// `api_key`; needs `client_id` and `client_secret`.
    pub tenant_id: Option<String>,
    /// azure: the application (client) id of the Entra ID app registration.
    pub client_id: Option<String>,
    /// azure: the client secret of that app, as `"${ENV_VAR}"`.
    pub client_secret: Option<String>,
    /// azure: the scope the token is asked for. Default
    /// `https://cognitiveservices.azure.com/.default`.
    pub scope: Option<String>,
    /// azure: the Entra ID sign-in host. Default `https://login.microsoftonline.com`
    /// (sovereign clouds have their own).
    pub authority_host: Option<String>,
    /// bedrock: the profile of the shared AWS config and credentials files to take
    /// credentials from. Without static keys (`access_key_id`, or
    /// `$AWS_ACCESS_KEY_ID`) nor `api_key`, credentials come from the standard AWS
    /// chain: environment, this profile (default `$AWS_PROFILE`, then `default`), web
    /// identity (`$AWS_WEB_IDENTITY_TOKEN_FILE` with `$AWS_ROLE_ARN`), the container
    /// credentials endpoint, then the instance metadata service; temporary
    /// credentials are renewed before they expire.
    pub profile: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    /// Name of an entry under `[providers]`.
    pub provider: String,
    /// The model as the provider names it (for Azure: the deployment name). For
    /// `openai` and `azure`, a name of a reasoning family (`o1`, `o3`, `o4-mini`,
    /// `gpt-5`…) gets the output limit as `max_completion_tokens`, the only field those
    /// models take; name Azure deployments of them after the model.
    pub model: String,
    /// Where it runs, e.g. `eu-west`; informational for now, routing uses it later.
    pub region: Option<String>,
    /// USD per million tokens.
    #[serde(default)]
    pub price: RawPrice,
    /// Overrides of the default `[timeouts]`.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// The quota the provider granted this deployment; the gateway spills over to the
    /// next deployment before using more.
    #[serde(default)]
    pub quota: RawQuota,
    /// What the deployment can do; requests that need more skip it.
    #[serde(default)]
    pub capabilities: RawCapabilities,
    /// Data-handling facts, e.g. `["eu", "zero-retention", "no-training"]`. Models and
    /// callers may require tags.
    #[serde(default)]
    pub data_tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Requests per minute granted by the provider.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute granted by the provider.
    pub tpm: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapabilities {
    /// Supports function calling. Default true.
    pub tools: Option<bool>,
    /// Accepts image input. Default true.
    pub vision: Option<bool>,
    /// Supports `response_format: json_schema`. Default true.
    pub json_schema: Option<bool>,
    /// Context window in tokens; requests whose estimated prompt exceeds it skip the
    /// deployment. Default: unknown (no check).
    pub context_window: Option<u64>,
    /// Largest completion the deployment can produce, in tokens.
    pub max_output: Option<u64>,
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
    /// USD per million prompt tokens written to the provider's cache (Anthropic and
    /// Bedrock bill cache writes above the input price). Default: `input`.
    pub cache_write: Option<f64>,
    /// USD per million reasoning tokens (part of the completion tokens). Default: `output`.
    pub reasoning: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// How to order the deployments: `priority` (default; tiers in order, weighted
    /// within a tier), `weighted` (a traffic split), `latency` (lowest recent latency)
    /// or `cost` (cheapest for the request's estimated tokens).
    pub strategy: Option<String>,
    /// The deployments serving this model: names, or `{ name, tier, weight }` tables.
    /// A plain name under `priority` is its own tier, in list order.
    pub deployments: Vec<RawTarget>,
    /// Regions this model's traffic may go to; deployments elsewhere are never used.
    pub allowed_regions: Option<Vec<String>>,
    /// Data tags every deployment used for this model must carry.
    #[serde(default)]
    pub required_tags: Vec<String>,
    /// Overrides of the deployments' timeouts for this model.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Retry and fallback bounds.
    #[serde(default)]
    pub retry: RawRetry,
    /// Hedging: when the first attempt has not answered after this many ms, start a
    /// second one on the next deployment; the first answer wins. A first attempt that
    /// fails sooner moves on to the next deployment at once, as without hedging.
    pub hedge_after_ms: Option<u64>,
    /// What happens to a stream that breaks after content was relayed: `off` (the
    /// default: it ends with one error event) or `continue` (the next eligible
    /// deployment is asked to continue the partial answer, and the client's stream
    /// goes on as one; at most once per request, never after a tool-call delta).
    pub stream_recovery: Option<String>,
    /// Under the `priority` strategy, try deployments covered by a contract's unburned
    /// commitment first (the tiers keep their order behind them). Default false: the
    /// `cost` strategy prefers them whatever this says.
    #[serde(default)]
    pub prefer_commitments: bool,
    /// Shadow evaluation (`[models.NAME.shadow]`): a candidate deployment that a
    /// sample of this model's requests is also sent to, after the client's answer is
    /// complete, to compare latency, cost, errors and answers.
    pub shadow: Option<RawShadow>,
    /// The exact-match response cache: `cache = { ttl_s = 3600, max_bytes = 67108864 }`.
    /// The answer to a deterministic request (`temperature = 0`, unless
    /// `any_temperature = true`; `n` at most 1), plain or a stream that completed, is
    /// kept for `ttl_s` seconds and replayed, whole or as a stream, to the same request
    /// from the same team (or key, for keys without a team). In process, or in Redis
    /// when `[state]` is set. Off when absent.
    pub cache: Option<RawCache>,
}

/// `[models.NAME.shadow]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// The candidate: a deployment name (required). It need not be one of the model's.
    pub deployment: Option<String>,
    /// Share of the model's chat requests mirrored, 0 to 1 (a stream once relayed to its end).
    /// Required.
    pub sample_rate: Option<f64>,
    /// Most the candidate's calls may cost per UTC day, e.g. `5` or `"5.00"`. Required:
    /// shadow traffic is paid for and counts in no caller's budget.
    pub budget_usd: Option<UsdAmount>,
    /// Text answers agree when their similarity is at least this, 0 to 1. Default 0.8.
    pub agree_at: Option<f64>,
    /// A deployment of an embeddings model: text answers are then compared by the
    /// cosine similarity of their embeddings (one call for both, within the shadow
    /// budget, recorded as its own shadow row) instead of the overlap of their words.
    pub embeddings: Option<String>,
}

/// `[models.NAME] cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How long an answer is reused, in seconds: 1 to 2592000 (30 days). Required.
    pub ttl_s: Option<u64>,
    /// Most bytes of answers this model keeps; an answer larger than this is not kept
    /// (a stream stops being assembled once past it). Default 67108864 (64 MiB). The
    /// in-process cache is sized, at start, by the largest of these; in Redis it bounds
    /// each entry, and Redis's `maxmemory` the total.
    pub max_bytes: Option<u64>,
    /// Also reuse answers to requests whose `temperature` is not 0 (or unset), whose
    /// answers would otherwise vary. Default false.
    pub any_temperature: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTarget {
    Name(String),
    Table(RawTargetTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetTable {
    pub name: String,
    /// Priority tier, 0 first. Default: the position in the list (priority) or 0.
    pub tier: Option<u32>,
    /// Relative share within its tier (or of the split, for `weighted`). Default 1.
    pub weight: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Most upstream attempts per request, fallbacks included. Default: the number of
    /// deployments + 1, at most 6.
    pub max_attempts: Option<u32>,
    /// First backoff before going round the deployments again, in ms. Default 100.
    pub base_backoff_ms: Option<u64>,
    /// Largest backoff (and largest `retry-after` honoured), in ms. Default 2000.
    pub max_backoff_ms: Option<u64>,
}

/// Circuit breakers, one per deployment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures that open the breaker. Default 5.
    pub consecutive_failures: Option<u32>,
    /// Failure ratio (0–1) over the last `window` calls that opens it. Default 0.5.
    pub failure_ratio: Option<f64>,
    /// Calls in the ratio window; the ratio is only judged on a full window. Default 20.
    pub window: Option<u32>,
    /// How long it stays open before a half-open probe, in ms. Default 5000.
    pub open_ms: Option<u64>,
}
