//! What each request type costs in KV operations and bytes: the core is
//! driven in-process ([`Service::handle`]) over a [`Counting`] wrapper
//! around the real SQLite adapter, and over the Spin adapter
//! ([`WasiKv`]) on the simulator's in-memory bucket with Spin's SQLite
//! backend behaviour, whose raw `wasi:keyvalue` calls a [`CountingBucket`]
//! counts (the adapter's read-back after every swap shows up there).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use edgesync_core::{Config, Kv, Service};
use edgesync_kv_wasi::WasiKv;
use edgesync_sim::counting::{Counting, CountingBucket, Snapshot};
use edgesync_sim::direct::DirectHost;
use edgesync_sim::store::{Backend, MemStore, SimBucket};
use http::Request;

use crate::scenarios::{bearer, doc_1k};

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
    service: Service<K, DirectHost>,
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
            // The tokens are minted on the real clock; no request here waits.
            DirectHost::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            ),
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
            c.total = c.total + d;
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

/// Costs over the SQLite adapter (native) and over the Spin adapter's raw
/// calls, by request type.
pub async fn run(samples: u64) -> Result<(Vec<Cost>, Vec<Cost>)> {
    let dir = tempfile::Builder::new()
        .prefix("edgesync-bench-kv")
        .tempdir()?;
    let sqlite =
        edgesync_sqlite::SqliteKv::open(dir.path().join("kv.sqlite3"), Default::default())?;
    let native = measure(Counting::new(sqlite), |k| k.counts.snapshot(), samples).await?;
    let spin_sqlite = SimBucket::new(MemStore::new(), Backend::SpinSqlite);
    let wasi = measure(
        WasiKv::new(CountingBucket::new(spin_sqlite)),
        |k| k.bucket().counts.snapshot(),
        samples,
    )
    .await?;
    Ok((native, wasi))
}
