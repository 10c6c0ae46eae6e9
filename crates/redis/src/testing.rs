//! A throwaway `redis-server` for tests (feature `testing`): started on a
//! free loopback port in a temporary directory with persistence off, and
//! killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start `redis-server` (or `$EDGESYNC_REDIS_SERVER`, e.g.
    /// `valkey-server`). Panics with an explanation if it cannot: this is
    /// for tests only.
    pub fn start() -> Self {
        let mut last_error = String::new();
        // The port is free when we look and taken when Redis binds it; if
        // someone else grabbed it in between, try another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("no free loopback port")
                .port();
            let dir = tempfile::tempdir().expect("temp dir");
            match launch(port, dir.path()) {
                Ok(child) => return Self { child, port, dir },
                Err(e) => last_error = e,
            }
        }
        panic!("could not start a test redis-server: {last_error}");
    }

    /// Kill the server and start a new one on the same port, as an
    /// operator restarting it would (persistence is off: the data is
    /// gone). Clients see connections refused in between.
    pub fn restart(&mut self) {
        self.stop();
        self.child = launch(self.port, self.dir.path())
            .unwrap_or_else(|e| panic!("could not restart the test redis-server: {e}"));
    }

    /// `redis://127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kill the server (as `Drop` does), e.g. to test failure handling.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the server on `port` in `dir` and wait (10 s at most) for its PONG.
fn launch(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    let program = std::env::var("EDGESYNC_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut child = Command::new(&program)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--loglevel", "warning"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program:?} ({e}); install the redis-server package \
                 (Debian: apt-get install redis-server) or set EDGESYNC_REDIS_SERVER"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{program} exited with {status}"));
        }
        if ping(port) {
            return Ok(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!("{program} did not answer PING within 10 s"))
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
