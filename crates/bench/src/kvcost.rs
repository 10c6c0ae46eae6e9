//! What each request type costs in KV operations and bytes: the core is
//! driven in-process ([`Service::handle`]) over a [`Counting`] wrapper
//! around the real SQLite adapter, and over the Spin adapter
//! ([`WasiKv`]) on an in-memory bucket that behaves like Spin's SQLite
//! backend and counts the raw `wasi:keyvalue` calls (the adapter's read-back
//! after every swap shows up there).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use edgesync_core::{Config, Host, Kv, KvError, Service};
use edgesync_kv_wasi::{KeyValues, RawBucket, SwapError, WasiKv};
use http::Request;

use crate::scenarios::{bearer, doc_1k};

/// Counters of one store's operations.
#[derive(Debug, Default)]
pub struct Counts {
    pub get: AtomicU64,
    pub get_many: AtomicU64,
    pub keys_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub set: AtomicU64,
    pub delete: AtomicU64,
    pub cas: AtomicU64,
    pub increment: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A copy of [`Counts`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub get: u64,
    pub get_many: u64,
    pub keys_read: u64,
    pub bytes_read: u64,
    pub set: u64,
    pub delete: u64,
    pub cas: u64,
    pub increment: u64,
    pub bytes_written: u64,
}

impl Counts {
    pub fn snapshot(&self) -> Snapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            get: l(&self.get),
            get_many: l(&self.get_many),
            keys_read: l(&self.keys_read),
            bytes_read: l(&self.bytes_read),
            set: l(&self.set),
            delete: l(&self.delete),
            cas: l(&self.cas),
            increment: l(&self.increment),
            bytes_written: l(&self.bytes_written),
        }
    }
}

impl std::ops::Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            get: self.get - o.get,
            get_many: self.get_many - o.get_many,
            keys_read: self.keys_read - o.keys_read,
            bytes_read: self.bytes_read - o.bytes_read,
            set: self.set - o.set,
            delete: self.delete - o.delete,
            cas: self.cas - o.cas,
            increment: self.increment - o.increment,
            bytes_written: self.bytes_written - o.bytes_written,
        }
    }
}

impl Snapshot {
    pub fn reads(&self) -> u64 {
        self.get + self.get_many
    }
    pub fn writes(&self) -> u64 {
        self.set + self.delete + self.cas + self.increment
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// Counts every [`Kv`] call made through it, and the bytes moved.
pub struct Counting<K> {
    inner: K,
    pub counts: Counts,
}

impl<K> Counting<K> {
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            counts: Counts::default(),
        }
    }
}

impl<K: Kv> Kv for Counting<K> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let v = self.inner.get(key).await?;
        add(&self.counts.get, 1);
        add(&self.counts.keys_read, 1);
        add(&self.counts.bytes_read, v.as_ref().map_or(0, Vec::len));
        Ok(v)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let v = self.inner.get_many(keys).await?;
        add(&self.counts.get_many, 1);
        add(&self.counts.keys_read, keys.len());
        add(
            &self.counts.bytes_read,
            v.iter().map(|x| x.as_ref().map_or(0, Vec::len)).sum(),
        );
        Ok(v)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        add(&self.counts.set, 1);
        add(&self.counts.bytes_written, value.len());
        self.inner.set(key, value).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), KvError> {
        add(&self.counts.delete, 1);
        self.inner.delete_many(keys).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, KvError> {
        add(&self.counts.cas, 1);
        add(&self.counts.bytes_written, new.len());
        self.inner.compare_and_swap(key, current, new).await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        add(&self.counts.increment, 1);
        self.inner.increment(key, delta).await
    }
}

/// An in-memory bucket with Spin's SQLite-backend behaviour (get-many
/// leaves missing keys out; a swap on a key absent at `current()` is an
/// upsert), counting every raw call.
#[derive(Default)]
pub struct MemBucket {
    map: Mutex<HashMap<String, Vec<u8>>>,
    pub counts: Counts,
}

