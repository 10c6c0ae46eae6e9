//! What the app logs when the key-value store refuses an operation.
//!
//! Kept apart from the `wasi:keyvalue` bindings (which exist only in the
//! wasm build) so that the advice can be tested natively.

/// A `wasi:keyvalue` `store.error`, without the bindings' types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<'a> {
    /// `no-such-store`: Spin has no open store behind the handle. A label
    /// the runtime config does not define never gets this far: `spin up`
    /// refuses to start an app whose components name one.
    NoSuchStore,
    /// `access-denied`: what `store.open` answers for a label the
    /// component's `key_value_stores` does not list.
    AccessDenied,
    /// `other`: the backend's own message.
    Other(&'a str),
}

/// The message for `error`, returned by operation `op` on the store
/// labelled `label`. Access denied on a label is almost always a manifest
/// without `key_value_stores = ["<label>"]` for the component, so that
/// advice goes with it.
pub fn message(op: &str, label: &str, error: StoreError<'_>) -> String {
    match error {
        StoreError::AccessDenied => format!(
            "{op}: access to store `{label}` denied (the component needs \
             key_value_stores = [\"{label}\"] in spin.toml)"
        ),
        StoreError::NoSuchStore => format!("{op}: no such store `{label}`"),
        StoreError::Other(detail) => format!("{op}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_advice_goes_with_access_denied() {
        let denied = message("open `default`", "default", StoreError::AccessDenied);
        assert!(
            denied.contains("key_value_stores = [\"default\"]"),
            "{denied}"
        );
        let missing = message("get", "default", StoreError::NoSuchStore);
        assert!(!missing.contains("key_value_stores"), "{missing}");
        assert_eq!(
            message("swap", "default", StoreError::Other("connection reset")),
            "swap: connection reset"
        );
    }
}
