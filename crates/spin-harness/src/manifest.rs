//! Reading a Spin application manifest (`spin.toml`, manifest version 2).
//!
//! Supported: `spin_manifest_version = 2`; `[application]` (`name`,
//! `version`; other keys ignored); app-level `[variables]` (`default`,
//! `required`, `secret`, `description`); `[[trigger.http]]` entries with
//! `route` (a string, or `{ private = true }`), `component` (an id) and an
//! optional `executor = { type = "http" }`; `[component.<id>]` with `source`
//! (a local path, relative to the manifest's directory), `key_value_stores`,
//! `variables` (templates), `environment` and `allowed_outbound_hosts`.
//! `[component.<id>.build]`, `description`, `exclude_files`, `tool`,
//! `profile` and the application's `description`, `authors`, `targets`,
//! `trigger` and `tool` are read and ignored.
//!
//! A field Spin's v2 schema does not know is an error, as in Spin (a
//! misspelt `key-value-stores` must not pass here and fail on a real host).
//! Rejected with an error rather than silently mis-served: other manifest
//! versions, other trigger types, inline trigger components, non-http
//! executors, static responses, remote/registry `source`s, `files`,
//! `sqlite_databases`, `ai_models`, component dependencies, and a variable
//! that is both `required` and has a `default` (or neither, which Spin also
//! rejects).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::variables::{validate_name, Template, VariableError};

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid manifest: {0}")]
    Toml(#[from] toml::de::Error),
    /// The manifest is well-formed but not usable.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// The manifest uses a Spin feature the harness does not provide.
    #[error("unsupported by the harness: {0}")]
    Unsupported(String),
    /// A variable name or template is wrong.
    #[error("invalid manifest: {0}")]
    Variable(#[from] VariableError),
}

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

/// An application variable (`[variables]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppVariable {
    /// `default`.
    #[serde(default)]
    pub default: Option<String>,
    /// `required`.
    #[serde(default)]
    pub required: bool,
    /// `secret` (the harness never logs values, secret or not).
    #[serde(default)]
    pub secret: bool,
}

/// What an HTTP trigger routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerRoute {
    /// A route pattern such as `/v1/docs` or `/v1/docs/...`.
    Path(String),
    /// `{ private = true }`: reachable only by service chaining (never here).
    Private,
}

/// One `[[trigger.http]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrigger {
    /// The trigger's `id`, if given.
    pub id: Option<String>,
    /// `route`.
    pub route: TriggerRoute,
    /// `component`.
    pub component: String,
}

/// One `[component.<id>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentManifest {
    /// The id.
    pub id: String,
    /// `source`, resolved against the manifest's directory.
    pub source: PathBuf,
    /// `key_value_stores`.
    pub key_value_stores: Vec<String>,
    /// `[component.<id>.variables]`: name → template.
    pub variables: BTreeMap<String, String>,
    /// `environment`: WASI environment variables.
    pub environment: BTreeMap<String, String>,
    /// `allowed_outbound_hosts`.
    pub allowed_outbound_hosts: Vec<String>,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `[application] name`.
    pub name: String,
    /// `[application] version`.
    pub version: Option<String>,
    /// The directory the manifest is in.
    pub dir: PathBuf,
    /// `[variables]`.
    pub variables: BTreeMap<String, AppVariable>,
    /// `[[trigger.http]]`, in manifest order.
    pub http_triggers: Vec<HttpTrigger>,
    /// `[component.*]`.
    pub components: BTreeMap<String, ComponentManifest>,
}

// The raw shapes refuse unknown fields where Spin's manifest schema (v2)
// does, and list every field it knows, so that a manifest the harness runs
// is one `spin up` would load: a misspelt field fails here as it fails
// there. Fields the harness has no use for are read and ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: BTreeMap<String, toml::Value>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    targets: Vec<toml::Value>,
    #[serde(default)]
    trigger: Option<toml::Table>,
    #[serde(default)]
    tool: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct RawTrigger {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    route: Option<toml::Value>,
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(default)]
    executor: Option<toml::Table>,
    #[serde(default)]
    static_response: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    dependencies: Option<toml::Table>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    build: Option<toml::Table>,
    #[serde(default)]
    tool: Option<toml::Table>,
    #[serde(default)]
    dependencies_inherit_configuration: bool,
    #[serde(default)]
    profile: Option<toml::Table>,
}

