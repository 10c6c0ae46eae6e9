//! The README's two commands are the first thing a new user runs: they must
//! keep working as written, and CI must run the test command verbatim.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The shell lines of the fenced blocks in the README's "The two commands"
/// section: the run command, then the test command.
fn two_commands() -> (String, String) {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split("\n## The two commands\n")
        .nth(1)
        .expect("README has a \"The two commands\" section");
    let section = section.split("\n## ").next().unwrap();
    let blocks: Vec<String> = section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_owned())
        .collect();
    assert_eq!(blocks.len(), 2, "two commands, got {blocks:?}");
    (blocks[0].clone(), blocks[1].clone())
}

/// `cargo run` at the workspace root must resolve to the `edgesync` binary
/// (the workspace has several), and its `serve` must parse. Runs the
/// README's command with `--help` appended, in the debug profile the tests
/// were built with, so it starts nothing and builds nothing new.
#[test]
fn the_run_command_starts_the_edgesync_server() {
    let (run, _) = two_commands();
    let args: Vec<&str> = run.split_whitespace().collect();
    assert_eq!(&args[..2], ["cargo", "run"], "{run}");
    let args: Vec<&str> = args[2..]
        .iter()
        .copied()
        .filter(|a| *a != "--release")
        .chain(["--help"])
        .collect();
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q"])
        .args(&args)
        .current_dir(ROOT)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`cargo run {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Usage: edgesync serve"), "{stdout}");
}

#[test]
fn ci_runs_the_readme_test_command_verbatim() {
    let (_, test) = two_commands();
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|line| line.trim() == test),
        ".ci/run does not call `{test}`"
    );
}
