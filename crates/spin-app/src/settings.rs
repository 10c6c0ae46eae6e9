//! The core's settings from Spin variables.

use std::collections::HashMap;

use edgesync_core::config::SETTING_NAMES;
use edgesync_core::{Config, ConfigError};

/// Why Spin could not produce a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The variables provider (a secrets store such as Vault) failed: it
    /// may recover.
    Provider(String),
    /// Anything else (an invalid name, an error of Spin's own).
    Other(String),
}

/// Why the app cannot serve. Guessing a default for a variable that could
/// not be read could silently weaken the service, so nothing is served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The variables provider failed: answered with 503 and `Retry-After`,
    /// like a store that failed.
    #[error("Spin's variables provider could not produce `{name}`: {message}")]
    Provider {
        /// The variable's name.
        name: &'static str,
        /// What Spin reported.
        message: String,
    },
    /// Spin could not produce a variable for another reason: an operator
    /// error, answered with 500 on every request and logged.
    #[error("Spin variable `{name}` could not be read: {message}")]
    Variable {
        /// The variable's name.
        name: &'static str,
        /// What Spin reported.
        message: String,
    },
    /// The variables were read but do not make a valid configuration.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Read every name in [`SETTING_NAMES`] with `read` (which returns
/// `Ok(None)` for a variable that is not set) and parse them with
/// [`Config::from_lookup`].
pub fn load(
    read: impl Fn(&str) -> Result<Option<String>, ReadError>,
) -> Result<Config, SettingsError> {
    let mut values = HashMap::new();
    for &name in SETTING_NAMES {
        match read(name) {
            Ok(Some(value)) => {
                values.insert(name, value);
            }
            Ok(None) => {}
            Err(ReadError::Provider(message)) => {
                return Err(SettingsError::Provider { name, message })
            }
            Err(ReadError::Other(message)) => {
                return Err(SettingsError::Variable { name, message })
            }
        }
    }
    Ok(Config::from_lookup(|name| values.get(name).cloned())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn every_setting_is_asked_for_and_unset_ones_default() {
        let asked = std::cell::RefCell::new(Vec::new());
        let config = load(|name| {
            asked.borrow_mut().push(name.to_owned());
            Ok(match name {
                "jwt_secret" => Some(SECRET.into()),
                "max_wait_seconds" => Some("20".into()),
                // Spin app variables without a value default to "".
                "jwt_audience" => Some(String::new()),
                _ => None,
            })
        })
        .unwrap();
        assert_eq!(*asked.borrow(), SETTING_NAMES);
        assert_eq!(config.max_wait_seconds, 20);
        assert_eq!(config.jwt_audience, None);
        assert_eq!(config.max_body_bytes, 262_144);
    }

    #[test]
    fn missing_secret_and_unreadable_variables_are_errors() {
        assert_eq!(
            load(|_| Ok(None)).unwrap_err(),
            SettingsError::Invalid(ConfigError::Missing("jwt_secret"))
        );
        let err = load(|name| match name {
            "jwt_secret" => Ok(Some(SECRET.into())),
            "cors_origins" => Err(ReadError::Provider("vault unreachable".into())),
            _ => Ok(None),
        })
        .unwrap_err();
        assert_eq!(
            err,
            SettingsError::Provider {
                name: "cors_origins",
                message: "vault unreachable".into()
            }
        );
        let err = load(|name| match name {
            "jwt_secret" => Ok(Some(SECRET.into())),
            _ => Err(ReadError::Other("invalid name".into())),
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                SettingsError::Variable {
                    name: "jwt_audience",
                    ..
                }
            ),
            "{err}"
        );
    }
}
