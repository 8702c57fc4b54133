//! Parsing and validating deployment manifests from YAML text.
//!
//! The caller reads the files; this module turns text into checked `DeploymentManifest`s
//! or an error that names the source, line and column, or the field.

use std::collections::BTreeSet;
use std::fmt;

use edgefleet_wire::API_VERSION;
use edgefleet_wire::manifest::DeploymentManifest;

use crate::labels::{validate_labels, validate_name};
use crate::selector;

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name (or `-` for standard input, `request` for an API body).
    pub source: String,
    /// 1-based line and column, when the error comes from the YAML parser.
    pub location: Option<(u64, u64)>,
    /// The document's `metadata.name`, when known.
    pub document: Option<String>,
    /// The field path (`spec.workloads[1].name`), when known.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some((line, column)) = self.location {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(document) = &self.document {
            write!(f, " (deployment {document})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Parses every YAML document in `text`. Empty documents are skipped.
pub fn parse(source: &str, text: &str) -> Result<Vec<DeploymentManifest>, ManifestError> {
    let documents: Vec<DeploymentManifest> =
        serde_saphyr::from_multiple(text).map_err(|error| {
            let location = error.location();
            // The location is in the message already for some errors; keep our own prefix.
            let message = first_line(&error.to_string());
            ManifestError {
                source: source.to_owned(),
                location: location.map(|l| (l.line(), l.column())),
                document: None,
                field: None,
                message,
            }
        })?;
    for manifest in &documents {
        validate(manifest).map_err(|(field, message)| ManifestError {
            source: source.to_owned(),
            location: None,
            document: Some(manifest.metadata.name.clone()),
            field: Some(field),
            message,
        })?;
    }
    let mut names = BTreeSet::new();
    for manifest in &documents {
        if !names.insert(manifest.metadata.name.as_str()) {
            return Err(ManifestError {
                source: source.to_owned(),
                location: None,
                document: Some(manifest.metadata.name.clone()),
                field: Some("metadata.name".into()),
                message: "this deployment is defined twice".into(),
            });
        }
    }
    Ok(documents)
}

/// The parser's first message line, without its own `error: line L column C:` prefix (our
/// `Display` puts the location in front already).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let without_prefix = line
        .strip_prefix("error: line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(location, _)| location.contains("column"))
        .map(|(_, rest)| rest);
    without_prefix.unwrap_or(line).to_owned()
}

/// Checks a manifest beyond its shape. The error is `(field path, message)`.
pub fn validate(manifest: &DeploymentManifest) -> Result<(), (String, String)> {
    if manifest.api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!(
                "unsupported apiVersion {:?}: expected {API_VERSION:?}",
                manifest.api_version
            ),
        ));
    }
    if manifest.kind != "Deployment" {
        return Err((
            "kind".into(),
            format!(
                "unsupported kind {:?}: expected \"Deployment\"",
                manifest.kind
            ),
        ));
    }
    validate_name(&manifest.metadata.name).map_err(|reason| {
        (
            "metadata.name".into(),
            format!("name {:?} {reason}", manifest.metadata.name),
        )
    })?;
    validate_labels(&manifest.metadata.labels)
        .map_err(|e| ("metadata.labels".into(), e.to_string()))?;
    let spec = &manifest.spec;
    selector::validate(&spec.selector, "spec.selector").map_err(|e| match e {
        selector::SelectorError::Label { field, source } => (field, source.to_string()),
        selector::SelectorError::MissingValues { ref field, .. }
        | selector::SelectorError::UnexpectedValues { ref field, .. } => {
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&message)
                .to_owned();
            (field.clone(), message)
        }
        selector::SelectorError::Syntax { .. } => ("spec.selector".into(), e.to_string()),
    })?;
    if spec.workloads.is_empty() {
        return Err((
            "spec.workloads".into(),
            "a deployment needs at least one workload".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, workload) in spec.workloads.iter().enumerate() {
        let field = |name: &str| format!("spec.workloads[{i}].{name}");
        validate_name(&workload.name)
            .map_err(|reason| (field("name"), format!("name {:?} {reason}", workload.name)))?;
        if !seen.insert(workload.name.as_str()) {
            return Err((
                field("name"),
                format!(
                    "duplicate workload name {:?} in this deployment",
                    workload.name
                ),
            ));
        }
        if workload.command.trim().is_empty() {
            return Err((field("command"), "command is empty".into()));
        }
        if workload.command.contains('\0') || workload.args.iter().any(|a| a.contains('\0')) {
            return Err((
                field("command"),
                "command and args must not contain NUL".into(),
            ));
        }
        for key in workload.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err((
                    field("env"),
                    format!("invalid environment variable name {key:?}"),
                ));
            }
        }
        if let Some(dir) = &workload.working_dir
            && !dir.starts_with('/')
        {
            return Err((
                field("workingDir"),
                format!("workingDir {dir:?} must be an absolute path"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels:
      site: a
    matchExpressions:
      - key: tier
        operator: In
        values: [edge]
  priority: 10
  workloads:
    - name: server
      command: /bin/sh
      args: ["-c", "sleep 1000"]
      env:
        MODE: prod
      restartPolicy: on-failure
      stopGracePeriod: 5s
---
apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: other
spec:
  workloads:
    - name: x
      command: /bin/true
"#;

    fn err(text: &str) -> ManifestError {
        parse("f.yaml", text).unwrap_err()
    }

    #[test]
    fn parses_several_documents() {
        let docs = parse("f.yaml", GOOD).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].spec.priority, 10);
        assert_eq!(
            docs[0].spec.workloads[0].stop_grace_period.to_string(),
            "5s"
        );
        assert_eq!(
            docs[1].spec.workloads[0].stop_grace_period.to_string(),
            "10s"
        );
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = err("apiVersion: edgefleet.io/v1\nkind: [unclosed\n");
        assert_eq!(e.source, "f.yaml");
        assert_eq!(e.location, Some((2, 7)), "{e}");
        assert_eq!(e.to_string(), "f.yaml:2:7: expected string scalar");
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace("restartPolicy: on-failure", "restartPolicyy: on-failure");
        let e = err(&text);
        assert!(e.message.contains("restartPolicyy"), "{e}");
        assert!(e.location.is_some(), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                GOOD.replace(
                    "name: x",
                    "name: server\n      command: y\n    - name: server",
                ),
                "spec.workloads[1].name",
            ),
            (
                GOOD.replace("site: a", "\"bad key\": a"),
                "spec.selector.matchLabels.bad key",
            ),
            (
                GOOD.replace("values: [edge]", "values: []"),
                "spec.selector.matchExpressions[0]",
            ),
            (GOOD.replace("name: web", "name: Web"), "metadata.name"),
            (
                GOOD.replacen("kind: Deployment", "kind: Rollout", 1),
                "kind",
            ),
            (GOOD.replacen("edgefleet.io/v1", "v2", 1), "apiVersion"),
            (
                GOOD.replace("command: /bin/true", "command: \"\""),
                "spec.workloads[0].command",
            ),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
    }

    #[test]
    fn duplicate_documents_are_refused() {
        let text = format!("{GOOD}\n---\n{}", GOOD.split("---").nth(1).unwrap());
        assert_eq!(err(&text).message, "this deployment is defined twice");
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "---",
            "- a\n- b",
            "{",
            "apiVersion: 3",
            "\u{0}",
            "a: &x [*x]",
        ] {
            let _ = parse("g", text);
        }
    }
}
