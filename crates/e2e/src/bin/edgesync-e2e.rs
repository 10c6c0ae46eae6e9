//! Run the end-to-end suite against any running edgesync server.
//!
//! ```text
//! cargo run -p edgesync-e2e -- --url http://127.0.0.1:8787 --secret "$EDGESYNC_JWT_SECRET" \
//!     [--max-wait-seconds 25] [--poll-interval-seconds 10] [--retention-entries 10000] \
//!     [--rate-limit-per-second 20] [--max-body-bytes 262144] [--max-key-bytes 0] \
//!     [--cors-origins a,b] [--case NAME]... [--jobs 8]
//! ```
//!
//! The settings flags must say what the server was started with (they
//! default to the configuration defaults). Cases whose requirements the
//! settings do not meet (e.g. compaction needs a small `retention_entries`)
//! are listed as skipped with the reason; every other case runs, several
//! at a time. Prints one line per case and a final `N passed, N failed,
//! N skipped`; exits 1 if any case failed.

use std::sync::Arc;

use edgesync_e2e::{Target, TargetSettings, CASES};

fn usage() -> ! {
    eprintln!(
        "usage: edgesync-e2e --url URL --secret SECRET [--max-wait-seconds N] [--poll-interval-seconds N] \
         [--retention-entries N] [--rate-limit-per-second N] [--max-body-bytes N] [--max-key-bytes N] [--cors-origins LIST] \
         [--case NAME]... [--jobs N]"
    );
    std::process::exit(2)
}

fn main() {
    let mut url = None;
    let mut secret = None;
    let mut settings = TargetSettings::default();
    let mut only: Vec<String> = Vec::new();
    let mut jobs = 8usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        let number = |v: String| -> u64 { v.parse().unwrap_or_else(|_| usage()) };
        match flag.as_str() {
            "--url" => url = Some(value()),
            "--secret" => secret = Some(value()),
            "--max-wait-seconds" => settings.max_wait_seconds = number(value()),
            "--poll-interval-seconds" => settings.poll_interval_seconds = number(value()),
            "--retention-entries" => settings.retention_entries = number(value()),
            "--rate-limit-per-second" => settings.rate_limit_per_second = number(value()),
            "--max-body-bytes" => settings.max_body_bytes = number(value()) as usize,
            "--max-key-bytes" => settings.max_key_bytes = number(value()) as usize,
            "--cors-origins" => {
                settings.cors_origins = value()
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--case" => only.push(value()),
            "--jobs" => jobs = number(value()).max(1) as usize,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let (Some(url), Some(secret)) = (url, secret) else {
        usage()
    };
    let target = Arc::new(Target {
        base_url: url.trim_end_matches('/').to_string(),
        jwt_secret: secret.into_bytes(),
        settings,
    });
    for name in &only {
        if !CASES.iter().any(|c| c.name == name) {
            eprintln!("no case named {name}");
            std::process::exit(2);
        }
    }
    // Assertion failures are reported once, in the summary, not as panics.
    std::panic::set_hook(Box::new(|_| {}));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failed = runtime.block_on(run_all(target, only, jobs));
    std::process::exit(i32::from(failed));
}

async fn run_all(target: Arc<Target>, only: Vec<String>, jobs: usize) -> bool {
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut handles = Vec::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for case in CASES {
        if !only.is_empty() && !only.iter().any(|n| n == case.name) {
            continue;
        }
        if let Err(missing) = case.requires.check(&target.settings) {
            println!("skip {}: needs {missing}", case.name);
            skipped += 1;
            continue;
        }
        let target = target.clone();
        let permits = permits.clone();
        handles.push((
            case.name,
            tokio::spawn(async move {
                let _permit = permits.acquire().await;
                edgesync_e2e::run(case, &target).await
            }),
        ));
    }
    for (name, handle) in handles {
        match handle.await {
            Ok(Ok(())) => {
                println!("ok   {name}");
                passed += 1;
            }
            Ok(Err(e)) => {
                println!("FAIL {name}: {e:#}");
                failed += 1;
            }
            Err(join) => {
                let message = join
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    })
                    .unwrap_or_else(|| "panicked".into());
                println!("FAIL {name}: {message}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    failed > 0
}
