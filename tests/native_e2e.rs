//! The end-to-end suite (`edgesync-e2e`) against the real native server:
//! `edgesync serve --listen 127.0.0.1:<port> --data-dir <tmp>` with its
//! settings in `EDGESYNC_*` variables. Two server instances (see
//! `common::standard` and `common::tight`) are started on first use and
//! shared by every case; they are killed when the test process exits.
//!
//! Native-only tests: durability across `kill -9` and a restart on the same
//! data directory, and graceful shutdown on SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use edgesync_e2e::{Case, Target, TargetSettings};
use serde_json::json;

/// A running `edgesync serve`.
struct Server {
    child: Child,
    target: Target,
    log: PathBuf,
}

/// PIDs to kill when the test process exits (statics are never dropped).
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn kill_servers() {
    if let Ok(pids) = PIDS.lock() {
        for pid in pids.iter() {
            // SAFETY: kill(2) on a pid we spawned; errors are irrelevant.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

fn register(pid: u32) {
    static AT_EXIT: OnceLock<()> = OnceLock::new();
    AT_EXIT.get_or_init(|| {
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(kill_servers);
        }
    });
    PIDS.lock().unwrap().push(pid);
}

fn unregister(pid: u32) {
    PIDS.lock().unwrap().retain(|p| *p != pid);
}

/// Start `edgesync serve` on a free port with `settings` and
/// `<dir>/data` as its data directory (the log goes to `<dir>/server-<port>.log`),
/// and wait until `/v1/health` answers.
fn start(settings: &TargetSettings, data_dir: &Path) -> Server {
    start_with(settings, data_dir, Some(common::SECRET), Extra::default())
}

/// What some tests give the server process besides its settings.
#[derive(Default)]
struct Extra<'a> {
    /// Native-only environment variables.
    env: &'a [(&'a str, &'a Path)],
    /// The (soft, hard) open-file limit it starts with.
    open_files: Option<(u64, u64)>,
}

/// [`start`], with `EDGESYNC_JWT_SECRET` set to `secret`, or unset so that
/// the server generates one in its data directory as on a first run, and
/// with `extra`.
fn start_with(
    settings: &TargetSettings,
    data_dir: &Path,
    secret: Option<&str>,
    extra: Extra<'_>,
) -> Server {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    // The server owns `data/`; its log sits beside it.
    let log = data_dir.join(format!("server-{port}.log"));
    let data_dir = data_dir.join("data");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgesync"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(&listen)
        .arg("--data-dir")
        .arg(&data_dir)
        .env_remove("EDGESYNC_JWT_SECRET")
        .envs(secret.map(|secret| ("EDGESYNC_JWT_SECRET", secret)))
        .envs(settings.env())
        .envs(extra.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let open_files = extra.open_files;
        // SAFETY: prctl and setrlimit are async-signal-safe. The server dies
        // with the test process even if that one is killed (atexit does not
        // run then).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some((soft, hard)) = open_files {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let mut child = spawn_from_long_lived_thread(cmd);
    register(child.id());
    common::wait_for_health(&listen, || match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "{status}; its log ({}):\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )),
        _ => Ok(()),
    });
    Server {
        child,
        target: Target {
            base_url: format!("http://{listen}"),
            jwt_secret: common::SECRET.as_bytes().to_vec(),
            settings: settings.clone(),
        },
        log,
    }
}

fn sigterm(pid: u32) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// `PR_SET_PDEATHSIG` fires when the spawning *thread* exits, and test
/// threads come and go: spawn every server from one thread that lives as
/// long as the process.
fn spawn_from_long_lived_thread(cmd: Command) -> Child {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread alive even if every sender is gone.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    spawner.lock().unwrap().send((cmd, reply_tx)).unwrap();
    reply_rx
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_edgesync")))
}

/// A directory for one server (its `data/` and its log), removed at exit.
fn data_dir(name: &str) -> PathBuf {
    common::temp_dir(&format!("edgesync-e2e-{name}-"))
}

fn shared(name: &'static str, settings: fn() -> TargetSettings) -> &'static Target {
    static SERVERS: Mutex<BTreeMap<&'static str, &'static Server>> = Mutex::new(BTreeMap::new());
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let server = servers
        .entry(name)
        .or_insert_with(|| Box::leak(Box::new(start(&settings(), &data_dir(name)))));
    &server.target
}

fn target_for(case: &'static Case) -> &'static Target {
    common::pick(
        case,
        || shared("standard", common::standard),
        || shared("tight", common::tight),
    )
}

edgesync_e2e::e2e_tests!(target_for);

/// The CORS cases also hold for `cors_origins = *` (the tight server).
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

impl Server {
    /// Wait (at most 30 s) for the process to exit after a SIGTERM, and
    /// require status 0.
    async fn expect_clean_exit(&mut self) {
        let status = self.exit_status().await;
        assert!(
            status.success(),
            "the server must exit 0 after SIGTERM, got {status}; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// How the server exits (it must, within 30 s).
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        unregister(self.child.id());
        status
    }

    fn kill_9(mut self) {
        let pid = self.child.id();
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        unregister(pid);
    }
}

/// Every write acknowledged before a `kill -9` is there after a restart on
/// the same data directory, once in the log, and the seq continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_restart() {
    let dir = data_dir("durability");
    let settings = common::standard();
    let server = start(&settings, &dir);
    let target = server.target.clone();
    let api = target.api();
    let user = target.new_user();
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    // Concurrent single writes and a batch, then kill -9 right after the
    // last acknowledgement.
    for round in 0..5 {
        let writes = (0..8).map(|i| {
            let api = &api;
            let user = &user;
            async move {
                let id = format!("r{round}-{i}");
                let r = api
                    .put(format!("/v1/docs/dur/{id}"))
                    .auth(user)
                    .json(&json!({"round": round, "i": i}))
                    .send()
                    .await
                    .unwrap()
                    .expect(201);
                (id, r.json()["version"].as_u64().unwrap())
            }
        });
        for (id, v) in edgesync_e2e::cases::join_all(writes).await {
            acked.insert(id, v);
        }
    }
    let items: Vec<_> = (0..10)
        .map(|i| json!({"id": format!("batch-{i}"), "op": "put", "collection": "dur", "doc": format!("b{i}"), "value": i}))
        .collect();
    let r = api
        .post("/v1/mutations")
        .auth(&user)
        .json(&json!({ "mutations": items }))
        .send()
        .await
        .unwrap()
        .expect(200);
    for (i, res) in r.json()["results"].as_array().unwrap().iter().enumerate() {
        acked.insert(format!("b{i}"), res["version"].as_u64().unwrap());
    }
    let log = server.log.clone();
    server.kill_9();

    let server = start(&settings, &dir);
    let api = server.target.api();
    let what = format!("kill -9 (first run's log: {})", log.display());
    let entries = assert_kept_after_restart(&api, &user, "dur", &acked, &what).await;
    assert_eq!(
        entries.len(),
        acked.len(),
        "the log after restart: every acknowledged write once"
    );
    let n = acked.len() as u64;
    let v = edgesync_e2e::cases::put_ok(&api, &user, "dur", "after", &json!(1))
        .await
        .unwrap();
    assert_eq!(v, n + 1, "the seq continues after a restart");
    server.kill_9();
}

/// After a restart: each write in `acked` (document id → version) made in
/// `collection` before `what` is there at its version, and the log is
/// 1, 2, 3… with no gap. Returns the log.
async fn assert_kept_after_restart(
    api: &edgesync_e2e::client::Api<'_>,
    user: &edgesync_e2e::User,
    collection: &str,
    acked: &BTreeMap<String, u64>,
    what: &str,
) -> Vec<serde_json::Value> {
    for (id, version) in acked {
        let r = api
            .get(format!("/v1/docs/{collection}/{id}"))
            .auth(user)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.json()["version"].as_u64()),
            (200, Some(*version)),
            "{id} was acknowledged at version {version} before {what} and a restart"
        );
    }
    let entries = edgesync_e2e::cases::all_changes(api, user, 0)
        .await
        .unwrap();
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "the log after {what} and a restart: strictly increasing, no gaps"
    );
    entries
}

