//! `bench-harness`: what `bench/run` drives. One run measures every arm side by side
//! against the same upstream: direct, the bare forwarder, Switchyard with its
//! production features, Switchyard without its ledger, and LiteLLM's proxy. It
//! prints the tables, writes `bench/results/<stamp>.json` (and `.md`), and exits
//! non-zero only when the harness itself could not do its job.
//!
//! Run it pinned to the load core (`taskset -c 0 bench-harness …`): the upstream it
//! starts inherits that core, and each proxy is started on `--proxy-core`.

mod procs;
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use switchyard_bench::load::{
    run_held, run_open, run_serial, HeldProgress, Outcome, Payload, Report, Target,
};
use switchyard_bench::procfs;

use procs::{Proc, KEY};

#[derive(Parser, Debug)]
#[command(about = "Runs the Switchyard benchmark (use bench/run)")]
struct Args {
    /// A short run that only proves the machinery works.
    #[arg(long)]
    smoke: bool,
    /// The `switchyard` binary (release build).
    #[arg(long)]
    switchyard: PathBuf,
    /// Where bench-upstream and bench-forwarder are.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Where results go (`<stamp>.json`, `<stamp>.md`, and a `<stamp>.tmp/` work dir).
    #[arg(long)]
    out_dir: PathBuf,
    /// Name of this run's files, e.g. 20260101T120000Z.
    #[arg(long)]
    stamp: String,
    /// The `litellm` executable; without it the LiteLLM arm is skipped.
    #[arg(long)]
    litellm: Option<PathBuf>,
    /// Why LiteLLM is skipped (reported instead of its figures).
    #[arg(long)]
    litellm_skip: Option<String>,
    /// Core for the proxy under test.
    #[arg(long, default_value_t = 1)]
    proxy_core: usize,
    /// Core of the load generator and upstream (informational: pin the harness there).
    #[arg(long, default_value_t = 0)]
    load_core: usize,
    /// Upstream delay before the answer or first chunk, in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Only these arms (comma-separated ids: direct,forwarder,switchyard,switchyard-noledger,switchyard-shared,litellm).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How the processes were scheduled (reported only; bench/run sets it).
    #[arg(long, default_value = "normal (SCHED_OTHER)")]
    scheduling: String,
    /// Keep the work dir (configs, logs, ledger files) after a successful run.
    #[arg(long)]
    keep: bool,
}

/// How long and how hard each part runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub smoke: bool,
    pub step_s: f64,
    pub serial_s: f64,
    pub drain_s: f64,
    pub connections: usize,
    /// Rates tried for small requests, in order; the sweep starts at `start`.
    pub ladder: Vec<f64>,
    pub start: usize,
    pub stream_rate: f64,
    pub big_rate: f64,
    pub big_bytes: usize,
    pub chunks: usize,
    pub chunk_interval_ms: u64,
    pub delay_ms: u64,
    pub held_streams: usize,
    pub held_model: String,
    pub held_chunks: usize,
    /// A step is *sustained* when every request completed and p99 stayed under this.
    pub sustained_p99_us: f64,
    /// Low-rate steps run long enough for this many requests (at most 10 s).
    pub min_samples: f64,
    /// Pause before reading memory "idle" and "after", in seconds.
    pub settle_s: f64,
}

impl Plan {
    fn full(delay_ms: u64) -> Plan {
        Plan {
            smoke: false,
            step_s: 3.0,
            serial_s: 2.0,
            drain_s: 2.0,
            connections: 64,
            ladder: vec![
                10.0, 20.0, 50.0, 100.0, 200.0, 350.0, 500.0, 1_000.0, 2_000.0, 3_500.0, 5_000.0,
                7_500.0, 10_000.0, 15_000.0, 20_000.0, 25_000.0, 30_000.0, 40_000.0, 50_000.0,
            ],
            start: 6,
            stream_rate: 200.0,
            big_rate: 500.0,
            big_bytes: 100 * 1024,
            chunks: 10,
            chunk_interval_ms: 5,
            delay_ms,
            held_streams: 1000,
            held_model: "bench-25x200".into(),
            held_chunks: 25,
            sustained_p99_us: 100_000.0,
            min_samples: 300.0,
            settle_s: 2.0,
        }
    }

