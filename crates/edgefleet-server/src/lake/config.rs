//! The sinks file (`--lake-sinks`): named sinks (a local directory or an S3-compatible
//! bucket, each with an optional residency selector) and per-stream retention. Parsed
//! strictly (unknown fields are errors) and validated once, at start; every error names the
//! file, and the line or the field.
//!
//! Credentials are never in the file: it names the environment variables that hold them.
//! A file without a sink named `default` gets the built-in one (a local directory in the
//! server's data directory), because streams that name no sink, and metrics, go there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_wire::DurationSpec;
use edgefleet_wire::manifest::Selector;
use edgefleet_wire::telemetry::DEFAULT_SINK;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A mistake in the sinks file: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<u64>,
    pub message: String,
}

/// The lake's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeConfig {
    /// In file order; one of them is named `default`.
    pub sinks: Vec<SinkConfig>,
    /// How long lake files of a stream are kept, by stream; streams not named keep theirs.
    pub retention: BTreeMap<String, Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub target: SinkTarget,
    /// Put before every object key: empty, or ending with `/`.
    pub prefix: String,
    /// Only data of nodes matching it may go to this sink (empty: every node).
    pub residency: Selector,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkTarget {
    Local { path: PathBuf },
    S3(Box<S3Target>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Target {
    /// `http://` or `https://` host, port and an optional base path; requests are
    /// path-style (`<endpoint>/<bucket>/<key>`).
    pub endpoint: reqwest::Url,
    pub region: String,
    pub bucket: String,
    pub access_key_env: String,
    pub secret_key_env: String,
    pub session_token_env: Option<String>,
    /// PEM file of the CAs trusted for an `https://` endpoint (default: the system bundle).
    pub ca_file: Option<PathBuf>,
}

impl LakeConfig {
    /// The configuration without a sinks file: the `default` local sink only.
    pub fn builtin(data_dir: &Path) -> Self {
        Self {
            sinks: vec![default_sink(data_dir)],
            retention: BTreeMap::new(),
        }
    }

    /// Reads and validates the sinks file at `path`.
    pub fn load(path: &Path, data_dir: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read the lake sinks file: {error}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&file, &text, base, data_dir)
    }

    /// Parses and validates a sinks file's text; `base` resolves relative local paths.
    pub fn parse(
        file: &str,
        text: &str,
        base: &Path,
        data_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let raw: SinksFile = decode(file, text)?;
        let invalid = |message: String| ConfigError {
            file: file.to_owned(),
            line: None,
            message,
        };
        let mut sinks = Vec::with_capacity(raw.sinks.len() + 1);
        let mut names = BTreeSet::new();
        for (index, entry) in raw.sinks.into_iter().enumerate() {
            let field = format!("sinks[{index}]");
            let sink = entry.validate(&field, base).map_err(invalid)?;
            if !names.insert(sink.name.clone()) {
                return Err(invalid(format!(
                    "{field} ({:?}).name: sink {:?} is defined twice",
                    sink.name, sink.name
                )));
            }
            sinks.push(sink);
        }
        if !names.contains(DEFAULT_SINK) {
            sinks.push(default_sink(data_dir));
        }
        let mut retention = BTreeMap::new();
        for (index, entry) in raw.streams.into_iter().enumerate() {
            let field = format!("streams[{index}]");
            if entry.stream.is_empty() {
                return Err(invalid(format!("{field}.stream: must not be empty")));
            }
            let Some(kept) = entry.retention else {
                continue;
            };
            if kept.as_duration().is_zero() {
                return Err(invalid(format!(
                    "{field}.retention: must be longer than 0 (leave it out to keep files forever)"
                )));
            }
            if retention
                .insert(entry.stream.clone(), kept.as_duration())
                .is_some()
            {
                return Err(invalid(format!(
                    "{field}.stream: stream {:?} is listed twice",
                    entry.stream
                )));
            }
        }
        Ok(Self { sinks, retention })
    }

    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|sink| sink.name == name)
    }
}