/// On SIGTERM the server answers a held long-poll (200 with an empty list,
/// or 304) and exits with status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_held_long_polls_and_exits_0() {
    let dir = data_dir("sigterm");
    let settings = TargetSettings {
        max_wait_seconds: 10,
        ..common::standard()
    };
    let mut server = start(&settings, &dir);
    let target = server.target.clone();
    let api = target.api();
    let user = target.new_user();
    let held = api
        .get("/v1/changes?since=0&wait=10")
        .auth(&user)
        .header("If-None-Match", "\"0\"")
        .send();
    let pid = server.child.id();
    let terminate = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sigterm(pid);
    };
    let (r, ()) = tokio::join!(held, terminate);
    let r = r.unwrap_or_else(|e| {
        panic!(
            "a long-poll held during SIGTERM must be answered, not cut: {e:?}; log: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        )
    });
    match r.status {
        304 => {}
        200 => assert_eq!(
            r.json()["changes"],
            json!([]),
            "an answered long-poll with nothing new"
        ),
        s => panic!(
            "held long-poll during shutdown: expected 200 or 304, got {s} {}",
            r.text()
        ),
    }
    server.expect_clean_exit().await;
}

/// Writes in flight when SIGTERM arrives are finished, not cut: every
/// write answered before the server exits is 201 (never a 5xx from a store
/// closed under it), and after a restart on the same data directory each
/// one is there, once in the log, with no gap in the seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_restart_keeps_them() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const WRITERS: usize = 8;
    let dir = data_dir("sigterm-writes");
    let settings = common::standard();
    let mut server = start(&settings, &dir);
    let target = server.target.clone();
    let user = target.new_user();
    let answered = AtomicUsize::new(0);
    // Each writer has its own connection and writes until the server stops
    // answering; `send` panics on any 5xx.
    let writers = (0..WRITERS).map(|w| {
        let (target, user, answered) = (&target, &user, &answered);
        async move {
            let api = target.api();
            let mut acked = Vec::new();
            for n in 0.. {
                let id = format!("w{w}-{n}");
                let sent = api
                    .put(format!("/v1/docs/term/{id}"))
                    .auth(user)
                    .json(&json!({"w": w, "n": n, "pad": "x".repeat(1000)}))
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                let r = r.expect(201);
                acked.push((id, r.json()["version"].as_u64().unwrap()));
                answered.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }
    });
    let pid = server.child.id();
    let terminate = async {
        // Mid-stream: every writer has had answers and has one in flight.
        while answered.load(Ordering::Relaxed) < 20 * WRITERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sigterm(pid);
    };
    let (acked, ()) = tokio::join!(edgesync_e2e::cases::join_all(writers), terminate);
    server.expect_clean_exit().await;
    let acked: BTreeMap<String, u64> = acked.into_iter().flatten().collect();
    assert!(acked.len() >= 20 * WRITERS);

    let server = start(&settings, &dir);
    let api = server.target.api();
    let entries = assert_kept_after_restart(&api, &user, "term", &acked, "SIGTERM").await;
    let logged: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(logged.len(), entries.len(), "each write logged once");
    // A write may commit while its answer is cut by the exit (not
    // acknowledged, so allowed); at most one per writer can be.
    assert!(
        acked.keys().all(|id| logged.contains(id.as_str()))
            && entries.len() <= acked.len() + WRITERS,
        "{} acknowledged, {} logged",
        acked.len(),
        entries.len()
    );
    server.kill_9();
}

