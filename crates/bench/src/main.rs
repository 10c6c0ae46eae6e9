//! `edgesync-bench`: see the crate docs (`src/lib.rs`) and BENCHMARKS.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgesync_bench::client::Stats;
use edgesync_bench::kvcost::{self, Cost};
use edgesync_bench::report::{self, check, mib, ms, rate, ratio, Table};
use edgesync_bench::scenarios::{self, Kind, ProbeKind, Shape, Target, WakeStats};
use edgesync_bench::{limit, procs};

#[derive(Debug, Parser)]
#[command(
    name = "edgesync-bench",
    about = "edgesync side by side with PouchDB Server and the loopback limit"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the whole comparison and print markdown tables.
    All(AllArgs),
    /// Only the KV cost per request type (in-process, no servers).
    Kv {
        /// Requests of each type to average over.
        #[arg(long, default_value_t = 16)]
        samples: u64,
    },
    /// Serve a fixed 304 (the loopback limit; started by `all`).
    #[command(hide = true)]
    LimitServer {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Idle,
    Writes,
    Wakeup,
    Catchup,
    Watch,
    Kv,
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Short runs and fewer held long-polls: finishes in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip PouchDB Server.
    #[arg(long)]
    no_peer: bool,
    /// Skip the Spin components.
    #[arg(long)]
    no_spin: bool,
    /// Use the binaries already built instead of running `cargo build`.
    #[arg(long)]
    no_build: bool,
    /// Run only these sections (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where PouchDB Server is installed [default: <target dir>/bench-peer].
    #[arg(long)]
    peer_cache: Option<PathBuf>,
    /// The edgesync workspace (spin.toml, the built components).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))]
    workspace: PathBuf,
}

/// Durations and sizes of one mode.
struct Plan {
    warmup: Duration,
    measure: Duration,
    native_held: Vec<usize>,
    spin_held: Vec<usize>,
    peer_held: Vec<usize>,
    /// Users written to in the spread wake-up shape.
    sample: usize,
    /// Writes (each waking every waiter) pooled per fan-out row: one write
    /// is one scheduling outcome, so its p99 alone is noise.
    fan_out_rounds: usize,
    /// Writes timed from acknowledgement to `edgesync watch` printing them.
    watch_writes: usize,
    catchup_rounds: usize,
    /// Seeding 10,000 changes through the components takes minutes (every
    /// KV write is its own SQLite transaction in Spin's default store).
    spin_catchup: bool,
    kv_samples: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                warmup: Duration::from_millis(500),
                measure: Duration::from_secs(2),
                native_held: vec![1_000, 10_000],
                spin_held: vec![100],
                peer_held: vec![1_000],
                sample: 200,
                fan_out_rounds: 1,
                watch_writes: 50,
                catchup_rounds: 1,
                spin_catchup: false,
                kv_samples: 4,
            }
        } else {
            Self {
                warmup: Duration::from_secs(2),
                measure: Duration::from_secs(10),
                native_held: vec![1_000, 10_000],
                spin_held: vec![1_000],
                peer_held: vec![1_000, 10_000],
                sample: 1_000,
                fan_out_rounds: 5,
                watch_writes: 500,
                catchup_rounds: 5,
                spin_catchup: true,
                kv_samples: 16,
            }
        }
    }
}

const CLIENTS: usize = 64;
const CATCHUP_CHANGES: usize = 10_000;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::LimitServer { listen } => runtime.block_on(limit::serve(listen)),
        Cmd::Kv { samples } => {
            let text = runtime.block_on(kv_section(samples))?;
            println!("{text}");
            Ok(())
        }
        Cmd::All(args) => runtime.block_on(all(args)),
    }
}

/// The directory the release binaries are built into: `<target>/release`,
/// next to (or above) this executable.
fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("executable has no directory")?;
    let target = profile_dir.parent().context("no target directory")?;
    Ok(target.join("release"))
}

fn cargo_build(workspace: &Path, target_dir: &Path, package: &str, bin: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("building {bin} (cargo build --release -p {package} --bin {bin})");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace)
        .status()?;
    if !status.success() {
        bail!("cargo build of {bin} failed");
    }
    Ok(())
}

struct Servers {
    native: Target,
    spin: Option<Target>,
    peer: Option<Target>,
    limit: Target,
    /// How to start another of each, for runs that need a fresh process.
    launch: Launch,
}

/// What starting each server takes.
struct Launch {
    native_bin: PathBuf,
    /// The harness binary, `spin.toml` and the compile cache.
    harness: (PathBuf, PathBuf, PathBuf),
    peer_cache: PathBuf,
    self_exe: PathBuf,
}

