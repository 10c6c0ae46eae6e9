//! Spin application variables and component variable templates.
//!
//! Follows Spin's `spin-expressions` crate and `factor-variables`:
//!
//! * Names: lower-case ASCII letters, digits and single underscores, starting
//!   with a letter and ending with a letter or digit (`Key::validate`).
//! * Component variables are templates: literal text mixed with
//!   `{{ app_variable }}` expressions (whitespace inside the braces is
//!   trimmed; an unmatched `{{` is an error; `}}` outside an expression is
//!   literal text). A template may only refer to declared app variables.
//! * Providers, first match wins: explicit values (`--var name=value`, like
//!   `spin up --variable`), then the environment (`SPIN_VARIABLE_<NAME>`
//!   upper-cased), then the manifest's `default`. An app variable without a
//!   value from any of them is a startup error ("no provider resolved
//!   required variable").
//! * `fermyon:spin/variables.get(name)`: an invalid name is `invalid-name`,
//!   a name the component does not define is `undefined`.
//!   `wasi:config/store.get` answers `none` for both.
//!
//! Not reproduced: Spin also reads a `.env` file next to the manifest into
//! its environment provider; the harness only reads the real environment.

use std::collections::{BTreeMap, HashMap};

use crate::manifest::AppVariable;

/// A variable-related failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    /// The name breaks Spin's naming rules.
    #[error("invalid variable name: {0}")]
    InvalidName(String),
    /// A template does not parse or refers to an unknown app variable.
    #[error("invalid variable template: {0}")]
    InvalidTemplate(String),
    /// No provider has a value for a required variable.
    #[error("no provider resolved required variable {0:?}")]
    Unresolved(String),
    /// The component defines no such variable.
    #[error("undefined variable: {0}")]
    Undefined(String),
}

/// Check a variable name against Spin's rules.
pub fn validate_name(key: &str) -> Result<(), VariableError> {
    let reason = if key.is_empty() {
        Some("must not be empty".to_string())
    } else if let Some(invalid) = key
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(format!(
            "invalid character {invalid:?}. Variable names may contain only lower-case letters, numbers, and underscores."
        ))
    } else if !key.as_bytes()[0].is_ascii_lowercase() {
        Some("must start with a lowercase ASCII letter".to_string())
    } else if !key.as_bytes()[key.len() - 1].is_ascii_alphanumeric() {
        Some("must end with a lowercase ASCII letter or digit".to_string())
    } else if key.contains("__") {
        Some("must not contain multiple consecutive underscores".to_string())
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VariableError::InvalidName(format!("{key:?}: {reason}"))),
        None => Ok(()),
    }
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// `{{ name }}`.
    Expr(String),
}

/// A component variable's value: literal text and `{{ name }}` expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse `template` the way Spin does.
    pub fn parse(template: &str) -> Result<Self, VariableError> {
        let mut parts = vec![];
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(expr_rest) = rest.strip_prefix("{{") {
                let Some((expr, after)) = expr_rest.split_once("}}") else {
                    return Err(VariableError::InvalidTemplate(
                        "unmatched '{{' in template".to_string(),
                    ));
                };
                parts.push(Part::Expr(expr.trim().to_string()));
                rest = after;
            } else if let Some(idx) = rest.find("{{") {
                parts.push(Part::Lit(rest[..idx].to_string()));
                rest = &rest[idx..];
            } else {
                parts.push(Part::Lit(rest.to_string()));
                rest = "";
            }
        }
        Ok(Self { parts })
    }

    /// The pieces.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The app variables the template refers to.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Substitute resolved app variables.
    pub fn render(&self, values: &HashMap<String, String>) -> Result<String, VariableError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.push_str(l),
                Part::Expr(e) => out.push_str(
                    values
                        .get(e)
                        .ok_or_else(|| VariableError::InvalidName(e.clone()))?,
                ),
            }
        }
        Ok(out)
    }
}

/// The environment variable Spin's default provider reads for `name`.
pub fn env_var_name(name: &str) -> String {
    format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())
}

/// Resolve every app variable: `explicit` values first, then `env(name of
/// the SPIN_VARIABLE_* variable)`, then the default.
pub fn resolve_app_variables(
    declared: &BTreeMap<String, AppVariable>,
    explicit: &[(String, String)],
    env: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, VariableError> {
    for (name, _) in explicit {
        if !declared.contains_key(name) {
            tracing::warn!("--var {name}: the manifest declares no such variable (ignored)");
        }
    }
    let mut values = HashMap::new();
    for (name, var) in declared {
        let value = explicit
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env(&env_var_name(name)))
            .or_else(|| var.default.clone())
            .ok_or_else(|| VariableError::Unresolved(name.clone()))?;
        values.insert(name.clone(), value);
    }
    Ok(values)
}

/// A component's variables, resolved once at startup.
#[derive(Debug, Clone, Default)]
pub struct ComponentVariables {
    component_id: String,
    values: BTreeMap<String, String>,
}