impl RawBucket for MemBucket {
    type Cas = (String, Option<Vec<u8>>);

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let v = self.map.lock().expect("lock").get(key).cloned();
        add(&self.counts.get, 1);
        add(&self.counts.keys_read, 1);
        add(&self.counts.bytes_read, v.as_ref().map_or(0, Vec::len));
        Ok(v)
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        add(&self.counts.set, 1);
        add(&self.counts.bytes_written, value.len());
        self.map
            .lock()
            .expect("lock")
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        add(&self.counts.delete, 1);
        self.map.lock().expect("lock").remove(key);
        Ok(())
    }
    async fn get_many(&self, keys: Vec<String>) -> Result<KeyValues, KvError> {
        let map = self.map.lock().expect("lock");
        let found: KeyValues = keys
            .iter()
            .filter_map(|k| map.get(k).map(|v| (k.clone(), Some(v.clone()))))
            .collect();
        add(&self.counts.get_many, 1);
        add(&self.counts.keys_read, keys.len());
        add(
            &self.counts.bytes_read,
            found
                .iter()
                .map(|(_, v)| v.as_ref().map_or(0, Vec::len))
                .sum(),
        );
        Ok(found)
    }
    async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        add(&self.counts.delete, 1);
        let mut map = self.map.lock().expect("lock");
        for k in keys {
            map.remove(&k);
        }
        Ok(())
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        add(&self.counts.increment, 1);
        let mut map = self.map.lock().expect("lock");
        let current = map
            .get(key)
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, i64::from_le_bytes);
        let new = current + delta;
        map.insert(key.to_owned(), new.to_le_bytes().to_vec());
        Ok(new)
    }
    async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let v = self.map.lock().expect("lock").get(key).cloned();
        add(&self.counts.get, 1);
        add(&self.counts.keys_read, 1);
        add(&self.counts.bytes_read, v.as_ref().map_or(0, Vec::len));
        Ok(((key.to_owned(), v.clone()), v))
    }
    async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
        add(&self.counts.cas, 1);
        add(&self.counts.bytes_written, value.len());
        let mut map = self.map.lock().expect("lock");
        let (key, seen) = cas;
        if seen.is_some() && map.get(&key) != seen.as_ref() {
            return Err(SwapError::CasFailed);
        }
        map.insert(key, value.to_vec());
        Ok(())
    }
}

/// A host for in-process requests: real clock, no waiting.
struct BenchHost {
    n: AtomicU64,
}

impl Host for BenchHost {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
    fn random_u64(&self) -> u64 {
        // splitmix64: ids only need to be distinct.
        let mut z = self.n.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    async fn wait_for_change(&self, _user: &str, _deadline_millis: u64) {}
    fn log_changed(&self, _user: &str, _seq: u64) {}
}

/// One request type's average cost.
#[derive(Debug, Clone)]
pub struct Cost {
    pub name: &'static str,
    pub status: u16,
    pub samples: u64,
    /// Sum over the samples.
    pub total: Snapshot,
}

struct Driver<K: Kv> {
    service: Service<K, BenchHost>,
    auth: http::HeaderValue,
}

impl<K: Kv> Driver<K> {
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<String>,
    ) -> (u16, Vec<u8>) {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", self.auth.clone());
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let request = match body {
            Some(body) => b.header("content-type", ct).body(body.into_bytes()),
            None => b.body(Vec::new()),
        }
        .expect("valid request");
        let resp = self.service.handle(request).await;
        (resp.status().as_u16(), resp.into_body())
    }

    async fn head(&self) -> u64 {
        let (_, body) = self.call("GET", "/v1/head", &[], None).await;
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["head"].as_u64())
            .unwrap_or(0)
    }
}