async fn all(args: AllArgs) -> Result<()> {
    let started = Instant::now();
    let plan = Plan::new(args.quick);
    // For the tool's own client connections and, inherited, the servers'.
    let (soft, hard) = edgesync_server::raise_open_files_limit()?;
    let workspace = args
        .workspace
        .canonicalize()
        .context("workspace directory")?;
    let release = release_dir()?;
    let target_dir = release
        .parent()
        .expect("release has a parent")
        .to_path_buf();
    let sections: Vec<Section> = if args.only.is_empty() {
        vec![
            Section::Idle,
            Section::Writes,
            Section::Wakeup,
            Section::Catchup,
            Section::Watch,
            Section::Kv,
        ]
    } else {
        args.only.clone()
    };
    let mut notes: Vec<String> = Vec::new();
    let load_start = report::loadavg();

    let components = [
        workspace.join("target/wasm32-wasip2/wasm-release/edgesync_write.wasm"),
        workspace.join("target/wasm32-wasip2/wasm-release/edgesync_read.wasm"),
    ];
    let have_components = components.iter().all(|p| p.exists());
    let mut want_spin = !args.no_spin;
    if want_spin && !have_components {
        notes.push(format!(
            "Spin rows skipped: components not built ({} missing; run scripts/build-wasm.sh)",
            components[0].display()
        ));
        want_spin = false;
    }
    if !args.no_build {
        cargo_build(&workspace, &target_dir, "edgesync", "edgesync")?;
        if want_spin {
            if let Err(e) = cargo_build(
                &workspace,
                &target_dir,
                "edgesync-spin-harness",
                "edgesync-spin-harness",
            ) {
                notes.push(format!("Spin rows skipped: {e:#}"));
                want_spin = false;
            }
        }
    }
    let peer_cache = args
        .peer_cache
        .clone()
        .unwrap_or_else(|| target_dir.join("bench-peer"));
    let mut want_peer = !args.no_peer;
    if want_peer {
        if let Err(e) = procs::install_peer(&peer_cache) {
            notes.push(format!(
                "PouchDB Server rows skipped: could not install it: {e:#}"
            ));
            want_peer = false;
        }
    }

    // Start everything.
    let launch = Launch {
        native_bin: release.join("edgesync"),
        harness: (
            release.join("edgesync-spin-harness"),
            workspace.join("spin.toml"),
            target_dir.join("bench-compile-cache"),
        ),
        peer_cache: peer_cache.clone(),
        self_exe: std::env::current_exe()?,
    };
    let native_proc = procs::native(&launch.native_bin).await?;
    let spin_proc = if want_spin {
        let (bin, manifest, cache) = &launch.harness;
        match procs::harness(bin, manifest, cache).await {
            Ok(p) => Some(p),
            Err(e) => {
                notes.push(format!(
                    "Spin rows skipped: the harness did not start: {e:#}"
                ));
                None
            }
        }
    } else {
        None
    };
    let peer_proc = if want_peer {
        match procs::peer(&peer_cache).await {
            Ok(p) => Some(p),
            Err(e) => {
                notes.push(format!(
                    "PouchDB Server rows skipped: it did not start: {e:#}"
                ));
                None
            }
        }
    } else {
        None
    };
    let limit_proc = procs::limit(&launch.self_exe).await?;
    let t = |p: &procs::Proc, label: &'static str, kind: Kind| Target {
        label,
        kind,
        addr: p.addr,
        pid: p.pid(),
    };
    let servers = Servers {
        native: t(&native_proc, "edgesync native", Kind::Edgesync),
        spin: spin_proc
            .as_ref()
            .map(|p| t(p, "edgesync Spin (harness)", Kind::Edgesync)),
        peer: peer_proc
            .as_ref()
            .map(|p| t(p, "PouchDB Server", Kind::Couch)),
        limit: t(&limit_proc, "loopback limit (fixed 304)", Kind::Limit),
        launch,
    };
    if !want_spin && args.no_spin {
        notes.push("Spin rows skipped: --no-spin".into());
    }
    if args.no_peer {
        notes.push("PouchDB Server rows skipped: --no-peer".into());
    }

    let mut out = String::new();
    let mode = if args.quick { "quick" } else { "full" };
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    out.push_str(&format!("# edgesync benchmarks ({mode} mode)\n\n"));
    out.push_str(&format!(
        "Command: `cargo run --release -p edgesync-bench -- {command}`\n\n"
    ));
    out.push_str(&report::machine());
    out.push_str(&format!(
        "- open-file limit raised to {soft} (hard {hard}) for the tool and the servers it starts\n\
         - load average before the run: {load_start}\n\
         - measured window per closed-loop figure: {:?} after {:?} of warm-up\n\n",
        plan.measure, plan.warmup
    ));

    let mut summary = Summary::default();
    for section in &sections {
        let result = match section {
            Section::Idle => idle_section(&servers, &plan, &mut summary).await,
            Section::Writes => writes_section(&servers, &plan, &mut summary).await,
            Section::Wakeup => wakeup_section(&servers, &plan, &mut summary).await,
            Section::Catchup => catchup_section(&servers, &plan).await,
            Section::Watch => watch_section(&servers, &plan, &mut summary).await,
            Section::Kv => kv_section(plan.kv_samples).await,
        };
        // One failed section must not cost the others.
        let text = result.unwrap_or_else(|e| {
            notes.push(format!("section {section:?} failed: {e:#}"));
            format!("## {section:?}\n\nFailed: {e:#}\n")
        });
        out.push_str(&text);
        out.push('\n');
        eprintln!(
            "{section:?} done ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
    }
    summary.sizes = components
        .iter()
        .map(|p| {
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                std::fs::metadata(p).ok().map(|m| m.len()),
            )
        })
        .collect();
    let mut head = String::new();
    head.push_str(
        "## Targets\n\nReported, never enforced. Ratios are computed within this run.\n\n",
    );
    head.push_str(&summary.render());
    if !notes.is_empty() {
        head.push_str("\n**Not measured in this run:**\n\n");
        for n in &notes {
            head.push_str(&format!("- {n}\n"));
        }
    }
    head.push('\n');
    out.push_str(&head);
    out.push_str(&format!(
        "Load average after the run: {}; whole run took {:.0} s.\n",
        report::loadavg(),
        started.elapsed().as_secs_f64()
    ));
    drop((native_proc, spin_proc, peer_proc, limit_proc));
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The write benchmarks: (writers, all on one user).
const WRITE_SHAPES: [(usize, bool); 3] = [(1, false), (16, false), (16, true)];