fn default_sink(data_dir: &Path) -> SinkConfig {
    SinkConfig {
        name: DEFAULT_SINK.to_owned(),
        target: SinkTarget::Local {
            path: data_dir.join("lake"),
        },
        prefix: String::new(),
        residency: Selector::default(),
    }
}

/// Deserialises the file's text, naming the line of a syntax or type error.
fn decode<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|error| {
        let full = error.to_string();
        let first = full.lines().next().unwrap_or_default();
        // The parser's first line is `error: line L column C: <what>`; ours says file:line.
        let message = first
            .find("column ")
            .and_then(|at| first[at..].split_once(": "))
            .map_or(first, |(_, what)| what);
        ConfigError {
            file: file.to_owned(),
            line: error.location().map(|l| l.line()).filter(|l| *l > 0),
            message: message.to_owned(),
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinksFile {
    #[serde(default)]
    sinks: Vec<SinkEntry>,
    #[serde(default)]
    streams: Vec<StreamEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SinkKind {
    Local,
    S3,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SinkEntry {
    name: String,
    #[serde(rename = "type")]
    kind: SinkKind,
    path: Option<PathBuf>,
    endpoint: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    access_key_env: Option<String>,
    secret_key_env: Option<String>,
    session_token_env: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    residency: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamEntry {
    stream: String,
    retention: Option<DurationSpec>,
}

impl SinkEntry {
    fn validate(self, field: &str, base: &Path) -> Result<SinkConfig, String> {
        let name = self.name.clone();
        let field = format!("{field} ({name:?})");
        check_sink_name(&name).map_err(|message| format!("{field}.name: {message}"))?;
        let residency = edgefleet_core::selector::parse(&self.residency)
            .map_err(|error| format!("{field}.residency: {error}"))?;
        let prefix = normalise_prefix(self.prefix.as_deref().unwrap_or_default())
            .map_err(|message| format!("{field}.prefix: {message}"))?;
        let target = match self.kind {
            SinkKind::Local => self.local_target(&field, base)?,
            SinkKind::S3 => SinkTarget::S3(Box::new(self.s3_target(&field)?)),
        };
        Ok(SinkConfig {
            name,
            target,
            prefix,
            residency,
        })
    }

    fn local_target(&self, field: &str, base: &Path) -> Result<SinkTarget, String> {
        let not_local = [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("bucket", self.bucket.is_some()),
            ("accessKeyEnv", self.access_key_env.is_some()),
            ("secretKeyEnv", self.secret_key_env.is_some()),
            ("sessionTokenEnv", self.session_token_env.is_some()),
            ("caFile", self.ca_file.is_some()),
        ];
        if let Some((name, _)) = not_local.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{field}.{name}: does not apply to a local sink (type: local takes path)"
            ));
        }
        let Some(path) = &self.path else {
            return Err(format!("{field}.path: required for a local sink"));
        };
        if path.as_os_str().is_empty() {
            return Err(format!("{field}.path: must not be empty"));
        }
        Ok(SinkTarget::Local {
            path: base.join(path),
        })
    }

    fn s3_target(&self, field: &str) -> Result<S3Target, String> {
        if self.path.is_some() {
            return Err(format!(
                "{field}.path: does not apply to an s3 sink (use bucket and prefix)"
            ));
        }
        let required = |value: &Option<String>, name: &str| match value {
            Some(value) if !value.trim().is_empty() => Ok(value.trim().to_owned()),
            _ => Err(format!("{field}.{name}: required for an s3 sink")),
        };
        let endpoint = parse_endpoint(&required(&self.endpoint, "endpoint")?)
            .map_err(|message| format!("{field}.endpoint: {message}"))?;
        let bucket = required(&self.bucket, "bucket")?;
        check_bucket_name(&bucket).map_err(|message| format!("{field}.bucket: {message}"))?;
        let env_name = |value: &Option<String>, name: &str| -> Result<Option<String>, String> {
            match value {
                None => Ok(None),
                Some(var) if is_env_name(var) => Ok(Some(var.clone())),
                Some(var) => Err(format!(
                    "{field}.{name}: {var:?} is not an environment variable name (the file names \
                     the variable holding the credential, never the credential itself)"
                )),
            }
        };
        let missing = |name: &str| format!("{field}.{name}: required for an s3 sink");
        Ok(S3Target {
            endpoint,
            region: required(&self.region, "region")?,
            bucket,
            access_key_env: env_name(&self.access_key_env, "accessKeyEnv")?
                .ok_or_else(|| missing("accessKeyEnv"))?,
            secret_key_env: env_name(&self.secret_key_env, "secretKeyEnv")?
                .ok_or_else(|| missing("secretKeyEnv"))?,
            session_token_env: env_name(&self.session_token_env, "sessionTokenEnv")?,
            ca_file: self.ca_file.clone(),
        })
    }
}

fn check_sink_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err("must be 1 to 63 letters, digits, '.', '_' or '-'".to_owned())
    }
}

