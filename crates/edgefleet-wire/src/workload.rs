//! The parts of a workload spec beyond "run this program": container images, WebAssembly
//! modules, artifacts, resources, volumes, ports, health probes and files rendered on the
//! node. Part of the manifest format, so strict like it (`deny_unknown_fields`).
//!
//! Every field here is optional and skipped when at its default, so a workload that uses
//! none of them serialises (and hashes) exactly as it did before they existed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::DurationSpec;

/// `name@sha256:<64 hex digits>`: one artifact, by name and content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactRef {
    pub name: String,
    /// The SHA-256 of the content, 64 lowercase hex digits.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid artifact reference {input:?}: {reason} (expected NAME@sha256:<64 hex digits>)")]
pub struct ArtifactRefError {
    pub input: String,
    pub reason: &'static str,
}

impl ArtifactRef {
    /// Whether `name` is a valid artifact name: 1 to 128 characters of `a-z A-Z 0-9 . _ -`,
    /// not starting with `.` or `-`.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with(['.', '-'])
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    /// Whether `digest` is 64 lowercase hex digits.
    pub fn valid_digest(digest: &str) -> bool {
        digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl FromStr for ArtifactRef {
    type Err = ArtifactRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ArtifactRefError {
            input: input.to_owned(),
            reason,
        };
        let (name, digest) = input.split_once('@').ok_or_else(|| err("missing '@'"))?;
        let digest = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| err("the digest must start with sha256:"))?;
        if !Self::valid_name(name) {
            return Err(err(
                "the name must be 1 to 128 characters of letters, digits, '.', '_' and '-'",
            ));
        }
        if !Self::valid_digest(digest) {
            return Err(err("the digest must be 64 lowercase hex digits"));
        }
        Ok(Self {
            name: name.to_owned(),
            digest: digest.to_owned(),
        })
    }
}

impl fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@sha256:{}", self.name, self.digest)
    }
}

impl Serialize for ArtifactRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArtifactRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written `512`, `64Ki`, `128Mi`, `2Gi` (powers of 1024) or `100k`, `5M`,
/// `1G` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason} (expected forms like 512, 64Ki, 128Mi, 2Gi, 100k, 5M)")]
pub struct ByteSizeError {
    pub input: String,
    pub reason: &'static str,
}

const SIZE_UNITS: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| ByteSizeError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if digits == 0 {
            return Err(err("a number must come first"));
        }
        let value: u64 = s[..digits].parse().map_err(|_| err("number too large"))?;
        let unit = &s[digits..];
        let scale = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| err("unknown unit"))?
        };
        value
            .checked_mul(scale)
            .map(Self)
            .ok_or_else(|| err("too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(Self(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A CPU share in thousandths of a core ("millicores"): `0.5`, `"0.5"`, `"500m"`, `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cpus(pub u32);

impl Cpus {
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl FromStr for Cpus {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        let bad = || {
            format!(
                "invalid CPU amount {input:?}: expected cores like 0.5 or 2, or millicores like 500m"
            )
        };
        let millis = if let Some(m) = s.strip_suffix('m') {
            m.parse::<u32>().map_err(|_| bad())?
        } else {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            if whole.is_empty() && frac.is_empty() {
                return Err(bad());
            }
            if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let whole: u32 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| bad())?
            };
            let frac_millis: u32 = if frac.is_empty() {
                0
            } else {
                format!("{frac:0<3}").parse().map_err(|_| bad())?
            };
            whole
                .checked_mul(1000)
                .and_then(|w| w.checked_add(frac_millis))
                .ok_or_else(bad)?
        };
        if millis == 0 {
            return Err(format!("invalid CPU amount {input:?}: must be more than 0"));
        }
        Ok(Self(millis))
    }
}

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Int(n) => n.to_string(),
            Raw::Float(x) => format!("{x}"),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `resources`: limits the runtime enforces. Containers: `cpus` and `memory` become the