/// Writes/s of one write shape.
#[derive(Default, Clone, Copy)]
struct WriteRates {
    native: Option<f64>,
    peer: Option<f64>,
}

/// A wake-up figure of each [`Shape`].
#[derive(Default)]
struct ByShape<T> {
    spread: Option<T>,
    fan_out: Option<T>,
}

impl<T> ByShape<T> {
    fn of(&mut self, shape: Shape) -> &mut Option<T> {
        match shape {
            Shape::Spread => &mut self.spread,
            Shape::FanOut => &mut self.fan_out,
        }
    }
}

/// Figures the targets table needs.
#[derive(Default)]
struct Summary {
    poll_native: Option<f64>,
    head_native: Option<f64>,
    poll_limit: Option<f64>,
    poll_peer: Option<f64>,
    head_peer: Option<f64>,
    /// Writes/s per [`WRITE_SHAPES`].
    writes: [WriteRates; WRITE_SHAPES.len()],
    /// Native wake-up p99 with 1,000 held.
    wake_native_1k: ByShape<Duration>,
    /// The loopback limit's fan-out wake-up p99 with 1,000 held.
    wake_limit_1k: Option<Duration>,
    /// Spin wake-up p99 and how many were held.
    wake_spin: ByShape<(usize, Duration)>,
    rss_native_10k: Option<(u64, u64)>,
    /// Write → `edgesync watch` p99 (native).
    watch_native: Option<Duration>,
    sizes: Vec<(String, Option<u64>)>,
}

