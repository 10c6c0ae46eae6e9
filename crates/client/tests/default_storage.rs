//! A client built without a storage choice keeps its replica durably in
//! SQLite at the default location. One test in its own binary, because it
//! sets the process's environment.

mod support;

use edgesync_client::{default_replica_path, Client, Error, NoDefaultLocation};
use serde_json::json;

#[test]
fn without_storage_the_replica_is_sqlite_in_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_DATA_HOME", data.path());
    // Nothing listens there: nothing here needs the server.
    let url = "http://127.0.0.1:9";
    let token = support::token();

    let queued = {
        let c = Client::builder(url, &token).build().unwrap();
        c.put("todos", "a", json!("offline")).unwrap()
    };
    let path = default_replica_path(url, &token).unwrap();
    assert!(path.starts_with(data.path().join("edgesync")), "{path:?}");
    assert!(path.is_file(), "{path:?}");

    // Reopened (a restart): the queue is still there.
    let c = Client::builder(url, &token).build().unwrap();
    let pending = c.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, queued.key);
    drop(c);

    // Another user of the same server gets another replica.
    let bob = token.replacen(
        token.split('.').nth(1).unwrap(),
        // {"sub":"bob","exp":1}
        "eyJzdWIiOiJib2IiLCJleHAiOjF9",
        1,
    );
    let c = Client::builder(url, &bob).build().unwrap();
    assert!(c.pending().unwrap().is_empty());
    assert_ne!(default_replica_path(url, &bob).unwrap(), path);

    // A URL that is no URL is refused before a replica is made for it.
    assert!(Client::builder("not a url", &token).build().is_err());
    let stray = default_replica_path("not a url", &token).unwrap();
    assert!(!stray.exists(), "{stray:?}");

    // No way to name a default: a typed error, not a mutation error.
    let err = Client::builder(url, "opaque").build().unwrap_err();
    assert!(
        matches!(err, Error::NoStorage(NoDefaultLocation::NoSubject)),
        "{err}"
    );
    for var in ["XDG_DATA_HOME", "HOME", "LOCALAPPDATA"] {
        std::env::remove_var(var);
    }
    let err = Client::builder(url, &token).build().unwrap_err();
    assert!(
        matches!(err, Error::NoStorage(NoDefaultLocation::NoDataDir)),
        "{err}"
    );
    assert!(err.to_string().contains(".sqlite(path)"), "{err}");
    // An explicit choice needs neither.
    Client::builder(url, "opaque").memory().build().unwrap();
}
