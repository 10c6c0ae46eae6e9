//! `edgesync-spin-harness`: serve a Spin app's components for tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use edgesync_spin_harness::{default_compile_cache, Harness, HarnessOptions};

/// Run a Spin app (spin.toml, WASI 0.2 components) the way `spin up` would,
/// for tests. Prints `listening on http://ADDR` on stdout once ready; logs go
/// to stderr (RUST_LOG filters them).
#[derive(Debug, Parser)]
#[command(name = "edgesync-spin-harness", version)]
struct Cli {
    /// The application manifest.
    #[arg(long, default_value = "spin.toml")]
    manifest: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Directory for the key-value database (created if missing).
    #[arg(long, default_value = ".spin")]
    data_dir: PathBuf,
    /// Set an application variable, `name=value` (repeatable; wins over
    /// SPIN_VARIABLE_* and defaults).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Define a key-value store label besides "default" (repeatable).
    #[arg(long = "kv-label", value_name = "LABEL")]
    kv_labels: Vec<String>,
    /// Seconds in-flight requests may take to finish on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 5)]
    shutdown_grace: u64,
    /// Keep compiled components in this directory between runs [default:
    /// <temp dir>/edgesync-spin-harness-cache].
    #[arg(long, value_name = "DIR", conflicts_with = "no_compile_cache")]
    compile_cache: Option<PathBuf>,
    /// Compile the components on every start.
    #[arg(long)]
    no_compile_cache: bool,
    /// Behave like Spin before 3.2: each opened key-value store handle
    /// keeps every value it read or wrote.
    #[arg(long)]
    kv_read_cache: bool,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let harness = Harness::start(HarnessOptions {
        manifest: cli.manifest,
        data_dir: cli.data_dir,
        listen: cli.listen,
        variables: cli.vars,
        kv_labels: cli.kv_labels,
        shutdown_grace: Duration::from_secs(cli.shutdown_grace),
        compile_cache: if cli.no_compile_cache {
            None
        } else {
            Some(cli.compile_cache.unwrap_or_else(default_compile_cache))
        },
        kv_read_cache: cli.kv_read_cache,
    })?;
    println!("listening on {}", harness.base_url());
    wait_for_signal()?;
    tracing::info!("shutting down");
    harness.shutdown();
    Ok(())
}

fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    })
}
