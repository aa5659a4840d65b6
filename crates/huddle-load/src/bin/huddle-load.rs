//! The load generator's lower-level command line: `b0` (plain UDP relay, in process), `janus` and
//! `huddle` (WebRTC clients), and `janus-smoke` (a tiny load against Janus that must go through
//! without a loss). `scripts/bench.sh` uses it for B0 and the smoke check; the WebRTC runs go through
//! `huddle load-test`, the user-facing wrapper of the same library.
//!
//! Clients bind `--bind` (default 127.0.0.1) and send only to loopback or that address; a
//! non-loopback `--bind` is refused outside a network namespace made for the run
//! (`huddle_load::netguard`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use huddle_load::cli::LoadArgs;
use huddle_load::{HuddleTarget, JanusTarget, LoadError, Plan, ProcTarget, Relay, Report, netguard};

#[derive(Parser)]
#[command(about = "Huddle's load generator and benchmark driver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// B0: plain UDP clients through an in-process recvmmsg/sendmmsg relay (no SRTP).
    B0 {
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        out: JsonOut,
    },
    /// WebRTC clients against Janus videoroom (already running; see scripts/bench.sh).
    Janus {
        /// Janus's WebSocket API.
        #[arg(long, default_value = "ws://127.0.0.1:8188")]
        url: String,
        /// Janus's PID to sample.
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        out: JsonOut,
    },
    /// The Janus adapter's smoke check: 2 publishers x 3 subscribers for 2 s against a running
    /// Janus; fails unless every client joins, none errs and no packet is lost.
    JanusSmoke {
        /// Janus's WebSocket API.
        #[arg(long, default_value = "ws://127.0.0.1:8188")]
        url: String,
        /// Janus's PID to sample (then it must show CPU use).
        #[arg(long)]
        pid: Option<u32>,
        /// The clients' address (see `--bind` of the other commands).
        #[arg(long, default_value_t = netguard::DEFAULT_BIND)]
        bind: IpAddr,
        /// Write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// WebRTC clients against a Huddle server.
    Huddle {
        /// The signaling WebSocket.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// The app to log in to.
        #[arg(long)]
        app_id: u32,
        /// Its AppSign (64 hex characters).
        #[arg(long)]
        app_sign: String,
        /// The server's PID to sample.
        #[arg(long)]
        pid: Option<u32>,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        out: JsonOut,
    },
}

/// Where to write the report as JSON (besides the table on stdout).
#[derive(Args)]
struct JsonOut {
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn finish(out: &JsonOut, report: Result<Report, LoadError>) -> Result<(), String> {
    finish_to(out.json.as_ref(), report).map(drop)
}

fn finish_to(json: Option<&PathBuf>, report: Result<Report, LoadError>) -> Result<Report, String> {
    let report = report.map_err(|e| e.to_string())?;
    println!("{}", report.to_table());
    if let Some(path) = json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, report.to_json()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(report)
}

fn main() {
    let cli = Cli::parse();
    huddle_load::cli::init_logs();
    let result = match cli.cmd {
        Cmd::B0 { load, out } => (|| {
            netguard::check_bind(load.bind).map_err(|e| e.to_string())?;
            let runtime = load.runtime()?;
            let relay = Relay::start(SocketAddr::new(load.bind, 0)).map_err(|e| e.to_string())?;
            let plan = load.plan(Some(relay.proc_target()));
            let report = match plan {
                Ok(plan) => runtime.block_on(huddle_load::run_plain(relay.local_addr(), plan)),
                Err(e) => Err(LoadError::Plan(e)),
            };
            let stats = relay.stop().map_err(|e| e.to_string())?;
            eprintln!(
                "relay: {} received, {} forwarded in {} sendmmsg calls",
                stats.received, stats.forwarded, stats.send_calls
            );
            finish(&out, report)
        })(),
        Cmd::Janus { url, pid, load, out } => (|| {
            let plan = load.plan(pid.map(ProcTarget::process))?;
            let report = load
                .runtime()?
                .block_on(huddle_load::run(Arc::new(JanusTarget::new(url)), plan));
            finish(&out, report)
        })(),
        Cmd::JanusSmoke { url, pid, bind, json } => (|| {
            let mut plan = Plan::default();
            plan.publishers = 2;
            plan.subscribers = 3;
            plan.duration = Duration::from_secs(2);
            plan.join_timeout = Duration::from_secs(10);
            plan.max_run = Duration::from_secs(40);
            plan.server = pid.map(ProcTarget::process);
            plan.bind = bind;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            let report = runtime.block_on(huddle_load::run(Arc::new(JanusTarget::new(url)), plan));
            let failures = finish_to(json.as_ref(), report)?.smoke_failures();
            if failures.is_empty() {
                println!("janus smoke: ok");
                Ok(())
            } else {
                Err(format!("janus smoke failed: {}", failures.join("; ")))
            }
        })(),
        Cmd::Huddle {
            url,
            app_id,
            app_sign,
            pid,
            load,
            out,
        } => (|| {
            let sign = app_sign.parse().map_err(|e| format!("--app-sign: {e}"))?;
            let plan = load.plan(pid.map(ProcTarget::process))?;
            let target = Arc::new(HuddleTarget::new(url, app_id, sign));
            let report = load.runtime()?.block_on(huddle_load::run(target, plan));
            finish(&out, report)
        })(),
    };
    if let Err(e) = result {
        eprintln!("huddle-load: {e}");
        std::process::exit(1);
    }
}