    fn smoke(delay_ms: u64) -> Plan {
        Plan {
            smoke: true,
            step_s: 1.0,
            serial_s: 0.5,
            drain_s: 1.0,
            connections: 8,
            ladder: vec![200.0],
            start: 0,
            stream_rate: 50.0,
            big_rate: 50.0,
            held_streams: 50,
            held_model: "bench-5x100".into(),
            held_chunks: 5,
            min_samples: 0.0,
            settle_s: 0.5,
            ..Plan::full(delay_ms)
        }
    }

    fn models(&self) -> Vec<&str> {
        vec!["bench", self.held_model.as_str()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Direct,
    Forwarder,
    Switchyard,
    SwitchyardNoLedger,
    /// The same features with the ledger in PostgreSQL and the rate limits and budgets
    /// in Redis: what one of several replicas pays for sharing its state.
    SwitchyardShared,
    /// As Switchyard, with every plain request mirrored to a shadow candidate (the
    /// same upstream): what shadow evaluation adds to the client's latency.
    SwitchyardShadow,
    Litellm,
}

impl Kind {
    fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Forwarder => "forwarder",
            Kind::Switchyard => "switchyard",
            Kind::SwitchyardNoLedger => "switchyard-noledger",
            Kind::SwitchyardShared => "switchyard-shared",
            Kind::SwitchyardShadow => "switchyard-shadow",
            Kind::Litellm => "litellm",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Forwarder => "bare forwarder",
            Kind::Switchyard => "Switchyard",
            Kind::SwitchyardNoLedger => "Switchyard, ledger off",
            Kind::SwitchyardShared => "Switchyard, Postgres + Redis",
            Kind::SwitchyardShadow => "Switchyard, shadow 100%",
            Kind::Litellm => "LiteLLM",
        }
    }

    /// What the arm does per request. `governance`: Switchyard's key carries rate
    /// limits and a budget (builds from before those existed run without).
    fn features(self, governance: bool) -> &'static str {
        match (self, governance) {
            (Kind::Direct, _) => "no proxy: the load generator calls the upstream",
            (Kind::Forwarder, _) => {
                "none: hyper server + pooled hyper client, bytes passed through"
            }
            (Kind::Switchyard, true) => {
                "bearer-key auth (SHA-256 lookup), key rate limits (rpm, tpm) and a monthly budget (set never to refuse), body validation, SQLite ledger"
            }
            (Kind::Switchyard, false) => {
                "bearer-key auth (SHA-256 lookup), body validation, SQLite ledger (this build has no rate limits or budgets)"
            }
            (Kind::SwitchyardNoLedger, true) => {
                "as Switchyard, with `[ledger] enabled = false`"
            }
            (Kind::SwitchyardNoLedger, false) => {
                "bearer-key auth, body validation, `[ledger] enabled = false` (this build has no rate limits or budgets)"
            }
            (Kind::SwitchyardShadow, _) => {
                "as Switchyard, with `[models.NAME.shadow]` mirroring every plain request to a second deployment on the same upstream after the client's answer (sample_rate = 1)"
            }
            (Kind::SwitchyardShared, _) => {
                "as Switchyard, with `[storage] kind = \"postgres\"` (ledger and key store in PostgreSQL) and `[state]` in Redis (rate limits and budget, one script call each)"
            }
            (Kind::Litellm, _) => {
                "master-key auth, no database (so no spend logs, budgets or virtual keys), offline cost map, defaults otherwise"
            }
        }
    }
}

/// One open-loop step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub scenario: &'static str,
    pub rate: f64,
    pub report: Report,
    /// Proxy CPU time (user + system) divided by completed requests.
    pub cpu_us_per_req: Option<f64>,
    /// Proxy CPU time over the step's wall time (1.0 = one core).
    pub proxy_cores: Option<f64>,
    /// Busy fraction of each core during the step.
    pub core_busy: Vec<f64>,
    pub rss_peak_kb: Option<u64>,
    /// This step's p50 / p99 minus direct's at the same rate and scenario.
    pub added_p50_us: f64,
    pub added_p99_us: f64,
    /// Streams: time to first chunk minus direct's at the same rate.
    pub added_ttft_p50_us: Option<f64>,
    pub added_ttft_p99_us: Option<f64>,
    pub held_1ms: bool,
    pub held_5ms: bool,
    pub sustained: bool,
}