/// A second SIGTERM during the drain stops the server at once (exit 1)
/// instead of waiting for a request that is still arriving; a restart finds
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_the_drain() {
    use tokio::io::AsyncWriteExt;
    let dir = data_dir("sigterm-twice");
    let settings = common::standard();
    let mut server = start(&settings, &dir);
    let target = server.target.clone();
    let user = target.new_user();
    let api = target.api();
    let first = edgesync_e2e::cases::put(&api, &user, "c", "kept", &json!(1))
        .await
        .unwrap()
        .expect(201);
    // A PUT whose body is still on its way holds the drain (up to 10 s).
    let mut slow = tokio::net::TcpStream::connect(target.base_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/docs/c/slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n[1,",
        user.token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id();
    sigterm(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the drain waits for the PUT"
    );
    sigterm(pid);
    let status = server.exit_status().await;
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("second shutdown signal"), "{log}");
    drop(slow);

    let server = start(&settings, &dir);
    let api = server.target.api();
    let got = api
        .get("/v1/docs/c/kept")
        .auth(&user)
        .send()
        .await
        .unwrap()
        .expect(200);
    assert_eq!(got.json()["version"], first.json()["version"]);
    server.kill_9();
}

/// A client leaving a held long-poll is logged as an aborted request with
/// its route and user hash, like any other request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_long_poll_is_logged_with_its_route_and_user() {
    use tokio::io::AsyncWriteExt;
    let dir = data_dir("abandoned");
    let server = start(&common::standard(), &dir);
    let user = server.target.new_user();
    let mut held =
        tokio::net::TcpStream::connect(server.target.base_url.trim_start_matches("http://"))
            .await
            .unwrap();
    let request = format!(
        "GET /v1/changes?since=0&wait=4 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        user.token
    );
    held.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("status=\"aborted\"")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no aborted request in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.contains("route=\"/v1/changes\""), "{line}");
    let user_field = line
        .split("user=\"")
        .nth(1)
        .and_then(|r| r.split('"').next());
    assert!(
        user_field.is_some_and(|u| u.len() == 12 && u.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line}"
    );
    server.kill_9();
}