impl Summary {
    fn render(&self) -> String {
        let mut t = Table::new(&["target", "measured", "", "threshold"]);
        let frac = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let mut row = |name: &str, measured: Option<(String, bool)>, threshold: &str| {
            let (m, c) = match measured {
                Some((m, ok)) => (m, check(ok).to_owned()),
                None => ("not measured".to_owned(), "–".to_owned()),
            };
            t.row(vec![name.into(), m, c, threshold.into()]);
        };
        row(
            "304 poll vs loopback limit (native, changes)",
            frac(self.poll_native, self.poll_limit)
                .map(|r| (format!("{:.0}%", r * 100.0), r >= 0.6)),
            "≥ 60%",
        );
        row(
            "idle poll vs PouchDB Server (native, changes)",
            frac(self.poll_native, self.poll_peer).map(|r| (format!("{r:.1}×"), r >= 10.0)),
            "≥ 10×",
        );
        row(
            "idle poll vs PouchDB Server (native, head ↔ GET /db)",
            frac(self.head_native, self.head_peer).map(|r| (format!("{r:.1}×"), r >= 10.0)),
            "≥ 10×",
        );
        row(
            "writes vs PouchDB Server (native, 16 writers, 16 users)",
            frac(self.writes[1].native, self.writes[1].peer)
                .map(|r| (format!("{r:.1}×"), r >= 5.0)),
            "≥ 5×",
        );
        row(
            "writes vs PouchDB Server (native, 1 writer)",
            frac(self.writes[0].native, self.writes[0].peer)
                .map(|r| (format!("{r:.1}×"), r >= 5.0)),
            "≥ 5×",
        );
        row(
            "writes vs PouchDB Server (native, 16 writers, 1 user)",
            frac(self.writes[2].native, self.writes[2].peer)
                .map(|r| (format!("{r:.1}×"), r >= 5.0)),
            "≥ 5×",
        );
        row(
            "acknowledged 1 KiB writes/s, 16 writers (native, 16 users)",
            self.writes[1]
                .native
                .map(|w| (format!("{w:.0}/s"), w >= 5000.0)),
            "≥ 5,000/s",
        );
        row(
            "wake-up p99, 1,000 held (native, one write per user)",
            self.wake_native_1k
                .spread
                .map(|d| (ms(d), d <= Duration::from_millis(5))),
            "≤ 5 ms",
        );
        row(
            "wake-up p99, 1,000 held (native, all on one user, one write wakes them all)",
            self.wake_native_1k.fan_out.map(|d| {
                let floor = self
                    .wake_limit_1k
                    .map_or(String::new(), |l| format!(" (loopback limit: {})", ms(l)));
                (format!("{}{floor}", ms(d)), d <= Duration::from_millis(5))
            }),
            "≤ 5 ms",
        );
        let spin = |wake: Option<(usize, Duration)>| {
            wake.map(|(n, d)| {
                (
                    format!("{} with {n} held", ms(d)),
                    d <= Duration::from_millis(250),
                )
            })
        };
        row(
            "wake-up p99 (Spin components, one write per user)",
            spin(self.wake_spin.spread),
            "≤ 250 ms",
        );
        row(
            "wake-up p99 (Spin components, all on one user)",
            spin(self.wake_spin.fan_out),
            "≤ 250 ms",
        );
        row(
            "RSS with 10,000 long-polls held (native)",
            self.rss_native_10k.map(|(idle, held)| {
                (
                    format!(
                        "{} ({} over idle)",
                        mib(held),
                        mib(held.saturating_sub(idle))
                    ),
                    // VmRSS is in KiB; the target is 100 MB.
                    held * 1024 < 100_000_000,
                )
            }),
            "< 100 MB",
        );
        row(
            "write reaches a live replica (native, `edgesync watch`), p99",
            self.watch_native
                .map(|d| (ms(d), d <= Duration::from_secs(1))),
            "≤ 1 s",
        );
        for (name, size) in &self.sizes {
            row(
                &format!("component size: {name}"),
                size.map(|s| (format!("{:.0} KiB", s as f64 / 1024.0), s < 1024 * 1024)),
                "< 1 MiB",
            );
        }
        t.render()
    }
}

fn stats_cells(s: &Stats) -> Vec<String> {
    let errors = if s.errors == 0 {
        "0".to_owned()
    } else {
        format!(
            "{} ({})",
            s.errors,
            s.first_error.clone().unwrap_or_default().replace('|', "/")
        )
    };
    vec![rate(s.rate()), ms(s.p(0.5)), ms(s.p(0.99)), errors]
}

async fn idle_section(servers: &Servers, plan: &Plan, summary: &mut Summary) -> Result<String> {
    let mut out = String::from(
        "## Idle poll (304), 64 keep-alive clients\n\n\
         Each client is its own user (edgesync) or database (PouchDB) with one \
         change, and asks again and again whether anything is new; every answer \
         must be 304. edgesync: `GET /v1/changes?since=N` with `If-None-Match: \"N\"`, \
         and `GET /v1/head` with `If-None-Match`. PouchDB Server has no cursor-based \
         304: Express answers 304 when `If-None-Match` equals the weak ETag it \
         computes by hashing the answer it has just built, so its equivalents are \
         `GET /db/_changes?since=<seq>` and `GET /db` (whose `update_seq` plays the \
         head) with the ETag of a previous answer. The loopback limit answers the \
         edgesync request with a fixed 304 without reading it.\n\n",
    );
    let mut t = Table::new(&[
        "probe",
        "server",
        "req/s",
        "p50",
        "p99",
        "errors",
        "of loopback limit",
        "× PouchDB",
    ]);
    let limit = scenarios::idle_poll(
        &servers.limit,
        ProbeKind::Changes,
        CLIENTS,
        plan.warmup,
        plan.measure,
    )
    .await?;
    summary.poll_limit = Some(limit.rate());
    for probe in [ProbeKind::Changes, ProbeKind::Head] {
        let peer = match &servers.peer {
            Some(p) => {
                Some(scenarios::idle_poll(p, probe, CLIENTS, plan.warmup, plan.measure).await?)
            }
            None => None,
        };
        let peer_rate = peer.as_ref().map(Stats::rate);
        let name = match probe {
            ProbeKind::Changes => "changes since N",
            ProbeKind::Head => "head",
        };
        for target in [Some(&servers.native), servers.spin.as_ref()]
            .into_iter()
            .flatten()
        {
            let s = scenarios::idle_poll(target, probe, CLIENTS, plan.warmup, plan.measure).await?;
            if target.label == servers.native.label {
                match probe {
                    ProbeKind::Changes => summary.poll_native = Some(s.rate()),
                    ProbeKind::Head => summary.head_native = Some(s.rate()),
                }
            }
            let mut cells = vec![name.to_owned(), target.label.to_owned()];
            cells.extend(stats_cells(&s));
            cells.push(ratio(Some(s.rate()), Some(limit.rate())));
            cells.push(ratio(Some(s.rate()), peer_rate));
            t.row(cells);
        }
        if let Some(p) = &peer {
            match probe {
                ProbeKind::Changes => summary.poll_peer = Some(p.rate()),
                ProbeKind::Head => summary.head_peer = Some(p.rate()),
            }
            let mut cells = vec![
                match probe {
                    ProbeKind::Changes => "`_changes?since=` + ETag".to_owned(),
                    ProbeKind::Head => "`GET /db` + ETag".to_owned(),
                },
                "PouchDB Server".to_owned(),
            ];
            cells.extend(stats_cells(p));
            cells.push(ratio(Some(p.rate()), Some(limit.rate())));
            cells.push("1.00×".into());
            t.row(cells);
        }
    }
    let mut cells = vec!["any (fixed 304)".to_owned(), servers.limit.label.to_owned()];
    cells.extend(stats_cells(&limit));
    cells.push("1.00×".into());
    cells.push(ratio(Some(limit.rate()), summary.poll_peer));
    t.row(cells);
    out.push_str(&t.render());
    Ok(out)
}

