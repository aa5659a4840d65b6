//! `huddle load-test`: simulated publishers and subscribers against a Huddle server (or, with
//! `--janus`, against Janus videoroom), every client a real WebRTC peer connection (ICE, DTLS,
//! SRTP), through `huddle_load::run`.
//!
//! Progress on stderr each second (unless `--quiet`); at the end the report as a table on stdout,
//! or with `--json` as one JSON object. Bounded: at most `huddle_load::MAX_PUBLISHERS` publishers
//! and `huddle_load::MAX_PLAY_STREAMS` played streams, a window of at most
//! `huddle_load::cli::MAX_DURATION_S` seconds, and a hard bound on the whole run (`--max-run`).
//! The flags of the load's shape are `huddle_load::cli::LoadArgs`, shared with the `huddle-load`
//! binary.
//!
//! With `--churn`, the churn soak instead (`huddle_load::run_churn`): `--clients` clients loop
//! login → publish → play others → hold → stop → logout (or drop the socket, or drop mid-ICE) for
//! `--duration` (default 60 s, at most 3600 s), seeded by `--seed`; the report gives cycles, errors
//! by code, the server's RSS (with `--server-pid`) at the end of the warm-up and at the end, the
//! slope in KiB per 1000 cycles, and whether the server was empty again at the end.
//!
//! Clients bind `--bind` (127.0.0.1 unless the run is inside a network namespace of its own, see
//! `huddle_load::netguard`) and send only to loopback or that address.
//!
//! Exit codes: 0 the run completed (its report says how well); 1 the run could not be made
//! (unreachable server, a URL outside loopback, no publisher joined, e.g. a refused login; the
//! report is still printed when there is one); 2 bad arguments; 3 with `--strict`, the run
//! completed but not cleanly (a client failed to join or errored, or a packet was lost; churn: a
//! cycle errored, or the server was not empty at the end). Churn exits 1 when no cycle completed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use huddle_load::cli::{ChurnArgs, LoadArgs};
use huddle_load::{ChurnReport, HuddleTarget, JanusTarget, LoadError, ProcTarget, Report};

#[derive(clap::Args, Debug)]
pub struct LoadTestArgs {
    /// The Huddle server's signaling address, `ws://HOST:PORT` (the path defaults to `/ws`).
    /// Repeat it for the nodes of a cluster (`huddle serve --redis`): the clients are spread over
    /// them round-robin, as a load balancer would (publisher p on server p mod n, subscriber s on
    /// server (s + 1) mod n, churn client c on c mod n), so that plays cross nodes; the report
    /// gives logins, joins and failures per server besides the totals.
    #[arg(long, conflicts_with = "janus", required_unless_present = "janus")]
    server: Vec<String>,
    /// Run the same load against Janus videoroom instead, at its WebSocket API
    /// (`ws://HOST:8188`).
    #[arg(long, conflicts_with = "churn")]
    janus: Option<String>,
    /// The AppID to log in to (Huddle).
    #[arg(long, required_unless_present = "janus")]
    app_id: Option<u32>,
    /// The app's AppSign, 64 hex characters (Huddle).
    #[arg(long, required_unless_present = "janus")]
    app_sign: Option<String>,
    /// The server's PID: its CPU and memory (from /proc) go into the report.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as one JSON object (instead of the table).
    #[arg(long)]
    json: bool,
    /// Exit 3 unless every client joined, none failed and no packet was lost (with `--churn`:
    /// unless cycles completed without an error and the server was empty at the end).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    churn: ChurnArgs,
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

/// Fails with exit code 2 (bad arguments).
fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("huddle load-test: {e}");
    ExitCode::from(2)
}

pub fn run(args: LoadTestArgs) -> ExitCode {
    huddle_load::cli::init_logs();
    let server = args.server_pid.map(ProcTarget::process);
    if args.churn.churn {
        return churn(&args, server);
    }
    let plan = match args.load.plan(server) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    match (&args.janus, &args.server) {
        (Some(url), _) => {
            let target = Arc::new(JanusTarget::new(url));
            execute(
                &args,
                |rt| rt.block_on(huddle_load::run(target, plan)),
                judge_load,
            )
        }
        (None, _) => match huddle_target(&args) {
            Ok(target) => execute(
                &args,
                |rt| rt.block_on(huddle_load::run(Arc::new(target), plan)),
                judge_load,
            ),
            Err(code) => code,
        },
    }
}

/// The Huddle target of `--server` (one or more), `--app-id`, `--app-sign` (exit 2 on a bad
/// AppSign or no server).
fn huddle_target(args: &LoadTestArgs) -> Result<HuddleTarget, ExitCode> {
    let sign = args
        .app_sign
        .as_deref()
        .unwrap_or("")
        .parse()
        .map_err(|e| usage(format!("--app-sign: {e}")))?;
    let urls = args.server.iter().map(|s| huddle_url(s)).collect();
    HuddleTarget::cluster(urls, args.app_id.unwrap_or(0), sign).map_err(|e| usage(format!("--server: {e}")))
}

/// `--churn`: the churn soak against the Huddle server.
fn churn(args: &LoadTestArgs, server: Option<ProcTarget>) -> ExitCode {
    let plan = match args.churn.plan(&args.load, server) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let target = match huddle_target(args) {
        Ok(t) => Arc::new(t),
        Err(code) => return code,
    };
    if server.is_none() {
        eprintln!("huddle load-test: no --server-pid: the server's memory is not sampled");
    }
    execute(
        args,
        |rt| rt.block_on(huddle_load::run_churn(target, plan)),
        judge_churn,
    )
}

