//! [`RawBucket`] over the `wasi:keyvalue@0.2.0-draft2` imports.
//!
//! Deliberately a one-to-one mapping: every backend quirk is corrected in
//! `edgesync_kv_wasi::WasiKv`, where the simulator exercises it too.

use std::cell::OnceCell;

use edgesync_core::{KvError, KvErrorKind};
use edgesync_kv_wasi::{RawBucket, SwapError};

use crate::bindings::wasi::keyvalue::{atomics, batch, store};
use crate::store_errors::{message, StoreError};

/// The store label the app's `spin.toml` grants both components.
pub const STORE_LABEL: &str = "default";

/// One `wasi:keyvalue` bucket, opened on first use and then kept for the
/// rest of the request (a Spin instance serves exactly one request).
/// Opening lazily keeps requests that never touch the store, such as
/// `/v1/health`, from failing when the store is unreachable.
pub struct SpinBucket {
    label: &'static str,
    bucket: OnceCell<Result<store::Bucket, KvError>>,
}

impl SpinBucket {
    /// A bucket for the store with this label (see [`STORE_LABEL`]).
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            bucket: OnceCell::new(),
        }
    }

    fn bucket(&self) -> Result<&store::Bucket, KvError> {
        self.bucket
            .get_or_init(|| {
                store::open(self.label).map_err(|e| {
                    let err = store_error(&format!("open `{}`", self.label), e);
                    // Almost always a deployment mistake: make it visible.
                    eprintln!("edgesync: {err}");
                    err
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn store_error(op: &str, error: store::Error) -> KvError {
    let message = match &error {
        store::Error::NoSuchStore => message(op, STORE_LABEL, StoreError::NoSuchStore),
        store::Error::AccessDenied => message(op, STORE_LABEL, StoreError::AccessDenied),
        store::Error::Other(detail) => message(op, STORE_LABEL, StoreError::Other(detail)),
    };
    // wasi:keyvalue does not say whether a backend failure is transient;
    // the core answers every kind with 503 + Retry-After anyway.
    KvError::new(KvErrorKind::Other, message)
}

impl RawBucket for SpinBucket {
    type Cas = atomics::Cas;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.bucket()?.get(key).map_err(|e| store_error("get", e))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.bucket()?
            .set(key, value)
            .map_err(|e| store_error("set", e))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.bucket()?
            .delete(key)
            .map_err(|e| store_error("delete", e))
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        batch::get_many(self.bucket()?, &keys).map_err(|e| store_error("get-many", e))
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        batch::delete_many(self.bucket()?, &keys).map_err(|e| store_error("delete-many", e))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        atomics::increment(self.bucket()?, key, delta).map_err(|e| store_error("increment", e))
    }

    async fn cas_current(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>), KvError> {
        let cas = atomics::Cas::new(self.bucket()?, key).map_err(|e| store_error("cas.new", e))?;
        let current = cas.current().map_err(|e| store_error("cas.current", e))?;
        Ok((cas, current))
    }

    async fn cas_swap(&self, cas: Self::Cas, value: &[u8]) -> Result<(), SwapError> {
        match atomics::swap(cas, value) {
            Ok(()) => Ok(()),
            // The fresh handle `cas-failed` carries is dropped: the core
            // decides itself whether and how to retry.
            Err(atomics::CasError::CasFailed(_)) => Err(SwapError::CasFailed),
            Err(atomics::CasError::StoreError(e)) => Err(SwapError::Store(store_error("swap", e))),
        }
    }
}