async fn writes_section(servers: &Servers, plan: &Plan, summary: &mut Summary) -> Result<String> {
    let mut out = String::from(
        "## Writes: PUT of a 1 KiB JSON document\n\n\
         Closed loop; each writer cycles over 64 documents of its own, created \
         before the clock starts, so every figure is of replaces (a create costs \
         more, and a slow target would otherwise spend its window creating). \
         edgesync: `PUT /v1/docs/todos/<id>` answered 200/201 after \
         the SQLite commit. The native server runs SQLite in WAL mode with \
         `synchronous=NORMAL` (its default): an acknowledged write is in the WAL \
         file, handed to the kernel, so it survives `kill -9` of the server but not \
         necessarily a power loss or kernel crash (`EDGESYNC_SQLITE_SYNCHRONOUS=full` \
         adds an fsync per group commit). The rate limit is set to \
         `EDGESYNC_RATE_LIMIT_PER_SECOND=1000000` (Spin: `rate_limit_per_second`) so \
         it never refuses a benchmark write. PouchDB Server: `PUT /<db>/<id>` with \
         the current `_rev`, one database per user, **in memory** (no durability at \
         all, which favours it).\n\n",
    );
    let mut t = Table::new(&[
        "writers",
        "users",
        "server",
        "writes/s",
        "p50",
        "p99",
        "errors",
        "× PouchDB",
    ]);
    for (n, (writers, same)) in WRITE_SHAPES.into_iter().enumerate() {
        let run = format!("s{n}");
        let peer = match &servers.peer {
            Some(p) => {
                Some(scenarios::writes(p, writers, same, &run, plan.warmup, plan.measure).await?)
            }
            None => None,
        };
        let users = if same {
            "1 (same user)".to_owned()
        } else {
            writers.to_string()
        };
        for target in [Some(&servers.native), servers.spin.as_ref()]
            .into_iter()
            .flatten()
        {
            let s =
                scenarios::writes(target, writers, same, &run, plan.warmup, plan.measure).await?;
            if target.label == servers.native.label {
                summary.writes[n].native = Some(s.rate());
            }
            let mut cells = vec![writers.to_string(), users.clone(), target.label.to_owned()];
            cells.extend(stats_cells(&s));
            cells.push(ratio(Some(s.rate()), peer.as_ref().map(Stats::rate)));
            t.row(cells);
        }
        if let Some(p) = &peer {
            summary.writes[n].peer = Some(p.rate());
            let mut cells = vec![
                writers.to_string(),
                users.clone(),
                "PouchDB Server".to_owned(),
            ];
            cells.extend(stats_cells(p));
            cells.push("1.00×".into());
            t.row(cells);
        }
    }
    out.push_str(&t.render());
    Ok(out)
}

