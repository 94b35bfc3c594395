//! The figures drawn from a run, the targets they are held against, and the
//! Markdown tables printed and pasted into bench/README.md.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ArmResult, Kind, Plan, Step};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub load_core: usize,
    pub proxy_core: usize,
    pub scheduling: String,
    /// Busy share of each core over one second before the run and after it, with
    /// nothing of the benchmark's running: other people's work on the machine.
    pub background_busy_before: Vec<f64>,
    pub background_busy_after: Vec<f64>,
    pub loadavg_before: String,
}

/// Busy share of each core over the next second.
pub fn background_busy() -> Vec<f64> {
    let a = switchyard_bench::procfs::core_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let b = switchyard_bench::procfs::core_ticks();
    switchyard_bench::procfs::core_busy(&a, &b)
}

fn percents(v: &[f64]) -> String {
    v.iter()
        .map(|b| format!("{:.0}%", b * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
}

impl Machine {
    pub fn read(load_core: usize, proxy_core: usize, scheduling: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let nproc = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |s| s.trim().to_owned());
        let loadavg = std::fs::read_to_string("/proc/loadavg").map_or(String::new(), |s| {
            s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        });
        Machine {
            nproc,
            cpu_model,
            kernel,
            load_core,
            proxy_core,
            scheduling,
            background_busy_before: background_busy(),
            background_busy_after: Vec::new(),
            loadavg_before: loadavg,
        }
    }
}

/// The headline numbers of one arm.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub serial_p50_us: Option<f64>,
    pub serial_p99_us: Option<f64>,
    pub serial_added_p50_us: Option<f64>,
    pub serial_added_p99_us: Option<f64>,
    /// Added p50 minus the bare forwarder's: the arm's own cost beyond moving bytes
    /// through a second process on another core.
    pub serial_over_forwarder_p50_us: Option<f64>,
    /// (rate, added p50, added p99) at the reference rates.
    pub added_at: Vec<(f64, f64, f64)>,
    pub max_rate_1ms: Option<f64>,
    pub max_rate_5ms: Option<f64>,
    pub max_rate_sustained: Option<f64>,
    /// The sweep stopped at direct's ceiling, not at the arm's: rates are lower bounds.
    pub reached_ceiling: bool,
    pub cpu_us_per_req: Option<f64>,
    pub cpu_rate: Option<f64>,
    pub stream_ttft_added_serial_p50_us: Option<f64>,
    pub stream_rate: Option<f64>,
    pub stream_ttft_added_p50_us: Option<f64>,
    pub stream_ttft_added_p99_us: Option<f64>,
    pub stream_gap_p50_ms: Option<f64>,
    pub stream_gap_p99_ms: Option<f64>,
    pub stream_coalesced: Option<f64>,
    pub big_added_serial_p50_us: Option<f64>,
    pub big_rate: Option<f64>,
    pub big_added_p50_us: Option<f64>,
    pub big_added_p99_us: Option<f64>,
    pub big_cpu_us_per_req: Option<f64>,
    pub rss_idle_mb: Option<f64>,
    pub rss_load_mb: Option<f64>,
    pub rss_after_mb: Option<f64>,
    pub held_streams: Option<usize>,
    pub held_rss_mb: Option<f64>,
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 / 1024.0)
}

/// Rates at which added latency is shown in the table.
const REFERENCE_RATES: [f64; 2] = [1_000.0, 10_000.0];
/// CPU per request is shown at this rate (or the highest sustained below it).
const CPU_RATE: f64 = 5_000.0;

