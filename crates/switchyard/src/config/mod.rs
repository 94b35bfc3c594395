//! Configuration: one TOML file, parsed into [`raw`] types, then validated into
//! [`Config`], whose values cannot be invalid, so nothing downstream re-checks them.
//!
//! Every error names the field path (`models.support-chat.deployments[1]`) and, when
//! the file is at hand, the line it sits on.

mod raw;
mod secret;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use secret::Secret;

use crate::ledger::Usage;

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
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
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
    /// None: no ledger is kept.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub key: Secret,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub api_key: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI or any server that speaks its API. `base_url` has no trailing slash.
    OpenAi { base_url: String },
    /// Azure OpenAI. `endpoint` has no trailing slash.
    Azure { endpoint: String, api: AzureApi },
}

impl ProviderKind {
    /// The low-cardinality name used in headers, logs and the ledger.
    pub fn label(&self) -> &'static str {
        match self {
            ProviderKind::OpenAi { .. } => "openai",
            ProviderKind::Azure { .. } => "azure",
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
    pub name: String,
    pub provider: Arc<Provider>,
    /// The model (Azure: deployment) name the provider knows.
    pub upstream_model: String,
    pub region: Option<String>,
    pub price: Price,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub first_byte: Duration,
    pub total: Duration,
}

/// Prices in integer nano-USD per million tokens, so that cost arithmetic is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_mtok: u64,
    pub output_per_mtok: u64,
    pub cached_input_per_mtok: u64,
}

impl Price {
    /// Cost of one call in nano-USD, rounded half up once at the end.
    /// Cached prompt tokens are a subset of the prompt tokens and billed at their own rate.
    pub fn cost(&self, usage: &Usage) -> i64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        let scaled = u128::from(uncached) * u128::from(self.input_per_mtok)
            + u128::from(cached) * u128::from(self.cached_input_per_mtok)
            + u128::from(usage.completion_tokens) * u128::from(self.output_per_mtok);
        let nano = (scaled + 500_000) / 1_000_000;
        i64::try_from(nano).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Clone)]
pub struct LogicalModel {
    pub name: String,
    /// In order of preference.
    pub deployments: Vec<Arc<Deployment>>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: u64 = 16 * 1024 * 1024;
const DEFAULT_DRAIN_MS: u64 = 30_000;
const DEFAULT_CONNECT_MS: u64 = 5_000;
const DEFAULT_POOL_IDLE_MS: u64 = 90_000;
const DEFAULT_POOL_MAX_IDLE: usize = 256;
const DEFAULT_FIRST_BYTE_MS: u64 = 60_000;
const DEFAULT_TOTAL_MS: u64 = 600_000;

impl Config {
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
    src.as_bytes()[..offset.min(src.len())]
        .iter()
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

fn path_segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for index in rest.split('[') {
            if let Some(n) = index
                .trim_end_matches(']')
                .parse()
                .ok()
                .filter(|_| !index.is_empty())
            {
                out.push(Segment::Index(n));
            }
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
        first_byte: millis(
            raw.timeouts.first_byte_ms,
            DEFAULT_FIRST_BYTE_MS,
            "timeouts.first_byte_ms",
        )?,
        total: millis(raw.timeouts.total_ms, DEFAULT_TOTAL_MS, "timeouts.total_ms")?,
    };
    let ledger = LedgerConfig {
        path: if raw.ledger.enabled.unwrap_or(true) {
            Some(PathBuf::from(
                raw.ledger.path.as_deref().unwrap_or("switchyard.db"),
            ))
        } else {
            None
        },
    };

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
        keys.push(ApiKey { name: k.name, key });
    }

    let mut providers: BTreeMap<String, Arc<Provider>> = BTreeMap::new();
    for (name, p) in raw.providers {
        let at = format!("providers.{name}");
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
                let api = match (p.api.as_deref(), p.api_version) {
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
            other => {
                return Err(err(
                    format!("{at}.kind"),
                    format!("unknown provider kind `{other}`; expected one of: openai, azure"),
                ))
            }
        };
        let api_key = p
            .api_key
            .as_deref()
            .map(|v| Secret::resolve(v, &format!("{at}.api_key"), env))
            .transpose()?;
        if matches!(kind, ProviderKind::Azure { .. }) && api_key.is_none() {
            return Err(err(
                format!("{at}.api_key"),
                "is required for kind `azure` (e.g. \"${AZURE_OPENAI_API_KEY}\")",
            ));
        }
        providers.insert(
            name.clone(),
            Arc::new(Provider {
                name,
                kind,
                api_key,
            }),
        );
    }

    let mut deployments: BTreeMap<String, Arc<Deployment>> = BTreeMap::new();
    for (name, d) in raw.deployments {
        let at = format!("deployments.{name}");
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
        let input = price_per_mtok(d.price.input, &format!("{at}.price.input"))?.unwrap_or(0);
        let price = Price {
            input_per_mtok: input,
            output_per_mtok: price_per_mtok(d.price.output, &format!("{at}.price.output"))?
                .unwrap_or(0),
            cached_input_per_mtok: price_per_mtok(
                d.price.cached_input,
                &format!("{at}.price.cached_input"),
            )?
            .unwrap_or(input),
        };
        let timeouts = Timeouts {
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
        deployments.insert(
            name.clone(),
            Arc::new(Deployment {
                name,
                provider: provider.clone(),
                upstream_model: d.model,
                region: d.region,
                price,
                timeouts,
            }),
        );
    }

    let mut models = BTreeMap::new();
    for (name, m) in raw.models {
        let at = format!("models.{name}");
        if m.deployments.is_empty() {
            return Err(err(
                format!("{at}.deployments"),
                "must name at least one deployment",
            ));
        }
        let mut resolved = Vec::with_capacity(m.deployments.len());
        for (i, dep) in m.deployments.iter().enumerate() {
            let Some(d) = deployments.get(dep) else {
                return Err(err(
                    format!("{at}.deployments[{i}]"),
                    format!(
                        "unknown deployment `{dep}`; defined deployments: {}",
                        list(deployments.keys())
                    ),
                ));
            };
            if resolved.iter().any(|r: &Arc<Deployment>| r.name == *dep) {
                return Err(err(
                    format!("{at}.deployments[{i}]"),
                    format!("`{dep}` is listed twice"),
                ));
            }
            resolved.push(d.clone());
        }
        models.insert(
            name.clone(),
            Arc::new(LogicalModel {
                name,
                deployments: resolved,
            }),
        );
    }

    Ok(Config {
        server,
        upstream,
        ledger,
        keys,
        providers: providers.into_values().collect(),
        deployments: deployments.into_values().collect(),
        models,
    })
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
