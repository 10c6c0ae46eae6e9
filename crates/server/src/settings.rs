//! Where the native server's settings come from: every core setting `name`
//! from the environment variable `EDGESYNC_<NAME>` (see
//! [`edgesync_core::config::SETTING_NAMES`]), and the JWT secret from
//! `EDGESYNC_JWT_SECRET` or, when that is unset, from
//! `<data-dir>/jwt_secret`, generated on first start. The `serve` and
//! `token` commands both resolve settings here, so a token minted with the
//! generated secret is accepted by the server.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use edgesync_core::Config;

/// Default listen address (`EDGESYNC_LISTEN` / `--listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default data directory (`EDGESYNC_DATA_DIR` / `--data-dir`).
pub const DEFAULT_DATA_DIR: &str = "./.edgesync";
/// Name of the generated secret inside the data directory.
pub const SECRET_FILE: &str = "jwt_secret";
/// Environment variable choosing SQLite's durability (`normal` or `full`).
pub const SQLITE_SYNCHRONOUS_ENV: &str = "EDGESYNC_SQLITE_SYNCHRONOUS";

/// Directory for scheduled backups of the SQLite store (unset: no backups).
pub const BACKUP_DIR_ENV: &str = "EDGESYNC_BACKUP_DIR";
/// Seconds between backups.
pub const BACKUP_INTERVAL_ENV: &str = "EDGESYNC_BACKUP_INTERVAL_SECONDS";
/// How many backup files to keep.
pub const BACKUP_KEEP_ENV: &str = "EDGESYNC_BACKUP_KEEP";
/// Default seconds between backups: hourly.
pub const DEFAULT_BACKUP_INTERVAL_SECONDS: u64 = 3600;
/// Longest interval between backups: a year (longer is not a schedule).
pub const MAX_BACKUP_INTERVAL_SECONDS: u64 = 365 * 24 * 3600;
/// Default number of backups kept: a day of hourly ones.
pub const DEFAULT_BACKUP_KEEP: usize = 24;

/// The environment variable for core setting `name`.
pub fn env_name(name: &str) -> String {
    format!("EDGESYNC_{}", name.to_ascii_uppercase())
}

/// Reads the process environment (unset or non-UTF-8 values count as
/// unset).
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Where the JWT secret came from (for the start-up log; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `EDGESYNC_JWT_SECRET`.
    Environment,
    /// An existing `<data-dir>/jwt_secret`.
    File(PathBuf),
    /// Generated just now into `<data-dir>/jwt_secret`.
    Generated(PathBuf),
}

/// A setting could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A core setting is invalid. (Not marked as the error's source: the
    /// message already includes it, and error chains would repeat it.)
    #[error("{0} (environment variable {var})", var = setting_var(.0))]
    Config(edgesync_core::ConfigError),
    /// The secret file could not be read or written. (The cause is the
    /// source, not repeated in the message.)
    #[error("JWT secret file {path}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// There is no secret, and generating one would not help: `token`
    /// (a secret no server uses signs tokens every server refuses), or a
    /// store shared by several instances (each would generate its own).
    #[error("no JWT secret: EDGESYNC_JWT_SECRET is not set and {path} does not exist. {advice}")]
    NoSecret {
        /// The secret file looked for.
        path: PathBuf,
        /// What to do.
        advice: &'static str,
    },
    /// The secret file exists but does not hold a usable secret.
    #[error("JWT secret file {0} is empty or shorter than 32 characters; fix or delete it (deleting it invalidates every token issued so far)")]
    BadSecretFile(PathBuf),
    /// A native-only setting is invalid.
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl From<edgesync_core::ConfigError> for SettingsError {
    fn from(err: edgesync_core::ConfigError) -> Self {
        Self::Config(err)
    }
}

fn setting_var(err: &edgesync_core::ConfigError) -> String {
    match err {
        edgesync_core::ConfigError::Missing(name) => env_name(name),
        edgesync_core::ConfigError::Invalid { name, .. } => env_name(name),
    }
}