/// Measure every request type on `kv`; `counts` must be the counters that
/// the wanted layer updates.
async fn measure<K: Kv>(kv: K, counts: impl Fn(&K) -> Snapshot, samples: u64) -> Result<Vec<Cost>> {
    let mut config = Config::with_secret(crate::procs::JWT_SECRET.as_bytes().to_vec());
    config.rate_limit_per_second = 0;
    let driver = Driver {
        service: Service::new(
            config,
            kv,
            BenchHost {
                n: AtomicU64::new(1),
            },
        ),
        auth: bearer("kv-cost"),
    };
    let doc = doc_1k();
    // 200 documents: enough for pages of 100 changes and listing pages of 100.
    for i in 0..200 {
        let (status, _) = driver
            .call(
                "PUT",
                &format!("/v1/docs/todos/seed{i}"),
                &[],
                Some(doc.clone()),
            )
            .await;
        if status >= 300 {
            bail!("seeding the KV-cost user: {status}");
        }
    }
    let snap = || counts(driver.service.kv());
    let mut costs: Vec<Cost> = Vec::new();
    let mut record = |name: &'static str, status: u16, d: Snapshot| match costs
        .iter_mut()
        .find(|c| c.name == name)
    {
        Some(c) => {
            c.samples += 1;
            c.total = add_snap(c.total, d);
            c.status = status;
        }
        None => costs.push(Cost {
            name,
            status,
            samples: 1,
            total: d,
        }),
    };
    for n in 0..samples {
        let head = driver.head().await;
        macro_rules! step {
            ($name:expr, $method:expr, $path:expr, $headers:expr, $body:expr) => {{
                let before = snap();
                let (status, _) = driver.call($method, &*$path, $headers, $body).await;
                record($name, status, snap() - before);
            }};
        }
        let inm = [("if-none-match", format!("\"{head}\""))];
        step!(
            "changes: idle poll (304)",
            "GET",
            format!("/v1/changes?since={head}"),
            &inm,
            None
        );
        step!("head probe (304)", "GET", "/v1/head", &inm, None);
        step!(
            "changes: page of 1",
            "GET",
            format!("/v1/changes?since={}", head - 1),
            &[],
            None
        );
        step!(
            "changes: page of 100",
            "GET",
            format!("/v1/changes?since={}&limit=100", head - 100),
            &[],
            None
        );
        step!(
            "GET document",
            "GET",
            format!("/v1/docs/todos/seed{n}"),
            &[],
            None
        );
        step!(
            "listing: page of 100",
            "GET",
            "/v1/docs?collection=todos&limit=100",
            &[],
            None
        );
        step!(
            "PUT create",
            "PUT",
            format!("/v1/docs/todos/new{n}"),
            &[],
            Some(doc.clone())
        );
        step!(
            "PUT update",
            "PUT",
            format!("/v1/docs/todos/seed{n}"),
            &[],
            Some(doc.clone())
        );
        step!(
            "PATCH",
            "PATCH",
            format!("/v1/docs/todos/seed{n}"),
            &[],
            Some("{\"done\":true}".to_owned())
        );
        step!(
            "DELETE",
            "DELETE",
            format!("/v1/docs/todos/new{n}"),
            &[],
            None
        );
        let key = [("idempotency-key", format!("key-{n}"))];
        step!(
            "PUT with Idempotency-Key",
            "PUT",
            format!("/v1/docs/todos/idem{n}"),
            &key,
            Some(doc.clone())
        );
        step!(
            "PUT with Idempotency-Key, replayed",
            "PUT",
            format!("/v1/docs/todos/idem{n}"),
            &key,
            Some(doc.clone())
        );
        let items: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                serde_json::json!({"id": format!("b{n}-{i}"), "op": "put", "collection": "todos",
                    "doc": format!("batch{n}-{i}"), "value": {"n": i}})
            })
            .collect();
        step!(
            "batch of 10 puts",
            "POST",
            "/v1/mutations",
            &[],
            Some(serde_json::json!({"mutations": items}).to_string())
        );
    }
    Ok(costs)
}

fn add_snap(a: Snapshot, b: Snapshot) -> Snapshot {
    Snapshot {
        get: a.get + b.get,
        get_many: a.get_many + b.get_many,
        keys_read: a.keys_read + b.keys_read,
        bytes_read: a.bytes_read + b.bytes_read,
        set: a.set + b.set,
        delete: a.delete + b.delete,
        cas: a.cas + b.cas,
        increment: a.increment + b.increment,
        bytes_written: a.bytes_written + b.bytes_written,
    }
}

/// Costs over the SQLite adapter (native) and over the Spin adapter's raw
/// calls, by request type.
pub async fn run(samples: u64) -> Result<(Vec<Cost>, Vec<Cost>)> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-kv")
        .tempdir()?;
    let sqlite =
        edgesync_sqlite::SqliteKv::open(dir.path().join("kv.sqlite3"), Default::default())?;
    let native = measure(Counting::new(sqlite), |k| k.counts.snapshot(), samples).await?;
    let wasi = measure(
        WasiKv::new(MemBucket::default()),
        |k| k.bucket().counts.snapshot(),
        samples,
    )
    .await?;
    Ok((native, wasi))
}
