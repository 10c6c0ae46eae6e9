//! The processes under test: edgesync's native server, the Spin harness,
//! PouchDB Server and the fixed-304 server, each started on a free port
//! with a temporary data directory and stopped (SIGTERM, then SIGKILL) when
//! dropped.
//!
//! Every server runs as its own process so that its memory (VmRSS) is its
//! own and the load generator is a client like any other.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client;

/// The secret every edgesync target runs with (tokens are minted from it).
pub const JWT_SECRET: &str = "edgesync-bench-secret-of-at-least-32-bytes";
/// High enough never to refuse a benchmark write (see BENCHMARKS.md).
pub const RATE_LIMIT: &str = "1000000";
/// Above the 10,000 changes of the catch-up scenario, so no cursor expires.
pub const RETENTION: &str = "12000";
/// The pinned PouchDB Server version.
pub const PEER_PACKAGE: &str = "pouchdb-server@4.2.0";

/// A running server process.
pub struct Proc {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS) in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        // SIGTERM first: each server drains and closes its store.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A port nobody listens on right now (the tiny race with other programs
/// is acceptable on a benchmark machine).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(
    name: &'static str,
    mut cmd: Command,
    dir: tempfile::TempDir,
    addr: SocketAddr,
) -> Result<Proc> {
    let log = dir.path().join("server.log");
    let file = std::fs::File::create(&log)?;
    cmd.stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name,
        addr,
        child,
        log,
        _dir: dir,
    })
}

/// Wait until `GET path` answers 200.
async fn wait_ready(proc: &mut Proc, path: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let req = client::request("GET", proc.addr, path)
            .body(Default::default())
            .expect("valid request");
        if let Ok(reply) = client::once(proc.addr, req).await {
            if reply.status.is_success() {
                return Ok(());
            }
        }
        if !proc.alive() {
            bail!("{} exited during start-up:\n{}", proc.name, proc.log_tail());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {timeout:?}:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `edgesync serve` (release build) on SQLite in a temporary directory,
/// per-request logging off (`RUST_LOG=warn`).
pub async fn native(bin: &Path) -> Result<Proc> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-native")
        .tempdir()?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("EDGESYNC_LISTEN", addr.to_string())
        .env("EDGESYNC_DATA_DIR", dir.path().join("data"))
        .env("EDGESYNC_JWT_SECRET", JWT_SECRET)
        .env("EDGESYNC_RATE_LIMIT_PER_SECOND", RATE_LIMIT)
        .env("EDGESYNC_RETENTION_ENTRIES", RETENTION)
        .env("EDGESYNC_MAX_WAIT_SECONDS", "25")
        .env("RUST_LOG", "warn");
    let mut proc = spawn("edgesync native", cmd, dir, addr)?;
    wait_ready(&mut proc, "/v1/health", Duration::from_secs(30)).await?;
    Ok(proc)
}

/// The Spin components in the harness binary (release build), with the
/// app's own `spin.toml`.
pub async fn harness(bin: &Path, manifest: &Path, compile_cache: &Path) -> Result<Proc> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-spin")
        .tempdir()?;
    let mut cmd = Command::new(bin);
    cmd.arg("--manifest")
        .arg(manifest)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--compile-cache")
        .arg(compile_cache)
        .arg("--var")
        .arg(format!("jwt_secret={JWT_SECRET}"))
        .arg("--var")
        .arg(format!("rate_limit_per_second={RATE_LIMIT}"))
        .arg("--var")
        .arg(format!("retention_entries={RETENTION}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped());
    let log = dir.path().join("server.log");
    cmd.stderr(std::fs::File::create(&log)?)
        .stdin(Stdio::null());
    let mut child = cmd.spawn().context("starting the Spin harness")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_default();
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .map(str::to_owned);
    let mut proc = Proc {
        name: "edgesync Spin (harness)",
        addr: "127.0.0.1:1".parse()?,
        child,
        log,
        _dir: dir,
    };
    let Some(url) = url else {
        bail!("the harness did not start:\n{}", proc.log_tail());
    };
    proc.addr = url.parse().context("harness address")?;
    wait_ready(&mut proc, "/v1/health", Duration::from_secs(30)).await?;
    Ok(proc)
}

/// Path of PouchDB Server's entry script inside the install cache.
pub fn peer_script(cache: &Path) -> PathBuf {
    cache.join("node_modules/pouchdb-server/bin/pouchdb-server")
}

/// `npm install` PouchDB Server into `cache` unless it is already there.
pub fn install_peer(cache: &Path) -> Result<()> {
    if peer_script(cache).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(cache)?;
    eprintln!(
        "installing {PEER_PACKAGE} into {} (npm; a few minutes the first time)",
        cache.display()
    );
    let out = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(cache)
        .arg(PEER_PACKAGE)
        .stdin(Stdio::null())
        .output()
        .context("running npm (is Node.js installed?)")?;
    if !out.status.success() || !peer_script(cache).exists() {
        bail!(
            "npm install {PEER_PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// PouchDB Server, in-memory, request logging off (log level `error`,
/// matching edgesync's `RUST_LOG=warn`).
pub async fn peer(cache: &Path) -> Result<Proc> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-peer")
        .tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"log":{"level":"error"}}"#,
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new("node");
    cmd.arg(peer_script(cache))
        .args([
            "--in-memory",
            "--no-stdout-logs",
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(addr.port().to_string())
        .current_dir(dir.path());
    let mut proc = spawn("PouchDB Server", cmd, dir, addr)?;
    wait_ready(&mut proc, "/", Duration::from_secs(60)).await?;
    Ok(proc)
}

/// The fixed-304 server (this binary's hidden `limit-server` command).
pub async fn limit(self_exe: &Path) -> Result<Proc> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-limit")
        .tempdir()?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut cmd = Command::new(self_exe);
    cmd.arg("limit-server")
        .arg("--listen")
        .arg(addr.to_string());
    let mut proc = spawn("loopback limit (fixed 304)", cmd, dir, addr)?;
    // It answers 304 to everything; readiness is "accepts connections".
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if !proc.alive() || Instant::now() > deadline {
            bail!("the fixed-304 server did not start:\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(proc)
}
