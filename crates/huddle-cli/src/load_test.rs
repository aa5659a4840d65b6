//! `huddle load-test`: simulated publishers and subscribers against a Huddle server (or, with
//! `--janus`, against Janus videoroom), every client a real WebRTC peer connection (ICE, DTLS,
//! SRTP), through `huddle_load::run`.
//!
//! Progress on stderr each second (unless `--quiet`); at the end the report as a table on stdout,
//! or with `--json` as one JSON object. Bounded: at most `huddle_load::MAX_PUBLISHERS` publishers
//! and `huddle_load::MAX_PLAY_STREAMS` played streams, a window of at most
//! [`MAX_DURATION_S`] seconds, and a hard bound on the whole run (`--max-run`).
//!
//! Clients bind `--bind` (127.0.0.1 unless the run is inside a network namespace of its own, see
//! `huddle_load::netguard`) and send only to loopback or that address.
//!
//! Exit codes: 0 the run completed (its report says how well); 1 the run could not be made
//! (unreachable server, a URL outside loopback, no publisher joined, e.g. a refused login; the
//! report is still printed when there is one); 2 bad arguments; 3 with `--strict`, the run
//! completed but not cleanly (a client failed to join or errored, or a packet was lost).

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use huddle_load::{HuddleTarget, JanusTarget, LoadError, Plan, ProcTarget, Report, netguard};

/// The longest measurement window the command takes, seconds.
pub const MAX_DURATION_S: f64 = 600.0;
/// The longest join timeout, seconds.
const MAX_JOIN_TIMEOUT_S: f64 = 120.0;
/// The most generator threads.
const MAX_THREADS: usize = 64;

#[derive(clap::Args, Debug)]
pub struct LoadTestArgs {
    /// The Huddle server's signaling address, `ws://HOST:PORT` (the path defaults to `/ws`).
    #[arg(long, conflicts_with = "janus", required_unless_present = "janus")]
    server: Option<String>,
    /// Run the same load against Janus videoroom instead, at its WebSocket API
    /// (`ws://HOST:8188`).
    #[arg(long)]
    janus: Option<String>,
    /// The AppID to log in to (Huddle).
    #[arg(long, required_unless_present = "janus")]
    app_id: Option<u32>,
    /// The app's AppSign, 64 hex characters (Huddle).
    #[arg(long, required_unless_present = "janus")]
    app_sign: Option<String>,
    /// Publishers, each sending one Opus-sized audio stream.
    #[arg(long, default_value_t = 2)]
    publishers: u32,
    /// Subscribers, each playing every publisher (one peer connection per played stream).
    #[arg(long, default_value_t = 3)]
    subscribers: u32,
    /// The measurement window, seconds (after everyone joined).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Packets per second per publisher (50: 20 ms frames).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// How long joining may take (publishers, then subscribers), seconds.
    #[arg(long, default_value_t = 20.0)]
    join_timeout: f64,
    /// Clients negotiating at once.
    #[arg(long, default_value_t = 32)]
    join_concurrency: usize,
    /// A hard bound on the whole run, seconds (default: window + 2 × join timeout + 30).
    #[arg(long)]
    max_run: Option<f64>,
    /// The clients' address, and the only non-loopback address they send to: loopback, or an
    /// address of a network namespace made for the run (refused elsewhere).
    #[arg(long, default_value_t = netguard::DEFAULT_BIND)]
    bind: IpAddr,
    /// The server's PID: its CPU and memory (from /proc) go into the report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Print the report as one JSON object (instead of the table).
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Exit 3 unless every client joined, none failed and no packet was lost.
    #[arg(long)]
    strict: bool,
}

/// Appends the signaling path to a `ws://HOST:PORT` without one.
fn huddle_url(server: &str) -> String {
    let rest = server
        .strip_prefix("ws://")
        .or_else(|| server.strip_prefix("wss://"))
        .unwrap_or(server);
    if rest.contains('/') {
        server.to_string()
    } else {
        format!("{server}{}", huddle_proto::SIGNALING_PATH)
    }
}