/// The README's quickstart at the binary level, with no secret configured:
/// `serve` generates one and says where, `edgesync token` mints with it,
/// and the log has one line per request with its method, route, status and
/// user hash, never the token or the user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_generates_a_secret_and_logs_each_request_without_the_token() {
    let dir = data_dir("quickstart");
    let server = start_with(&common::standard(), &dir, None, Extra::default());
    let data = dir.join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_edgesync"))
        .args(["token", "--sub", "quickstart-alice", "--data-dir"])
        .arg(&data)
        .env_remove("EDGESYNC_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let api = server.target.api();

    let put = api
        .put("/v1/docs/todos/first")
        .header("Authorization", &bearer)
        .json(&json!({"title": "try edgesync"}))
        .send()
        .await
        .unwrap()
        .expect(201);
    let etag = put.header("etag").unwrap();
    api.get("/v1/docs/todos/first")
        .header("Authorization", &bearer)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap()
        .expect(304);
    api.get("/v1/changes?since=0")
        .header("Authorization", "Bearer not.a.token")
        .send()
        .await
        .unwrap()
        .expect(401);
    api.delete("/v1/head").send().await.unwrap().expect(405);

    let expected = [
        ("PUT", "/v1/docs/{collection}/{id}", "201", true),
        ("GET", "/v1/docs/{collection}/{id}", "304", true),
        ("GET", "/v1/changes", "401", false),
        ("DELETE", "/v1/head", "405", false),
    ];
    // A line is written right after its response; give the last one a moment.
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&server.log).unwrap();
        if log.contains("route=\"/v1/head\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log.contains("generated a random secret") && log.contains(&data.display().to_string()),
        "serve must say it generated a secret, and where:\n{log}"
    );
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" request ") && !l.contains("route=\"/v1/health\""))
        .collect();
    assert_eq!(
        requests.len(),
        expected.len(),
        "one line per request:\n{log}"
    );
    for (line, (method, route, status, authenticated)) in requests.iter().zip(expected) {
        assert!(line.contains(&format!("method={method} ")), "{line}");
        assert!(line.contains(&format!("route=\"{route}\"")), "{line}");
        assert!(line.contains(&format!("status={status} ")), "{line}");
        assert!(line.contains("duration_ms="), "{line}");
        let user = line
            .split("user=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no user field: {line}"));
        if authenticated {
            assert!(
                user.len() == 12 && user.bytes().all(|b| b.is_ascii_hexdigit()),
                "a short hash of the user id: {line}"
            );
        } else {
            assert_eq!(user, "-", "{line}");
        }
    }
    let signature = token.rsplit('.').next().unwrap();
    for secret in [token.as_str(), signature, "not.a.token", "quickstart-alice"] {
        assert!(
            !log.contains(secret),
            "the log must not contain {secret:?}:\n{log}"
        );
    }
    server.kill_9();
}