async fn wakeup_section(servers: &Servers, plan: &Plan, summary: &mut Summary) -> Result<String> {
    let native_bin = servers.launch.native_bin.as_path();
    let mut out = format!(
        "## Wake-up latency of held long-polls\n\n\
         N long-polls are held (`GET /v1/changes?since=N&wait=25` with `If-None-Match`; \
         PouchDB: `GET /<db>/_changes?feed=longpoll&since=<seq>&timeout=25000`), each \
         on its own keep-alive connection. Latency is from the writer receiving its \
         write's acknowledgement to the affected waiter having read its whole answer \
         (a waiter answered before the writer saw its acknowledgement counts as 0). \
         Two shapes: **spread**: one waiter per user (PouchDB: per database); {} of \
         those users (all, when fewer are held) get one write each, one after another \
         on each of {} writer connections (so that a slow host is done before the first \
         holds run out); \
         the others stay held (they time out after 25 s). **fan-out**: every waiter on one \
         user, one write wakes them all ({} such writes, each with freshly opened \
         long-polls, pooled per row). Every row runs on a freshly started server \
         process; RSS is its VmRSS before the long-polls were opened and while they \
         were held. The client's own scheduling of thousands \
         of tasks on the same 2 cores is part of the figure. The **loopback limit** rows \
         are the floor of the fan-out shape: a bare hyper server that holds every \
         request and, on the write, answers each with a fixed 200 of the size edgesync \
         sends (146 bytes), driven by the same client.\n\n",
        plan.sample,
        scenarios::WAKE_WRITERS,
        plan.fan_out_rounds
    );
    let mut t = Table::new(&[
        "held",
        "shape",
        "server",
        "woken / affected",
        "p50",
        "p99",
        "max",
        "RSS idle",
        "RSS held",
        "per held poll",
    ]);
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Who {
        Native,
        Limit,
        Spin,
        Peer,
    }
    let mut runs: Vec<(Who, usize, Shape, Duration)> = Vec::new();
    for &n in &plan.native_held {
        let settle = Duration::from_millis(500 + n as u64 / 10);
        for shape in [Shape::Spread, Shape::FanOut] {
            runs.push((Who::Native, n, shape, settle));
        }
        // The floor of the fan-out shape on this machine (it has no users,
        // so no spread shape).
        runs.push((Who::Limit, n, Shape::FanOut, settle));
    }
    if servers.spin.is_some() {
        for &n in &plan.spin_held {
            for shape in [Shape::Spread, Shape::FanOut] {
                runs.push((Who::Spin, n, shape, Duration::from_millis(1500 + n as u64)));
            }
        }
    }
    if servers.peer.is_some() {
        for &n in &plan.peer_held {
            for shape in [Shape::Spread, Shape::FanOut] {
                runs.push((
                    Who::Peer,
                    n,
                    shape,
                    Duration::from_millis(1000 + n as u64 / 5),
                ));
            }
        }
    }
    // A fresh server process per run, whoever it is, so that its RSS is
    // not what an earlier run left in its allocator, and an earlier run's
    // long-polls (given up on, still being closed) cost this one nothing.
    let mut fresh: Option<procs::Proc> = None;
    for (i, (who, n, shape, settle)) in runs.into_iter().enumerate() {
        let run = format!("r{i}");
        let shape_name = match shape {
            Shape::Spread => "spread",
            Shape::FanOut => "fan-out",
        };
        drop(fresh.take()); // one at a time
        let launch = &servers.launch;
        let (started, base) = match who {
            Who::Native => (procs::native(native_bin).await, servers.native),
            Who::Limit => (
                procs::limit(&launch.self_exe).await,
                Target {
                    label: "loopback limit (held, fixed answer)",
                    ..servers.limit
                },
            ),
            Who::Spin => {
                let (bin, manifest, cache) = &launch.harness;
                (
                    procs::harness(bin, manifest, cache).await,
                    servers.spin.expect("checked"),
                )
            }
            Who::Peer => (
                procs::peer(&launch.peer_cache).await,
                servers.peer.expect("checked"),
            ),
        };
        let p = match started {
            Ok(p) => p,
            Err(e) => {
                t.failed_row(
                    vec![n.to_string(), shape_name.into(), base.label.into()],
                    &e.context("starting a fresh server"),
                );
                continue;
            }
        };
        let target = Target {
            pid: p.pid(),
            addr: p.addr,
            ..base
        };
        fresh = Some(p);
        let target = &target;
        let rounds = match shape {
            Shape::Spread => 1,
            Shape::FanOut => plan.fan_out_rounds,
        };
        let mut result = scenarios::wakeup(target, n, shape, plan.sample, &run, settle).await;
        for round in 1..rounds {
            let Ok(pooled) = &mut result else { break };
            let run = format!("{run}-{round}");
            match scenarios::wakeup(target, n, shape, plan.sample, &run, settle).await {
                Ok(w) => pooled.pool(w),
                Err(e) => result = Err(e.context(format!("fan-out round {}", round + 1))),
            }
        }
        let w: WakeStats = match result {
            Ok(w) => w,
            Err(e) => {
                t.failed_row(
                    vec![n.to_string(), shape_name.into(), target.label.into()],
                    &e,
                );
                continue;
            }
        };
        let q = |q: f64| Duration::from_micros(w.hist.value_at_quantile(q));
        if w.woken > 0 {
            if who == Who::Native && n == 1_000 {
                *summary.wake_native_1k.of(shape) = Some(q(0.99));
            }
            if who == Who::Limit && n == 1_000 {
                summary.wake_limit_1k = Some(q(0.99));
            }
            if who == Who::Spin {
                *summary.wake_spin.of(shape) = Some((n, q(0.99)));
            }
        }
        if who == Who::Native && n == 10_000 && shape == Shape::Spread {
            if let (Some(a), Some(b)) = (w.rss_idle_kib, w.rss_held_kib) {
                summary.rss_native_10k = Some((a, b));
            }
        }
        let per = match (w.rss_idle_kib, w.rss_held_kib) {
            (Some(a), Some(b)) => format!("{:.1} KiB", b.saturating_sub(a) as f64 / n as f64),
            _ => "–".into(),
        };
        let mut woken = format!("{} / {}", w.woken, w.affected);
        if w.early > 0 {
            woken.push_str(&format!(" ({} answered before the write)", w.early));
        }
        if w.before_ack > 0 {
            woken.push_str(&format!(" ({} before the ack)", w.before_ack));
        }
        let (p50, p99, max) = if w.woken > 0 {
            (
                ms(q(0.5)),
                ms(q(0.99)),
                ms(Duration::from_micros(w.hist.max())),
            )
        } else {
            ("–".into(), "–".into(), "–".into())
        };
        t.row(vec![
            n.to_string(),
            shape_name.into(),
            target.label.into(),
            woken,
            p50,
            p99,
            max,
            w.rss_idle_kib.map_or("–".into(), mib),
            w.rss_held_kib.map_or("–".into(), mib),
            per,
        ]);
        eprintln!(
            "wake-up {} {n} {shape_name}: opened in {:?}",
            target.label, w.hold_setup
        );
    }
    drop(fresh);
    out.push_str(&t.render());
    // Where a held poll's memory goes: the same number of connections
    // that never send a request, on a fresh server.
    if let Some(&n) = plan.native_held.iter().max() {
        let p = procs::native(native_bin).await?;
        let target = Target {
            pid: p.pid(),
            addr: p.addr,
            ..servers.native
        };
        let measured =
            scenarios::idle_connections(&target, n, Duration::from_millis(500 + n as u64 / 10))
                .await;
        if let Ok((Some(idle), Some(open))) = measured {
            out.push_str(&format!(
                "\nFor comparison, {n} keep-alive connections that send nothing, on a fresh native \
                 server: RSS {} → {} ({:.1} KiB per connection).\n",
                mib(idle),
                mib(open),
                open.saturating_sub(idle) as f64 / n as f64
            ));
        }
    }
    Ok(out)
}

