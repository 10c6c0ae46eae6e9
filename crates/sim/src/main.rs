//! Run the simulation over many seeds; print every failing seed.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: edgesync-sim [--seeds N] [--start S] | --seed S [--verbose]");
    eprintln!("  EDGESYNC_SIM_DUMP=1: a failing seed also prints the store and every answer");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut start, mut count, mut verbose) = (0u64, 1000u64, false);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--seeds" => match value() {
                Some(n) => count = n,
                None => return usage(),
            },
            "--start" => match value() {
                Some(n) => start = n,
                None => return usage(),
            },
            "--seed" => match value() {
                Some(n) => {
                    start = n;
                    count = 1
                }
                None => return usage(),
            },
            "--verbose" => verbose = true,
            _ => return usage(),
        }
    }
    let mut failures = 0u64;
    for seed in start..start + count {
        let config = edgesync_sim::RunConfig::for_seed(seed);
        match std::panic::catch_unwind(|| edgesync_sim::run(seed)) {
            Ok(Ok(summary)) => {
                if verbose {
                    println!("seed {seed} ok: {config:?}\n  {summary:?}");
                }
            }
            Ok(Err(violation)) => {
                failures += 1;
                println!("seed {seed} FAILED: {violation}\n  config: {config:?}");
            }
            Err(_) => {
                failures += 1;
                println!("seed {seed} PANICKED\n  config: {config:?}");
            }
        }
    }
    println!("{count} seeds from {start}: {failures} failed");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
