//! `switchyard keys …` and `switchyard teams …`: the same store the gateway uses (by
//! default the ledger's SQLite file). A running gateway notices a change within
//! `governance.refresh_ms` (250 ms by default).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use switchyard::config::policy::{BudgetInput, UsdAmount};
use switchyard::governance::store::{KeyRow, NewKey, Store, TeamRow, Update};
use switchyard::governance::{Budget, PiiMode, Policy};
use switchyard::storage::Database;
use switchyard::types::money::nano_to_usd_string;
use switchyard::types::time;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a virtual key; its secret is printed once and stored only as a hash.
    Create {
        /// The key's name (unique for ever): what the ledger and spend reports show.
        name: String,
        /// The team it belongs to (its policy and budgets apply too).
        #[arg(long)]
        team: Option<String>,
        /// Expiry, UTC: YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// List keys (never their secrets).
    List {
        /// Only this team's keys.
        #[arg(long)]
        team: Option<String>,
    },
    /// Revoke a key by name or id; a running gateway refuses it within a second.
    Revoke { key: String },
}

#[derive(Subcommand)]
pub enum TeamsCommand {
    /// Create a team with a policy and budgets.
    Create {
        name: String,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
    /// List teams.
    List,
    /// Show one team and its keys.
    Show { name: String },
    /// Replace a team's policy (when policy flags are given) and budgets (when --budget is).
    Update {
        name: String,
        #[command(flatten)]
        policy: Box<PolicyArgs>,
    },
}

/// A policy and budgets, as flags.
#[derive(Args, Default)]
pub struct PolicyArgs {
    /// Logical models allowed, comma-separated (`support-*` matches a prefix).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Most output tokens per request.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Regions requests may be served from, comma-separated (e.g. eu-west,eu-central).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Data tags every serving deployment must carry, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Never keep prompt or response content in the ledger.
    #[arg(long)]
    no_log_content: bool,
    /// PII guardrail: off, log, redact or block.
    #[arg(long)]
    pii: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// The channel profile requests get without an x-switchyard-channel header.
    #[arg(long)]
    channel: Option<String>,
    /// Channels requests may choose with the x-switchyard-channel header, comma-separated.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// A spend cap, PERIOD=USD with PERIOD day, month or total (UTC); repeatable.
    #[arg(long = "budget")]
    budgets: Vec<String>,
}

impl PolicyArgs {
    fn has_policy(&self) -> bool {
        !self.models.is_empty()
            || self.max_tokens.is_some()
            || !self.regions.is_empty()
            || !self.tags.is_empty()
            || self.no_log_content
            || self.pii.is_some()
            || self.rpm.is_some()
            || self.tpm.is_some()
            || self.channel.is_some()
            || !self.channels.is_empty()
    }

    /// The policy of the flags. `known`: the configured channels, when a configuration
    /// was read (a policy may name only those).
    fn policy(&self, known: Option<&[String]>) -> Result<Policy> {
        let pii = match &self.pii {
            Some(m) => Some(
                PiiMode::parse(m)
                    .with_context(|| format!("--pii: `{m}`; expected off, log, redact or block"))?,
            ),
            None => None,
        };
        let p = Policy {
            models: (!self.models.is_empty()).then(|| self.models.clone()),
            max_tokens: self.max_tokens,
            allowed_regions: (!self.regions.is_empty()).then(|| self.regions.clone()),
            required_tags: self.tags.clone(),
            log_content: self.no_log_content.then_some(false),
            pii,
            rpm: self.rpm,
            tpm: self.tpm,
            channel: self.channel.clone(),
            channels: (!self.channels.is_empty()).then(|| self.channels.clone()),
            ..Policy::default()
        };
        p.validate()
            .map_err(|(field, m)| anyhow::anyhow!("policy {field}: {m}"))?;
        if let Some(known) = known {
            if let Some((field, name)) = p.unknown_channel(|c| known.iter().any(|k| k == c)) {
                bail!("policy {field}: `{name}` is not a configured channel ([channels.NAME])");
            }
        }
        Ok(p)
    }