/// A one-at-a-time run and direct's, measured just before it.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub arm: Report,
    pub direct: Report,
}

/// Many concurrent streams, for memory.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub streams: usize,
    pub model: String,
    pub all_started: bool,
    pub report: Report,
    pub rss_before_kb: Option<u64>,
    /// When every stream had its first chunk (all open at once).
    pub rss_all_open_kb: Option<u64>,
    pub rss_peak_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    pub id: &'static str,
    pub kind: Kind,
    pub label: &'static str,
    pub features: String,
    pub skipped: Option<String>,
    pub problems: Vec<String>,
    pub rss_idle_kb: Option<u64>,
    pub rss_load_kb: Option<u64>,
    pub rss_after_kb: Option<u64>,
    pub serial_small: Option<Pair>,
    pub serial_stream: Option<Pair>,
    pub serial_big: Option<Pair>,
    pub sweep: Vec<Step>,
    pub stream_open: Option<Step>,
    pub big_open: Option<Step>,
    pub held: Option<Held>,
    /// Requests answered (any status) by this arm over the whole run.
    pub requests_sent: u64,
    /// Switchyard's own shutdown line: ledger rows written and dropped.
    pub ledger_written: Option<u64>,
    pub ledger_dropped: Option<u64>,
    pub elapsed_s: f64,
}

impl ArmResult {
    fn new(kind: Kind) -> ArmResult {
        ArmResult {
            id: kind.id(),
            kind,
            label: kind.label(),
            features: kind.features(true).to_owned(),
            skipped: None,
            problems: Vec::new(),
            rss_idle_kb: None,
            rss_load_kb: None,
            rss_after_kb: None,
            serial_small: None,
            serial_stream: None,
            serial_big: None,
            sweep: Vec::new(),
            stream_open: None,
            big_open: None,
            held: None,
            requests_sent: 0,
            ledger_written: None,
            ledger_dropped: None,
            elapsed_s: 0.0,
        }
    }
}

/// The scenarios' request bodies.
struct Payloads {
    small: Payload,
    stream: Payload,
    big: Payload,
    held: Payload,
}

impl Payloads {
    fn get(&self, scenario: &str) -> &Payload {
        match scenario {
            "stream" => &self.stream,
            "big" => &self.big,
            _ => &self.small,
        }
    }
}

/// Peak resident memory of a process tree, sampled every 100 ms until stopped.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(kb) = procfs::rss_kb(&pids) {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn stop(self) -> Option<u64> {
        self.task.abort();
        let kb = self.peak.load(Ordering::Relaxed);
        (kb > 0).then_some(kb)
    }
}

struct Harness {
    args: Args,
    plan: Plan,
    payloads: Payloads,
    work: PathBuf,
    clk_tck: f64,
    upstream: Option<Proc>,
    upstream_addr: SocketAddr,
    /// Direct's open-loop steps by (scenario, rate), measured once and reused.
    direct_steps: HashMap<(&'static str, u64), Step>,
    /// The highest small-request rate direct held (p99 ≤ 5 ms): the ceiling of the
    /// load generator and upstream on their one core.
    direct_limit: f64,
}

/// A proxy (or nothing, for direct) that requests go to.
struct Running {
    target: Target,
    proc: Option<Proc>,
    pids: Vec<u32>,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn rate_key(rate: f64) -> u64 {
    (rate * 1000.0).round() as u64
}

impl Harness {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!("[bench] {}", msg.as_ref());
    }