impl ComponentVariables {
    /// Render `templates` (already validated against the manifest) with the
    /// resolved app variables.
    pub fn resolve(
        component_id: &str,
        templates: &BTreeMap<String, String>,
        app_values: &HashMap<String, String>,
    ) -> Result<Self, VariableError> {
        let mut values = BTreeMap::new();
        for (name, template) in templates {
            validate_name(name)?;
            let value = Template::parse(template)?.render(app_values)?;
            values.insert(name.clone(), value);
        }
        Ok(Self {
            component_id: component_id.to_string(),
            values,
        })
    }

    /// `fermyon:spin/variables.get`.
    pub fn get(&self, name: &str) -> Result<String, VariableError> {
        validate_name(name)?;
        self.values.get(name).cloned().ok_or_else(|| {
            VariableError::Undefined(format!("no variable for {:?}.{name:?}", self.component_id))
        })
    }

    /// All of them (for `wasi:config/store.get-all`).
    pub fn all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(default: Option<&str>, required: bool) -> AppVariable {
        AppVariable {
            default: default.map(String::from),
            required,
            secret: false,
        }
    }

    #[test]
    fn names_follow_spin_rules() {
        for good in ["a", "abc", "a1b2c3", "a_1", "a_1_b_3", "jwt_secret"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "aX", "1bc", "_x", "x.y", "x_", "a__b", "x-y", "JWT"] {
            assert!(
                matches!(validate_name(bad), Err(VariableError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn templates_mix_literals_and_expressions() {
        let t = Template::parse("a-{{ x }}-b{{y}}").unwrap();
        assert_eq!(
            t.parts(),
            &[
                Part::Lit("a-".into()),
                Part::Expr("x".into()),
                Part::Lit("-b".into()),
                Part::Expr("y".into()),
            ]
        );
        assert_eq!(t.references().collect::<Vec<_>>(), vec!["x", "y"]);
        let values: HashMap<String, String> = [("x".into(), "1".into()), ("y".into(), "2".into())]
            .into_iter()
            .collect();
        assert_eq!(t.render(&values).unwrap(), "a-1-b2");
        assert_eq!(Template::parse("").unwrap().parts(), &[]);
        assert_eq!(
            Template::parse("plain }} text").unwrap().parts(),
            &[Part::Lit("plain }} text".into())]
        );
        assert!(matches!(
            Template::parse("{{ ok }} {{ unmatched"),
            Err(VariableError::InvalidTemplate(_))
        ));
    }

    #[test]
    fn provider_order_explicit_then_env_then_default() {
        let declared: BTreeMap<String, AppVariable> = [
            ("a".to_string(), var(Some("default-a"), false)),
            ("b".to_string(), var(Some("default-b"), false)),
            ("c".to_string(), var(Some("default-c"), false)),
            ("secret".to_string(), var(None, true)),
        ]
        .into_iter()
        .collect();
        let env = |name: &str| match name {
            "SPIN_VARIABLE_A" => Some("env-a".to_string()),
            "SPIN_VARIABLE_B" => Some("env-b".to_string()),
            "SPIN_VARIABLE_SECRET" => Some("env-secret".to_string()),
            _ => None,
        };
        let explicit = vec![
            ("a".to_string(), "flag-a".to_string()),
            ("unknown".to_string(), "x".to_string()),
        ];
        let values = resolve_app_variables(&declared, &explicit, env).unwrap();
        assert_eq!(values["a"], "flag-a");
        assert_eq!(values["b"], "env-b");
        assert_eq!(values["c"], "default-c");
        assert_eq!(values["secret"], "env-secret");
        assert!(!values.contains_key("unknown"));
    }

    #[test]
    fn required_without_value_is_an_error() {
        let declared: BTreeMap<String, AppVariable> = [("jwt_secret".to_string(), var(None, true))]
            .into_iter()
            .collect();
        assert_eq!(
            resolve_app_variables(&declared, &[], |_| None).unwrap_err(),
            VariableError::Unresolved("jwt_secret".into())
        );
        // An empty environment value is a value.
        let values = resolve_app_variables(&declared, &[], |_| Some(String::new())).unwrap();
        assert_eq!(values["jwt_secret"], "");
    }

    #[test]
    fn component_variables_get() {
        let app: HashMap<String, String> = [("secret".to_string(), "s3".to_string())]
            .into_iter()
            .collect();
        let templates: BTreeMap<String, String> = [
            ("jwt_secret".to_string(), "{{ secret }}".to_string()),
            ("greeting".to_string(), "hi {{secret}}!".to_string()),
        ]
        .into_iter()
        .collect();
        let vars = ComponentVariables::resolve("write", &templates, &app).unwrap();
        assert_eq!(vars.get("jwt_secret").unwrap(), "s3");
        assert_eq!(vars.get("greeting").unwrap(), "hi s3!");
        assert!(matches!(
            vars.get("missing"),
            Err(VariableError::Undefined(m)) if m.contains("\"write\"")
        ));
        assert!(matches!(
            vars.get("Bad-Name"),
            Err(VariableError::InvalidName(_))
        ));
        assert_eq!(vars.all().count(), 2);
    }

    #[test]
    fn env_names_are_upper_cased() {
        assert_eq!(
            env_var_name("max_wait_seconds"),
            "SPIN_VARIABLE_MAX_WAIT_SECONDS"
        );
    }
}
