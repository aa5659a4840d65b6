//! `huddle`: run the server, make and check tokens, and take part in calls from scripts.
//!
//! The command line is an interface other programs script against: flags, output lines and exit
//! codes are kept stable (see the README and `docs/cli.md`).

mod call;
mod commands;
mod load_test;
mod token;

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
    Serve(huddle_server::cli::ServeArgs),
    /// Make or check Token04 tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Join a room as a user, publish and play streams; prints one JSON line per SDK event and
    /// takes commands on standard input, one JSON line each (docs/cli.md).
    Call(call::CallArgs),
    /// Simulated WebRTC publishers and subscribers against a server (or Janus); prints a report.
    LoadTest(load_test::LoadTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => huddle_server::cli::serve("huddle serve", &args),
        Command::Token(cmd) => token::run(cmd),
        Command::Call(args) => call::run(args),
        Command::LoadTest(args) => load_test::run(args),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    huddle_server::cli::interrupted().await;
}
