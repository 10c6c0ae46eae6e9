//! `edgesync serve`: resolve settings (flags, then `EDGESYNC_*` environment
//! variables, then defaults) and run the native server until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use edgesync_server::settings::{self, SecretSource};
use edgesync_server::{Server, ServerOptions, SqliteOptions, StoreKind};

/// Where the server listens and keeps its data.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "EDGESYNC_LISTEN", default_value = settings::DEFAULT_LISTEN)]
    pub listen: String,
    /// Directory for the SQLite store and the generated JWT secret.
    #[arg(long, env = "EDGESYNC_DATA_DIR", default_value = settings::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// `sqlite`, or `redis://host:port/db` for many instances sharing one Redis/Valkey.
    #[arg(
        long,
        env = "EDGESYNC_STORE",
        default_value = "sqlite",
        hide_env_values = true,
        value_parser = StoreParser
    )]
    pub store: StoreKind,
}

/// Parses `--store` without repeating a refused value in the error, as
/// clap's own parsers do: a mistyped Redis URL may hold a password, and
/// the error goes to the logs.
#[derive(Clone)]
struct StoreParser;

impl clap::builder::TypedValueParser for StoreParser {
    type Value = StoreKind;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreKind, clap::Error> {
        let refuse = |reason: &dyn std::fmt::Display| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '--store': {reason}\n"),
            )
            .with_cmd(cmd)
        };
        value
            .to_str()
            .ok_or_else(|| refuse(&"not UTF-8"))?
            .parse()
            .map_err(|e| refuse(&e))
    }
}

/// Load the configuration the way `serve` and `token` both do, logging
/// where the secret came from (never the secret).
pub fn load_config(
    data_dir: &std::path::Path,
    missing: settings::MissingSecret,
) -> anyhow::Result<edgesync_core::Config> {
    let (config, source) = settings::load_config(data_dir, settings::process_env, missing)?;
    match source {
        SecretSource::Environment => tracing::debug!("JWT secret from EDGESYNC_JWT_SECRET"),
        SecretSource::File(path) => {
            tracing::debug!(path = %path.display(), "JWT secret from file")
        }
        SecretSource::Generated(path) => tracing::info!(
            path = %path.display(),
            "EDGESYNC_JWT_SECRET is not set: generated a random secret and saved it (mode 0600); \
             it is reused on every start. Mint tokens with `edgesync token --sub <user>`"
        ),
    }
    Ok(config)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Installed first, so that a signal during start-up (a slow store, say)
    // is not lost: it stops the start at once.
    let mut signals = Signals::install()?;
    let missing = match args.store {
        // The one instance on its own store: a generated secret just works.
        StoreKind::Sqlite => settings::MissingSecret::Generate,
        // Instances sharing a store must share the secret too, or a token
        // from one is refused by the others.
        StoreKind::Redis(_) => settings::MissingSecret::Refuse(
            "With a shared store, set EDGESYNC_JWT_SECRET to the same value (32+ characters) on \
             every instance, or give every instance the same jwt_secret file in its data \
             directory.",
        ),
    };
    raise_open_files_limit();
    let config = load_config(&args.data_dir, missing)?;
    let sqlite = SqliteOptions {
        synchronous: settings::sqlite_synchronous(settings::process_env)?,
        ..SqliteOptions::default()
    };
    let mut options = ServerOptions::new(config);
    options.listen = args.listen;
    options.data_dir = args.data_dir;
    options.store = args.store;
    options.sqlite = sqlite;
    options.backup = settings::backup_options(settings::process_env)?;
    let server = tokio::select! {
        bound = Server::bind(options) => bound.context("server failed")?,
        () = signals.next() => {
            tracing::info!("shutdown requested during start-up");
            return Ok(());
        }
    };
    server
        .run(async move {
            signals.next().await;
            tracing::info!("shutdown requested");
            // A second signal stops the drain: the operator means now.
            // Nothing acknowledged is lost (an acknowledgement follows its
            // commit); requests in flight get no answer.
            tokio::spawn(async move {
                signals.next().await;
                tracing::warn!(
                    "second shutdown signal: exiting without waiting for requests in flight"
                );
                std::process::exit(1);
            });
        })
        .await
        .context("server failed")
}

/// Below this many open files, say that the server will refuse clients
/// long before it runs short of memory.
const FEW_OPEN_FILES: u64 = 4096;

/// Every client is an open file: allow as many as the system lets us.
fn raise_open_files_limit() {
    #[cfg(unix)]
    match edgesync_server::raise_open_files_limit() {
        Ok((soft, _)) if soft < FEW_OPEN_FILES => tracing::warn!(
            open_files = soft,
            "the open-file limit caps the server at fewer than {soft} connections, held \
             long-polls included; raise the hard limit (`ulimit -Hn`, systemd LimitNOFILE=)"
        ),
        Ok((soft, _)) => tracing::debug!(open_files = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, as often as they come.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?,
        })
    }

    /// The next SIGINT or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
