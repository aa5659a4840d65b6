//! The command-line arguments of a load run, shared by `huddle load-test` (`huddle-cli`) and the
//! `huddle-load` binary (`#[command(flatten)]`): one place for the flags, their defaults and their
//! bounds.
//!
//! Durations take seconds (`90`, `2.5`) or a unit: `500ms`, `90s`, `10m`, `1h`.

use std::net::IpAddr;
use std::time::Duration;

use crate::churn::{ChurnPlan, MAX_CHURN_CLIENTS};
use crate::{Plan, ProcTarget, netguard};

/// The longest measurement window the commands take, seconds.
pub const MAX_DURATION_S: f64 = 600.0;
/// The longest churn soak, seconds.
pub const MAX_CHURN_DURATION_S: f64 = 3600.0;
/// The longest join timeout, seconds.
pub const MAX_JOIN_TIMEOUT_S: f64 = 120.0;
/// The most generator threads.
pub const MAX_THREADS: usize = 64;
/// The window when `--duration` is not given, seconds.
pub const DEFAULT_DURATION_S: f64 = 5.0;
/// The churn soak's length when `--duration` is not given, seconds.
pub const DEFAULT_CHURN_DURATION_S: f64 = 60.0;

/// Logs on stderr, `RUST_LOG` or warnings and errors.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Seconds from `90`, `2.5`, `500ms`, `90s`, `10m` or `1h`.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let ok = !num.is_empty() && num.chars().all(|c| c.is_ascii_digit() || c == '.');
    match num.parse::<f64>() {
        Ok(v) if ok && v.is_finite() => Ok(v * scale),
        _ => Err(format!("{s:?}: expected seconds, or a number with ms, s, m or h")),
    }
}

/// `v` seconds, in (0, `max`].
pub fn seconds(name: &str, v: f64, max: f64) -> Result<Duration, String> {
    if !v.is_finite() || v <= 0.0 || v > max {
        return Err(format!("--{name} must be in (0, {max}] seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The shape of a run: how many clients, how long, how fast, from where.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Publishers, each sending one Opus-sized audio stream.
    #[arg(long, default_value_t = 2)]
    pub publishers: u32,
    /// Subscribers, each playing every publisher (one peer connection per played stream).
    #[arg(long, default_value_t = 3)]
    pub subscribers: u32,
    /// The measurement window after everyone joined (default 5 s, at most 600 s); for the churn
    /// soak (`huddle load-test --churn`), how long cycles start (default 60 s, at most 3600 s).
    /// Seconds, or `90s`, `10m`.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<f64>,
    /// Packets per second per publisher (50: 20 ms frames).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// How long joining may take (publishers, then subscribers), seconds; for the churn soak, how
    /// long a peer connection may take to connect.
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub join_timeout: f64,
    /// Clients negotiating at once.
    #[arg(long, default_value_t = 32)]
    pub join_concurrency: usize,
    /// A hard bound on the whole run, seconds (default: window + 2 × join timeout + 30).
    #[arg(long, value_parser = parse_seconds)]
    pub max_run: Option<f64>,
    /// The clients' address, and the only non-loopback address they send to: loopback, or an
    /// address of a network namespace made for the run (refused elsewhere).
    #[arg(long, default_value_t = netguard::DEFAULT_BIND)]
    pub bind: IpAddr,
    /// Threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// The plan of a measured run, bounds checked; `server` is the process to sample.
    pub fn plan(&self, server: Option<ProcTarget>) -> Result<Plan, String> {
        let duration = seconds(
            "duration",
            self.duration.unwrap_or(DEFAULT_DURATION_S),
            MAX_DURATION_S,
        )?;
        let join_timeout = seconds("join-timeout", self.join_timeout, MAX_JOIN_TIMEOUT_S)?;
        let max_run = match self.max_run {
            Some(s) => seconds("max-run", s, MAX_DURATION_S + 2.0 * MAX_JOIN_TIMEOUT_S + 30.0)?,
            None => duration + 2 * join_timeout + Duration::from_secs(30),
        };
        if !(1..=1024).contains(&self.join_concurrency) {
            return Err("--join-concurrency must be 1..=1024".into());
        }
        self.check_threads()?;
        let plan = Plan {
            publishers: self.publishers,
            subscribers: self.subscribers,
            packet_rate: self.rate,
            duration,
            join_timeout,
            join_concurrency: self.join_concurrency,
            max_run,
            progress: !self.quiet,
            server,
            bind: self.bind,
            ..Plan::default()
        };
        plan.validate().map_err(|e| e.to_string())?;
        Ok(plan)
    }

    fn check_threads(&self) -> Result<(), String> {
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(format!("--threads must be 1..={MAX_THREADS}"));
        }
        Ok(())
    }

    /// The generator's runtime, `--threads` workers.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, String> {
        self.check_threads()?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name("huddle-load")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
    }
}

/// The churn soak (`--churn`): clients that join, publish, play, hold and leave in a loop while
/// the server's memory is sampled ([`crate::run_churn`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Run the churn soak instead of a measured load: each client loops login → publish → play
    /// others → hold → stop → logout (or drop the socket, or drop mid-ICE); reports cycles, errors
    /// and the server's RSS over time (`--server-pid`) and checks that the server is empty at the
    /// end.
    #[arg(long)]
    pub churn: bool,
    /// Churn: simulated clients.
    #[arg(long, default_value_t = 20, requires = "churn")]
    pub clients: u32,
    /// Churn: seed of the clients' random choices.
    #[arg(long, default_value_t = 1, requires = "churn")]
    pub seed: u64,
    /// Churn: samples before this are left out of the slope (default: a fifth of the run, at most
    /// 60 s).
    #[arg(long, value_parser = parse_seconds, requires = "churn")]
    pub warmup: Option<f64>,
    /// Churn: the longest hold of a cycle (holds are random from 0.5 s up to this).
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds, requires = "churn")]
    pub hold_max: f64,
    /// Churn: streams of others a client plays per cycle, at most.
    #[arg(long, default_value_t = 2, requires = "churn")]
    pub max_plays: u32,
    /// Churn: how long to wait after the last cycle for the server to be empty.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds, requires = "churn")]
    pub empty_timeout: f64,
}