    async fn start_arm(&self, kind: Kind) -> Result<(Running, bool), String> {
        let models = self.plan.models();
        let started = match kind {
            Kind::Direct => {
                return Ok((
                    Running {
                        target: Target::new(self.upstream_addr, "/v1/chat/completions", Some(KEY))?,
                        proc: None,
                        pids: Vec::new(),
                    },
                    false,
                ))
            }
            Kind::Forwarder => procs::start_forwarder(
                &self.args.bin_dir,
                &self.work,
                self.upstream_addr,
                self.args.proxy_core,
            )
            .await
            .map(|(p, a)| (p, a, false)),
            Kind::Switchyard
            | Kind::SwitchyardNoLedger
            | Kind::SwitchyardShared
            | Kind::SwitchyardShadow => {
                let backend = match kind {
                    Kind::Switchyard => procs::Backend::Sqlite,
                    Kind::SwitchyardNoLedger => procs::Backend::NoLedger,
                    Kind::SwitchyardShadow => procs::Backend::SqliteShadow,
                    _ => procs::Backend::shared(&self.args.stamp).await?,
                };
                procs::start_switchyard(
                    &self.args.switchyard,
                    &self.work,
                    self.upstream_addr,
                    backend,
                    &models,
                    self.args.proxy_core,
                )
                .await
                .map(|s| (s.proc, s.addr, s.governance))
            }
            Kind::Litellm => {
                if let Some(why) = &self.args.litellm_skip {
                    return Err(why.clone());
                }
                let Some(bin) = &self.args.litellm else {
                    return Err("no LiteLLM executable was given".into());
                };
                procs::start_litellm(
                    bin,
                    &self.work,
                    self.upstream_addr,
                    &models,
                    self.args.proxy_core,
                )
                .await
                .map(|(p, a)| (p, a, false))
            }
        };
        let (proc, addr, governance) = started?;
        let pids = procfs::tree(proc.pid());
        Ok((
            Running {
                target: Target::new(addr, "/v1/chat/completions", Some(KEY))?,
                proc: Some(proc),
                pids,
            },
            governance,
        ))
    }

    /// Waits (up to 15 s) until the proxy is idle, so that one step's backlog does not
    /// spill into the next.
    async fn wait_quiet(&self, pids: &[u32]) {
        if pids.is_empty() {
            return;
        }
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            let Some(a) = procfs::cpu_ticks(pids) else {
                return;
            };
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(b) = procfs::cpu_ticks(pids) else {
                return;
            };
            // At most ~8% of a core over the quarter second.
            if (b - a) as f64 <= 0.02 * self.clk_tck {
                return;
            }
        }
    }

    async fn serial(&self, target: &Target, scenario: &str) -> Report {
        let max = if self.plan.smoke { 500 } else { 50_000 };
        run_serial(
            target,
            self.payloads.get(scenario),
            secs(self.plan.serial_s),
            max,
        )
        .await
        .report()
    }

    /// Direct one at a time, then the arm one at a time.
    async fn serial_pair(&self, run: &Running, direct: &Target, scenario: &str) -> Pair {
        self.wait_quiet(&run.pids).await;
        let d = self.serial(direct, scenario).await;
        if run.proc.is_none() {
            return Pair {
                arm: d.clone(),
                direct: d,
            };
        }
        let a = self.serial(&run.target, scenario).await;
        Pair { arm: a, direct: d }
    }