impl Figures {
    fn of(a: &ArmResult, ceiling: f64) -> Figures {
        let mut f = Figures::default();
        if let Some(p) = &a.serial_small {
            f.serial_p50_us = Some(p.arm.latency.p50_us);
            f.serial_p99_us = Some(p.arm.latency.p99_us);
            f.serial_added_p50_us = Some(p.arm.latency.p50_us - p.direct.latency.p50_us);
            f.serial_added_p99_us = Some(p.arm.latency.p99_us - p.direct.latency.p99_us);
        }
        for rate in REFERENCE_RATES {
            if let Some(s) = a.sweep.iter().find(|s| s.rate == rate) {
                f.added_at.push((rate, s.added_p50_us, s.added_p99_us));
            }
        }
        let max = |pick: fn(&Step) -> bool| {
            a.sweep
                .iter()
                .filter(|s| pick(s))
                .map(|s| s.rate)
                .reduce(f64::max)
        };
        f.max_rate_1ms = max(|s| s.held_1ms);
        f.max_rate_5ms = max(|s| s.held_5ms);
        f.max_rate_sustained = max(|s| s.sustained);
        f.reached_ceiling = a.kind != Kind::Direct
            && a.sweep
                .iter()
                .any(|s| s.rate >= ceiling && (s.held_5ms || s.sustained));
        let cpu_step = a
            .sweep
            .iter()
            .filter(|s| s.rate <= CPU_RATE && s.sustained && s.cpu_us_per_req.is_some())
            .max_by(|x, y| x.rate.total_cmp(&y.rate));
        if let Some(s) = cpu_step {
            f.cpu_us_per_req = s.cpu_us_per_req;
            f.cpu_rate = Some(s.rate);
        }
        if let Some(p) = &a.serial_stream {
            if let (Some(x), Some(d)) = (&p.arm.ttft, &p.direct.ttft) {
                f.stream_ttft_added_serial_p50_us = Some(x.p50_us - d.p50_us);
            }
        }
        if let Some(s) = &a.stream_open {
            f.stream_rate = Some(s.rate);
            f.stream_ttft_added_p50_us = s.added_ttft_p50_us;
            f.stream_ttft_added_p99_us = s.added_ttft_p99_us;
            if let Some(g) = &s.report.gaps {
                f.stream_gap_p50_ms = Some(g.p50_us / 1000.0);
                f.stream_gap_p99_ms = Some(g.p99_us / 1000.0);
            }
            f.stream_coalesced = s.report.coalesced_fraction;
        }
        if let Some(p) = &a.serial_big {
            f.big_added_serial_p50_us = Some(p.arm.latency.p50_us - p.direct.latency.p50_us);
        }
        if let Some(s) = &a.big_open {
            f.big_rate = Some(s.rate);
            f.big_added_p50_us = Some(s.added_p50_us);
            f.big_added_p99_us = Some(s.added_p99_us);
            f.big_cpu_us_per_req = s.cpu_us_per_req;
        }
        f.rss_idle_mb = mb(a.rss_idle_kb);
        f.rss_load_mb = mb(a.rss_load_kb);
        f.rss_after_mb = mb(a.rss_after_kb);
        if let Some(h) = &a.held {
            f.held_streams = Some(h.streams);
            f.held_rss_mb = mb(h.rss_peak_kb.max(h.rss_all_open_kb));
        }
        f
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: String,
    pub target: String,
    pub measured: String,
    /// `met`, `missed` or `not measured`.
    pub status: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    #[serde(flatten)]
    pub result: ArmResult,
    pub figures: Figures,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plan: Plan,
    pub machine: Machine,
    /// The highest small-request rate direct answered completely with p50 ≤ 1 ms and
    /// p99 ≤ 5 ms: what this machine's load generator and upstream can drive on their
    /// core.
    pub ceiling_rps: f64,
    pub arms: Vec<ArmReport>,
    pub targets: Vec<Target>,
    pub elapsed_s: f64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn new(
        plan: &Plan,
        machine: Machine,
        arms: Vec<ArmResult>,
        ceiling: f64,
        elapsed_s: f64,
        problems: Vec<String>,
    ) -> Report {
        let mut arms: Vec<ArmReport> = arms
            .into_iter()
            .map(|a| ArmReport {
                figures: Figures::of(&a, ceiling),
                result: a,
            })
            .collect();
        let floor = arms
            .iter()
            .find(|a| a.result.kind == Kind::Forwarder)
            .and_then(|a| a.figures.serial_added_p50_us);
        for a in &mut arms {
            if matches!(a.result.kind, Kind::Direct | Kind::Forwarder) {
                continue;
            }
            if let (Some(x), Some(f)) = (a.figures.serial_added_p50_us, floor) {
                a.figures.serial_over_forwarder_p50_us = Some(x - f);
            }
        }
        let targets = targets(&arms);
        Report {
            plan: plan.clone(),
            machine,
            ceiling_rps: ceiling,
            arms,
            targets,
            elapsed_s,
            problems,
        }
    }

    /// The Markdown that is printed and pasted into the README.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {} CPUs ({}), kernel {}. Load generator + upstream pinned to core {}, proxy under test to core {}; scheduling {}.{}",
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.load_core,
            m.proxy_core,
            m.scheduling,
            if self.plan.smoke { " SMOKE RUN: low rates, short steps; the numbers mean nothing." } else { "" }
        );
        let _ = writeln!(
            out,
            "Upstream delay {} ms; streams {} chunks {} ms apart; open-loop steps {} s over {} keep-alive connections; \
             the ceiling (the highest rate direct answered completely with p50 ≤ 1 ms and p99 ≤ 5 ms: what the load generator + upstream drive on their core) was {} req/s.\n",
            self.plan.delay_ms,
            self.plan.chunks,
            self.plan.chunk_interval_ms,
            self.plan.step_s,
            self.plan.connections,
            thousands(self.ceiling_rps)
        );
        let busiest = m
            .background_busy_before
            .iter()
            .chain(&m.background_busy_after)
            .copied()
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "Background load (other work on the machine, nothing of the benchmark running): cores {} before, {} after; load average before {}.{}\n",
            percents(&m.background_busy_before),
            percents(&m.background_busy_after),
            m.loadavg_before,
            if busiest > 0.1 {
                " WARNING: the machine was not idle; absolute numbers suffer, and so do comparisons between arms measured at different times."
            } else {
                ""
            }
        );
        out.push_str(&self.main_table());
        out.push('\n');
        out.push_str(&self.targets_table());
        out.push('\n');
        out.push_str(&self.sweep_table());
        if !self.problems.is_empty() {
            out.push_str("\nHarness problems:\n");
            for p in &self.problems {
                let _ = writeln!(out, "- {p}");
            }
        }
        let _ = writeln!(out, "\nMeasured in {:.0} s.", self.elapsed_s);
        out
    }

    fn main_table(&self) -> String {
        let mut t = String::new();
        t.push_str("| |");
        for a in &self.arms {
            let _ = write!(t, " {} |", a.result.label);
        }
        t.push_str("\n|---|");
        for _ in &self.arms {
            t.push_str("---|");
        }
        t.push('\n');
        let mut row = |name: &str, cell: &dyn Fn(&ArmReport) -> String| {
            let _ = write!(t, "| {name} |");
            for a in &self.arms {
                let c = if let Some(why) = &a.result.skipped {
                    if a.result.kind == Kind::Litellm && name.starts_with("Features") {
                        format!("skipped: {}", one_line(why))
                    } else {
                        "skipped".into()
                    }
                } else {
                    cell(a)
                };
                let _ = write!(t, " {c} |");
            }
            t.push('\n');
        };
        row("Features on", &|a| a.result.features.to_owned());
        row("Latency one at a time, p50 / p99 (µs)", &|a| {
            pair(a.figures.serial_p50_us, a.figures.serial_p99_us)
        });
        row("Added vs direct, one at a time, p50 / p99 (µs)", &|a| {
            if a.result.kind == Kind::Direct {
                "—".into()
            } else {
                pair_signed(a.figures.serial_added_p50_us, a.figures.serial_added_p99_us)
            }
        });
        row(
            "Added over the bare forwarder, one at a time, p50 (µs)",
            &|a| signed(a.figures.serial_over_forwarder_p50_us),
        );
        for rate in REFERENCE_RATES {
            row(
                &format!(
                    "Added vs direct at {} req/s, p50 / p99 (µs)",
                    thousands(rate)
                ),
                &|a| {
                    if a.result.kind == Kind::Direct {
                        return "—".into();
                    }
                    match a.figures.added_at.iter().find(|x| x.0 == rate) {
                        Some(&(_, p50, p99)) => {
                            let held = a
                                .result
                                .sweep
                                .iter()
                                .find(|s| s.rate == rate)
                                .is_some_and(|s| s.report.complete());
                            if held {
                                pair_signed(Some(p50), Some(p99))
                            } else {
                                "fell behind".into()
                            }
                        }
                        None => "not reached".into(),
                    }
                },
            );
        }
        let rate_cell = |v: Option<f64>, a: &ArmReport| match v {
            Some(r) if a.figures.reached_ceiling && r >= self.ceiling_rps => {
                format!("≥ {} (ceiling)", thousands(r))
            }
            Some(r) => thousands(r),
            None => match a.result.sweep.iter().map(|s| s.rate).reduce(f64::min) {
                Some(low) => format!("none (down to {})", thousands(low)),
                None => "not measured".into(),
            },
        };
        row("Highest rate held, p99 added ≤ 1 ms (req/s)", &|a| {
            if a.result.kind == Kind::Direct {
                "—".into()
            } else {
                rate_cell(a.figures.max_rate_1ms, a)
            }
        });
        row("Highest rate held, p99 added ≤ 5 ms (req/s)", &|a| {
            if a.result.kind == Kind::Direct {
                format!("{} (ceiling)", thousands(self.ceiling_rps))
            } else {
                rate_cell(a.figures.max_rate_5ms, a)
            }
        });
        row(
            "Highest rate sustained: all answered, p99 ≤ 100 ms (req/s)",
            &|a| rate_cell(a.figures.max_rate_sustained, a),
        );
        row("CPU per request, non-streaming (µs)", &|a| match (
            a.figures.cpu_us_per_req,
            a.figures.cpu_rate,
        ) {
            (Some(c), Some(r)) if r == CPU_RATE => format!("{c:.1}"),
            (Some(c), Some(r)) => format!("{c:.1} (at {} req/s)", thousands(r)),
            _ => "—".into(),
        });
        row(
            "Stream: added time to first chunk, one at a time, p50 (µs)",
            &|a| {
                if a.result.kind == Kind::Direct {
                    "—".into()
                } else {
                    signed(a.figures.stream_ttft_added_serial_p50_us)
                }
            },
        );
        row(
            "Stream at rate: added time to first chunk, p50 / p99 (µs)",
            &|a| {
                let rate = a
                    .figures
                    .stream_rate
                    .map_or(String::new(), |r| format!(" at {}/s", thousands(r)));
                if a.result.kind == Kind::Direct {
                    format!("—{rate}")
                } else {
                    format!(
                        "{}{rate}",
                        pair_signed(
                            a.figures.stream_ttft_added_p50_us,
                            a.figures.stream_ttft_added_p99_us
                        )
                    )
                }
            },
        );
        row(
            &format!(
                "Stream: gap between chunks p50 / p99 (ms; sent every {} ms); share arriving glued to the previous",
                self.plan.chunk_interval_ms
            ),
            &|a| {
                format!(
                    "{} / {}; {}",
                    opt(a.figures.stream_gap_p50_ms, 2),
                    opt(a.figures.stream_gap_p99_ms, 2),
                    a.figures
                        .stream_coalesced
                        .map_or("—".into(), |c| format!("{:.0}%", c * 100.0))
                )
            },
        );
        row(
            &format!(
                "{} KB body: added p50 one at a time; added p50 / p99 at rate (µs)",
                self.plan.big_bytes / 1024
            ),
            &|a| {
                if a.result.kind == Kind::Direct {
                    return "—".into();
                }
                format!(
                    "{}; {} at {}/s",
                    signed(a.figures.big_added_serial_p50_us),
                    pair_signed(a.figures.big_added_p50_us, a.figures.big_added_p99_us),
                    a.figures.big_rate.map_or("—".into(), thousands)
                )
            },
        );
        row(
            &format!(
                "{} KB body: CPU per request (µs)",
                self.plan.big_bytes / 1024
            ),
            &|a| opt(a.figures.big_cpu_us_per_req, 0),
        );
        row("RSS idle / under load / after (MB)", &|a| {
            if a.result.kind == Kind::Direct {
                return "—".into();
            }
            format!(
                "{} / {} / {}",
                opt(a.figures.rss_idle_mb, 1),
                opt(a.figures.rss_load_mb, 1),
                opt(a.figures.rss_after_mb, 1)
            )
        });
        row(
            &format!(
                "RSS with {} concurrent streams (MB)",
                self.plan.held_streams
            ),
            &|a| match (&a.result.held, a.figures.held_rss_mb) {
                (Some(h), Some(mb)) => {
                    let all = if h.all_started {
                        String::new()
                    } else {
                        format!(" (only {} opened)", h.report.ok)
                    };
                    format!("{mb:.1}{all}")
                }
                _ => "not measured".into(),
            },
        );
        let proxy_core = self.machine.proxy_core;
        row(
            "Other work on the proxy's core during the sweep, mean (max)",
            &|a| {
                let v: Vec<f64> = a
                    .result
                    .sweep
                    .iter()
                    .filter_map(|s| others_on_proxy_core(s, proxy_core))
                    .collect();
                if v.is_empty() {
                    return "—".into();
                }
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let max = v.iter().copied().fold(0.0, f64::max);
                format!("{:.0}% ({:.0}%)", mean * 100.0, max * 100.0)
            },
        );
        row(
            "Ledger rows written / dropped (requests sent)",
            &|a| match (a.result.ledger_written, a.result.ledger_dropped) {
                (Some(w), Some(d)) if a.result.kind == Kind::Switchyard => {
                    format!("{w} / {d} ({})", a.result.requests_sent)
                }
                _ => "—".into(),
            },
        );
        t
    }

    fn targets_table(&self) -> String {
        let mut t = String::from(
            "| Target (Switchyard, features on, one core) | wanted | measured | |\n|---|---|---|---|\n",
        );
        for x in &self.targets {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                x.what, x.target, x.measured, x.status
            );
        }
        t
    }

    fn sweep_table(&self) -> String {
        let mut t = String::from(
            "Small requests, open loop, per step (p50 / p99 from the scheduled send time; cores = busy share of core 0 / core 1; \
             others on proxy core = busy share of the proxy's core that was not the proxy's, i.e. other work on the machine; \
             for direct, everything there is other work):\n\n\
             | arm | req/s | answered | p50 µs | p99 µs | added p50 / p99 µs | CPU µs/req | cores | others on proxy core | held |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for a in &self.arms {
            for s in &a.result.sweep {
                let r = &s.report;
                let held = if a.result.kind == Kind::Direct {
                    if r.complete() && r.latency.p50_us <= 1000.0 && r.latency.p99_us <= 5000.0 {
                        "within ceiling"
                    } else if r.complete() && r.latency.p50_us <= 1000.0 {
                        "keeps up, tail > 5 ms"
                    } else {
                        "no"
                    }
                } else if s.held_1ms {
                    "≤ 1 ms"
                } else if s.held_5ms {
                    "≤ 5 ms"
                } else if s.sustained {
                    "sustained"
                } else {
                    "no"
                };
                let others = others_on_proxy_core(s, self.machine.proxy_core);
                let _ = writeln!(
                    t,
                    "| {} | {} | {}/{}{} | {} | {} | {} | {} | {} | {} | {} |",
                    a.result.label,
                    thousands(s.rate),
                    r.ok,
                    r.offered,
                    if r.errors > 0 {
                        format!(" ({} errors)", r.errors)
                    } else {
                        String::new()
                    },
                    opt(Some(r.latency.p50_us), 0),
                    opt(Some(r.latency.p99_us), 0),
                    if a.result.kind == Kind::Direct {
                        "—".into()
                    } else {
                        pair_signed(Some(s.added_p50_us), Some(s.added_p99_us))
                    },
                    opt(s.cpu_us_per_req, 1),
                    s.core_busy
                        .iter()
                        .map(|b| format!("{:.0}%", b * 100.0))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    others.map_or("—".into(), |o| format!("{:.0}%", o * 100.0)),
                    held
                );
            }
        }
        t
    }
}