async fn watch_section(servers: &Servers, plan: &Plan, summary: &mut Summary) -> Result<String> {
    let edgesync = servers.launch.native_bin.as_path();
    const GAP: Duration = Duration::from_millis(20);
    let mut out = format!(
        "## Write → a live replica (`edgesync watch`)\n\n\
         The client library in live mode (long-poll), as `edgesync watch --json` runs \
         it: its own process and replica, following one user. After a warm-up write \
         it has printed, {} documents are written one at a time, {} ms apart, each \
         timed from the writer's acknowledgement to the line `watch` prints for it \
         (read from its stdout by the tool).\n\n",
        plan.watch_writes,
        GAP.as_millis()
    );
    let mut t = Table::new(&["server", "writes", "p50", "p99", "max"]);
    for (i, target) in [Some(&servers.native), servers.spin.as_ref()]
        .into_iter()
        .flatten()
        .enumerate()
    {
        let run = i.to_string();
        match scenarios::watch_delay(target, edgesync, &run, plan.watch_writes, GAP).await {
            Ok(hist) => {
                let q = |q: f64| Duration::from_micros(hist.value_at_quantile(q));
                if target.label == servers.native.label {
                    summary.watch_native = Some(q(0.99));
                }
                t.row(vec![
                    target.label.into(),
                    hist.len().to_string(),
                    ms(q(0.5)),
                    ms(q(0.99)),
                    ms(Duration::from_micros(hist.max())),
                ]);
            }
            Err(e) => t.failed_row(vec![target.label.into()], &e),
        }
    }
    out.push_str(&t.render());
    Ok(out)
}

