//! `huddle-server`: the Huddle server alone (signaling, SFU, web page), the same as `huddle serve`
//! but without the client and its codecs, so that it builds on a machine with only the Rust
//! toolchain and a C compiler (`cargo run --release -p huddle-server`).

use clap::Parser;

/// Self-hostable real-time voice and video calls: the server.
#[derive(Parser)]
#[command(name = "huddle-server", version)]
struct Args {
    #[command(flatten)]
    serve: huddle_server::cli::ServeArgs,
}

fn main() -> std::process::ExitCode {
    huddle_server::cli::serve("huddle-server", &Args::parse().serve)
}