/// What to do when there is no secret at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSecret {
    /// Generate one into the data directory (`serve` on its own store).
    Generate,
    /// Refuse, with this advice.
    Refuse(&'static str),
}

/// Build the core [`Config`] from `env` (a lookup of environment variables
/// by full name, e.g. [`process_env`]), taking the secret from
/// `EDGESYNC_JWT_SECRET` or from `data_dir`'s secret file, or else doing
/// what `missing` says.
pub fn load_config(
    data_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
    missing: MissingSecret,
) -> Result<(Config, SecretSource), SettingsError> {
    let from_env = env(&env_name("jwt_secret")).filter(|s| !s.trim().is_empty());
    let (secret, source) = match from_env {
        Some(secret) => (secret, SecretSource::Environment),
        None => load_or_generate_secret(data_dir, missing)?,
    };
    let config = Config::from_lookup(|name| {
        if name == "jwt_secret" {
            Some(secret.clone())
        } else {
            env(&env_name(name))
        }
    })?;
    Ok((config, source))
}

/// SQLite durability from `EDGESYNC_SQLITE_SYNCHRONOUS` (default `normal`).
pub fn sqlite_synchronous(
    env: impl Fn(&str) -> Option<String>,
) -> Result<edgesync_sqlite::Synchronous, SettingsError> {
    match env(SQLITE_SYNCHRONOUS_ENV).filter(|v| !v.trim().is_empty()) {
        None => Ok(edgesync_sqlite::Synchronous::default()),
        Some(value) => edgesync_sqlite::Synchronous::parse(&value).ok_or(SettingsError::Invalid {
            var: SQLITE_SYNCHRONOUS_ENV,
            value,
            reason: "expected `normal` (survives a process crash) or `full` (survives power loss)",
        }),
    }
}

/// Scheduled backups from `EDGESYNC_BACKUP_DIR` (off when unset or
/// empty), `EDGESYNC_BACKUP_INTERVAL_SECONDS` and `EDGESYNC_BACKUP_KEEP`.
pub fn backup_options(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<crate::BackupOptions>, SettingsError> {
    let set = |var: &str| env(var).filter(|v| !v.trim().is_empty());
    let whole = |var: &'static str, default: u64, max: u64, reason: &'static str| match set(var) {
        None => Ok(default),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(SettingsError::Invalid { var, value, reason }),
        },
    };
    let interval = whole(
        BACKUP_INTERVAL_ENV,
        DEFAULT_BACKUP_INTERVAL_SECONDS,
        MAX_BACKUP_INTERVAL_SECONDS,
        "expected a whole number of seconds, from 1 to 31536000 (a year)",
    )?;
    let keep = whole(
        BACKUP_KEEP_ENV,
        DEFAULT_BACKUP_KEEP as u64,
        u64::MAX,
        "expected a whole number, at least 1",
    )?;
    Ok(set(BACKUP_DIR_ENV).map(|dir| crate::BackupOptions {
        dir: PathBuf::from(dir),
        interval: std::time::Duration::from_secs(interval),
        keep: usize::try_from(keep).unwrap_or(usize::MAX),
    }))
}