/// What the command makes of a report: its table, why nothing went through (exit 1), and what
/// is not clean (exit 3 with `--strict`).
struct Judged {
    table: String,
    nothing_done: Option<String>,
    failures: Vec<String>,
}

impl Judged {
    /// `none`: nothing went through, said as `what` with the first error.
    fn new(table: String, none: bool, what: &str, first: Option<&String>, failures: Vec<String>) -> Judged {
        let first = first.map_or("no error reported", String::as_str);
        let nothing_done = none.then(|| format!("{what}; first error: {first}"));
        Judged {
            table,
            nothing_done,
            failures,
        }
    }
}

fn judge_load(r: &Report) -> Judged {
    let none = r.publishers_joined == 0;
    Judged::new(
        r.to_table(),
        none,
        "no publisher joined",
        r.errors.first(),
        r.smoke_failures(),
    )
}

fn judge_churn(r: &ChurnReport) -> Judged {
    let none = r.cycles_completed == 0;
    let first = r.error_samples.first();
    Judged::new(
        r.to_table(),
        none,
        "no churn cycle completed",
        first,
        r.failures(),
    )
}

/// Runs `run` on the generator's runtime, prints its report (table, or JSON with `--json`) and
/// picks the exit code.
fn execute<R: serde::Serialize>(
    args: &LoadTestArgs,
    run: impl FnOnce(&tokio::runtime::Runtime) -> Result<R, LoadError>,
    judge: impl FnOnce(&R) -> Judged,
) -> ExitCode {
    let runtime = match args.load.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("huddle load-test: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = run(&runtime);
    // Clients that did not stop in time must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("huddle load-test: {e}");
            return ExitCode::FAILURE;
        }
    };
    let judged = judge(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
    } else {
        print!("{}", judged.table);
    }
    if let Some(why) = judged.nothing_done {
        eprintln!("huddle load-test: {why}");
        return ExitCode::FAILURE;
    }
    if args.strict && !judged.failures.is_empty() {
        eprintln!("huddle load-test: not clean: {}", judged.failures.join("; "));
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
    /// A Huddle server and its credentials.
    const HUDDLE: [&str; 6] = [
        "--server",
        "ws://127.0.0.1:1",
        "--app-id",
        "1",
        "--app-sign",
        SIGN,
    ];
    const JANUS: [&str; 2] = ["--janus", "ws://127.0.0.1:8188"];

    /// `base` then `extra`, parsed (an error as text).
    fn parse2(base: &[&str], extra: &[&str]) -> Result<LoadTestArgs, String> {
        parse(&[base, extra].concat()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_signaling_path_is_added_when_missing() {
        assert_eq!(huddle_url("ws://127.0.0.1:7880"), "ws://127.0.0.1:7880/ws");
        assert_eq!(huddle_url("ws://127.0.0.1:7880/ws"), "ws://127.0.0.1:7880/ws");
        assert_eq!(huddle_url("ws://[::1]:7880/x"), "ws://[::1]:7880/x");
    }

    #[test]
    fn huddle_needs_credentials_janus_does_not() {
        assert!(parse(&["--server", "ws://127.0.0.1:1"]).is_err());
        assert!(parse(&HUDDLE).is_ok());
        assert!(parse(&JANUS).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse2(&JANUS, &HUDDLE).is_err());
        let two = parse2(&HUDDLE, &["--server", "ws://127.0.0.1:2/ws"]).unwrap();
        assert_eq!(two.server, ["ws://127.0.0.1:1", "ws://127.0.0.1:2/ws"]);
        let target = huddle_target(&two).unwrap();
        assert_eq!(
            huddle_load::Target::servers(&target),
            ["ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"]
        );
    }

    #[test]
    fn plans_are_bounded() {
        let plan = |extra: &[&str]| {
            let args = parse2(&JANUS, extra)?;
            args.load.plan(args.server_pid.map(ProcTarget::process))
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

    #[test]
    fn churn_flags() {
        let churn = |extra: &[&str]| {
            let args = parse2(&HUDDLE, extra)?;
            assert!(args.churn.churn);
            args.churn.plan(&args.load, None)
        };
        let p = churn(&["--churn", "--clients", "20", "--duration", "600s"]).unwrap();
        assert_eq!((p.clients, p.duration), (20, Duration::from_secs(600)));
        assert_eq!(p.warmup, Duration::from_secs(60));
        assert_eq!(p.seed, 1);
        let p = churn(&["--churn", "--duration", "25", "--seed", "7", "--warmup", "5s"]).unwrap();
        assert_eq!((p.seed, p.warmup), (7, Duration::from_secs(5)));
        // Churn runs may be longer than a measurement window (up to an hour).
        assert!(churn(&["--churn", "--duration", "1h"]).is_ok());
        for bad in [
            &["--churn", "--duration", "3601"][..],
            &["--churn", "--clients", "0"],
            &["--churn", "--clients", "501"],
            &["--churn", "--duration", "10", "--warmup", "10"],
            &["--churn", "--hold-max", "0"],
            &["--churn", "--max-plays", "9"],
        ] {
            assert!(churn(bad).is_err(), "{bad:?} accepted");
        }
        // Churn flags need --churn; churn is Huddle's only.
        assert!(parse2(&HUDDLE, &["--clients", "3"]).is_err());
        assert!(parse2(&JANUS, &["--churn"]).is_err());
    }
}
