//! `huddle`: run the server, make and check tokens, and take part in calls from scripts.
//!
//! The command line is an interface other programs script against: flags, output lines and exit
//! codes are kept stable (see the README and `docs/cli.md`).

mod call;
mod load_test;
mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "huddle",
    version,
    about = "Self-hostable real-time voice and video calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (signaling, apps and auth, rooms, streams).
    Serve(ServeArgs),
    /// Make or check Token04 tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Join a room as a user, publish and play streams; prints one JSON line per SDK event.
    Call(call::CallArgs),
    /// Simulated WebRTC publishers and subscribers against a server (or Janus); prints a report.
    LoadTest(load_test::LoadTestArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file (`listen`, `udp_port`, `data_dir`, `[[apps]]`); without it, dev mode.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address for signaling and the web page.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// UDP port for media.
    #[arg(long)]
    udp_port: Option<u16>,
    /// Where dev-mode credentials are kept (stable across restarts).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Media threads (SFU shards) on the one UDP port; 0: one per CPU (`media_workers`).
    #[arg(long)]
    media_workers: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(cmd) => token::run(cmd),
        Command::Call(args) => call::run(args),
        Command::LoadTest(args) => load_test::run(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("huddle serve: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("huddle-server")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("huddle serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        print_banner(&config, addr);
        let shutdown = interrupted();
        huddle_server::run(listener, config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("huddle serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<huddle_server::ServerConfig, String> {
    let mut config = match &args.config {
        Some(path) => huddle_server::ServerConfig::load(path).map_err(|e| e.to_string())?,
        None => huddle_server::ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(port) = args.udp_port {
        config.udp_port = port;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(n) = args.media_workers {
        config.media_workers = n;
        config.validate().map_err(|e| e.to_string())?;
    }
    if config.apps.is_empty() {
        config.use_dev_app().map_err(|e| e.to_string())?;
    }
    Ok(config)
}

fn print_banner(config: &huddle_server::ServerConfig, addr: SocketAddr) {
    println!("huddle server listening on {addr}");
    println!("  signaling: ws://{addr}{}", huddle_proto::SIGNALING_PATH);
    println!("  web page:  http://{addr}/");
    if config.dev_mode {
        for app in &config.apps {
            println!(
                "  dev mode: one app, credentials kept in {}",
                config.data_dir.display()
            );
            println!("    app_id:        {}", app.app_id);
            println!("    app_sign:      {}", app.app_sign.to_hex());
            println!("    server_secret: {}", app.server_secret.as_str());
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