    /// One open-loop step against `target`, with CPU and memory of `pids`.
    async fn measure_step(
        &self,
        target: &Target,
        pids: &[u32],
        scenario: &'static str,
        rate: f64,
    ) -> Step {
        self.wait_quiet(pids).await;
        let duration = secs(
            self.plan
                .step_s
                .max((self.plan.min_samples / rate).min(10.0)),
        );
        let cores_before = procfs::core_ticks();
        let cpu_before = procfs::cpu_ticks(pids);
        let sampler = (!pids.is_empty()).then(|| RssSampler::start(pids.to_vec()));
        let t0 = Instant::now();
        let mut out: Outcome = run_open(
            target,
            self.payloads.get(scenario),
            rate,
            duration,
            self.plan.connections,
            secs(self.plan.drain_s),
        )
        .await;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu_after = procfs::cpu_ticks(pids);
        let cores_after = procfs::core_ticks();
        let rss_peak_kb = sampler.and_then(RssSampler::stop);
        let report = out.report();
        let cpu_s = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / self.clk_tck),
            _ => None,
        };
        Step {
            scenario,
            rate,
            cpu_us_per_req: cpu_s
                .filter(|_| report.ok > 0)
                .map(|s| s * 1e6 / report.ok as f64),
            proxy_cores: cpu_s.map(|s| s / elapsed),
            core_busy: procfs::core_busy(&cores_before, &cores_after),
            rss_peak_kb,
            added_p50_us: 0.0,
            added_p99_us: 0.0,
            added_ttft_p50_us: None,
            added_ttft_p99_us: None,
            held_1ms: false,
            held_5ms: false,
            sustained: report.complete() && report.latency.p99_us <= self.plan.sustained_p99_us,
            report,
        }
    }

    /// Direct at (scenario, rate), measured once.
    async fn direct_step(&mut self, direct: &Target, scenario: &'static str, rate: f64) -> Step {
        let key = (scenario, rate_key(rate));
        if let Some(s) = self.direct_steps.get(&key) {
            return s.clone();
        }
        let mut s = self.measure_step(direct, &[], scenario, rate).await;
        s.held_1ms = s.report.complete() && s.report.latency.p99_us <= 1000.0;
        s.held_5ms = s.report.complete() && s.report.latency.p99_us <= 5000.0;
        self.direct_steps.insert(key, s.clone());
        s
    }

    /// An arm's step at `rate`, judged against direct at the same rate.
    async fn step(
        &mut self,
        run: &Running,
        direct: &Target,
        scenario: &'static str,
        rate: f64,
    ) -> Step {
        let d = self.direct_step(direct, scenario, rate).await;
        if run.proc.is_none() {
            return d;
        }
        let mut s = self
            .measure_step(&run.target, &run.pids, scenario, rate)
            .await;
        s.added_p50_us = s.report.latency.p50_us - d.report.latency.p50_us;
        s.added_p99_us = s.report.latency.p99_us - d.report.latency.p99_us;
        if let (Some(t), Some(dt)) = (&s.report.ttft, &d.report.ttft) {
            s.added_ttft_p50_us = Some(t.p50_us - dt.p50_us);
            s.added_ttft_p99_us = Some(t.p99_us - dt.p99_us);
        }
        let comparable = s.report.complete() && d.report.complete();
        s.held_1ms = comparable && s.added_p99_us <= 1000.0;
        s.held_5ms = comparable && s.added_p99_us <= 5000.0;
        s
    }

    fn describe(&self, name: &str, s: &Step) {
        let r = &s.report;
        self.log(format!(
            "  {name} {:>8} {}/s: ok {} err {} lost {}  p50 {:.0} µs  p99 {:.0} µs  added p50 {:+.0} p99 {:+.0}  cpu/req {}  cores {}{}",
            s.scenario,
            s.rate,
            r.ok,
            r.errors,
            r.lost,
            r.latency.p50_us,
            r.latency.p99_us,
            s.added_p50_us,
            s.added_p99_us,
            s.cpu_us_per_req.map_or("—".into(), |c| format!("{c:.1} µs")),
            s.core_busy
                .iter()
                .map(|b| format!("{:.0}%", b * 100.0))
                .collect::<Vec<_>>()
                .join("/"),
            r.first_error
                .as_ref()
                .map_or(String::new(), |e| format!("  first error: {e}")),
        ));
    }

    /// Small requests at rising rates from the ladder's start while the arm keeps up
    /// (and direct does), then, if the start was already too fast, falling rates until
    /// it keeps up.
    ///
    /// A slow arm starts lower: at most twice what one-at-a-time latency says one
    /// core could serve, so that a proxy that manages 60 req/s is not first buried
    /// under 500 req/s (and the run does not wait out its backlog). When even one at a
    /// time adds more than 5 ms at p99, no rate can hold that, and none is searched.
    async fn sweep(
        &mut self,
        run: &Running,
        direct: &Target,
        name: &str,
        serial: &Pair,
    ) -> Vec<Step> {
        let ladder = self.plan.ladder.clone();
        let is_direct = run.proc.is_none();
        let mut steps: Vec<Step> = Vec::new();
        let estimate = 2e6 / serial.arm.latency.p50_us.max(1.0);
        let start = self.plan.start.min(ladder.len().saturating_sub(1));
        let start = (0..=start)
            .rev()
            .find(|&i| ladder[i] <= estimate)
            .unwrap_or(0);
        let hopeless_5ms = serial.arm.latency.p99_us - serial.direct.latency.p99_us > 5000.0;
        let mut i = start;
        loop {
            let rate = ladder[i];
            if !is_direct && rate > self.direct_limit {
                break;
            }
            let s = self.step(run, direct, "small", rate).await;
            self.describe(name, &s);
            // Direct marks the ceiling: the highest rate at which the load generator
            // and upstream, on their one core, answer everything without queueing
            // (p50 ≤ 1 ms) and with a clean tail (p99 ≤ 5 ms), so that "p99 added
            // ≤ 5 ms" still means something. No arm is driven harder than that.
            // Direct goes on up while it keeps up at all, so that one noisy step
            // does not cap every arm.
            let go_on = if is_direct {
                s.report.complete() && s.report.latency.p50_us <= 1000.0
            } else {
                s.held_5ms || s.sustained
            };
            if is_direct && go_on && s.report.latency.p99_us <= 5000.0 {
                self.direct_limit = self.direct_limit.max(rate);
            }
            steps.push(s);
            if !go_on || i + 1 >= ladder.len() {
                break;
            }
            i += 1;
        }
        let mut i = start;
        while !is_direct
            && i > 0
            && !(steps.iter().any(|s| s.sustained)
                && (hopeless_5ms || steps.iter().any(|s| s.held_5ms)))
        {
            i -= 1;
            let s = self.step(run, direct, "small", ladder[i]).await;
            self.describe(name, &s);
            steps.push(s);
        }
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        steps
    }

    /// A rate at most `cap` and at most half what the arm sustained with small
    /// requests, from the ladder.
    fn gentle_rate(&self, sweep: &[Step], cap: f64) -> f64 {
        let sustained = sweep
            .iter()
            .filter(|s| s.sustained)
            .map(|s| s.rate)
            .fold(0.0, f64::max);
        let ceiling = cap.min(sustained / 2.0);
        self.plan
            .ladder
            .iter()
            .copied()
            .filter(|&r| r <= ceiling)
            .fold(self.plan.ladder.first().copied().unwrap_or(10.0), f64::max)
            .min(cap)
    }

    async fn held(&self, run: &Running) -> Held {
        let n = self.plan.held_streams;
        let progress = Arc::new(HeldProgress::default());
        let rss_before_kb = procfs::rss_kb(&run.pids);
        let sampler = RssSampler::start(run.pids.clone());
        let stream_s =
            self.plan.held_chunks as f64 * self.plan.chunk_interval_ms.max(1) as f64 / 1000.0;
        let deadline = Duration::from_secs_f64(30.0_f64.max(stream_s * 4.0));
        let target = run.target.clone();
        let payload = self.payloads.held.clone();
        let p = progress.clone();
        let task = tokio::spawn(async move { run_held(&target, &payload, n, p, deadline).await });
        let until = Instant::now() + deadline;
        let mut rss_all_open_kb = None;
        let mut all_started = false;
        while Instant::now() < until {
            let started = progress.started.load(Ordering::Relaxed);
            let finished = progress.finished.load(Ordering::Relaxed);
            if started >= n {
                all_started = true;
                rss_all_open_kb = procfs::rss_kb(&run.pids);
                break;
            }
            if finished >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut out = match task.await {
            Ok(o) => o,
            Err(e) => Outcome {
                first_error: Some(format!("held streams task failed: {e}")),
                ..Outcome::default()
            },
        };
        let rss_peak_kb = sampler.stop();
        tokio::time::sleep(secs(self.plan.settle_s)).await;
        Held {
            streams: n,
            model: self.plan.held_model.clone(),
            all_started,
            report: out.report(),
            rss_before_kb,
            rss_all_open_kb,
            rss_peak_kb,
            rss_after_kb: procfs::rss_kb(&run.pids),
        }
    }

    async fn run_arm(&mut self, kind: Kind, direct: &Target) -> ArmResult {
        let t0 = Instant::now();
        let mut r = ArmResult::new(kind);
        let name = kind.id();
        self.log(format!("arm {name}: starting"));
        let run = match self.start_arm(kind).await {
            Ok((run, governance)) => {
                r.features = kind.features(governance).to_owned();
                run
            }
            Err(e) => {
                self.log(format!("arm {name}: skipped: {e}"));
                r.skipped = Some(e);
                return r;
            }
        };
        if !run.pids.is_empty() {
            tokio::time::sleep(secs(self.plan.settle_s)).await;
            r.rss_idle_kb = procfs::rss_kb(&run.pids);
        }
        // Warm-up, not recorded: pools, caches, lazy initialisation.
        let mut warm = run_serial(
            &run.target,
            &self.payloads.small,
            Duration::from_millis(300),
            200,
        )
        .await;
        let w = warm.report();
        if w.ok == 0 {
            let why = format!(
                "no request succeeded during warm-up: {}",
                w.first_error.unwrap_or_default()
            );
            self.log(format!("arm {name}: {why}"));
            r.problems.push(why);
            if let Some(p) = run.proc {
                p.stop(Duration::from_secs(5));
            }
            return r;
        }
        let mut sent = w.ok + w.errors;

        let pair = self.serial_pair(&run, direct, "small").await;
        self.log(format!(
            "  {name} serial small: p50 {:.0} µs (direct {:.0} µs), p99 {:.0} µs",
            pair.arm.latency.p50_us, pair.direct.latency.p50_us, pair.arm.latency.p99_us
        ));
        sent += pair.arm.ok + pair.arm.errors;
        r.sweep = self.sweep(&run, direct, name, &pair).await;
        r.serial_small = Some(pair);
        r.rss_load_kb = r.sweep.iter().filter_map(|s| s.rss_peak_kb).max();

        let pair = self.serial_pair(&run, direct, "stream").await;
        sent += pair.arm.ok + pair.arm.errors;
        r.serial_stream = Some(pair);
        let rate = self.gentle_rate(&r.sweep, self.plan.stream_rate);
        let s = self.step(&run, direct, "stream", rate).await;
        self.describe(name, &s);
        r.stream_open = Some(s);

        let pair = self.serial_pair(&run, direct, "big").await;
        sent += pair.arm.ok + pair.arm.errors;
        r.serial_big = Some(pair);
        let rate = self.gentle_rate(&r.sweep, self.plan.big_rate);
        let s = self.step(&run, direct, "big", rate).await;
        self.describe(name, &s);
        r.big_open = Some(s);

        for s in r.sweep.iter().chain(&r.stream_open).chain(&r.big_open) {
            sent += s.report.ok + s.report.errors;
        }

        if !run.pids.is_empty() {
            self.wait_quiet(&run.pids).await;
            tokio::time::sleep(secs(self.plan.settle_s)).await;
            r.rss_after_kb = procfs::rss_kb(&run.pids);
        }
        if matches!(
            kind,
            Kind::Forwarder | Kind::Switchyard | Kind::SwitchyardNoLedger | Kind::SwitchyardShared
        ) {
            let h = self.held(&run).await;
            self.log(format!(
                "  {name} {} concurrent streams: all open {}, ok {}, RSS all open {} KiB, peak {} KiB",
                h.streams,
                h.all_started,
                h.report.ok,
                h.rss_all_open_kb.unwrap_or(0),
                h.rss_peak_kb.unwrap_or(0)
            ));
            sent += h.report.ok + h.report.errors;
            r.held = Some(h);
        }
        r.requests_sent = sent;
        if let Some(mut p) = run.proc {
            if let Some(why) = p.exited() {
                r.problems.push(why);
            }
            let log = p.log.clone();
            p.stop(Duration::from_secs(30));
            if let Some((written, dropped)) = procs::ledger_totals(&log) {
                r.ledger_written = Some(written);
                r.ledger_dropped = Some(dropped);
            }
        }
        r.elapsed_s = t0.elapsed().as_secs_f64();
        self.log(format!("arm {name}: done in {:.0} s", r.elapsed_s));
        r
    }
}