impl ChurnArgs {
    /// The churn plan from these and the shared `load` flags (`--duration`, `--rate`,
    /// `--join-timeout`, `--bind`, `--quiet`), bounds checked.
    pub fn plan(&self, load: &LoadArgs, server: Option<ProcTarget>) -> Result<ChurnPlan, String> {
        let duration = seconds(
            "duration",
            load.duration.unwrap_or(DEFAULT_CHURN_DURATION_S),
            MAX_CHURN_DURATION_S,
        )?;
        let warmup = match self.warmup {
            Some(w) if w.is_finite() && w >= 0.0 => Duration::from_secs_f64(w),
            Some(_) => return Err("--warmup must be at least 0".into()),
            None => ChurnPlan::default_warmup(duration),
        };
        if warmup >= duration {
            return Err("--warmup must be shorter than --duration".into());
        }
        if !(1..=MAX_CHURN_CLIENTS).contains(&self.clients) {
            return Err(format!("--clients must be 1..={MAX_CHURN_CLIENTS}"));
        }
        load.check_threads()?;
        let hold_max = seconds("hold-max", self.hold_max, crate::churn::MAX_HOLD.as_secs_f64())?;
        let defaults = ChurnPlan::default();
        let plan = ChurnPlan {
            clients: self.clients,
            duration,
            warmup,
            seed: self.seed,
            hold_min: defaults.hold_min.min(hold_max),
            hold_max,
            max_plays: self.max_plays,
            packet_rate: load.rate,
            connect_timeout: seconds("join-timeout", load.join_timeout, MAX_JOIN_TIMEOUT_S)?,
            empty_timeout: seconds("empty-timeout", self.empty_timeout, 600.0)?,
            progress: !load.quiet,
            server,
            bind: load.bind,
            ..defaults
        };
        plan.validate().map_err(|e| e.to_string())?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_seconds("90"), Ok(90.0));
        assert_eq!(parse_seconds("2.5"), Ok(2.5));
        assert_eq!(parse_seconds("600s"), Ok(600.0));
        assert_eq!(parse_seconds("10m"), Ok(600.0));
        assert_eq!(parse_seconds("1h"), Ok(3600.0));
        assert_eq!(parse_seconds("250ms"), Ok(0.25));
        for bad in ["", "s", "NaN", "inf", "-1", "1e3", "5x", "1.2.3"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
