//! End-to-end tests of the harness with tiny hand-written components (the
//! component text format; no wasm toolchain needed). The Spin-specific
//! host interfaces are unit-tested in the library; the real spin-sdk
//! components are exercised by the project's end-to-end suite.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use edgesync_spin_harness::{Harness, HarnessOptions};

/// `handle` sleeps for `ms` through `wasi:clocks` + `wasi:io/poll` (what a
/// guest's `std::thread::sleep` compiles to) and returns without setting a
/// response, which the harness (like Spin) answers with a 500.
fn sleeper(ms: u64) -> String {
    format!(
        r#"(component
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow 0))))
  ))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer 1 $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (type $own (own $pe))
    (export "subscribe-duration" (func (param "when" u64) (result $own)))
  ))
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))
  (alias export $clock "subscribe-duration" (func $sub))
  (alias export $poll "[method]pollable.block" (func $block))
  (core func $sub_l (canon lower (func $sub)))
  (core func $block_l (canon lower (func $block)))
  (core func $drop_p (canon resource.drop $pollable))
  (core module $m
    (import "" "sub" (func $sub (param i64) (result i32)))
    (import "" "block" (func $block (param i32)))
    (import "" "drop" (func $drop (param i32)))
    (func (export "handle") (param i32 i32)
      (local $p i32)
      (local.set $p (call $sub (i64.const {ns})))
      (call $block (local.get $p))
      (call $drop (local.get $p)))
  )
  (core instance $env (export "sub" (func $sub_l)) (export "block" (func $block_l)) (export "drop" (func $drop_p)))
  (core instance $i (instantiate $m (with "" (instance $env))))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)"#,
        ns = ms * 1_000_000
    )
}

/// `handle` traps at once.
const TRAPPER: &str = r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))
  ))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))
  (core module $m (func (export "handle") (param i32 i32) unreachable))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler))
)"#;

/// Imports Spin's SQLite interface, which the harness does not provide.
const IMPORTS_SQLITE: &str = r#"(component
  (import "spin:sqlite/sqlite@3.0.0" (instance
    (export "placeholder" (func))
  ))
)"#;

/// Exports nothing.
const NO_EXPORT: &str = "(component)";

struct App {
    dir: tempfile::TempDir,
}

impl App {
    fn new(manifest: &str, files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spin.toml"), manifest).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Self { dir }
    }

    fn options(&self) -> HarnessOptions {
        HarnessOptions {
            manifest: self.dir.path().join("spin.toml"),
            data_dir: self.dir.path().join("data"),
            compile_cache: Some(self.dir.path().join("cache")),
            ..HarnessOptions::default()
        }
    }

    fn start(&self) -> Harness {
        Harness::start(self.options()).unwrap()
    }