/// What makes the harness (not the numbers) fail: an arm that should always work did
/// not start, or answered nothing, or mostly errors.
fn harness_problems(arms: &[ArmResult]) -> Vec<String> {
    let mut out = Vec::new();
    for a in arms {
        if a.kind == Kind::Litellm {
            continue;
        }
        if let Some(why) = &a.skipped {
            out.push(format!("{}: did not start: {why}", a.id));
        }
        for p in &a.problems {
            out.push(format!("{}: {p}", a.id));
        }
        let mut reports: Vec<(&str, &Report)> = Vec::new();
        for (n, p) in [
            ("serial small", &a.serial_small),
            ("serial stream", &a.serial_stream),
            ("serial 100 KB", &a.serial_big),
        ] {
            if let Some(p) = p {
                reports.push((n, &p.arm));
            }
        }
        for (n, s) in [("stream", &a.stream_open), ("100 KB", &a.big_open)] {
            if let Some(s) = s {
                reports.push((n, &s.report));
            }
        }
        for s in &a.sweep {
            reports.push(("small", &s.report));
        }
        if let Some(h) = &a.held {
            reports.push(("concurrent streams", &h.report));
        }
        for (n, r) in reports {
            if r.ok == 0 || r.errors * 10 > r.offered {
                out.push(format!(
                    "{}: {n}: {} ok, {} errors of {}; first error: {}",
                    a.id,
                    r.ok,
                    r.errors,
                    r.offered,
                    r.first_error.as_deref().unwrap_or("none")
                ));
            }
        }
    }
    out
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-harness: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench-harness: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let t0 = Instant::now();
    let plan = if args.smoke {
        Plan::smoke(args.delay_ms)
    } else {
        Plan::full(args.delay_ms)
    };
    let work = args.out_dir.join(format!("{}.tmp", args.stamp));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let (upstream, upstream_addr) = procs::start_upstream(
        &args.bin_dir,
        &work,
        plan.chunks,
        plan.chunk_interval_ms,
        plan.delay_ms,
    )
    .await?;
    let payloads = Payloads {
        small: Payload::chat("bench", false, 0, None),
        stream: Payload::chat("bench", true, plan.chunks, None),
        big: Payload::chat("bench", false, 0, Some(plan.big_bytes)),
        held: Payload::chat(&plan.held_model, true, plan.held_chunks, None),
    };
    let direct = Target::new(upstream_addr, "/v1/chat/completions", Some(KEY))?;
    let mut h = Harness {
        plan,
        payloads,
        work: work.clone(),
        clk_tck: clk_tck(),
        upstream: Some(upstream),
        upstream_addr,
        direct_steps: HashMap::new(),
        direct_limit: 0.0,
        args,
    };
    let machine = report::Machine::read(
        h.args.load_core,
        h.args.proxy_core,
        h.args.scheduling.clone(),
    );
    h.log(format!(
        "machine: {} CPUs ({}), kernel {}; load generator + upstream on core {}, proxy on core {}",
        machine.nproc, machine.cpu_model, machine.kernel, machine.load_core, machine.proxy_core
    ));
    let kinds = [
        Kind::Direct,
        Kind::Forwarder,
        Kind::Switchyard,
        Kind::SwitchyardNoLedger,
        Kind::SwitchyardShared,
        Kind::SwitchyardShadow,
        Kind::Litellm,
    ];
    let mut arms = Vec::new();
    for kind in kinds {
        // Direct always runs: every other arm is compared against it.
        if kind != Kind::Direct
            && !h.args.only.is_empty()
            && !h.args.only.iter().any(|o| o == kind.id())
        {
            continue;
        }
        let r = h.run_arm(kind, &direct).await;
        arms.push(r);
    }
    procs::drop_shared(&h.args.stamp).await;
    if let Some(mut up) = h.upstream.take() {
        if let Some(why) = up.exited() {
            arms[0]
                .problems
                .push(format!("the upstream died during the run: {why}"));
        }
        up.stop(Duration::from_secs(5));
    }
    let mut machine = machine;
    machine.background_busy_after = report::background_busy();
    let problems = harness_problems(&arms);
    let elapsed = t0.elapsed().as_secs_f64();
    let rep = report::Report::new(&h.plan, machine, arms, h.direct_limit, elapsed, problems);
    let text = rep.render();
    println!("{text}");
    let json_path = h.args.out_dir.join(format!("{}.json", h.args.stamp));
    let md_path = h.args.out_dir.join(format!("{}.md", h.args.stamp));
    let json = serde_json::to_string_pretty(&rep).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    std::fs::write(&md_path, &text).map_err(|e| format!("{}: {e}", md_path.display()))?;
    h.log(format!(
        "results: {} and {} ({elapsed:.0} s)",
        json_path.display(),
        md_path.display()
    ));
    if rep.problems.is_empty() {
        if !h.args.keep {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &rep.problems {
            eprintln!("bench-harness: harness problem: {p}");
        }
        eprintln!("bench-harness: logs and configs kept in {}", work.display());
        Ok(ExitCode::FAILURE)
    }
}