impl Manifest {
    /// Read and validate the manifest at `path`.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        Self::parse(&text, &dir)
    }

    /// Parse and validate manifest text; `dir` is what `source` paths are
    /// relative to.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text)?;
        if raw.spin_manifest_version.as_integer() != Some(2) {
            return Err(ManifestError::Unsupported(format!(
                "spin_manifest_version {} (only 2 is supported)",
                raw.spin_manifest_version
            )));
        }

        let mut variables = BTreeMap::new();
        for (name, v) in raw.variables {
            validate_name(&name)?;
            match (v.required, &v.default) {
                (true, Some(_)) => {
                    return Err(invalid(format!(
                        "variable {name:?} may not have both `required = true` and a `default`"
                    )))
                }
                (false, None) => {
                    return Err(invalid(format!(
                        "variable {name:?} must either have a `default` or `required = true`"
                    )))
                }
                _ => {}
            }
            variables.insert(
                name,
                AppVariable {
                    default: v.default,
                    required: v.required,
                    secret: v.secret,
                },
            );
        }

        let mut components = BTreeMap::new();
        for (id, c) in raw.component {
            let source = match &c.source {
                toml::Value::String(s) => dir.join(s),
                other => {
                    return Err(ManifestError::Unsupported(format!(
                        "component {id:?}: source {other} (only a local path is supported)"
                    )))
                }
            };
            if !c.files.is_empty() {
                return Err(ManifestError::Unsupported(format!(
                    "component {id:?}: `files` (no file mounts)"
                )));
            }
            if !c.sqlite_databases.is_empty() || !c.ai_models.is_empty() {
                return Err(ManifestError::Unsupported(format!(
                    "component {id:?}: `sqlite_databases` / `ai_models`"
                )));
            }
            if c.dependencies.as_ref().is_some_and(|d| !d.is_empty()) {
                return Err(ManifestError::Unsupported(format!(
                    "component {id:?}: `dependencies`"
                )));
            }
            for (name, template) in &c.variables {
                validate_name(name)?;
                let t = Template::parse(template)?;
                for reference in t.references() {
                    if !variables.contains_key(reference) {
                        return Err(VariableError::InvalidTemplate(format!(
                            "component {id:?} variable {name:?}: unknown variable {reference:?}"
                        ))
                        .into());
                    }
                }
            }
            components.insert(
                id.clone(),
                ComponentManifest {
                    id,
                    source,
                    key_value_stores: c.key_value_stores,
                    variables: c.variables,
                    environment: c.environment,
                    allowed_outbound_hosts: c.allowed_outbound_hosts,
                },
            );
        }

        let mut http_triggers = vec![];
        for (kind, value) in raw.trigger {
            if kind != "http" {
                return Err(ManifestError::Unsupported(format!(
                    "trigger type {kind:?} (only http)"
                )));
            }
            let entries: Vec<RawTrigger> = value
                .try_into()
                .map_err(|e: toml::de::Error| invalid(format!("[[trigger.http]]: {e}")))?;
            for t in entries {
                http_triggers.push(Self::http_trigger(t, &components)?);
            }
        }

        Ok(Self {
            name: raw.application.name,
            version: raw.application.version,
            dir: dir.to_path_buf(),
            variables,
            http_triggers,
            components,
        })
    }

    fn http_trigger(
        t: RawTrigger,
        components: &BTreeMap<String, ComponentManifest>,
    ) -> Result<HttpTrigger, ManifestError> {
        let what = t.id.clone().unwrap_or_else(|| "[[trigger.http]]".into());
        if t.static_response.is_some() {
            return Err(ManifestError::Unsupported(format!(
                "{what}: static_response"
            )));
        }
        if let Some(executor) = &t.executor {
            let kind = executor.get("type").and_then(toml::Value::as_str);
            if kind != Some("http") {
                return Err(ManifestError::Unsupported(format!(
                    "{what}: executor {executor} (only the default wasi-http executor)"
                )));
            }
        }
        let route = match t.route {
            Some(toml::Value::String(r)) => TriggerRoute::Path(r),
            Some(toml::Value::Table(tbl))
                if tbl.get("private").and_then(toml::Value::as_bool) == Some(true) =>
            {
                TriggerRoute::Private
            }
            Some(other) => {
                return Err(invalid(format!(
                    "{what}: route must be a string pattern or `{{ private = true }}`, not {other}"
                )))
            }
            None => return Err(invalid(format!("{what}: missing `route`"))),
        };
        let component = match t.component {
            Some(toml::Value::String(c)) => c,
            Some(_) => {
                return Err(ManifestError::Unsupported(format!(
                    "{what}: inline component (name a [component.<id>] instead)"
                )))
            }
            None => return Err(invalid(format!("{what}: missing `component`"))),
        };
        if !components.contains_key(&component) {
            return Err(invalid(format!(
                "{what}: component {component:?} is not defined"
            )));
        }
        Ok(HttpTrigger {
            id: t.id,
            route,
            component,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
spin_manifest_version = 2

[application]
name = "edgesync"
version = "0.1.0"
authors = ["someone"]

[application.trigger.http]
base = "/"

[variables]
jwt_secret = { required = true, secret = true }
max_wait_seconds = { default = "25" }

[[trigger.http]]
route = "/v1/docs/..."
component = "write"

[[trigger.http]]
id = "head"
route = "/v1/head"
component = "read"

[[trigger.http]]
route = { private = true }
component = "read"

[component.write]
source = "../target/wasm32-wasip2/wasm-release/edgesync_write.wasm"
key_value_stores = ["default"]
allowed_outbound_hosts = []
environment = { RUST_LOG = "info" }

[component.write.variables]
jwt_secret = "{{ jwt_secret }}"
banner = "wait {{max_wait_seconds}}s"

[component.write.build]
command = "cargo build --target wasm32-wasip2 --profile wasm-release"
workdir = "components/write"

[component.read]
source = "read.wasm"
"#;

    #[test]
    fn parses_the_supported_subset() {
        let m = Manifest::parse(EXAMPLE, Path::new("/app")).unwrap();
        assert_eq!(m.name, "edgesync");
        assert_eq!(m.version.as_deref(), Some("0.1.0"));
        assert_eq!(
            m.variables["jwt_secret"],
            AppVariable {
                default: None,
                required: true,
                secret: true
            }
        );
        assert_eq!(
            m.variables["max_wait_seconds"].default.as_deref(),
            Some("25")
        );
        assert_eq!(m.http_triggers.len(), 3);
        assert_eq!(
            m.http_triggers[0].route,
            TriggerRoute::Path("/v1/docs/...".into())
        );
        assert_eq!(m.http_triggers[1].id.as_deref(), Some("head"));
        assert_eq!(m.http_triggers[2].route, TriggerRoute::Private);
        let w = &m.components["write"];
        assert_eq!(
            w.source,
            Path::new("/app/../target/wasm32-wasip2/wasm-release/edgesync_write.wasm")
        );
        assert_eq!(w.key_value_stores, vec!["default".to_string()]);
        assert_eq!(w.variables["banner"], "wait {{max_wait_seconds}}s");
        assert_eq!(w.environment["RUST_LOG"], "info");
        assert!(m.components["read"].key_value_stores.is_empty());
    }

    fn err(text: &str) -> String {
        Manifest::parse(text, Path::new("."))
            .unwrap_err()
            .to_string()
    }

    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"x\"\n";

    #[test]
    fn rejects_what_it_cannot_serve_faithfully() {
        assert!(
            err("spin_manifest_version = \"1\"\n[application]\nname = \"x\"\n")
                .contains("spin_manifest_version")
        );
        assert!(err(&format!(
            "{HEAD}[[trigger.redis]]\nchannel = \"c\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n"
        ))
        .contains("trigger type \"redis\""));
        assert!(err(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"/\"\ncomponent = \"missing\"\n"
        ))
        .contains("not defined"));
        assert!(err(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\nexecutor = {{ type = \"wagi\" }}\n[component.c]\nsource = \"c.wasm\"\n"
        ))
        .contains("executor"));
        assert!(err(&format!(
            "{HEAD}[component.c]\nsource = {{ url = \"https://x\", digest = \"sha256:0\" }}\n"
        ))
        .contains("only a local path"));
        assert!(err(&format!(
            "{HEAD}[component.c]\nsource = \"c.wasm\"\nfiles = [\"a/*\"]\n"
        ))
        .contains("files"));
        assert!(err(&format!(
            "{HEAD}[component.c]\nsource = \"c.wasm\"\nsqlite_databases = [\"default\"]\n"
        ))
        .contains("sqlite_databases"));
    }

    #[test]
    fn unknown_fields_are_errors_as_in_spin() {
        for text in [
            format!("{HEAD}[component.c]\nsource = \"c.wasm\"\nkey-value-stores = [\"default\"]\n"),
            format!("{HEAD}[component.c]\nsource = \"c.wasm\"\nallowed-outbound-hosts = []\n"),
            format!("{HEAD}[component.c]\nsource = \"c.wasm\"\nkey_value_store = [\"default\"]\n"),
            format!("{HEAD}colour = \"blue\"\n"),
            "spin_manifest_version = 2\n[application]\nname = \"x\"\nnmae = \"y\"\n".to_owned(),
        ] {
            assert!(
                err(&text).contains("unknown field"),
                "{text}: {}",
                err(&text)
            );
        }
        // What Spin knows and the harness ignores is fine.
        Manifest::parse(
            &format!(
                "{HEAD}description = \"d\"\nauthors = [\"a\"]\n[application.tool.x]\ny = 1\n\
                 [component.c]\nsource = \"c.wasm\"\ndescription = \"c\"\nexclude_files = []\n\
                 [component.c.tool.lint]\nlevel = 1\n"
            ),
            Path::new("."),
        )
        .unwrap();
    }

    #[test]
    fn validates_variables() {
        assert!(err(&format!(
            "{HEAD}[variables]\nx = {{ required = true, default = \"1\" }}\n"
        ))
        .contains("both"));
        assert!(err(&format!("{HEAD}[variables]\nx = {{ secret = true }}\n")).contains("either"));
        assert!(
            err(&format!("{HEAD}[variables]\nBad = {{ default = \"1\" }}\n"))
                .contains("invalid variable name")
        );
        assert!(err(&format!(
            "{HEAD}[component.c]\nsource = \"c.wasm\"\n[component.c.variables]\nv = \"{{{{ nope }}}}\"\n"
        ))
        .contains("unknown variable \"nope\""));
        assert!(err(&format!(
            "{HEAD}[variables]\nx = {{ default = \"1\" }}\n[component.c]\nsource = \"c.wasm\"\n[component.c.variables]\nv = \"{{{{ x }}\"\n"
        ))
        .contains("unmatched"));
    }
}