    fn start_err(&self, options: HarnessOptions) -> String {
        format!("{:#}", Harness::start(options).unwrap_err())
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A minimal HTTP/1.1 GET; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

const ROUTED: &str = r#"
spin_manifest_version = 2
[application]
name = "t"

[[trigger.http]]
route = "/sleep/..."
component = "sleeper"

[[trigger.http]]
route = "/trap"
component = "trapper"

[component.sleeper]
source = "sleeper.wat"
key_value_stores = ["default"]

[component.trapper]
source = "trapper.wat"
"#;

#[test]
fn routes_and_maps_guest_failures_to_500() {
    let sleeper = sleeper(1);
    let app = App::new(
        ROUTED,
        &[("sleeper.wat", &sleeper), ("trapper.wat", TRAPPER)],
    );
    let h = app.start();
    assert!(h.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(get(h.addr(), "/trap"), (500, String::new()));
    // Returned without a response.
    assert_eq!(get(h.addr(), "/sleep/x").0, 500);
    // Exact route: no match below it.
    assert_eq!(get(h.addr(), "/trap/below"), (404, String::new()));
    assert_eq!(get(h.addr(), "/nothing"), (404, String::new()));
    assert_eq!(
        get(h.addr(), "/.well-known/spin/health"),
        (200, "OK".into())
    );
    // The key-value database is created in the data dir.
    assert!(app.path().join("data/sqlite_key_value.db").exists());
    h.shutdown();
}

#[test]
fn sleeping_guests_do_not_block_each_other() {
    let sleeper = sleeper(1000);
    let app = App::new(
        ROUTED,
        &[("sleeper.wat", &sleeper), ("trapper.wat", TRAPPER)],
    );
    let h = app.start();
    let addr = h.addr();
    let started = Instant::now();
    let threads: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep/1").0))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 500);
    }
    let elapsed = started.elapsed();
    // 200 one-second sleeps one after another would take 200 s; on two
    // worker threads without async, 100 s.
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    h.shutdown();
}

#[test]
fn shutdown_waits_for_in_flight_requests() {
    let sleeper = sleeper(700);
    let app = App::new(
        ROUTED,
        &[("sleeper.wat", &sleeper), ("trapper.wat", TRAPPER)],
    );
    let h = app.start();
    let addr = h.addr();
    let inflight = std::thread::spawn(move || get(addr, "/sleep/1").0);
    std::thread::sleep(Duration::from_millis(200));
    h.shutdown();
    // The held request was answered (by the guest, 500: no response set),
    // not cut off.
    assert_eq!(inflight.join().unwrap(), 500);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn startup_errors_are_clear() {
    let manifest = |extra: &str| {
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"t\"\n{extra}\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wat\"\n"
        )
    };

    let app = App::new(&manifest(""), &[("c.wat", IMPORTS_SQLITE)]);
    let err = app.start_err(app.options());
    assert!(
        err.contains("does not provide") && err.contains("spin:sqlite/sqlite@3.0.0"),
        "{err}"
    );

    let app = App::new(&manifest(""), &[("c.wat", NO_EXPORT)]);
    let err = app.start_err(app.options());
    assert!(err.contains("wasi:http/incoming-handler"), "{err}");

    let app = App::new(&manifest(""), &[]);
    let err = app.start_err(app.options());
    assert!(err.contains("c.wat"), "{err}");

    let trapper = [("c.wat", TRAPPER)];
    let app = App::new(
        &manifest("[variables]\nedgesync_test_required = { required = true }"),
        &trapper,
    );
    let err = app.start_err(app.options());
    assert!(err.contains("edgesync_test_required"), "{err}");
    // An explicit value satisfies it.
    let mut options = app.options();
    options.variables = vec![("edgesync_test_required".into(), "v".into())];
    Harness::start(options).unwrap().shutdown();

    let kv = manifest("").replace(
        "source = \"c.wat\"",
        "source = \"c.wat\"\nkey_value_stores = [\"default\", \"cache\"]",
    );
    let app = App::new(&kv, &trapper);
    let err = app.start_err(app.options());
    assert!(
        err.contains("unknown key_value_stores label \"cache\""),
        "{err}"
    );
    let mut options = app.options();
    options.kv_labels = vec!["cache".into()];
    Harness::start(options).unwrap().shutdown();
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let app = App::new(
        ROUTED,
        &[("sleeper.wat", &sleeper(1)), ("trapper.wat", TRAPPER)],
    );
    app.start().shutdown();
    let cache = app.path().join("cache");
    let mut files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // One file per distinct component.
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.extension().unwrap() == "cwasm"));

    // A damaged cache file is recompiled and replaced, not trusted.
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let h = app.start();
    assert_eq!(get(h.addr(), "/trap").0, 500);
    assert_eq!(get(h.addr(), "/sleep/x").0, 500);
    h.shutdown();
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        b"not a compiled component"
    );
}

#[test]
fn binary_prints_one_line_serves_and_stops_on_sigterm() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let app = App::new(
        ROUTED,
        &[("sleeper.wat", &sleeper(1)), ("trapper.wat", TRAPPER)],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgesync-spin-harness"))
        .arg("--manifest")
        .arg(app.path().join("spin.toml"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.path().join("data"))
        .arg("--compile-cache")
        .arg(app.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim_end();
    let addr: SocketAddr = url.parse().unwrap();
    assert_eq!(get(addr, "/.well-known/spin/health"), (200, "OK".into()));
    assert_eq!(get(addr, "/trap").0, 500);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    // Nothing else was printed on stdout.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    // One log line per request on stderr.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let request_lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("request"))
        .filter(|l| l.contains("status="))
        .collect();
    assert_eq!(request_lines.len(), 2, "{stderr}");
    assert!(
        request_lines[1].contains("path=/trap")
            && request_lines[1].contains("component=trapper")
            && request_lines[1].contains("status=500"),
        "{stderr}"
    );
}