async fn catchup_section(servers: &Servers, plan: &Plan) -> Result<String> {
    let mut out = format!(
        "## Catch-up: a client {CATCHUP_CHANGES} changes behind\n\n\
         One user (PouchDB: one database) with {CATCHUP_CHANGES} changes of ~100-byte JSON values \
         (written in batches of 100: `POST /v1/mutations`, PouchDB `_bulk_docs`), read \
         from the start with `limit=1000` until the head: edgesync \
         `GET /v1/changes?since=<next>&limit=1000` (entries carry the values; the answer \
         carries `head`, so the client knows when to stop), PouchDB \
         `GET /<db>/_changes?since=<last_seq>&limit=1000&include_docs=true` after one \
         `GET /<db>` for `update_seq` (counted). Median of {} rounds. Server \
         retention: `EDGESYNC_RETENTION_ENTRIES={}`.\n\n",
        plan.catchup_rounds,
        procs::RETENTION
    );
    if servers.spin.is_some() && !plan.spin_catchup {
        out.push_str(
            "The Spin components are left out in quick mode: seeding their log takes minutes.\n\n",
        );
    }
    let spin = servers.spin.as_ref().filter(|_| plan.spin_catchup);
    let mut t = Table::new(&[
        "server",
        "changes read",
        "requests",
        "time (median)",
        "changes/s",
        "bytes received",
    ]);
    let mut peer_time = None;
    let mut rows = Vec::new();
    for target in [Some(&servers.native), spin, servers.peer.as_ref()]
        .into_iter()
        .flatten()
    {
        let t0 = Instant::now();
        let r = async {
            scenarios::seed_log(target, "catchup", CATCHUP_CHANGES).await?;
            let seeded = t0.elapsed();
            let c = scenarios::catch_up(target, "catchup", plan.catchup_rounds).await?;
            Ok::<_, anyhow::Error>((seeded, c))
        }
        .await;
        match r {
            Ok((seeded, mut c)) => {
                c.times.sort();
                let median = c.times[c.times.len() / 2];
                if target.kind == Kind::Couch {
                    peer_time = Some(median);
                }
                eprintln!("catch-up {}: seeded in {seeded:?}", target.label);
                rows.push((target.label, c.changes, c.requests, median, c.bytes));
            }
            Err(e) => t.failed_row(vec![target.label.into()], &e),
        }
    }
    for (label, changes, requests, median, bytes) in rows {
        let vs = match peer_time {
            Some(p) if label != "PouchDB Server" => format!(
                " ({:.1}× PouchDB's speed)",
                p.as_secs_f64() / median.as_secs_f64()
            ),
            _ => String::new(),
        };
        t.row(vec![
            label.into(),
            changes.to_string(),
            requests.to_string(),
            format!("{}{vs}", ms(median)),
            rate(changes as f64 / median.as_secs_f64()),
            format!("{:.1} MiB", bytes as f64 / 1048576.0),
        ]);
    }
    out.push_str(&t.render());
    Ok(out)
}

async fn kv_section(samples: u64) -> Result<String> {
    let (native, wasi) = kvcost::run(samples).await?;
    let mut out = format!(
        "## KV cost per request type\n\n\
         The core driven in-process (`Service::handle`) for one user with 200+ documents of \
         1 KiB, averaged over {samples} requests of each type. **SQLite adapter**: calls \
         through the `Kv` trait, counted by a wrapper (`Counting<SqliteKv>`); reads are \
         `get` + `get_many` calls (keys in brackets), writes are `set` + \
         `compare_and_swap` + `increment` + `delete_many` calls. **Spin adapter**: the \
         raw `wasi:keyvalue` calls `WasiKv` makes on an in-memory bucket with Spin's \
         SQLite-backend semantics (`cas.current` counts as a read; every successful swap \
         is read back, which is the extra read per swap).\n\n"
    );
    let mut t = Table::new(&[
        "request",
        "status",
        "reads [keys]",
        "bytes read",
        "writes (set/cas/incr/del)",
        "bytes written",
        "Spin: raw reads [keys]",
        "Spin: raw writes",
    ]);
    let avg = |v: u64, n: u64| {
        let a = v as f64 / n as f64;
        if a >= 100.0 || (a - a.round()).abs() < 0.05 {
            format!("{a:.0}")
        } else {
            format!("{a:.1}")
        }
    };
    for c in &native {
        let n = c.samples;
        let s = c.total;
        let w: Option<&Cost> = wasi.iter().find(|w| w.name == c.name);
        t.row(vec![
            c.name.into(),
            c.status.to_string(),
            format!("{} [{}]", avg(s.reads(), n), avg(s.keys_read, n)),
            avg(s.bytes_read, n),
            format!(
                "{} ({}/{}/{}/{})",
                avg(s.writes(), n),
                avg(s.set, n),
                avg(s.cas, n),
                avg(s.increment, n),
                avg(s.delete, n)
            ),
            avg(s.bytes_written, n),
            w.map_or("–".into(), |w| {
                format!(
                    "{} [{}]",
                    avg(w.total.reads(), w.samples),
                    avg(w.total.keys_read, w.samples)
                )
            }),
            w.map_or("–".into(), |w| avg(w.total.writes(), w.samples)),
        ]);
    }
    out.push_str(&t.render());
    Ok(out)
}
