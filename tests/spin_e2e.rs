//! The end-to-end suite (`edgesync-e2e`) against the Spin components
//! (`components/write`, `components/read`), run from `spin.toml` in the
//! wasmtime-based harness (`edgesync-spin-harness`), with the settings as
//! Spin variables. Two harness instances (see `common::standard` and
//! `common::tight`) are started on first use and shared by every case; a
//! third, behaving like Spin before 3.2, runs the suite once more.
//!
//! The components must be built first:
//!
//! ```text
//! scripts/build-wasm.sh
//! ```
//!
//! which writes `target/wasm32-wasip2/wasm-release/edgesync_{write,read}.wasm`
//! (under `$CARGO_TARGET_DIR` when that is set). Without them every test
//! here fails, saying so — it never skips.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use edgesync_e2e::{Case, Target, TargetSettings};
use edgesync_spin_harness::{Harness, HarnessOptions};

const COMPONENTS: [&str; 2] = ["edgesync_write.wasm", "edgesync_read.wasm"];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The manifest to run: the repository's `spin.toml` when the components
/// are where it says (`target/wasm32-wasip2/wasm-release/`); when they were
/// built under `$CARGO_TARGET_DIR` instead, a copy of it whose `source`
/// paths point there. Panics with what to run when they are nowhere.
fn manifest() -> PathBuf {
    static MANIFEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let root = repo_root();
            let in_repo = root.join("target/wasm32-wasip2/wasm-release");
            let mut candidates = vec![in_repo.clone()];
            if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
                let dir = PathBuf::from(dir);
                let dir = if dir.is_absolute() { dir } else { root.join(dir) };
                candidates.insert(0, dir.join("wasm32-wasip2/wasm-release"));
            }
            let found = candidates
                .iter()
                .find(|d| COMPONENTS.iter().all(|c| d.join(c).is_file()));
            let Some(dir) = found else {
                return Err(format!(
                    "the Spin components are not built: none of {} holds {}. Run `scripts/build-wasm.sh` first (it builds them for wasm32-wasip2).",
                    candidates
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    COMPONENTS.join(" and ")
                ));
            };
            let manifest = root.join("spin.toml");
            if *dir == in_repo {
                return Ok(manifest);
            }
            let text = std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
            let rewritten = text.replace(
                "source = \"target/wasm32-wasip2/wasm-release/",
                &format!("source = \"{}/", dir.display()),
            );
            let copy_dir = common::temp_dir("edgesync-spin-manifest-");
            let copy = copy_dir.join("spin.toml");
            std::fs::write(&copy, rewritten).map_err(|e| e.to_string())?;
            Ok(copy)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn start(settings: &TargetSettings, data_dir: &Path, kv_read_cache: bool) -> Harness {
    let mut variables = settings.variables();
    variables.push(("jwt_secret".into(), common::SECRET.into()));
    let harness = Harness::start(HarnessOptions {
        manifest: manifest(),
        data_dir: data_dir.to_path_buf(),
        variables,
        kv_read_cache,
        ..HarnessOptions::default()
    })
    .unwrap_or_else(|e| panic!("the Spin harness did not start: {e:?}"));
    let addr = harness.addr().to_string();
    common::wait_for_health(&addr, || Ok(()));
    harness
}

fn shared(name: &'static str, settings: fn() -> TargetSettings) -> &'static Target {
    shared_on(name, settings, false)
}

/// As [`shared`]; with `kv_read_cache`, a harness that behaves like Spin
/// before 3.2 (see `HarnessOptions::kv_read_cache`).
fn shared_on(
    name: &'static str,
    settings: fn() -> TargetSettings,
    kv_read_cache: bool,
) -> &'static Target {
    // Harnesses run on threads of their own; leaked, they serve until the
    // test process exits.
    static HARNESSES: Mutex<BTreeMap<&'static str, &'static (Harness, Target)>> =
        Mutex::new(BTreeMap::new());
    let mut all = HARNESSES.lock().unwrap_or_else(|e| e.into_inner());
    let entry = all.entry(name).or_insert_with(|| {
        let settings = settings();
        let dir = common::temp_dir(&format!("edgesync-spin-e2e-{name}-"));
        let harness = start(&settings, &dir, kv_read_cache);
        let target = Target {
            base_url: harness.base_url(),
            jwt_secret: common::SECRET.as_bytes().to_vec(),
            settings,
        };
        Box::leak(Box::new((harness, target)))
    });
    &entry.1
}

fn target_for(case: &'static Case) -> &'static Target {
    common::pick(
        case,
        || shared("standard", common::standard),
        || shared("tight", common::tight),
    )
}

edgesync_e2e::e2e_tests!(target_for);

/// The CORS cases also hold for `cors_origins = *` (the tight instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_with_any_origin() {
    let tight = shared("tight", common::tight);
    for name in [
        "preflight_needs_no_token",
        "allowed_origin_gets_exposed_headers",
    ] {
        edgesync_e2e::run(edgesync_e2e::case(name), tight)
            .await
            .unwrap();
    }
}

/// Spin before 3.2 kept, in each opened key-value store handle, every
/// value the handle read or wrote, and never read that key from the store
/// again. The suite (every case the standard settings fit) passes on such
/// a host too: among others, a long-poll held in the read component sees a
/// write made through the write component, rather than only its own first
/// read of the log until the wait runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_spin_before_3_2() {
    let target = shared_on("before-3.2", common::standard, true);
    // A few cases at a time, as the test runner runs the other tests of
    // this file: all of them at once on 2 cores (every request a fresh
    // wasm instance) could keep a held long-poll from re-reading the log
    // within its 4 s wait, and the timing cases would fail for load alone.
    let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let runs: Vec<_> = edgesync_e2e::CASES
        .iter()
        .filter(|case| case.fits(target))
        .map(|case| {
            let turns = std::sync::Arc::clone(&turns);
            let run = tokio::spawn(async move {
                let _turn = turns.acquire_owned().await.expect("never closed");
                edgesync_e2e::run(case, target).await
            });
            (case.name, run)
        })
        .collect();
    assert!(runs.len() > 50, "only {} cases fit", runs.len());
    let mut failures = Vec::new();
    for (name, run) in runs {
        match run.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
