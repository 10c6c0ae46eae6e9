//! `edgesync`: the native server (`serve`), token minting (`token`),
//! restoring a backup (`restore`) and the
//! client commands (`watch`, `get`, `list`, `put`, `patch`, `delete`,
//! `pending`, `resolve`).
//!
//! Exit codes: 0 success, 1 runtime error, 2 usage error.

mod client_cmd;
mod restore;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edgesync", version, about = "Sync over plain HTTP")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the native server (SQLite in the data directory, or a shared Redis/Valkey).
    Serve(serve::ServeArgs),
    /// Print a bearer token for a user, signed with the server's secret.
    Token(token::TokenArgs),
    /// Put a backup in place as the SQLite store of a stopped server.
    Restore(restore::RestoreArgs),
    #[command(flatten)]
    Client(client_cmd::ClientCommand),
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Token(args) => token::run(args),
            Command::Restore(args) => restore::run(args),
            Command::Client(cmd) => client_cmd::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output has stopped (`edgesync pending | head`):
        // the command did its work, there is just nobody left to tell.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to stderr (stdout carries command output such as tokens);
/// `RUST_LOG` overrides the default `info`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "edgesync",
            "serve",
            "--listen",
            "0.0.0.0:9000",
            "--data-dir",
            "/tmp/x",
            "--store",
            "redis://127.0.0.1:6379/1",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen, "0.0.0.0:9000");
        assert_eq!(args.data_dir, std::path::PathBuf::from("/tmp/x"));
        assert_eq!(
            args.store,
            edgesync_server::StoreKind::Redis("redis://127.0.0.1:6379/1".into())
        );
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        for argv in [
            &["edgesync"][..],
            &["edgesync", "frobnicate"],
            &["edgesync", "token"],
            &["edgesync", "token", "--sub", "a", "--ttl", "soon"],
            &["edgesync", "serve", "--store", "postgres://x"],
            &["edgesync", "restore"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}: {err}");
        }
    }

    #[test]
    fn a_refused_store_url_is_not_repeated() {
        let err = Cli::try_parse_from(["edgesync", "serve", "--store", "tcp://:hunter2@h:6379"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--store"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
