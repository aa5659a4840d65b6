//! `huddle token new` and `huddle token verify`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use huddle_token::{Privileges, TokenBuilder, VerifyOptions};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a Token04 token (AES-GCM) and print it.
    New {
        /// The AppID.
        #[arg(long)]
        app_id: u32,
        /// The app's server secret (32 characters).
        #[arg(long)]
        secret: String,
        /// The user the token is for.
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Restrict the token to this room (adds a privilege payload).
        #[arg(long)]
        room: Option<String>,
        /// Grant the login privilege (privilege tokens only).
        #[arg(long)]
        login: bool,
        /// Grant the publish privilege (privilege tokens only).
        #[arg(long)]
        publish: bool,
        /// Allow publishing only these stream IDs (repeatable).
        #[arg(long = "stream")]
        streams: Vec<String>,
    },
    /// Check a token; prints its decrypted JSON on stdout (exit 0) or the error on stderr (exit 1).
    Verify {
        /// The app's server secret (32 characters).
        #[arg(long)]
        secret: String,
        /// Require this AppID.
        #[arg(long)]
        app_id: Option<u32>,
        /// Require this user ID.
        #[arg(long)]
        user: Option<String>,
        /// Check expiry against this Unix time instead of now.
        #[arg(long)]
        now: Option<i64>,
        /// The token ("04…").
        token: String,
    },
}

pub fn run(cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::New {
            app_id,
            secret,
            user,
            ttl,
            room,
            login,
            publish,
            streams,
        } => {
            let mut builder = TokenBuilder::new(app_id, &user, &secret).effective_secs(ttl);
            if room.is_some() || login || publish || !streams.is_empty() {
                if !login {
                    eprintln!("huddle token new: warning: privilege token without --login cannot log in");
                }
                let privileges = Privileges {
                    room_id: room.unwrap_or_default(),
                    login: Some(login),
                    publish: Some(publish),
                    stream_id_list: (!streams.is_empty()).then_some(streams),
                };
                builder = builder.privileges(&privileges);
            }
            match builder.build() {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error {}: {e}", e.code());
                    ExitCode::FAILURE
                }
            }
        }
        TokenCommand::Verify {
            secret,
            app_id,
            user,
            now,
            token,
        } => {
            let now = now.unwrap_or_else(unix_now);
            let opts = VerifyOptions {
                app_id,
                user_id: user.as_deref(),
                now,
            };
            match huddle_token::verify(&token, &secret, &opts) {
                Ok(claims) => {
                    println!("{}", claims.to_json());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error {}: {e}", e.code());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