/// Create `dir` (and parents) if needed; a directory created here is
/// private to the user (mode 0700), since it holds the secret and the data.
pub fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn load_or_generate_secret(
    data_dir: &Path,
    missing: MissingSecret,
) -> Result<(String, SecretSource), SettingsError> {
    let path = data_dir.join(SECRET_FILE);
    let io_err = |source| SettingsError::SecretFile {
        path: path.clone(),
        source,
    };
    match read_secret(&path) {
        Ok(secret) => return Ok((secret?, SecretSource::File(path))),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let MissingSecret::Refuse(advice) = missing {
        return Err(SettingsError::NoSecret { path, advice });
    }
    ensure_data_dir(data_dir).map_err(io_err)?;
    let mut bytes = [0u8; 40];
    getrandom::fill(&mut bytes).map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let (secret, nonce) = (hex(&bytes[..32]), hex(&bytes[32..]));

    // Write a complete file under a temporary name, then link it into place:
    // the link fails if another process created the secret meanwhile, and
    // a crash never leaves a half-written secret behind. The name is
    // unpredictable and the file new (O_EXCL: never a file or symlink
    // someone left there, whose permissions the secret would take).
    let tmp = data_dir.join(format!(".{SECRET_FILE}.{nonce}.tmp"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(io_err)?;
    let written = (|| {
        file.write_all(secret.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::hard_link(&tmp, &path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok((secret, SecretSource::Generated(path))),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            let secret = read_secret(&path).map_err(io_err)??;
            Ok((secret, SecretSource::File(path)))
        }
        Err(e) => Err(io_err(e)),
    }
}

fn read_secret(path: &Path) -> std::io::Result<Result<String, SettingsError>> {
    let text = fs::read_to_string(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "JWT secret file is readable by other users; chmod 600 it");
            }
        }
    }
    let secret = text.trim();
    if secret.len() < 32 {
        return Ok(Err(SettingsError::BadSecretFile(path.to_path_buf())));
    }
    Ok(Ok(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn backup_settings() {
        assert_eq!(backup_options(env(&[])).unwrap(), None);
        assert_eq!(
            backup_options(env(&[(BACKUP_DIR_ENV, "/b")])).unwrap(),
            Some(crate::BackupOptions {
                dir: "/b".into(),
                interval: std::time::Duration::from_secs(3600),
                keep: 24,
            })
        );
        let custom = backup_options(env(&[
            (BACKUP_DIR_ENV, "/b"),
            (BACKUP_INTERVAL_ENV, "60"),
            (BACKUP_KEEP_ENV, "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((custom.interval.as_secs(), custom.keep), (60, 3));
        for (var, bad) in [
            (BACKUP_INTERVAL_ENV, "0"),
            (BACKUP_INTERVAL_ENV, "31536001"),
            (BACKUP_INTERVAL_ENV, "18446744073709551615"),
            (BACKUP_KEEP_ENV, "-1"),
            (BACKUP_KEEP_ENV, "many"),
        ] {
            let err = backup_options(env(&[(BACKUP_DIR_ENV, "/b"), (var, bad)])).unwrap_err();
            assert!(err.to_string().contains(var), "{err}");
        }
    }

    #[test]
    fn secret_is_generated_once_privately_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested/data");
        let (first, source) = load_config(&data, env(&[]), MissingSecret::Generate).unwrap();
        let path = data.join(SECRET_FILE);
        assert_eq!(source, SecretSource::Generated(path.clone()));
        assert_eq!(first.jwt_secret.len(), 64, "32 random bytes, hex");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = fs::metadata(&data).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        let (second, source) = load_config(&data, env(&[]), MissingSecret::Generate).unwrap();
        assert_eq!(source, SecretSource::File(path));
        assert_eq!(first.jwt_secret, second.jwt_secret);
        // Nothing else was left in the directory.
        let entries: Vec<_> = fs::read_dir(&data).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn environment_secret_wins_and_touches_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secret = "s".repeat(40);
        let (config, source) = load_config(
            &data,
            env(&[("EDGESYNC_JWT_SECRET", &secret)]),
            MissingSecret::Generate,
        )
        .unwrap();
        assert_eq!(source, SecretSource::Environment);
        assert_eq!(config.jwt_secret, secret.as_bytes());
        assert!(!data.exists());
    }

    #[test]
    fn every_core_setting_is_read_from_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        let names = edgesync_core::config::SETTING_NAMES;
        assert!(names.contains(&"max_wait_seconds"));
        let (config, _) = load_config(
            dir.path(),
            env(&[
                ("EDGESYNC_MAX_WAIT_SECONDS", "7"),
                ("EDGESYNC_POLL_INTERVAL_SECONDS", "3"),
                ("EDGESYNC_RETENTION_ENTRIES", "500"),
                ("EDGESYNC_RATE_LIMIT_PER_SECOND", "0"),
                ("EDGESYNC_MAX_BODY_BYTES", "4096"),
                ("EDGESYNC_CORS_ORIGINS", "*"),
                ("EDGESYNC_JWT_AUDIENCE", "aud"),
                ("EDGESYNC_JWT_ISSUER", "iss"),
            ]),
            MissingSecret::Generate,
        )
        .unwrap();
        assert_eq!(config.max_wait_seconds, 7);
        assert_eq!(config.poll_interval_seconds, 3);
        assert_eq!(config.retention_entries, 500);
        assert_eq!(config.rate_limit_per_second, 0);
        assert_eq!(config.max_body_bytes, 4096);
        assert_eq!(config.cors_origins, edgesync_core::CorsOrigins::Any);
        assert_eq!(config.jwt_audience.as_deref(), Some("aud"));
        assert_eq!(config.jwt_issuer.as_deref(), Some("iss"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_config(
            dir.path(),
            env(&[("EDGESYNC_MAX_WAIT_SECONDS", "soon")]),
            MissingSecret::Generate,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("EDGESYNC_MAX_WAIT_SECONDS"), "{err}");
        let err = load_config(
            dir.path(),
            env(&[("EDGESYNC_JWT_SECRET", "tiny-secret-xyz")]),
            MissingSecret::Generate,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("EDGESYNC_JWT_SECRET"), "{err}");
        assert!(
            !err.contains("tiny-secret"),
            "the secret is never echoed: {err}"
        );
        let err = sqlite_synchronous(env(&[(SQLITE_SYNCHRONOUS_ENV, "sometimes")])).unwrap_err();
        assert!(err.to_string().contains(SQLITE_SYNCHRONOUS_ENV));
        assert_eq!(
            sqlite_synchronous(env(&[(SQLITE_SYNCHRONOUS_ENV, "FULL")])).unwrap(),
            edgesync_sqlite::Synchronous::Full
        );
    }

    #[test]
    fn a_missing_secret_can_be_refused_instead_of_generated() {
        let dir = tempfile::tempdir().unwrap();
        let refuse = MissingSecret::Refuse("start the server first");
        let err = load_config(dir.path(), env(&[]), refuse).unwrap_err();
        assert!(matches!(err, SettingsError::NoSecret { .. }), "{err}");
        assert!(err.to_string().contains("start the server first"), "{err}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written"
        );
        // An existing secret, or one in the environment, is used as ever.
        let secret = "s".repeat(40);
        load_config(dir.path(), env(&[("EDGESYNC_JWT_SECRET", &secret)]), refuse).unwrap();
        load_config(dir.path(), env(&[]), MissingSecret::Generate).unwrap();
        let (_, source) = load_config(dir.path(), env(&[]), refuse).unwrap();
        assert!(matches!(source, SecretSource::File(_)));
    }

    #[test]
    fn a_truncated_secret_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SECRET_FILE), "abc\n").unwrap();
        let err = load_config(dir.path(), env(&[]), MissingSecret::Generate).unwrap_err();
        assert!(matches!(err, SettingsError::BadSecretFile(_)), "{err}");
    }

    /// A file (or symlink) someone left where a temporary file could be
    /// is never what the secret is written to: the secret is a new file,
    /// readable by its owner only.
    #[cfg(unix)]
    #[test]
    fn a_generated_secret_is_private_whatever_was_left_in_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir
            .path()
            .join(format!(".{SECRET_FILE}.{}.tmp", std::process::id()));
        fs::write(&tmp, b"").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, source) = load_config(dir.path(), env(&[]), MissingSecret::Generate).unwrap();
        let path = dir.path().join(SECRET_FILE);
        assert_eq!(source, SecretSource::Generated(path.clone()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the generated secret is readable by others");
        assert_eq!(
            fs::read(&tmp).unwrap(),
            b"",
            "the file left there is untouched"
        );
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let planted = tmp.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            names,
            [planted, SECRET_FILE.to_owned()],
            "nothing else left"
        );
    }
}
