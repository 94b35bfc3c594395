//! `bench-load`: the benchmark's load generator on its own, for ad-hoc runs against
//! any OpenAI-compatible endpoint on this machine. Prints one JSON report.
//!
//! ```text
//! bench-load --addr 127.0.0.1:8080 --key sk-… --rate 5000 --duration 5
//! bench-load --addr 127.0.0.1:8080 --key sk-… --stream --chunks 10      # serial streams
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use switchyard_bench::load::{run_open, run_serial, Payload, Target};

#[derive(Parser, Debug)]
#[command(about = "Open-loop (or one-at-a-time) load for /v1/chat/completions")]
struct Args {
    /// The server (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Bearer key.
    #[arg(long)]
    key: Option<String>,
    /// Model to ask for.
    #[arg(long, default_value = "bench")]
    model: String,
    /// Ask for a stream.
    #[arg(long)]
    stream: bool,
    /// Content chunks the server sends per stream (gaps are measured between them).
    #[arg(long, default_value_t = 10)]
    chunks: usize,
    /// Pad the request body to this many bytes.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// Requests per second; 0 sends one request at a time.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Keep-alive connections (open loop).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// One at a time: stop after this many requests (or --duration, whichever first).
    #[arg(long)]
    requests: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.addr.ip().is_loopback() {
        eprintln!("bench-load: only loopback addresses are allowed here");
        return ExitCode::from(2);
    }
    let target = match Target::new(args.addr, &args.path, args.key.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bench-load: {e}");
            return ExitCode::from(2);
        }
    };
    let payload = Payload::chat(&args.model, args.stream, args.chunks, args.body_bytes);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let duration = Duration::from_secs_f64(args.duration.max(0.01));
    let mut outcome = runtime.block_on(async {
        if args.rate > 0.0 {
            run_open(
                &target,
                &payload,
                args.rate,
                duration,
                args.connections,
                Duration::from_secs(2),
            )
            .await
        } else {
            run_serial(
                &target,
                &payload,
                duration,
                args.requests.unwrap_or(u64::MAX),
            )
            .await
        }
    });
    let report = outcome.report();
    match serde_json::to_string_pretty(&report) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("bench-load: {e}"),
    }
    if report.ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