/// engine's CPU quota and memory limit. WebAssembly: `memory` caps the module's linear
/// memories and tables, `cpus` throttles it to that share of a core, and `fuel` is a total
/// instruction budget after which the module is stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// WebAssembly only: instructions (wasmtime fuel units) the module may execute in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// When the agent pulls a container image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only when the engine does not have the image.
    #[default]
    IfNotPresent,
    /// Pull before every new container (an update or a restart after the agent started).
    Always,
    /// Never pull: the image must already be on the node (or come from `imageArtifact`).
    Never,
}

impl PullPolicy {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkMode {
    /// The node's own network stack (the default: no address translation, and what most
    /// edge workloads talking to local devices want).
    #[default]
    Host,
    /// No network at all but loopback.
    None,
    /// The engine's default bridge, with `ports` published on the node.
    Bridge,
}

impl NetworkMode {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::None => "none",
            Self::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A container port published on the node (needs `network: bridge`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    pub container_port: u16,
    /// Default: the same as `containerPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Protocol::is_default")]
    pub protocol: Protocol,
    /// The node address to listen on. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// Something from the node made visible inside the workload.
///
/// Containers: an absolute `source` is a bind mount of that host path, anything else the
/// name of an engine volume (created if missing). WebAssembly: `source` must be an absolute
/// host directory, preopened at `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    pub source: String,
    /// Where the workload sees it (an absolute path).
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// A health probe. Exactly one of `exec`, `httpGet` and `tcpSocket`.
///
/// A probe runs every `period` once `initialDelay` has passed since the workload started;
/// an attempt that takes longer than `timeout` fails. `failureThreshold` consecutive
/// failures make the workload unhealthy (a liveness probe then restarts it, a readiness
/// probe reports it not ready); `successThreshold` consecutive successes make it healthy
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketProbe>,
    #[serde(default)]
    pub initial_delay: DurationSpec,
    #[serde(default = "default_probe_period")]
    pub period: DurationSpec,
    #[serde(default = "default_probe_timeout")]
    pub timeout: DurationSpec,
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
}

/// What a probe does, once its spec is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAction<'a> {
    Exec(&'a ExecProbe),
    HttpGet(&'a HttpGetProbe),
    TcpSocket(&'a TcpSocketProbe),
}

impl Probe {
    /// The one action this probe has, `None` if it has none or several (which validation
    /// refuses).
    pub fn action(&self) -> Option<ProbeAction<'_>> {
        match (&self.exec, &self.http_get, &self.tcp_socket) {
            (Some(exec), None, None) => Some(ProbeAction::Exec(exec)),
            (None, Some(http), None) => Some(ProbeAction::HttpGet(http)),
            (None, None, Some(tcp)) => Some(ProbeAction::TcpSocket(tcp)),
            _ => None,
        }
    }

    /// A probe with `action` and every timing at its default.
    pub fn new(action: ProbeAction<'_>) -> Self {
        let mut probe = Self {
            exec: None,
            http_get: None,
            tcp_socket: None,
            initial_delay: DurationSpec::default(),
            period: default_probe_period(),
            timeout: default_probe_timeout(),
            failure_threshold: default_failure_threshold(),
            success_threshold: default_success_threshold(),
        };
        match action {
            ProbeAction::Exec(e) => probe.exec = Some(e.clone()),
            ProbeAction::HttpGet(h) => probe.http_get = Some(h.clone()),
            ProbeAction::TcpSocket(t) => probe.tcp_socket = Some(t.clone()),
        }
        probe
    }
}

/// Runs `command` (inside the container for containers, on the node otherwise); exit code
/// 0 is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecProbe {
    pub command: Vec<String>,
}

/// `GET http://host:port/path`; a status from 200 to 399 is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGetProbe {
    pub port: u16,
    #[serde(default = "default_probe_path")]
    pub path: String,
    /// Default `127.0.0.1`: the workload on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A TCP connection to `host:port` that is accepted is success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSocketProbe {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// The host a network probe connects to when it names none.
pub const DEFAULT_PROBE_HOST: &str = "127.0.0.1";

fn default_probe_period() -> DurationSpec {
    DurationSpec::from_secs(10)
}

fn default_probe_timeout() -> DurationSpec {
    DurationSpec::from_secs(1)
}

fn default_failure_threshold() -> u32 {
    3
}

fn default_success_threshold() -> u32 {
    1
}

fn default_probe_path() -> String {
    "/".to_owned()
}

/// What happens when a file's rendered content changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFileChange {
    /// Restart the workload so it reads the new content.
    #[default]
    Restart,
    /// Only rewrite the file; the workload notices by itself (or not at all).
    None,
}

impl OnFileChange {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A file the agent renders on the node before the workload starts.
///
/// `path` is relative to the workload's files directory, which processes find in
/// `EDGEFLEET_FILES_DIR` and containers and WebAssembly modules see at
/// `/run/edgefleet/files` (read-only). `content` may use `{{ node.name }}`,
/// `{{ node.labels.KEY }}`, `{{ node.facts.FACT }}` and `{{ workload.name }}`, each
/// optionally with a fallback: `{{ node.labels.site | default "lab" }}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileSpec {
    pub path: String,
    pub content: String,
    /// Unix permissions as an octal string. Default `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "OnFileChange::is_default")]
    pub on_change: OnFileChange,
}

/// Where containers and WebAssembly modules see their rendered files.
pub const FILES_MOUNT_PATH: &str = "/run/edgefleet/files";
/// The environment variable that tells a workload where its rendered files are.
pub const FILES_DIR_ENV: &str = "EDGEFLEET_FILES_DIR";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_refs_parse_and_print() {
        let digest = "a".repeat(64);
        let r: ArtifactRef = format!("model.bin@sha256:{digest}").parse().unwrap();
        assert_eq!(r.name, "model.bin");
        assert_eq!(r.to_string(), format!("model.bin@sha256:{digest}"));
        for bad in [
            "model".to_owned(),
            format!("model@{digest}"),
            format!("@sha256:{digest}"),
            "m@sha256:abc".to_owned(),
            format!("m@sha256:{}", "A".repeat(64)),
            format!("a/b@sha256:{digest}"),
            format!("-x@sha256:{digest}"),
        ] {
            assert!(bad.parse::<ArtifactRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        let parse = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(parse("512"), Ok(512));
        assert_eq!(parse("64Ki"), Ok(65536));
        assert_eq!(parse("128Mi"), Ok(128 << 20));
        assert_eq!(parse("5M"), Ok(5_000_000));
        assert!(parse("Mi").is_err());
        assert!(parse("5 Mb").is_err());
        assert!(parse("99999999999Ti").is_err());
        assert_eq!(ByteSize(128 << 20).to_string(), "128Mi");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn cpus_parse_and_print() {
        let parse = |s: &str| s.parse::<Cpus>().map(|c| c.0);
        assert_eq!(parse("0.5"), Ok(500));
        assert_eq!(parse("2"), Ok(2000));
        assert_eq!(parse("250m"), Ok(250));
        assert_eq!(parse(".25"), Ok(250));
        assert!(parse("0").is_err());
        assert!(parse("0.0001").is_err());
        assert!(parse("half").is_err());
        assert_eq!(Cpus(500).to_string(), "500m");
        assert_eq!(Cpus(2000).to_string(), "2");
        let from_yaml: Resources =
            serde_json::from_str(r#"{"cpus": 0.5, "memory": "64Mi"}"#).unwrap();
        assert_eq!(from_yaml.cpus, Some(Cpus(500)));
        assert_eq!(from_yaml.memory, Some(ByteSize(64 << 20)));
    }

    #[test]
    fn probe_has_exactly_one_action() {
        let mut probe = Probe::new(ProbeAction::TcpSocket(&TcpSocketProbe {
            port: 80,
            host: None,
        }));
        assert!(matches!(probe.action(), Some(ProbeAction::TcpSocket(_))));
        probe.exec = Some(ExecProbe {
            command: vec!["true".into()],
        });
        assert_eq!(probe.action(), None);
    }
}
