//! What `native_e2e.rs` and `spin_e2e.rs` share: the server configurations
//! the suite runs against, and how a case picks one.

#![allow(dead_code)]

use edgesync_e2e::{Case, Target, TargetSettings};

/// The HS256 secret every test server is started with (≥ 32 bytes).
pub const SECRET: &str = "edgesync-e2e-secret-0123456789abcdefghij";

/// The main configuration: short long-polls, a generous rate limit, a small
/// body limit (cheap 413s) and an explicit CORS list.
pub fn standard() -> TargetSettings {
    TargetSettings {
        max_wait_seconds: 4,
        poll_interval_seconds: 7,
        retention_entries: 10_000,
        rate_limit_per_second: 1_000,
        max_body_bytes: 8_192,
        max_key_bytes: 0,
        cors_origins: vec![
            "https://app.example.test".into(),
            "https://admin.example.test".into(),
        ],
        jwt_audience: None,
        jwt_issuer: None,
    }
}

/// For compaction and rate limiting: the smallest retention window, a low
/// rate limit (burst 100), CORS for any origin, tokens that must name
/// their audience and issuer, and Spin's documented key limit.
pub fn tight() -> TargetSettings {
    TargetSettings {
        max_wait_seconds: 2,
        poll_interval_seconds: 3,
        retention_entries: 16,
        rate_limit_per_second: 2,
        max_body_bytes: 2_048,
        max_key_bytes: 256,
        cors_origins: vec!["*".into()],
        jwt_audience: Some("edgesync-e2e".into()),
        jwt_issuer: Some("https://issuer.example.test".into()),
    }
}

/// Which configuration a case runs on: the standard one when it fits,
/// else the tight one. Panics (never skips) if neither fits.
pub fn pick<'a>(
    case: &Case,
    standard: impl FnOnce() -> &'a Target,
    tight: impl FnOnce() -> &'a Target,
) -> &'a Target {
    if case.requires.check(&self::standard()).is_ok() {
        return standard();
    }
    if case.requires.check(&self::tight()).is_ok() {
        return tight();
    }
    panic!(
        "no test server configuration fits case `{}`: standard needs {}; tight needs {}",
        case.name,
        case.requires.check(&self::standard()).unwrap_err(),
        case.requires.check(&self::tight()).unwrap_err()
    );
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Block until `GET /v1/health` on `addr` answers 200, or `alive()` says the
/// server died, or 60 s pass.
pub fn wait_for_health(addr: &str, mut alive: impl FnMut() -> Result<(), String>) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Err(why) = alive() {
            panic!("the server at {addr} died while starting: {why}");
        }
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let req =
                format!("GET /v1/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
        }
        if std::time::Instant::now() > deadline {
            panic!("the server at {addr} did not answer GET /v1/health with 200 within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

static DIRS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_dirs() {
    if std::env::var_os("EDGESYNC_E2E_KEEP_DIRS").is_some() {
        return;
    }
    if let Ok(dirs) = DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A fresh directory under the system temp dir, removed when the test
/// process exits (servers and logs live there; set
/// `EDGESYNC_E2E_KEEP_DIRS=1` to keep them for a post-mortem).
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    static AT_EXIT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    AT_EXIT.get_or_init(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(remove_dirs);
        }
    });
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir")
        .keep();
    DIRS.lock().unwrap().push(dir.clone());
    dir
}