    fn budgets(&self) -> Result<Vec<Budget>> {
        self.budgets
            .iter()
            .map(|b| {
                let Some((period, usd)) = b.split_once('=') else {
                    bail!("--budget `{b}`: expected PERIOD=USD, e.g. month=25");
                };
                BudgetInput {
                    period: period.to_owned(),
                    limit_usd: UsdAmount::Text(usd.to_owned()),
                    warn_at_percent: None,
                }
                .validate()
                .map_err(|(field, m)| anyhow::anyhow!("--budget `{b}`: {field} {m}"))
            })
            .collect()
    }
}

fn budgets_text(budgets: &[Budget]) -> String {
    if budgets.is_empty() {
        return "-".into();
    }
    budgets
        .iter()
        .map(|b| {
            format!(
                "{} ${}",
                b.period.as_str(),
                nano_to_usd_string(b.limit_nano_usd)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn policy_text(p: &Policy) -> String {
    let s = serde_json::to_string(p).unwrap_or_default();
    if s == "{}" {
        "-".into()
    } else {
        s
    }
}

fn key_status(k: &KeyRow) -> &'static str {
    if k.revoked_at_ms.is_some() {
        "revoked"
    } else if k.expires_at_ms.is_some_and(|at| at <= time::now_ms()) {
        "expired"
    } else {
        "active"
    }
}

fn print_key(k: &KeyRow) {
    println!(
        "{}  {}  team={}  {}  {}…  expires={}  budgets={}  policy={}",
        k.id,
        k.name,
        k.team.as_deref().unwrap_or("-"),
        key_status(k),
        k.prefix,
        k.expires_at_ms.map_or("-".into(), time::format_rfc3339),
        budgets_text(&k.budgets),
        policy_text(&k.policy),
    );
}

fn print_team(t: &TeamRow) {
    println!(
        "{}  budgets={}  policy={}",
        t.name,
        budgets_text(&t.budgets),
        policy_text(&t.policy)
    );
}

pub async fn keys(
    store: &Database,
    command: KeysCommand,
    static_names: &[String],
    channels: Option<&[String]>,
) -> Result<()> {
    let store = Store::open_on(store).await?;
    match command {
        KeysCommand::Create {
            name,
            team,
            expires,
            policy,
        } => {
            if static_names.contains(&name) {
                bail!("`{name}` is the name of a key in the configuration file");
            }
            let expires_at_ms = match expires.as_deref() {
                Some(s) => Some(time::parse_utc(s).with_context(|| {
                    format!("--expires `{s}`: expected 2026-12-31 or 2026-12-31T23:59:59Z")
                })?),
                None => None,
            };
            let new = NewKey {
                name,
                team,
                policy: policy.policy(channels)?,
                budgets: policy.budgets()?,
                expires_at_ms,
            };
            let (row, secret) = store.create_key(&new, "cli").await?;
            print_key(&row);
            println!();
            println!("  {secret}");
            println!();
            println!("This is the only time the key is shown; Switchyard keeps only its SHA-256.");
        }
        KeysCommand::List { team } => {
            for k in store.keys(team.as_deref()).await? {
                print_key(&k);
            }
        }
        KeysCommand::Revoke { key } => {
            let row = store.revoke_key(&key, "cli").await?;
            print_key(&row);
        }
    }
    store.close().await;
    Ok(())
}

pub async fn teams(
    store: &Database,
    command: TeamsCommand,
    channels: Option<&[String]>,
) -> Result<()> {
    let store = Store::open_on(store).await?;
    match command {
        TeamsCommand::Create { name, policy } => {
            let team = store
                .create_team(&name, &policy.policy(channels)?, &policy.budgets()?, "cli")
                .await?;
            print_team(&team);
        }
        TeamsCommand::List => {
            for t in store.teams().await? {
                print_team(&t);
            }
        }
        TeamsCommand::Show { name } => {
            print_team(&store.team(&name).await?);
            for k in store.keys(Some(&name)).await? {
                print!("  ");
                print_key(&k);
            }
        }
        TeamsCommand::Update { name, policy } => {
            let update = Update {
                policy: if policy.has_policy() {
                    Some(policy.policy(channels)?)
                } else {
                    None
                },
                budgets: if policy.budgets.is_empty() {
                    None
                } else {
                    Some(policy.budgets()?)
                },
            };
            print_team(&store.update_team(&name, &update, "cli").await?);
        }
    }
    store.close().await;
    Ok(())
}