/// Every held long-poll is an open file. Started with the usual soft limit
/// of open files far below the hard one, the server raises it, so it holds
/// more long-polls than the soft limit would allow and wakes them all; a
/// hard limit too low to serve many clients is logged.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_for_many_held_long_polls() {
    const HELD: usize = 300;
    let dir = data_dir("open-files");
    let server = start_with(
        &common::standard(),
        &dir,
        Some(common::SECRET),
        Extra {
            open_files: Some((128, 2048)),
            ..Extra::default()
        },
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["2048", "2048"],
        "{open_files}"
    );
    let api = server.target.api();
    let user = server.target.new_user();
    let held = (0..HELD).map(|_| async {
        api.get("/v1/changes?since=0&wait=25")
            .auth(&user)
            .send()
            .await
            .unwrap()
            .expect(200)
            .json()["changes"]
            .as_array()
            .map_or(0, Vec::len)
    });
    let wake = async {
        // Held once every request reached the server; then one write.
        tokio::time::sleep(Duration::from_secs(2)).await;
        edgesync_e2e::cases::put_ok(&api, &user, "fd", "a", &json!(1))
            .await
            .unwrap();
    };
    // Connections the server cannot accept wait in the backlog unanswered.
    let (answers, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(edgesync_e2e::cases::join_all(held), wake)
    })
    .await
    .expect("held long-polls left unanswered: connections not accepted?");
    assert_eq!(
        answers,
        vec![1; HELD],
        "every held long-poll gets the change"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("open-file limit caps the server"), "{log}");
    server.kill_9();
}