/// Bucket names as S3 allows them for path-style requests.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a bucket name: 3 to 63 lowercase letters, digits, '.' or '-', \
             starting and ending with a letter or digit"
        ))
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_endpoint(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|error| {
        format!("{text:?} is not a URL ({error}); expected http(s)://host[:port]")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: an endpoint takes no query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?}: credentials do not belong in the endpoint (use accessKeyEnv and secretKeyEnv)"
        ));
    }
    Ok(url)
}

/// A key prefix: segments separated by `/`, none of them empty, `.` or `..`; returned with
/// a trailing `/` (or empty).
fn normalise_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "{prefix:?}: segments between '/' must not be empty, '.' or '..' (and no leading '/')"
            ));
        }
        if segment.chars().any(char::is_control) {
            return Err(format!("{prefix:?}: control characters are not allowed"));
        }
    }
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LakeConfig, ConfigError> {
        LakeConfig::parse(
            "sinks.yaml",
            text,
            Path::new("/etc/edgefleet"),
            Path::new("/data"),
        )
    }

    fn check_error(text: &str, expected: &str) {
        let error = parse(text).expect_err("the file is refused").to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }

    const FULL: &str = r#"{
  "sinks": [
    {"name": "default", "type": "local", "path": "lake"},
    {"name": "eu-bucket", "type": "s3", "endpoint": "http://127.0.0.1:9000",
     "region": "eu-west-1", "bucket": "fleet-data", "prefix": "edgefleet",
     "accessKeyEnv": "EU_BUCKET_KEY_ID", "secretKeyEnv": "EU_BUCKET_SECRET",
     "residency": "region in (eu)"}
  ],
  "streams": [{"stream": "readings", "retention": "90d"}, {"stream": "other"}]
}"#;

    #[test]
    fn full_file() {
        let config = parse(FULL).unwrap();
        assert_eq!(config.sinks.len(), 2);
        assert_eq!(
            config.sinks[0].target,
            SinkTarget::Local {
                path: "/etc/edgefleet/lake".into()
            }
        );
        let eu = config.sink("eu-bucket").unwrap();
        assert_eq!(eu.prefix, "edgefleet/");
        let SinkTarget::S3(s3) = &eu.target else {
            panic!("an s3 sink")
        };
        assert_eq!(s3.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(s3.bucket, "fleet-data");
        assert_eq!(s3.access_key_env, "EU_BUCKET_KEY_ID");
        assert_eq!(s3.session_token_env, None);
        let eu_node = [("region".to_owned(), "eu".to_owned())].into();
        let us_node = [("region".to_owned(), "us".to_owned())].into();
        assert!(edgefleet_core::selector::matches(&eu.residency, &eu_node));
        assert!(!edgefleet_core::selector::matches(&eu.residency, &us_node));
        assert_eq!(
            config.retention,
            [("readings".to_owned(), Duration::from_secs(90 * 86_400))].into()
        );
    }

    #[test]
    fn builtin_default_is_added_when_missing() {
        let config =
            parse(r#"{"sinks": [{"name": "archive", "type": "local", "path": "/a"}]}"#).unwrap();
        let names: Vec<_> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["archive", "default"]);
        assert_eq!(
            config.sink("default").unwrap().target,
            SinkTarget::Local {
                path: "/data/lake".into()
            }
        );
        assert_eq!(
            parse("{}").unwrap(),
            LakeConfig::builtin(Path::new("/data"))
        );
    }

    #[test]
    fn mistakes_are_named() {
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local", "path": "/x", "colour": 1}]}"#,
            "sinks.yaml:1: unknown field `colour`",
        );
        check_error(r#"{"sinkz": []}"#, "unknown field `sinkz`");
        check_error(
            "{\n\"sinks\": [\n{\"name\": \"a\", \"type\": \"ftp\"}]}",
            "sinks.yaml:3: unknown variant `ftp`",
        );
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local"}]}"#,
            "sinks[0] (\"a\").path: required for a local sink",
        );
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local", "path": "/x", "bucket": "b"}]}"#,
            ".bucket: does not apply to a local sink",
        );
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local", "path": "/x"}, {"name": "a", "type": "local", "path": "/y"}]}"#,
            "sinks[1] (\"a\").name: sink \"a\" is defined twice",
        );
        check_error(
            r#"{"sinks": [{"name": "a/b", "type": "local", "path": "/x"}]}"#,
            ".name: must be 1 to 63",
        );
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local", "path": "/x", "residency": "region in ("}]}"#,
            "sinks[0] (\"a\").residency: invalid selector",
        );
        check_error(
            r#"{"sinks": [{"name": "a", "type": "local", "path": "/x", "prefix": "a/../b"}]}"#,
            ".prefix: \"a/../b\": segments",
        );
        check_error(
            r#"{"streams": [{"stream": "r", "retention": "0"}]}"#,
            "streams[0].retention: must be longer than 0",
        );
        check_error(
            r#"{"streams": [{"stream": "r", "retention": "1d"}, {"stream": "r", "retention": "2d"}]}"#,
            "streams[1].stream: stream \"r\" is listed twice",
        );
        check_error(
            r#"{"streams": [{"stream": "r", "retention": "ten days"}]}"#,
            "invalid duration",
        );
    }

    #[test]
    fn s3_mistakes_are_named() {
        let s3 = |overrides: &str| {
            let mut sink: serde_json::Value = serde_json::json!({
                "name": "b", "type": "s3", "region": "r", "accessKeyEnv": "K",
                "secretKeyEnv": "S", "bucket": "fleet", "endpoint": "http://h:9000"
            });
            let overrides: serde_json::Value =
                serde_json::from_str(&format!("{{{}}}", overrides.trim_start_matches(',')))
                    .unwrap();
            for (key, value) in overrides.as_object().unwrap() {
                sink[key] = value.clone();
            }
            serde_json::json!({ "sinks": [sink] }).to_string()
        };
        assert!(parse(&s3("")).is_ok());
        check_error(
            &s3(r#", "path": "/x""#),
            ".path: does not apply to an s3 sink",
        );
        check_error(&s3(r#", "bucket": "Fleet_Data""#), "is not a bucket name");
        check_error(
            &s3(r#", "endpoint": "ftp://h""#),
            "the scheme must be http or https",
        );
        check_error(
            &s3(r#", "endpoint": "http://u:p@h""#),
            "credentials do not belong",
        );
        check_error(&s3(r#", "endpoint": "nonsense""#), "is not a URL");
        check_error(
            &s3(r#", "accessKeyEnv": "AKIA/SECRET+VALUE""#),
            "is not an environment variable name",
        );
        check_error(
            &s3(r#", "region": """#),
            "sinks[0] (\"b\").region: required for an s3 sink",
        );
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalise_prefix("").unwrap(), "");
        assert_eq!(normalise_prefix("/").unwrap(), "");
        assert_eq!(normalise_prefix("a").unwrap(), "a/");
        assert_eq!(normalise_prefix("a/b/").unwrap(), "a/b/");
        assert!(normalise_prefix("/a").is_err());
        assert!(normalise_prefix("a//b").is_err());
        assert!(normalise_prefix("./a").is_err());
    }
}