/// Busy share of the proxy's core during a step that was not the proxy's own: other
/// work on the machine competing with the proxy under test.
fn others_on_proxy_core(s: &Step, proxy_core: usize) -> Option<f64> {
    let busy = *s.core_busy.get(proxy_core)?;
    Some((busy - s.proxy_cores.unwrap_or(0.0)).max(0.0))
}

fn targets(arms: &[ArmReport]) -> Vec<Target> {
    let find = |k: Kind| {
        arms.iter()
            .find(|a| a.result.kind == k && a.result.skipped.is_none())
    };
    let sy = find(Kind::Switchyard);
    let fwd = find(Kind::Forwarder);
    let direct = find(Kind::Direct);
    let lite = find(Kind::Litellm);
    let mut out = Vec::new();
    let mut push = |what: &str,
                    target: &str,
                    value: Option<f64>,
                    ok: &dyn Fn(f64) -> bool,
                    show: &dyn Fn(f64) -> String| {
        let (measured, status) = match value {
            Some(v) if v.is_finite() => (show(v), if ok(v) { "met" } else { "missed" }),
            Some(_) => ("∞".to_owned(), "missed"),
            None => ("—".to_owned(), "not measured"),
        };
        out.push(Target {
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            status,
        });
    };
    let f = sy.map(|a| &a.figures);
    let fwd_cpu = fwd.and_then(|a| a.figures.cpu_us_per_req);
    push(
        "CPU per non-streaming request",
        "≤ 40 µs",
        f.and_then(|f| f.cpu_us_per_req),
        &|v| v <= 40.0,
        &|v| {
            format!(
                "{v:.1} µs ({:.1}× the target; bare forwarder {})",
                v / 40.0,
                fwd_cpu.map_or("—".into(), |c| format!("{c:.1} µs"))
            )
        },
    );
    let over = f.and_then(|f| f.serial_over_forwarder_p50_us);
    push(
        "Added latency p50 (one at a time)",
        "≤ 100 µs",
        f.and_then(|f| f.serial_added_p50_us),
        &|v| v <= 100.0,
        &|v| {
            format!(
                "{v:+.0} µs ({} of it over the bare forwarder)",
                signed(over)
            )
        },
    );
    let ceiling_note = sy.is_some_and(|a| a.figures.reached_ceiling);
    push(
        "Rate held with p99 added ≤ 5 ms",
        "≥ 20,000 req/s",
        f.and_then(|f| f.max_rate_5ms),
        &|v| v >= 20_000.0,
        &|v| {
            format!(
                "{}{} req/s",
                if ceiling_note { "≥ " } else { "" },
                thousands(v)
            )
        },
    );
    push(
        "Added time to first chunk (one at a time, p50)",
        "≤ 100 µs",
        f.and_then(|f| f.stream_ttft_added_serial_p50_us),
        &|v| v <= 100.0,
        &|v| format!("{v:+.0} µs"),
    );
    // Chunks forwarded as they arrive: the gaps look like direct's, and no more
    // chunks arrive glued together than direct sees.
    let gap = f.and_then(|f| f.stream_gap_p50_ms);
    let direct_gap = direct.and_then(|a| a.figures.stream_gap_p50_ms);
    let glued = f.and_then(|f| f.stream_coalesced);
    let direct_glued = direct.and_then(|a| a.figures.stream_coalesced);
    let chunk_ok = match (gap, direct_gap, glued, direct_glued) {
        (Some(g), Some(dg), Some(c), Some(dc)) => {
            Some(if (g - dg).abs() <= 0.2 * dg && c <= dc + 0.05 {
                1.0
            } else {
                0.0
            })
        }
        _ => None,
    };
    push(
        "Stream chunks forwarded as they arrive",
        "gaps as direct's, none glued",
        chunk_ok,
        &|v| v > 0.5,
        &|_| {
            format!(
                "gap p50 {} ms (direct {} ms), glued {} (direct {})",
                opt(gap, 2),
                opt(direct_gap, 2),
                glued.map_or("—".into(), |c| format!("{:.0}%", c * 100.0)),
                direct_glued.map_or("—".into(), |c| format!("{:.0}%", c * 100.0)),
            )
        },
    );
    push(
        "RSS idle",
        "≤ 50 MB",
        f.and_then(|f| f.rss_idle_mb),
        &|v| v <= 50.0,
        &|v| format!("{v:.1} MB"),
    );
    let held_n = f.and_then(|f| f.held_streams).unwrap_or(0);
    push(
        &format!("RSS with {held_n} concurrent streams"),
        "≤ 150 MB (1,000 streams)",
        f.and_then(|f| f.held_rss_mb),
        &|v| v <= 150.0,
        &|v| format!("{v:.1} MB"),
    );
    let ratio = match (
        f.and_then(|f| f.max_rate_sustained),
        lite.and_then(|a| a.figures.max_rate_sustained),
    ) {
        (Some(s), Some(l)) if l > 0.0 => Some(s / l),
        _ => None,
    };
    let lite_rate = lite.and_then(|a| a.figures.max_rate_sustained);
    push(
        "Sustained rate vs LiteLLM's",
        "≥ 50×",
        ratio,
        &|v| v >= 50.0,
        &|v| {
            format!(
                "{}{v:.0}× ({} vs {} req/s)",
                if ceiling_note { "≥ " } else { "" },
                f.and_then(|f| f.max_rate_sustained)
                    .map_or("—".into(), thousands),
                lite_rate.map_or("—".into(), thousands)
            )
        },
    );
    // One replica of several: its ledger in PostgreSQL and its limits and budget in
    // Redis, against the single-machine defaults, at the same rate.
    let shared = find(Kind::SwitchyardShared);
    let same_rate = match (sy, shared) {
        (Some(local), Some(shared)) => local
            .result
            .sweep
            .iter()
            .filter(|s| s.rate <= CPU_RATE && s.sustained)
            .filter_map(|l| {
                let r = shared
                    .result
                    .sweep
                    .iter()
                    .find(|s| s.rate == l.rate && s.sustained)?;
                Some((l.rate, l.cpu_us_per_req?, r.cpu_us_per_req?))
            })
            .max_by(|x, y| x.0.total_cmp(&y.0)),
        _ => None,
    };
    push(
        "CPU per request, Postgres + Redis vs SQLite + in-process",
        "≤ 1.5×",
        same_rate.map(|(_, local, shared)| shared / local),
        &|v| v <= 1.5,
        &|v| {
            let (rate, local, shared) = same_rate.unwrap_or_default();
            format!(
                "{v:.2}× ({shared:.1} vs {local:.1} µs at {} req/s)",
                thousands(rate)
            )
        },
    );
    out
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_infinite() => "∞".into(),
        Some(x) if x.is_nan() => "—".into(),
        Some(x) => format!("{x:.decimals$}"),
        None => "—".into(),
    }
}

fn signed(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_infinite() => "∞".into(),
        Some(x) if x.is_nan() => "—".into(),
        Some(x) => format!("{x:+.0}"),
        None => "—".into(),
    }
}

fn pair(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", opt(a, 0), opt(b, 0))
}

fn pair_signed(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", signed(a), signed(b))
}

fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    first.replace('|', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(500.0), "500");
        assert_eq!(thousands(20_000.0), "20,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
