//! The server's command line, shared by the `huddle-server` binary (this crate, no codecs linked:
//! it builds with only the Rust toolchain and a C compiler) and `huddle serve` (the CLI with the
//! client too). Flags override the config file, which overrides the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::ServerConfig;

/// The flags of `huddle serve` and `huddle-server`.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (every key: `huddle.example.toml`); without it and without apps, dev mode
    /// on a loopback listener.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for signaling and the web page (`listen`; default 127.0.0.1:7880).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// UDP port for media (`udp_port`; default 7882).
    #[arg(long)]
    pub udp_port: Option<u16>,
    /// TCP port for ICE over TCP, the fallback for clients whose network blocks UDP (`tcp_port`;
    /// default 7881; 0: off).
    #[arg(long)]
    pub tcp_port: Option<u16>,
    /// The address clients send media to, for a host behind a 1:1 NAT (`public_ip`); by default
    /// the listen address, or each of the host's addresses on a wildcard listen.
    #[arg(long)]
    pub public_ip: Option<IpAddr>,
    /// Where dev-mode credentials are kept (stable across restarts).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Media threads (SFU shards) on the one UDP port; 0: one per CPU (`media_workers`).
    #[arg(long)]
    pub media_workers: Option<usize>,
    /// Run the generated dev app even on a non-loopback listener: anyone who reaches the server
    /// can mint tokens for it (`dev`).
    #[arg(long)]
    pub dev: bool,
    /// PEM certificate chain: serve HTTPS and WSS (`tls_cert`; needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (`tls_key`).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Join a cluster on this Redis, `redis://HOST:PORT` (`redis`; docs/cluster.md).
    #[arg(long)]
    pub redis: Option<String>,
    /// This node's ID in the cluster (`node_id`; needs a Redis).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl ServeArgs {
    /// The configuration these flags give: the file (or the defaults), the flags over it, then
    /// [`ServerConfig::resolve_apps`] (dev mode, or the refusal to start without apps).
    pub fn config(&self) -> Result<ServerConfig, String> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::load_unchecked(path).map_err(|e| e.to_string())?,
            None => ServerConfig::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(port) = self.udp_port {
            config.udp_port = port;
        }
        if let Some(port) = self.tcp_port {
            config.tcp_port = (port != 0).then_some(port);
        }
        if let Some(ip) = self.public_ip {
            config.public_ip = Some(ip);
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(n) = self.media_workers {
            config.media_workers = n;
        }
        config.dev |= self.dev;
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert.clone();
            config.tls_key = self.tls_key.clone();
        }
        if self.redis.is_some() {
            config.redis = self.redis.clone();
        }
        if self.node_id.is_some() {
            config.node_id = self.node_id.clone();
        }
        config.validate().map_err(|e| e.to_string())?;
        config.resolve_apps().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// Runs the server as a command: logs to stderr (`RUST_LOG`, default `info`), prints the
/// addresses (and the dev app's credentials) on stdout, serves until SIGINT or SIGTERM, then
/// drains ([`crate::ServerState::drain`]) and exits. `program` names the command in messages.
/// Exit codes: 0 after a clean stop, 2 for a configuration error, 1 for anything else.
pub fn serve(program: &str, args: &ServeArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{program}: {e}");
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
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let state = crate::ServerState::new(config).map_err(crate::invalid_config)?;
        print_banner(state.config(), addr);
        let drain = state.clone();
        let shutdown = async move {
            interrupted().await;
            // A second signal cuts the drain short.
            drain.drain(interrupted()).await;
        };
        crate::serve(listener, state, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_banner(config: &ServerConfig, addr: SocketAddr) {
    let (http, ws) = if config.tls_cert.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!("huddle server listening on {addr}");
    println!("  signaling: {ws}://{addr}{}", huddle_proto::SIGNALING_PATH);
    println!("  web page:  {http}://{addr}/");
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
pub async fn interrupted() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags come on top of the file, then the whole is validated: a file that names the
    /// cluster's secret is valid with `--redis` on the command line, and not without it.
    #[test]
    fn flags_complete_the_file_before_validation() {
        let dir = std::env::temp_dir().join(format!("huddle-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("huddle.toml");
        std::fs::write(
            &path,
            "cluster_secret = \"a secret of the cluster\"\n\n[[apps]]\napp_id = 7\n\
             app_sign = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n\
             server_secret = \"fa94dd0f974cf2e293728a526b028271\"\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(path.clone()),
            ..ServeArgs::default()
        };
        let e = args.config().unwrap_err();
        assert!(e.contains("cluster_secret is set without redis"), "{e}");
        args.redis = Some("redis://127.0.0.1:6379".into());
        args.node_id = Some("node-a".into());
        let config = args.config().unwrap();
        assert_eq!(config.redis.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(config.node_id.as_deref(), Some("node-a"));
        assert!(config.cluster_secret.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