fn seconds(name: &str, v: f64, max: f64) -> Result<Duration, String> {
    if !v.is_finite() || v <= 0.0 || v > max {
        return Err(format!("--{name} must be in (0, {max}] seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl LoadTestArgs {
    /// The plan, bounds checked.
    fn plan(&self) -> Result<Plan, String> {
        let duration = seconds("duration", self.duration, MAX_DURATION_S)?;
        let join_timeout = seconds("join-timeout", self.join_timeout, MAX_JOIN_TIMEOUT_S)?;
        let default_max = duration + 2 * join_timeout + Duration::from_secs(30);
        let max_run = match self.max_run {
            Some(s) => seconds("max-run", s, MAX_DURATION_S + 2.0 * MAX_JOIN_TIMEOUT_S + 30.0)?,
            None => default_max,
        };
        if !(1..=1024).contains(&self.join_concurrency) {
            return Err("--join-concurrency must be 1..=1024".into());
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(format!("--threads must be 1..={MAX_THREADS}"));
        }
        let mut plan = Plan::default();
        plan.publishers = self.publishers;
        plan.subscribers = self.subscribers;
        plan.packet_rate = self.rate;
        plan.duration = duration;
        plan.join_timeout = join_timeout;
        plan.join_concurrency = self.join_concurrency;
        plan.max_run = max_run;
        plan.progress = !self.quiet;
        plan.server = self.server_pid.map(ProcTarget::process);
        plan.bind = self.bind;
        plan.validate().map_err(|e| e.to_string())?;
        Ok(plan)
    }
}

pub fn run(args: LoadTestArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("huddle load-test: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .thread_name("huddle-load")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("huddle load-test: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report: Result<Report, LoadError> = match (&args.janus, &args.server) {
        (Some(url), _) => runtime.block_on(huddle_load::run(Arc::new(JanusTarget::new(url)), plan)),
        (None, Some(server)) => {
            let sign = match args.app_sign.as_deref().unwrap_or("").parse() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("huddle load-test: --app-sign: {e}");
                    return ExitCode::from(2);
                }
            };
            let app_id = args.app_id.unwrap_or(0);
            let target = HuddleTarget::new(huddle_url(server), app_id, sign);
            runtime.block_on(huddle_load::run(Arc::new(target), plan))
        }
        (None, None) => unreachable!("clap requires --server or --janus"),
    };
    // Clients that did not stop in time must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("huddle load-test: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
    } else {
        print!("{}", report.to_table());
    }
    if report.publishers_joined == 0 {
        let first = report.errors.first().map_or("no error reported", String::as_str);
        eprintln!("huddle load-test: no publisher joined; first error: {first}");
        return ExitCode::FAILURE;
    }
    let failures = report.smoke_failures();
    if args.strict && !failures.is_empty() {
        eprintln!("huddle load-test: not clean: {}", failures.join("; "));
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadTestArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadTestArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("load-test").chain(args.iter().copied())).map(|c| c.args)
    }

    const SIGN: &str = "8f3a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn the_signaling_path_is_added_when_missing() {
        assert_eq!(huddle_url("ws://127.0.0.1:7880"), "ws://127.0.0.1:7880/ws");
        assert_eq!(huddle_url("ws://127.0.0.1:7880/ws"), "ws://127.0.0.1:7880/ws");
        assert_eq!(huddle_url("ws://[::1]:7880/x"), "ws://[::1]:7880/x");
    }

    #[test]
    fn huddle_needs_credentials_janus_does_not() {
        assert!(parse(&["--server", "ws://127.0.0.1:1"]).is_err());
        assert!(
            parse(&[
                "--server",
                "ws://127.0.0.1:1",
                "--app-id",
                "1",
                "--app-sign",
                SIGN
            ])
            .is_ok()
        );
        assert!(parse(&["--janus", "ws://127.0.0.1:8188"]).is_ok());
        assert!(parse(&[]).is_err());
        let both = [
            "--janus",
            "ws://127.0.0.1:8188",
            "--server",
            "ws://127.0.0.1:1",
            "--app-id",
            "1",
            "--app-sign",
            SIGN,
        ];
        assert!(parse(&both).is_err());
    }

    #[test]
    fn plans_are_bounded() {
        let base = ["--janus", "ws://127.0.0.1:8188"];
        let plan = |extra: &[&str]| {
            let v: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse(&v).unwrap().plan()
        };
        let p = plan(&["--publishers", "10", "--subscribers", "100", "--duration", "2"]).unwrap();
        assert_eq!((p.publishers, p.subscribers), (10, 100));
        assert_eq!(p.duration, Duration::from_secs(2));
        assert_eq!(p.max_run, Duration::from_secs(2 + 40 + 30));
        for bad in [
            &["--publishers", "0"][..],
            &["--publishers", "1001"],
            &["--publishers", "100", "--subscribers", "201"],
            &["--duration", "0"],
            &["--duration", "601"],
            &["--duration", "NaN"],
            &["--rate", "0"],
            &["--rate", "1001"],
            &["--threads", "0"],
            &["--join-timeout", "1000"],
            &["--duration", "10", "--max-run", "5"],
            &["--join-concurrency", "0"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?} accepted");
        }
        let p = plan(&["--max-run", "9", "--duration", "3", "--server-pid", "1"]).unwrap();
        assert_eq!(p.max_run, Duration::from_secs(9));
        assert!(p.server.is_some());
    }
}
