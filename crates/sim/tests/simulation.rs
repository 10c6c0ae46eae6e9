//! The simulation over many seeds, as part of `cargo test`. Each test runs a
//! disjoint range of seeds (so they run in parallel); a failure names the
//! seed, which `cargo run -p edgesync-sim -- --seed <seed> --verbose`
//! replays exactly.

fn run_range(start: u64, count: u64) {
    let mut failures = Vec::new();
    for seed in start..start + count {
        if let Err(violation) = edgesync_sim::run(seed) {
            failures.push(format!("seed {seed}: {violation}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_0_to_299() {
    run_range(0, 300);
}

#[test]
fn seeds_300_to_599() {
    run_range(300, 300);
}

#[test]
fn seeds_600_to_899() {
    run_range(600, 300);
}

#[test]
fn seeds_900_to_1199() {
    run_range(900, 300);
}

/// Seeds beyond the ranges above that once caught a real defect, kept so
/// that it cannot come back unnoticed.
#[test]
fn seeds_that_once_failed() {
    const SEEDS: &[(u64, &str)] = &[
        (2556, "an idempotent intent leaked under contention"),
        (2713, "an idempotent intent leaked under contention"),
        (200143, "a link intent outlived its key's pointer"),
        (201275, "a link intent outlived its key's pointer"),
        (204126, "a stale hint lengthened every tail scan"),
        (311889, "a stale hint lengthened every tail scan"),
    ];
    let failures: Vec<String> = SEEDS
        .iter()
        .filter_map(|(seed, caught)| {
            edgesync_sim::run(*seed)
                .err()
                .map(|violation| format!("seed {seed} (once: {caught}): {violation}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The seeds above must exercise what the invariants are about: crashes,
/// compaction, every backend. If the workload generator drifted so that
/// they don't, the other tests would pass without proving much.
#[test]
fn the_seeds_cover_crashes_compaction_and_every_backend() {
    let mut crashed = 0;
    let mut overloaded = 0;
    let mut acknowledged = 0;
    let mut compacted = 0;
    let mut backends = std::collections::HashSet::new();
    for seed in 0..200 {
        let config = edgesync_sim::RunConfig::for_seed(seed);
        backends.insert(format!("{:?}", config.backend));
        let summary = edgesync_sim::run(seed).expect("seed passes");
        crashed += summary.crashed;
        overloaded += summary.overloaded;
        acknowledged += summary.acknowledged;
        if summary.max_floor > 0 {
            compacted += 1;
        }
    }
    assert_eq!(backends.len(), 3, "{backends:?}");
    assert!(crashed > 50, "only {crashed} crashed requests in 200 seeds");
    assert!(compacted > 20, "only {compacted} of 200 seeds compacted");
    // Contention may refuse a mutation now and then, never routinely.
    assert!(
        overloaded * 200 < acknowledged,
        "{overloaded} overload refusals for {acknowledged} acknowledged mutations"
    );
}
