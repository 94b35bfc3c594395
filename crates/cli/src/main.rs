//! `switchyard`: the gateway's command line. Commands only parse arguments and call
//! the library; nothing here is gateway logic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::ledger::{render_spend_table, spend_query, SpendGroup, SpendQuery};
use switchyard::storage::{Database, Storage};
use switchyard::{shutdown_signal, Config, Gateway};
use switchyard_sim::{SimOptions, Simulator};

mod governance;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: one OpenAI-compatible API in front of every AI provider",
    long_about = "Switchyard is a multi-cloud AI gateway. Applications point an OpenAI SDK at it; \
                  it routes each request to a provider deployment, falls over when one fails, \
                  and records every request's tokens and cost in its ledger."
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        default_value = "switchyard.toml",
        env = "SWITCHYARD_CONFIG"
    )]
    config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with the configuration file (--config).
    ///
    /// Stops on SIGTERM or SIGINT: fails /readyz for server.drain_grace_ms while still
    /// serving, stops accepting, drains in-flight requests up to
    /// server.drain_timeout_ms, flushes the ledger, exits 0.
    Serve,
    /// Run the gateway wired to the built-in provider simulator: no account, no
    /// network and no configuration file needed. Prints the base URL, the key and a
    /// curl line that works as printed.
    Demo {
        /// Address for the gateway.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The API key the demo accepts; a random one is generated when omitted.
        #[arg(long)]
        key: Option<String>,
        /// Ledger file; by default a fresh file in the system's temporary directory.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// The admin token (admin API and dashboard); a random one is generated when
        /// omitted.
        #[arg(long)]
        admin_token: Option<String>,
    },
    /// Run the provider simulator alone: the OpenAI, Azure OpenAI, Anthropic, Bedrock,
    /// Gemini, Vertex and Mistral wire APIs, deterministic, with latency and fault
    /// injection through its control endpoint under /_sim/.
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9099")]
        listen: SocketAddr,
        /// Accept only this API key (default: any non-empty key).
        #[arg(long)]
        api_key: Option<String>,
        /// A JSON scenario file with faults and latencies to apply at start
        /// (the same shapes as the control endpoint takes).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// The AWS access key id Bedrock requests must be signed with.
        #[arg(long, default_value = switchyard_sim::DEFAULT_AWS_ACCESS_KEY_ID)]
        aws_access_key_id: String,
        /// The AWS secret access key the simulator verifies SigV4 signatures with.
        #[arg(long, default_value = switchyard_sim::DEFAULT_AWS_SECRET_ACCESS_KEY)]
        aws_secret_access_key: String,
        /// Require this AWS session token (default: accept any or none).
        #[arg(long)]
        aws_session_token: Option<String>,
    },
    /// Explain routing: which deployments a model may use and in which order.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print spend from the ledger: totals by model and by key (or --by one grouping).
    Spend {
        /// Group by one dimension only.
        #[arg(long, value_enum)]
        by: Option<SpendBy>,
        /// Only requests since this UTC date (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// The ledger file; by default the configuration's ledger (its file, or its
        /// PostgreSQL database with `[storage] kind = "postgres"`).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Only this team's requests.
        #[arg(long)]
        team: Option<String>,
    },
    /// Contracts with providers: per contract, committed, consumed, left, run rate,
    /// the projection to the period's end (shortfall or overage) and days to the cap.
    Contracts {
        /// The moment to report at: a UTC date or time (default: now).
        #[arg(long)]
        at: Option<String>,
        /// The ledger file; by default the configuration's ledger.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Print JSON (the shape of `GET /admin/contracts`).
        #[arg(long)]
        json: bool,
    },
    /// Shadow evaluation: `switchyard shadow report MODEL`.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Replay the ledger's requests through the routing of the configuration given
    /// with --config (other prices, deployments, strategies, regions), calling no
    /// provider; prints what they would have cost (list and effective, per team), where
    /// they would have gone (shares per deployment and provider), which would have had
    /// no eligible deployment and why, and the estimated latency, beside what happened.
    Whatif {
        /// Only requests from this UTC date (YYYY-MM-DD); default: the ledger's first.
        #[arg(long)]
        since: Option<String>,
        /// Only requests before this UTC date (YYYY-MM-DD, exclusive); default: all.
        #[arg(long)]
        until: Option<String>,
        /// Only requests for this logical model (the name clients asked for).
        #[arg(long)]
        model: Option<String>,
        /// Seed of the replay's random choices (weighted orders, latency draws): the
        /// same seed gives the same report.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The ledger file; by default the ledger the configuration names (its file,
        /// or its PostgreSQL database with `[storage] kind = "postgres"`).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Channel profiles: `switchyard channels report`.
    Channels {
        #[command(subcommand)]
        command: ChannelsCommand,
    },
    /// Manage virtual keys (create, list, revoke) in the key store.
    Keys {
        #[command(subcommand)]
        command: governance::KeysCommand,
        /// The store file; by default the configuration's (`governance.store`, else the
        /// ledger's file, or the PostgreSQL database of `[storage]`).
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Manage teams (create, list, show, update) in the key store.
    Teams {
        #[command(subcommand)]
        command: governance::TeamsCommand,
        /// The store file; by default the configuration's.
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// Print the eligible deployments of MODEL in the order they are tried, why, and
    /// what the constraints exclude.
    Explain {
        /// The logical model.
        model: String,
        /// Allowed region (repeat for several): the caller's data-residency policy.
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Required data tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// What the request needs: tools, vision, json_schema (comma-separated).
        #[arg(long, value_delimiter = ',')]
        needs: Vec<String>,
        /// Estimated prompt tokens (checked against context windows).
        #[arg(long, default_value_t = 0)]
        prompt_tokens: u64,
    },
}

#[derive(Subcommand)]
enum ShadowCommand {
    /// MODEL's mirrored requests beside the client's: latency and first-token p50/p99,
    /// error rate, cost per 1,000 requests, agreement rate, and examples of
    /// disagreement where content logging was allowed.
    Report {
        /// The logical model.
        model: String,
        /// From this UTC date (YYYY-MM-DD); default: a day before --until.
        #[arg(long)]
        since: Option<String>,
        /// Up to this UTC date (YYYY-MM-DD, exclusive); default: now.
        #[arg(long)]
        until: Option<String>,
        /// The ledger file; by default the configuration's ledger.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Print JSON (the shape of `GET /admin/shadow`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ChannelsCommand {
    /// Per channel: first-token and latency percentiles against the objectives, the
    /// share that met them, the share per provider and the cost per conversation turn.
    Report {
        /// From this UTC date (YYYY-MM-DD); default: a day before --until.
        #[arg(long)]
        since: Option<String>,
        /// Up to this UTC date (YYYY-MM-DD, exclusive); default: now.
        #[arg(long)]
        until: Option<String>,
        /// The ledger file; by default the configuration's ledger.
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Print JSON (the shape of `GET /admin/channels`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; prints each problem with its field and line and
    /// exits non-zero when there is one.
    Check {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SpendBy {
    Model,
    Key,
    Team,
    Provider,
    Deployment,
    Day,
}

/// mimalloc instead of the system allocator: the request path allocates and frees
/// many small buffers, and glibc's malloc and free were about 15% of a small request's
/// instructions (bench/README, "Allocator"). Built with `no_thp`: asking for
/// transparent huge pages made every partly used 2 MiB region resident, which cost
/// 40 MB more than glibc with 1,000 open streams.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve => {
            let gateway = Gateway::start_from_file(&cli.config).await?;
            eprintln!("switchyard listening on {}", gateway.base_url());
            // SIGHUP reloads the file meanwhile.
            gateway.wait_for_shutdown_signal().await;
            let report = gateway.shutdown().await?;
            let l = report.ledger;
            eprintln!(
                "switchyard stopped: drained={}, ledger rows written={}, dropped={} \
                 (queue full {}, write failed {}, duplicate {}, after shutdown {})",
                report.drained,
                l.written,
                l.dropped,
                l.dropped_queue_full,
                l.dropped_write_failed,
                l.dropped_duplicate,
                l.dropped_shutting_down
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            listen,
            key,
            ledger,
            admin_token,
        } => demo(listen, key, ledger, admin_token).await,
        Command::Sim {
            listen,
            api_key,
            scenario,
            aws_access_key_id,
            aws_secret_access_key,
            aws_session_token,
        } => {
            let scenario = match scenario {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json_from(&text)
                        .with_context(|| format!("{}: invalid scenario", path.display()))?
                }
                None => Default::default(),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let handle = Simulator::new(SimOptions {
                api_key,
                scenario,
                aws_access_key_id,
                aws_secret_access_key,
                aws_session_token,
            })
            .spawn(listener)
            .await?;
            let base = handle.base_url();
            eprintln!("switchyard simulator listening on {base}");
            eprintln!("  OpenAI base URL:      {base}/v1");
            eprintln!("  Azure endpoint:       {base}");
            eprintln!("  Anthropic base URL:   {base}");
            eprintln!("  Bedrock endpoint:     {base}  (SigV4, region any)");
            eprintln!("  Gemini / Vertex base: {base}");
            eprintln!("  Mistral base URL:     {base}/mistral/v1");
            eprintln!("  control endpoint:     {base}/_sim/");
            shutdown_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Routes {
            command:
                RoutesCommand::Explain {
                    model,
                    regions,
                    tags,
                    needs,
                    prompt_tokens,
                },
        } => {
            let config = load(&cli.config)?;
            let Some(m) = config.model(&model) else {
                let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
                anyhow::bail!("unknown model `{model}`; models: {}", known.join(", "));
            };
            let mut wanted = switchyard::routing::Needs {
                prompt_tokens,
                ..Default::default()
            };
            for need in &needs {
                match need.as_str() {
                    "tools" => wanted.tools = true,
                    "vision" | "images" => wanted.vision = true,
                    "json_schema" => wanted.json_schema = true,
                    other => anyhow::bail!(
                        "--needs: unknown `{other}`; expected tools, vision, json_schema"
                    ),
                }
            }
            let caller = switchyard::config::Constraints {
                allowed_regions: (!regions.is_empty()).then_some(regions),
                required_tags: tags,
            };
            print!(
                "{}",
                switchyard::routing::render_explanation(m, &wanted, &caller)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let path = file.unwrap_or(cli.config);
            // The same validation a running gateway applies to a reloaded file.
            match switchyard::governance::check::check_config_file(&path).await {
                Ok(c) => {
                    // The config file's keys may not reuse the names of the store's
                    // virtual keys; the gateway refuses to start with such a file.
                    // A check changes nothing: the database is read as it is, never
                    // migrated (a database without the schema yet has no keys).
                    let store = match &c.storage {
                        switchyard::config::StorageConfig::Postgres(pg) => {
                            // The database may not be reachable from where the file
                            // is checked; the gateway makes the same check at start.
                            match switchyard::storage::Postgres::connect_unmigrated(pg).await {
                                Ok(pg) => Some(Database::Postgres(pg)),
                                Err(e) => {
                                    eprintln!(
                                        "{}: warning: key names not checked against the store: {e}",
                                        path.display()
                                    );
                                    None
                                }
                            }
                        }
                        // Checked with the file above, as a reload checks it.
                        switchyard::config::StorageConfig::Sqlite => None,
                    };
                    if let Some(db) = store {
                        let store = switchyard::governance::store::Store::open_on(&db).await?;
                        let checked = if store.has_schema().await {
                            switchyard::governance::check_against_store(&c, &store).await
                        } else {
                            Ok(())
                        };
                        store.close().await;
                        if let Err(e) = checked {
                            eprintln!("{}: {e}", path.display());
                            return Ok(ExitCode::from(2));
                        }
                    }
                    for w in c.warnings() {
                        eprintln!("{}: warning: {w}", path.display());
                    }
                    println!(
                        "{}: ok ({} providers, {} deployments, {} models, {} keys)",
                        path.display(),
                        c.providers.len(),
                        c.deployments.len(),
                        c.models.len(),
                        c.keys.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) if e.is_invalid_file() => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(2))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Keys { command, store } => {
            let (db, static_names, channels) = store_of(&cli.config, store).await?;
            governance::keys(&db, command, &static_names, channels.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Teams { command, store } => {
            let (db, _, channels) = store_of(&cli.config, store).await?;
            governance::teams(&db, command, channels.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Contracts { at, ledger, json } => {
            use switchyard::ledger::stats::contracts::{
                contract_report, contract_report_json, render_contract_report,
            };
            let config = load(&cli.config)?;
            let db = ledger_of(Some(&config), ledger).await?;
            let at_ms = match at.as_deref() {
                Some(d) => switchyard::types::time::parse_utc(d).with_context(|| {
                    format!("--at: `{d}` is not a UTC date or time like 2026-11-01 or 2026-11-01T12:00:00Z")
                })?,
                None => switchyard::types::time::now_ms(),
            };
            let rows = contract_report(&db, &config.contract_list(), at_ms).await?;
            print_report(
                json,
                || contract_report_json(&rows),
                || render_contract_report(&rows),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shadow {
            command:
                ShadowCommand::Report {
                    model,
                    since,
                    until,
                    ledger,
                    json,
                },
        } => {
            use switchyard::ledger::stats::shadow::{
                render_shadow_report, shadow_report, shadow_report_json,
            };
            let config = optional_config(&cli.config, ledger.is_some())?;
            let db = ledger_of(config.as_ref(), ledger).await?;
            let (since_ms, until_ms) = report_range(since.as_deref(), until.as_deref())?;
            let agree_at = config
                .as_ref()
                .and_then(|c| c.model(&model))
                .and_then(|m| m.shadow.as_ref())
                .map_or(switchyard::config::DEFAULT_AGREE_AT, |s| s.agree_at);
            let report = shadow_report(&db, &model, since_ms, until_ms, agree_at).await?;
            print_report(
                json,
                || shadow_report_json(&report),
                || render_shadow_report(&report),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Channels {
            command:
                ChannelsCommand::Report {
                    since,
                    until,
                    ledger,
                    json,
                },
        } => {
            use switchyard::ledger::stats::channels::{
                channel_report, channel_report_json, render_channel_report, Objectives,
            };
            // The objectives are the configuration's; without a file, none.
            let config = optional_config(&cli.config, ledger.is_some())?;
            let db = ledger_of(config.as_ref(), ledger).await?;
            let (since_ms, until_ms) = report_range(since.as_deref(), until.as_deref())?;
            let configured: Vec<(String, Objectives)> = config
                .map(|c| c.channel_objectives())
                .unwrap_or_default()
                .into_iter()
                .map(|(name, ttft, total)| (name, Objectives { ttft, total }))
                .collect();
            let rows = channel_report(&db, since_ms, until_ms, &configured).await?;
            print_report(
                json,
                || channel_report_json(since_ms, until_ms, &rows),
                || render_channel_report(since_ms, until_ms, &rows),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Whatif {
            since,
            until,
            model,
            seed,
            ledger,
            json,
        } => {
            // The configuration to replay through, validated as `config check` does.
            let alt = match switchyard::governance::check::check_config_file(&cli.config).await {
                Ok(c) => c,
                Err(e) if e.is_invalid_file() => {
                    eprintln!(
                        "--config {}: the configuration to replay through is not valid:\n{e}",
                        cli.config.display()
                    );
                    return Ok(ExitCode::from(2));
                }
                Err(e) => return Err(e.into()),
            };
            let since_ms = since
                .as_deref()
                .map(|d| parse_date_arg("--since", d))
                .transpose()?;
            let until_ms = until
                .as_deref()
                .map(|d| parse_date_arg("--until", d))
                .transpose()?;
            if let (Some(s), Some(u)) = (since_ms, until_ms) {
                if s >= u {
                    anyhow::bail!("--since must be before --until");
                }
            }
            if let Some(m) = model.as_deref().filter(|m| alt.model(m).is_none()) {
                // Not an error: the report counts the model's requests as having no
                // eligible deployment, which is the answer to the question asked.
                eprintln!(
                    "warning: --model {m}: not a model of {}; its requests have no eligible deployment there",
                    cli.config.display()
                );
            }
            let db = ledger_of(Some(&alt), ledger).await?;
            let options = switchyard::whatif::Options {
                since_ms,
                until_ms,
                model,
                seed,
            };
            let report = switchyard::whatif::replay(&db, &alt, &options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Spend {
            by,
            since,
            ledger,
            team,
        } => {
            let config = match ledger {
                Some(_) => None,
                None => Some(load(&cli.config)?),
            };
            let db = ledger_of(config.as_ref(), ledger).await?;
            let since_ms = since.as_deref().map(parse_date).transpose()?;
            let groups: Vec<(SpendGroup, &str)> = match by {
                None => vec![(SpendGroup::Model, "model"), (SpendGroup::Key, "key")],
                Some(SpendBy::Model) => vec![(SpendGroup::Model, "model")],
                Some(SpendBy::Key) => vec![(SpendGroup::Key, "key")],
                Some(SpendBy::Team) => vec![(SpendGroup::Team, "team")],
                Some(SpendBy::Provider) => vec![(SpendGroup::Provider, "provider")],
                Some(SpendBy::Deployment) => vec![(SpendGroup::Deployment, "deployment")],
                Some(SpendBy::Day) => vec![(SpendGroup::Day, "day")],
            };
            for (group, title) in groups {
                let query = SpendQuery {
                    by: group,
                    since_ms,
                    team: team.clone(),
                };
                let rows = spend_query(&db, &query).await?;
                println!("{}", render_spend_table(title, &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The key store: `--store`, else the configuration's; the config file's key names;
/// and its channels (`None` without a configuration to check policies against).
async fn store_of(
    config: &Path,
    store: Option<PathBuf>,
) -> Result<(Database, Vec<String>, Option<Vec<String>>)> {
    if let Some(path) = store {
        if !config.exists() {
            return Ok((Database::Sqlite(path), Vec::new(), None));
        }
        let c = load(config)?;
        let channels = c.channels.keys().cloned().collect();
        let names = c.keys.into_iter().map(|k| k.name).collect();
        return Ok((Database::Sqlite(path), names, Some(channels)));
    }
    let c = load(config).with_context(|| {
        format!(
            "no --store given and the configuration {} cannot be read",
            config.display()
        )
    })?;
    let names = c.keys.iter().map(|k| k.name.clone()).collect();
    let channels = c.channels.keys().cloned().collect();
    let db = Storage::open(&c)
        .await?
        .store
        .context("the configuration has no key store (no ledger and no governance.store)")?;
    Ok((db, names, Some(channels)))
}

fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn serde_json_from(text: &str) -> Result<switchyard_sim::Scenario> {
    Ok(serde_json::from_str(text)?)
}

/// `YYYY-MM-DD` (UTC) → unix milliseconds at 00:00.
fn parse_date(s: &str) -> Result<i64> {
    parse_date_arg("--since", s)
}

/// A report as pretty JSON (`--json`) or as its text; only the one asked for is made.
fn print_report(
    json: bool,
    doc: impl FnOnce() -> serde_json::Value,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&doc())?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

/// The configuration of a report: the file when it exists, or when no `--ledger` was
/// given (then the ledger is the configuration's and the file is required).
fn optional_config(path: &Path, ledger_given: bool) -> Result<Option<Config>> {
    if path.exists() || !ledger_given {
        Ok(Some(load(path)?))
    } else {
        Ok(None)
    }
}

/// A report's `[--since, --until)`: UTC dates; `--until` defaults to now, `--since`
/// to a day before it.
fn report_range(since: Option<&str>, until: Option<&str>) -> Result<(i64, i64)> {
    let until_ms = match until {
        Some(d) => parse_date_arg("--until", d)?,
        None => switchyard::types::time::now_ms(),
    };
    let since_ms = match since {
        Some(d) => parse_date_arg("--since", d)?,
        None => until_ms.saturating_sub(86_400_000),
    };
    if since_ms >= until_ms {
        anyhow::bail!("--since must be before --until");
    }
    Ok((since_ms, until_ms))
}

fn parse_date_arg(flag: &str, s: &str) -> Result<i64> {
    switchyard::types::time::parse_utc(s)
        .filter(|_| !s.contains(['T', ' ']))
        .with_context(|| format!("{flag}: `{s}` is not a valid date like 2026-11-01"))
}

/// The ledger: `--ledger FILE`, else the configuration's (its file, or its PostgreSQL
/// database).
async fn ledger_of(
    config: Option<&switchyard::config::Config>,
    file: Option<PathBuf>,
) -> Result<Database> {
    let db = match (file, config) {
        (Some(p), _) => Database::Sqlite(p),
        (None, Some(config)) => Storage::open(config)
            .await?
            .ledger
            .context("the configuration keeps no ledger (ledger.enabled = false)")?,
        (None, None) => anyhow::bail!("no ledger: pass --ledger FILE or --config"),
    };
    if let Some(path) = db.sqlite_path().filter(|p| !p.exists()) {
        anyhow::bail!("no ledger at {}", path.display());
    }
    Ok(db)
}

async fn demo(
    listen: SocketAddr,
    key: Option<String>,
    ledger: Option<PathBuf>,
    admin_token: Option<String>,
) -> Result<ExitCode> {
    let key = key.unwrap_or_else(|| format!("sy-demo-{:032x}", rand::random::<u128>()));
    let admin_token = admin_token.unwrap_or_else(|| {
        format!(
            "sy-admin-{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        )
    });
    let ledger = ledger.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("switchyard-demo-{}.db", std::process::id()))
    });
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the simulator")?;
    let sim = Simulator::new(SimOptions::default())
        .spawn(sim_listener)
        .await?;
    let config = switchyard::demo::config(listen, sim.addr, &key, &admin_token, &ledger)
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let models: Vec<String> = config.models.keys().cloned().collect();
    let gateway = Gateway::start(config).await?;
    let base = gateway.base_url();
    println!(
        "Switchyard demo is running (provider simulator at {}).",
        sim.base_url()
    );
    println!();
    println!("  Base URL: {base}/v1");
    println!("  API key:  {key}");
    println!("  Models:   {}", models.join(", "));
    println!("  Ledger:   {}", ledger.display());
    println!();
    println!("  Dashboard:   {base}/dashboard");
    if let Some(link) = gateway.dashboard_login_link() {
        println!("  Login link:  {link}  (one use, valid 15 minutes)");
    }
    println!("  Admin token: {admin_token}");
    println!();
    println!("Try it:");
    println!(
        "  curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    );
    println!();
    println!("Or with the OpenAI SDK: OpenAI(base_url=\"{base}/v1\", api_key=\"{key}\")");
    println!(
        "Spend so far: switchyard spend --ledger {}",
        ledger.display()
    );
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    let report = gateway.shutdown().await?;
    eprintln!(
        "demo stopped: ledger rows written={}, dropped={}",
        report.ledger.written, report.ledger.dropped
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_date;

    #[test]
    fn dates_to_unix_ms() {
        assert_eq!(parse_date("1970-01-01").expect("date"), 0);
        assert_eq!(parse_date("2026-11-26").expect("date"), 1_795_651_200_000);
        assert_eq!(parse_date("2000-03-01").expect("date"), 951_868_800_000);
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }
}