/// The backup files in `dir`, oldest first.
fn backup_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("edgesync-") && n.ends_with(".sqlite3"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// With `EDGESYNC_BACKUP_DIR` the server copies its store while it serves,
/// keeps the newest `EDGESYNC_BACKUP_KEEP` copies and writes none while
/// nothing changes; `edgesync restore` (refused while the server runs)
/// puts the newest back: every write made before it, none made after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_and_restore() {
    let dir = data_dir("backup");
    let backups = dir.join("backups");
    let settings = common::standard();
    let mut server = start_with(
        &settings,
        &dir,
        Some(common::SECRET),
        Extra {
            env: &[
                ("EDGESYNC_BACKUP_DIR", &backups),
                ("EDGESYNC_BACKUP_INTERVAL_SECONDS", Path::new("1")),
                ("EDGESYNC_BACKUP_KEEP", Path::new("2")),
            ],
            ..Extra::default()
        },
    );
    let api = server.target.api();
    let user = server.target.new_user();
    let mut acked = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..3 {
        let id = format!("r{round}");
        let v = edgesync_e2e::cases::put_ok(&api, &user, "bk", &id, &json!(round))
            .await
            .unwrap();
        acked.insert(id, v);
        let before = backup_files(&backups).last().cloned();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while backup_files(&backups).last().cloned() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "no backup within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen.extend(backup_files(&backups));
    }
    assert!(seen.len() >= 3, "one backup per change: {seen:?}");
    // A backup running during the last write may have missed it; the next
    // one sees the change and takes it. Then two files are kept, and no
    // more are written while nothing changes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let settled = backup_files(&backups);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        backup_files(&backups),
        settled,
        "backups written while idle"
    );
    assert_eq!(settled.len(), 2, "{settled:?}");

    sigterm(server.child.id());
    server.expect_clean_exit().await;

    // Later, without backups: a write no backup has, and `edgesync restore`
    // refused while the server runs.
    let newest = backups.join(settled.last().unwrap());
    let restore = || {
        Command::new(env!("CARGO_BIN_EXE_edgesync"))
            .arg("restore")
            .arg(&newest)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .output()
            .unwrap()
    };
    let mut server = start(&settings, &dir);
    let api = server.target.api();
    edgesync_e2e::cases::put_ok(&api, &user, "bk", "late", &json!("lost"))
        .await
        .unwrap();
    let out = restore();
    assert!(!out.status.success(), "restored under a running server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stop the server first"), "{stderr}");
    sigterm(server.child.id());
    server.expect_clean_exit().await;

    let out = restore();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("kept as"), "{stderr}");
    let server = start(&settings, &dir);
    let api = server.target.api();
    assert_kept_after_restart(&api, &user, "bk", &acked, "a restore").await;
    api.get("/v1/docs/bk/late")
        .auth(&user)
        .send()
        .await
        .unwrap()
        .expect(404);
    server.kill_9();
    let kept: Vec<_> = std::fs::read_dir(dir.join("data"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".replaced-"))
        .collect();
    assert_eq!(kept.len(), 1, "the replaced store is kept");

    // A backup that is not there: refused, and no data directory is made.
    let nowhere = dir.join("not-made");
    let out = Command::new(env!("CARGO_BIN_EXE_edgesync"))
        .arg("restore")
        .arg(dir.join("no-such-backup.sqlite3"))
        .arg("--data-dir")
        .arg(&nowhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!nowhere.exists(), "a data directory was made for nothing");

    // Backups are for the embedded store only: refused at start-up on Redis.
    let stderr = refused_on_redis(
        &dir,
        &[
            ("EDGESYNC_JWT_SECRET", Some(common::SECRET.as_ref())),
            ("EDGESYNC_BACKUP_DIR", Some(backups.as_os_str())),
        ],
    );
    assert!(stderr.contains("backed up by Redis"), "{stderr}");
}

/// `edgesync serve` on a Redis store (nobody listens there) with `env` set
/// (`None`: removed) must refuse to start before it reaches the store; its
/// stderr.
fn refused_on_redis(data_dir: &Path, env: &[(&str, Option<&std::ffi::OsStr>)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgesync"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "redis://127.0.0.1:1/0",
    ])
    .arg("--data-dir")
    .arg(data_dir);
    for (var, value) in env {
        match value {
            Some(value) => cmd.env(var, value),
            None => cmd.env_remove(var),
        };
    }
    let serve = cmd.output().unwrap();
    assert!(!serve.status.success(), "started");
    String::from_utf8_lossy(&serve.stderr).into_owned()
}

/// A secret is generated only where it helps: `edgesync token` with no
/// secret to be found (the wrong `--data-dir`, say) fails instead of
/// signing with a new secret no server knows, and instances on a shared
/// store refuse to start each with a secret of its own.
#[test]
fn no_secret_is_generated_where_it_would_not_be_shared() {
    let dir = data_dir("no-secret");
    let _ = std::fs::remove_dir_all(&dir);
    let token = Command::new(env!("CARGO_BIN_EXE_edgesync"))
        .args(["token", "--sub", "alice", "--data-dir"])
        .arg(&dir)
        .env_remove("EDGESYNC_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        !token.status.success(),
        "minted with a secret no server has"
    );
    assert!(token.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&token.stderr);
    assert!(stderr.contains("edgesync serve"), "{stderr}");
    assert!(!dir.join("jwt_secret").exists(), "a secret was written");

    let stderr = refused_on_redis(&dir, &[("EDGESYNC_JWT_SECRET", None)]);
    assert!(stderr.contains("same value"), "{stderr}");
    assert!(!dir.join("jwt_secret").exists(), "a secret was written");
}
