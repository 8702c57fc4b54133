//! Parsing and validating manifest files from YAML text: deployments and maintenance windows.
//!
//! The caller reads the files; this module turns text into checked manifests or an error
//! that names the source, line and column, or the field.
//!
//! A file may hold several YAML documents of different kinds. Each document is first read
//! only for its `kind` (and where it starts), then deserialised on its own as the type that
//! kind names, so an error inside it still carries the file's line and column.

use std::collections::BTreeSet;
use std::fmt;

use edgefleet_wire::API_VERSION;
use edgefleet_wire::manifest::{
    Amount, DeploymentManifest, MaintenanceWindowManifest, Metadata, NetworkMode, RolloutStrategy,
    Runtime, Selector, WorkloadSpec,
};
use serde::de::DeserializeOwned;

use crate::labels::{validate_key, validate_labels, validate_name, validate_value};
use crate::selector;
use crate::window::CompiledWindow;

/// The kinds of document a manifest file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DocumentKind {
    Deployment,
    MaintenanceWindow,
    AlertRule,
}

impl DocumentKind {
    pub const ALL: [Self; 3] = [Self::Deployment, Self::MaintenanceWindow, Self::AlertRule];

    /// The `kind` as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::MaintenanceWindow => "MaintenanceWindow",
            Self::AlertRule => "AlertRule",
        }
    }

    /// The kind in a sentence: `deployment web`, `maintenance window nights`.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::MaintenanceWindow => "maintenance window",
            Self::AlertRule => "alert rule",
        }
    }

    /// The kind a manifest's `kind` field names (exact spelling, as Kubernetes does).
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The document an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentName {
    pub kind: DocumentKind,
    /// Its `metadata.name`.
    pub name: String,
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name (or `-` for standard input, `request` for an API body).
    pub source: String,
    /// 1-based line and column, when the error comes from the YAML parser or names a
    /// document's `kind`.
    pub location: Option<(u32, u32)>,
    /// The document's kind and `metadata.name`, when known.
    pub document: Option<DocumentName>,
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
            write!(f, " ({} {})", document.kind.noun(), document.name)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Every document of a manifest file, by kind, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Documents {
    pub deployments: Vec<DeploymentManifest>,
    pub windows: Vec<MaintenanceWindowManifest>,
    pub alert_rules: Vec<edgefleet_wire::alert::AlertRuleManifest>,
}

/// Parses every YAML document in `text` as a deployment; any other kind is an error.
/// Empty documents are skipped.
pub fn parse(source: &str, text: &str) -> Result<Vec<DeploymentManifest>, ManifestError> {
    let documents = read_documents(source, text, &[DocumentKind::Deployment])?;
    Ok(documents.deployments)
}

/// Parses every YAML document in `text`, each as the kind its `kind` field names
/// (`Deployment` or `MaintenanceWindow`), and validates each. Empty documents are skipped.
/// Two documents of the same kind and name are an error.
pub fn parse_documents(source: &str, text: &str) -> Result<Documents, ManifestError> {
    read_documents(source, text, &DocumentKind::ALL)
}

fn read_documents(
    source: &str,
    text: &str,
    accepted: &[DocumentKind],
) -> Result<Documents, ManifestError> {
    let mut documents = Documents::default();
    for raw in split_documents(source, text, accepted)? {
        match raw.kind {
            DocumentKind::Deployment => documents.deployments.push(raw.deserialize(source)?),
            DocumentKind::MaintenanceWindow => documents.windows.push(raw.deserialize(source)?),
            DocumentKind::AlertRule => documents.alert_rules.push(raw.deserialize(source)?),
        }
    }
    for manifest in &documents.deployments {
        validate(manifest).map_err(|(field, message)| {
            invalid(
                source,
                DocumentKind::Deployment,
                &manifest.metadata,
                field,
                message,
            )
        })?;
    }
    for manifest in &documents.windows {
        validate_window(manifest).map_err(|(field, message)| {
            invalid(
                source,
                DocumentKind::MaintenanceWindow,
                &manifest.metadata,
                field,
                message,
            )
        })?;
    }
    refuse_duplicates(
        source,
        DocumentKind::Deployment,
        documents.deployments.iter().map(|d| &d.metadata),
    )?;
    refuse_duplicates(
        source,
        DocumentKind::MaintenanceWindow,
        documents.windows.iter().map(|w| &w.metadata),
    )?;
    for manifest in &documents.alert_rules {
        crate::alerts::validate_rule(manifest).map_err(|(field, message)| {
            invalid(
                source,
                DocumentKind::AlertRule,
                &manifest.metadata,
                field,
                message,
            )
        })?;
    }
    refuse_duplicates(
        source,
        DocumentKind::AlertRule,
        documents.alert_rules.iter().map(|r| &r.metadata),
    )?;
    Ok(documents)
}

fn invalid(
    source: &str,
    kind: DocumentKind,
    metadata: &Metadata,
    field: String,
    message: String,
) -> ManifestError {
    ManifestError {
        source: source.to_owned(),
        location: None,
        document: Some(DocumentName {
            kind,
            name: metadata.name.clone(),
        }),
        field: Some(field),
        message,
    }
}

fn refuse_duplicates<'m>(
    source: &str,
    kind: DocumentKind,
    metadata: impl Iterator<Item = &'m Metadata>,
) -> Result<(), ManifestError> {
    let mut names = BTreeSet::new();
    for metadata in metadata {
        if !names.insert(metadata.name.as_str()) {
            return Err(invalid(
                source,
                kind,
                metadata,
                "metadata.name".into(),
                format!("this {} is defined twice", kind.noun()),
            ));
        }
    }
    Ok(())
}

/// One document of a file: its kind, and the part of the file it is in.
struct RawDocument<'t> {
    kind: DocumentKind,
    /// From the start of the line the document's content starts on to the start of the
    /// next document's content (or the end of the file).
    text: &'t str,
    /// How many lines of the file come before `text`.
    lines_before: u32,
    /// Where the document's content starts in the file.
    location: (u32, u32),
}

impl RawDocument<'_> {
    fn deserialize<T: DeserializeOwned>(&self, source: &str) -> Result<T, ManifestError> {
        let mut parsed: Vec<T> = serde_saphyr::from_multiple(self.text).map_err(|error| {
            let location = error
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| {
                    let (line, column) = position(&l);
                    (line.saturating_add(self.lines_before), column)
                })
                .or(Some(self.location));
            yaml_error(source, location, &error)
        })?;
        match (parsed.pop(), parsed.is_empty()) {
            (Some(document), true) => Ok(document),
            // The first pass found exactly one document here; only a parser that splits
            // documents differently on a second reading could get here.
            _ => Err(ManifestError {
                source: source.to_owned(),
                location: Some(self.location),
                document: None,
                field: None,
                message: "could not separate this document from its neighbours: put each \
                          document after a line holding only ---"
                    .into(),
            }),
        }
    }
}

/// Just enough of a document to dispatch on: its `kind` and where that is written, or
/// what the document is instead of a mapping.
enum KindProbe {
    Mapping {
        kind: Option<serde_saphyr::Spanned<String>>,
    },
    NotAMapping {
        found: &'static str,
    },
}

impl<'de> serde::Deserialize<'de> for KindProbe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `any`, not `map`: a document that is not a mapping is reported by the caller, at
        // the document's position (the parser's own error would say neither).
        deserializer.deserialize_any(KindProbeVisitor)
    }
}

struct KindProbeVisitor;

impl KindProbeVisitor {
    fn other<E>(found: &'static str) -> Result<KindProbe, E> {
        Ok(KindProbe::NotAMapping { found })
    }
}

impl<'de> serde::de::Visitor<'de> for KindProbeVisitor {
    type Value = KindProbe;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a manifest: a mapping with apiVersion, kind, metadata and spec")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KindProbe, A::Error> {
        let mut kind = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "kind" {
                kind = Some(map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(KindProbe::Mapping { kind })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<KindProbe, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Self::other("a list")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<KindProbe, E> {
        Self::other("a string")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<KindProbe, E> {
        Self::other("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<KindProbe, E> {
        Self::other("a number")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<KindProbe, E> {
        Self::other("a number")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<KindProbe, E> {
        Self::other("a number")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<KindProbe, E> {
        Self::other("null")
    }
}

/// Finds every non-empty document in `text` and its kind, refusing kinds not `accepted`.
fn split_documents<'t>(
    source: &str,
    text: &'t str,
    accepted: &[DocumentKind],
) -> Result<Vec<RawDocument<'t>>, ManifestError> {
    let probes: Vec<serde_saphyr::Spanned<KindProbe>> =
        serde_saphyr::from_multiple(text).map_err(|error| {
            let location = error.location().map(|l| position(&l));
            yaml_error(source, location, &error)
        })?;
    let starts: Vec<usize> = probes
        .iter()
        .map(|probe| line_start(text, &probe.referenced))
        .collect();
    let mut documents = Vec::with_capacity(probes.len());
    for (i, probe) in probes.iter().enumerate() {
        let start = starts[i];
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let location = position(&probe.referenced);
        let kind = document_kind(source, location, &probe.value, accepted)?;
        documents.push(RawDocument {
            kind,
            // Starts are increasing (each document begins on a later line); `get` keeps a
            // surprise from the parser an error rather than a panic.
            text: text.get(start..end.max(start)).unwrap_or_default(),
            lines_before: location.0.saturating_sub(1),
            location,
        });
    }
    Ok(documents)
}

fn document_kind(
    source: &str,
    document_location: (u32, u32),
    probe: &KindProbe,
    accepted: &[DocumentKind],
) -> Result<DocumentKind, ManifestError> {
    let expected = accepted
        .iter()
        .map(|k| format!("{:?}", k.as_str()))
        .collect::<Vec<_>>()
        .join(" or ");
    let error = |location, message| ManifestError {
        source: source.to_owned(),
        location: Some(location),
        document: None,
        field: Some("kind".into()),
        message,
    };
    let kind = match probe {
        KindProbe::Mapping { kind } => kind,
        KindProbe::NotAMapping { found } => {
            return Err(ManifestError {
                field: None,
                ..error(
                    document_location,
                    format!(
                        "expected a manifest (a mapping with apiVersion, kind, metadata and \
                         spec), found {found}"
                    ),
                )
            });
        }
    };
    let Some(kind) = kind else {
        return Err(error(
            document_location,
            format!("this document has no kind: expected kind {expected}"),
        ));
    };
    let location = position(&kind.referenced);
    match DocumentKind::from_kind(&kind.value) {
        Some(found) if accepted.contains(&found) => Ok(found),
        Some(found) => Err(error(
            location,
            format!(
                "a {} is not accepted here: expected kind {expected}",
                found.noun()
            ),
        )),
        None => Err(error(
            location,
            format!("unsupported kind {:?}: expected {expected}", kind.value),
        )),
    }
}

/// A parser location as (line, column); saturates rather than wrap (4 billion lines).
fn position(location: &serde_saphyr::Location) -> (u32, u32) {
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    (narrow(location.line()), narrow(location.column()))
}

/// The byte offset of the start of the line `location` is on.
fn line_start(text: &str, location: &serde_saphyr::Location) -> usize {
    let offset = location
        .span()
        .byte_offset()
        .and_then(|offset| usize::try_from(offset).ok())
        .filter(|offset| text.is_char_boundary(*offset));
    match offset {
        Some(offset) => text[..offset]
            .rfind(['\n', '\r'])
            .map_or(0, |newline| newline + 1),
        None => nth_line_start(text, location.line()),
    }
}

/// The byte offset of the start of 1-based line `line`, counting `\n`, `\r\n` and `\r` as
/// line breaks as YAML does.
fn nth_line_start(text: &str, line: u64) -> usize {
    let mut current = 1;
    let mut bytes = text.bytes().enumerate().peekable();
    while current < line {
        let Some((i, byte)) = bytes.next() else {
            return text.len();
        };
        let is_break = match byte {
            b'\n' => true,
            b'\r' => bytes.peek().map(|(_, next)| *next) != Some(b'\n'),
            _ => false,
        };
        if is_break {
            current += 1;
            if current == line {
                return i + 1;
            }
        }
    }
    0
}

fn yaml_error(
    source: &str,
    location: Option<(u32, u32)>,
    error: &serde_saphyr::Error,
) -> ManifestError {
    ManifestError {
        source: source.to_owned(),
        location,
        document: None,
        field: None,
        // The location is in the message already for some errors; keep our own prefix.
        message: first_line(&error.to_string()),
    }
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

/// Checks a deployment beyond its shape. The error is `(field path, message)`.
pub fn validate(manifest: &DeploymentManifest) -> Result<(), (String, String)> {
    validate_header(
        DocumentKind::Deployment,
        &manifest.api_version,
        &manifest.kind,
        &manifest.metadata,
    )?;
    let spec = &manifest.spec;
    validate_selector(&spec.selector)?;
    crate::streams::validate_streams(&spec.streams).map_err(|(f, m)| (format!("spec.{f}"), m))?;
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
        validate_runtime_fields(workload).map_err(|(f, m)| (field(&f), m))?;
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
    validate_rollout(&spec.rollout)
}

/// The fields each runtime needs and accepts. The error's field is relative to the workload.
fn validate_runtime_fields(workload: &WorkloadSpec) -> Result<(), (String, String)> {
    let runtime = workload.runtime;
    let not_for = |field: &str, what: &str| {
        Err((
            field.to_owned(),
            format!(
                "{what} is not used by the {} runtime (only by {})",
                runtime.as_str(),
                match field {
                    "image" | "imagePullPolicy" | "imageArtifact" | "network" | "ports" => {
                        "container"
                    }
                    "module" => "wasm",
                    "resources.fuel" => "wasm",
                    _ => "container and wasm",
                }
            ),
        ))
    };
    let container = runtime == Runtime::Container;
    let wasm = runtime == Runtime::Wasm;
    match runtime {
        Runtime::Process if workload.command.trim().is_empty() => {
            return Err(("command".into(), "command is empty".into()));
        }
        Runtime::Container
            if workload
                .image
                .as_deref()
                .is_none_or(|i| i.trim().is_empty()) =>
        {
            return Err(("image".into(), "a container workload needs an image".into()));
        }
        Runtime::Wasm if workload.module.is_none() => {
            return Err((
                "module".into(),
                "a wasm workload needs a module (an artifact: NAME@sha256:…, see `edgefleet artifact push`)".into(),
            ));
        }
        Runtime::Wasm if !workload.command.is_empty() => {
            return Err((
                "command".into(),
                "a wasm workload runs its module; use args for its arguments".into(),
            ));
        }
        _ => {}
    }
    if !container {
        if workload.image.is_some() {
            return not_for("image", "image");
        }
        if !workload.image_pull_policy.is_default() {
            return not_for("imagePullPolicy", "imagePullPolicy");
        }
        if workload.image_artifact.is_some() {
            return not_for("imageArtifact", "imageArtifact");
        }
        if !workload.network.is_default() {
            return not_for("network", "network");
        }
        if !workload.ports.is_empty() {
            return not_for("ports", "ports");
        }
    }
    if !wasm && workload.module.is_some() {
        return not_for("module", "module");
    }
    if !wasm && workload.resources.fuel.is_some() {
        return not_for("resources.fuel", "fuel");
    }
    if runtime == Runtime::Process {
        if !workload.volumes.is_empty() {
            return not_for("volumes", "volumes");
        }
        if !workload.resources.is_empty() {
            return not_for("resources", "resources");
        }
    }
    if let Some(image) = &workload.image
        && (image.chars().any(char::is_whitespace) || image.contains('\0'))
    {
        return Err(("image".into(), format!("invalid image reference {image:?}")));
    }
    if !workload.ports.is_empty() && workload.network != NetworkMode::Bridge {
        return Err((
            "ports".into(),
            format!(
                "ports are published only with network: bridge (this workload uses network: {}, where the container already shares the node's ports or has none)",
                workload.network.as_str()
            ),
        ));
    }
    let mut host_ports = BTreeSet::new();
    for (i, port) in workload.ports.iter().enumerate() {
        if port.container_port == 0 || port.host_port == Some(0) {
            return Err((format!("ports[{i}]"), "port 0 is not a port".into()));
        }
        let host = port.host_port.unwrap_or(port.container_port);
        if !host_ports.insert((host, port.protocol.as_str())) {
            return Err((
                format!("ports[{i}].hostPort"),
                format!(
                    "host port {host}/{} is published twice",
                    port.protocol.as_str()
                ),
            ));
        }
        if let Some(ip) = &port.host_ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err((
                format!("ports[{i}].hostIp"),
                format!("{ip:?} is not an IP address"),
            ));
        }
    }
    let mut targets = BTreeSet::new();
    for (i, volume) in workload.volumes.iter().enumerate() {
        if volume.source.trim().is_empty() {
            return Err((format!("volumes[{i}].source"), "source is empty".into()));
        }
        if wasm && !volume.source.starts_with('/') {
            return Err((
                format!("volumes[{i}].source"),
                format!(
                    "{:?}: a wasm workload can only be given host directories (absolute paths)",
                    volume.source
                ),
            ));
        }
        if !volume.target.starts_with('/') {
            return Err((
                format!("volumes[{i}].target"),
                format!("target {:?} must be an absolute path", volume.target),
            ));
        }
        if !targets.insert(volume.target.as_str()) {
            return Err((
                format!("volumes[{i}].target"),
                format!("two volumes are mounted at {:?}", volume.target),
            ));
        }
        if !workload.files.is_empty() && volume.target == edgefleet_wire::workload::FILES_MOUNT_PATH
        {
            return Err((
                format!("volumes[{i}].target"),
                format!(
                    "{} is where the workload's files are mounted",
                    edgefleet_wire::workload::FILES_MOUNT_PATH
                ),
            ));
        }
    }
    if let Some(memory) = workload.resources.memory
        && memory.0 < 1 << 20
    {
        return Err((
            "resources.memory".into(),
            format!("a memory limit of {memory} is below the minimum of 1Mi"),
        ));
    }
    if workload.resources.fuel == Some(0) {
        return Err(("resources.fuel".into(), "fuel must be more than 0".into()));
    }
    for (name, probe) in [
        ("livenessProbe", &workload.liveness_probe),
        ("readinessProbe", &workload.readiness_probe),
    ] {
        if let Some(probe) = probe {
            crate::probe::validate(probe).map_err(|(sub, message)| {
                let path = if sub.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}.{sub}")
                };
                (path, message)
            })?;
        }
    }
    let facts_shape = serde_json::to_value(edgefleet_wire::node::NodeFacts::default())
        .unwrap_or(serde_json::Value::Null);
    crate::template::check_files(&workload.files, &facts_shape)
        .map_err(|(i, e)| (format!("files[{i}].{}", e.field), e.message))?;
    Ok(())
}

/// Checks a maintenance window beyond its shape. The error is `(field path, message)`.
pub fn validate_window(manifest: &MaintenanceWindowManifest) -> Result<(), (String, String)> {
    validate_header(
        DocumentKind::MaintenanceWindow,
        &manifest.api_version,
        &manifest.kind,
        &manifest.metadata,
    )?;
    validate_selector(&manifest.spec.selector)?;
    // The schedule's rules live with the code that evaluates it, so what validates is
    // exactly what compiles.
    CompiledWindow::new(&manifest.spec).map_err(|error| (error.field, error.message))?;
    Ok(())
}

/// `apiVersion`, `kind` and `metadata`, the same for every kind.
fn validate_header(
    expected_kind: DocumentKind,
    api_version: &str,
    kind: &str,
    metadata: &Metadata,
) -> Result<(), (String, String)> {
    if api_version != API_VERSION {
        return Err((
            "apiVersion".into(),
            format!("unsupported apiVersion {api_version:?}: expected {API_VERSION:?}"),
        ));
    }
    if kind != expected_kind.as_str() {
        return Err((
            "kind".into(),
            format!(
                "unsupported kind {kind:?}: expected {:?}",
                expected_kind.as_str()
            ),
        ));
    }
    validate_name(&metadata.name).map_err(|reason| {
        (
            "metadata.name".into(),
            format!("name {:?} {reason}", metadata.name),
        )
    })?;
    validate_labels(&metadata.labels).map_err(|e| ("metadata.labels".into(), e.to_string()))
}

fn validate_selector(spec_selector: &Selector) -> Result<(), (String, String)> {
    selector::validate(spec_selector, "spec.selector").map_err(|e| match e {
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
    })
}

fn validate_rollout(rollout: &RolloutStrategy) -> Result<(), (String, String)> {
    let field = |name: &str| format!("spec.rollout.{name}");
    at_least_one_node("batchSize", rollout.batch_size).map_err(|m| (field("batchSize"), m))?;
    if let Some(canary) = &rollout.canary {
        at_least_one_node("size", canary.size).map_err(|m| (field("canary.size"), m))?;
    }
    if let Some(max_unavailable) = rollout.max_unavailable {
        at_least_one_node("maxUnavailable", max_unavailable)
            .map_err(|m| (field("maxUnavailable"), m))?;
    }
    if let Amount::Count(n) = rollout.failure_threshold {
        return Err((
            field("failureThreshold"),
            format!(
                "failureThreshold {n} is a node count, but the threshold is a share of each \
                 step's nodes: use a percentage like \"10%\""
            ),
        ));
    }
    if rollout.progress_deadline.as_duration() < std::time::Duration::from_secs(1) {
        return Err((
            field("progressDeadline"),
            format!(
                "progressDeadline {} is too short: use at least 1s (the default is 10m)",
                rollout.progress_deadline
            ),
        ));
    }
    if let Some(key) = &rollout.partition_by {
        validate_key(key).map_err(|e| (field("partitionBy"), e.to_string()))?;
    }
    if rollout.partition_order.is_empty() {
        return Ok(());
    }
    let Some(key) = &rollout.partition_by else {
        return Err((
            field("partitionOrder"),
            "partitionOrder needs partitionBy: name the label whose values it orders".into(),
        ));
    };
    let mut seen = BTreeSet::new();
    for (i, value) in rollout.partition_order.iter().enumerate() {
        let field = field(&format!("partitionOrder[{i}]"));
        validate_value(key, value).map_err(|e| (field.clone(), e.to_string()))?;
        if !seen.insert(value.as_str()) {
            return Err((
                field,
                format!("partition {value:?} is listed twice: list each value once"),
            ));
        }
    }
    Ok(())
}

/// An amount of nodes that must mean at least one node.
fn at_least_one_node(name: &str, amount: Amount) -> Result<(), String> {
    match amount {
        Amount::Count(0) | Amount::Percent(0) => Err(format!(
            "{name} {amount} means no node at all: use a count of at least 1 or a \
             percentage of at least 1%, like \"25%\""
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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

    const RUNTIMES: &str = r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: mixed
spec:
  workloads:
    - name: web
      runtime: container
      image: busybox:1.36
      imagePullPolicy: always
      network: bridge
      ports:
        - containerPort: 80
          hostPort: 8080
      volumes:
        - source: /srv/data
          target: /data
          readOnly: true
        - source: cache
          target: /cache
      resources:
        cpus: 0.5
        memory: 64Mi
      livenessProbe:
        httpGet:
          port: 8080
          path: /healthz
        period: 5s
      readinessProbe:
        tcpSocket:
          port: 8080
      files:
        - path: conf/site.conf
          content: 'site={{ node.labels.site | default "lab" }}'
          mode: "0600"
    - name: filter
      runtime: wasm
      module: filter@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
      args: ["--level", "2"]
      resources:
        memory: 16Mi
        fuel: 1000000
"#;

    #[test]
    fn container_and_wasm_workloads_parse() {
        let docs = parse("f.yaml", RUNTIMES).unwrap();
        let web = &docs[0].spec.workloads[0];
        assert_eq!(web.runtime, Runtime::Container);
        assert_eq!(web.ports[0].host_port, Some(8080));
        assert_eq!(web.resources.memory.map(|m| m.0), Some(64 << 20));
        assert!(web.liveness_probe.is_some());
        let filter = &docs[0].spec.workloads[1];
        assert_eq!(
            filter.module.as_ref().map(|m| m.name.as_str()),
            Some("filter")
        );
    }

    #[test]
    fn runtime_fields_are_checked_with_the_field_named() {
        let cases = [
            (RUNTIMES.replace("      image: busybox:1.36\n", ""), "spec.workloads[0].image"),
            (RUNTIMES.replace("network: bridge", "network: host"), "spec.workloads[0].ports"),
            (RUNTIMES.replace("target: /cache", "target: cache"), "spec.workloads[0].volumes[1].target"),
            (RUNTIMES.replace("target: /cache", "target: /data"), "spec.workloads[0].volumes[1].target"),
            (RUNTIMES.replace("memory: 64Mi", "memory: 1000"), "spec.workloads[0].resources.memory"),
            (RUNTIMES.replace("path: /healthz", "path: healthz"), "spec.workloads[0].livenessProbe.httpGet.path"),
            (RUNTIMES.replace("path: conf/site.conf", "path: /etc/site.conf"), "spec.workloads[0].files[0].path"),
            (RUNTIMES.replace("node.labels.site", "node.site"), "spec.workloads[0].files[0].content"),
            (RUNTIMES.replace("mode: \"0600\"", "mode: \"rw\""), "spec.workloads[0].files[0].mode"),
            (RUNTIMES.replace("      runtime: wasm\n      module: filter@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", "      runtime: wasm\n"), "spec.workloads[1].module"),
            (RUNTIMES.replace("      runtime: wasm\n", "      runtime: process\n      command: /bin/x\n"), "spec.workloads[1].module"),
            (RUNTIMES.replace("runtime: container", "runtime: process\n      command: /bin/x"), "spec.workloads[0].image"),
        ];
        for (text, field) in cases {
            assert_ne!(text, RUNTIMES, "the case for {field} changed nothing");
            let e = err(&text);
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
        }
        // A malformed artifact reference is a parse error naming the problem.
        let e = err(&RUNTIMES.replace("filter@sha256:", "filter@md5:"));
        assert!(e.message.contains("sha256"), "{e}");
    }

    #[test]
    fn duplicate_documents_are_refused() {
        let text = format!("{GOOD}\n---\n{}", GOOD.split("---").nth(1).unwrap());
        assert_eq!(err(&text).message, "this deployment is defined twice");
    }

    const WINDOW: &str = r#"
apiVersion: edgefleet.io/v1
kind: MaintenanceWindow
metadata:
  name: nights
spec:
  selector:
    matchLabels:
      site: a
  timeZone: Europe/Berlin
  schedule:
    - days: [mon, Tue]
      start: "02:00"
      duration: 3h
    - start: 23:30
      duration: 1h
"#;

    /// `GOOD` and `WINDOW` in one file, the window in the middle.
    fn mixed() -> String {
        let mut parts = GOOD.split("---");
        let first = parts.next().unwrap();
        let second = parts.next().unwrap();
        format!("{first}---{WINDOW}---{second}")
    }

    /// The 1-based line of the first occurrence of `needle` in `text`.
    fn line_of(text: &str, needle: &str) -> u32 {
        let offset = text.find(needle).unwrap();
        text[..offset].matches('\n').count() as u32 + 1
    }

    fn documents_err(text: &str) -> ManifestError {
        parse_documents("f.yaml", text).unwrap_err()
    }

    #[test]
    fn parses_documents_of_both_kinds() {
        let documents = parse_documents("f.yaml", &mixed()).unwrap();
        let names = |d: &[DeploymentManifest]| {
            d.iter()
                .map(|m| m.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&documents.deployments), ["web", "other"]);
        assert_eq!(documents.windows.len(), 1);
        let window = &documents.windows[0];
        assert_eq!(window.metadata.name, "nights");
        assert_eq!(window.spec.time_zone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(window.spec.schedule[0].days, ["mon", "Tue"]);
        // An unquoted 23:30 is a string, not YAML 1.1's sexagesimal number.
        assert_eq!(window.spec.schedule[1].start, "23:30");
        assert!(window.spec.schedule[1].days.is_empty());
    }

    #[test]
    fn parse_keeps_working_for_deployments_and_refuses_windows() {
        assert_eq!(parse("f.yaml", GOOD).unwrap().len(), 2);
        let text = mixed();
        let e = err(&text);
        assert_eq!(e.field.as_deref(), Some("kind"));
        let line = line_of(&text, "kind: MaintenanceWindow");
        assert_eq!(e.location, Some((line, 7)), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "f.yaml:{line}:7: field kind: a maintenance window is not accepted here: \
                 expected kind \"Deployment\""
            )
        );
    }

    #[test]
    fn unknown_or_missing_kind_names_the_kinds_allowed() {
        let text = mixed().replace("kind: MaintenanceWindow", "kind: Maintenance");
        let e = documents_err(&text);
        let line = line_of(&text, "kind: Maintenance");
        assert_eq!(
            e.to_string(),
            format!(
                "f.yaml:{line}:7: field kind: unsupported kind \"Maintenance\": expected \
                 \"Deployment\" or \"MaintenanceWindow\" or \"AlertRule\""
            )
        );
        let text = mixed().replace("kind: MaintenanceWindow\n", "");
        let e = documents_err(&text);
        // Without a kind, the error points at the document's first line.
        let line = line_of(&text, "apiVersion: edgefleet.io/v1\nmetadata");
        assert_eq!(e.location, Some((line, 1)), "{e}");
        assert_eq!(
            e.message,
            "this document has no kind: expected kind \"Deployment\" or \"MaintenanceWindow\" \
             or \"AlertRule\""
        );
        let e = documents_err("- a\n- b\n");
        assert_eq!(e.location, Some((1, 1)), "{e}");
        assert_eq!(
            e.to_string(),
            "f.yaml:1:1: expected a manifest (a mapping with apiVersion, kind, metadata and \
             spec), found a list"
        );
    }

    #[test]
    fn errors_inside_later_documents_keep_their_file_position() {
        let text = mixed().replace("duration: 3h", "durations: 3h");
        let e = documents_err(&text);
        let line = line_of(&text, "durations: 3h");
        assert_eq!(e.location.map(|(l, _)| l), Some(line), "{e}");
        assert!(e.message.contains("durations"), "{e}");

        let text = mixed().replace("command: /bin/true", "command: [oops");
        let e = documents_err(&text);
        assert_eq!(
            e.location.map(|(l, _)| l),
            Some(line_of(&text, "[oops")),
            "{e}"
        );

        // The parser's own errors (here: a tab) come from the first pass, with the line.
        let text = format!("{}\n---\na:\n\t- b\n", mixed());
        let e = documents_err(&text);
        assert!(e.location.is_some_and(|(l, _)| l > 40), "{e}");
    }

    #[test]
    fn window_errors_name_the_window() {
        let text = mixed().replace("name: nights", "name: Nights");
        let e = documents_err(&text);
        assert!(
            e.to_string()
                .starts_with("f.yaml (maintenance window Nights): field metadata.name: "),
            "{e}"
        );
        let text = format!("{}---{WINDOW}", mixed());
        let e = documents_err(&text);
        assert_eq!(e.message, "this maintenance window is defined twice");
        // A window and a deployment may share a name: they are different things.
        let text = mixed().replace("name: nights", "name: web");
        assert!(parse_documents("f.yaml", &text).is_ok());
    }

    /// Validates `WINDOW` with `from` replaced by `to`, and checks the field and the start
    /// of the message (or success when `field` is empty).
    fn check_window(from: &str, to: &str, field: &str, message: &str) {
        assert!(WINDOW.contains(from), "{from}");
        let result = parse_documents("w.yaml", &WINDOW.replace(from, to));
        match result {
            Ok(_) => assert!(field.is_empty(), "{to:?} was accepted, expected {field}"),
            Err(e) => {
                assert_eq!(e.field.as_deref(), Some(field), "{to:?}: {e}");
                assert!(e.message.starts_with(message), "{to:?}: {e}");
            }
        }
    }

    #[test]
    fn window_validation() {
        check_window("[mon, Tue]", "[MON, sun]", "", "");
        check_window(
            "[mon, Tue]",
            "[mon, monday]",
            "spec.schedule[0].days[1]",
            "unknown day \"monday\": expected one of mon, tue, wed, thu, fri, sat, sun",
        );
        check_window(
            "[mon, Tue]",
            "[mon, Mon]",
            "spec.schedule[0].days[1]",
            "day \"Mon\" is listed twice",
        );
        check_window(
            "\"02:00\"",
            "\"24:00\"",
            "spec.schedule[0].start",
            "start \"24:00\" is not a time of day: expected HH:MM from 00:00 to 23:59",
        );
        check_window(
            "\"02:00\"",
            "\"2:00\"",
            "spec.schedule[0].start",
            "start \"2:00\"",
        );
        check_window("\"02:00\"", "\"02:60\"", "spec.schedule[0].start", "start");
        check_window("\"02:00\"", "\"00:00\"", "", "");
        check_window("23:30", "\"23:59\"", "", "");
        check_window(
            "duration: 3h",
            "duration: 30s",
            "spec.schedule[0].duration",
            "duration 30s is out of range: an opening lasts from 1m to 7d",
        );
        check_window(
            "duration: 3h",
            "duration: 8d",
            "spec.schedule[0].duration",
            "duration 8d is out of range",
        );
        check_window("duration: 3h", "duration: 1m", "", "");
        check_window("duration: 3h", "duration: 7d", "", "");
        check_window(
            "Europe/Berlin",
            "Europe/Berln",
            "spec.timeZone",
            "unknown time zone \"Europe/Berln\": expected an IANA time zone",
        );
        check_window("Europe/Berlin", "America/Argentina/Buenos_Aires", "", "");
        check_window("  timeZone: Europe/Berlin\n", "", "", "");
        check_window(
            "site: a",
            "\"bad key\": a",
            "spec.selector.matchLabels.bad key",
            "invalid label key",
        );
        check_window(
            "edgefleet.io/v1",
            "v2",
            "apiVersion",
            "unsupported apiVersion \"v2\"",
        );
        let no_schedule =
            WINDOW.split("  schedule:").next().unwrap().to_owned() + "  schedule: []\n";
        let e = documents_err(&no_schedule);
        assert_eq!(e.field.as_deref(), Some("spec.schedule"), "{e}");
        assert!(
            e.message
                .starts_with("a maintenance window needs at least one opening"),
            "{e}"
        );
    }

    /// Validates `GOOD`'s first deployment with `rollout` as its `spec.rollout` (YAML flow
    /// mapping), and checks the field and the start of the message (or success when
    /// `field` is empty).
    fn check_rollout(rollout: &str, field: &str, message: &str) {
        let text = GOOD.replacen(
            "  priority: 10\n",
            &format!("  priority: 10\n  rollout: {rollout}\n"),
            1,
        );
        match parse("r.yaml", &text) {
            Ok(_) => assert!(field.is_empty(), "{rollout} was accepted, expected {field}"),
            Err(e) => {
                assert_eq!(e.field.as_deref(), Some(field), "{rollout}: {e}");
                assert!(e.message.starts_with(message), "{rollout}: {e}");
            }
        }
    }

    #[test]
    fn rollout_validation() {
        check_rollout("{}", "", "");
        check_rollout(
            "{batchSize: 1, maxUnavailable: 1%, canary: {size: 1}, failureThreshold: 10%, progressDeadline: 1s}",
            "",
            "",
        );
        check_rollout(
            "{batchSize: 0}",
            "spec.rollout.batchSize",
            "batchSize 0 means no node at all: use a count of at least 1 or a percentage of at least 1%",
        );
        check_rollout(
            "{batchSize: 0%}",
            "spec.rollout.batchSize",
            "batchSize 0% means no node",
        );
        check_rollout(
            "{canary: {size: 0}}",
            "spec.rollout.canary.size",
            "size 0 means no node",
        );
        check_rollout(
            "{maxUnavailable: \"0%\"}",
            "spec.rollout.maxUnavailable",
            "maxUnavailable 0% means no node",
        );
        check_rollout(
            "{failureThreshold: 2}",
            "spec.rollout.failureThreshold",
            "failureThreshold 2 is a node count",
        );
        check_rollout(
            "{failureThreshold: 0}",
            "spec.rollout.failureThreshold",
            "failureThreshold 0 is a node count, but the threshold is a share of each step's nodes: use a percentage like \"10%\"",
        );
        check_rollout("{failureThreshold: 0%}", "", "");
        check_rollout(
            "{progressDeadline: 500ms}",
            "spec.rollout.progressDeadline",
            "progressDeadline 500ms is too short: use at least 1s",
        );
        check_rollout("{partitionBy: site, partitionOrder: [b, a]}", "", "");
        check_rollout(
            "{partitionBy: \"bad key\"}",
            "spec.rollout.partitionBy",
            "invalid label key \"bad key\"",
        );
        check_rollout(
            "{partitionOrder: [a]}",
            "spec.rollout.partitionOrder",
            "partitionOrder needs partitionBy",
        );
        check_rollout(
            "{partitionBy: site, partitionOrder: [a, \"b c\"]}",
            "spec.rollout.partitionOrder[1]",
            "invalid value \"b c\" for label \"site\"",
        );
        check_rollout(
            "{partitionBy: site, partitionOrder: [a, b, a]}",
            "spec.rollout.partitionOrder[2]",
            "partition \"a\" is listed twice",
        );
    }

    #[test]
    fn documents_in_flow_style_and_with_comments_split_cleanly() {
        let text = "# fleet\n--- {apiVersion: edgefleet.io/v1, kind: MaintenanceWindow, metadata: {name: a}, spec: {schedule: [{start: \"01:00\", duration: 1h}]}}\n---\n# nothing here\n---\n--- {apiVersion: edgefleet.io/v1, kind: Deployment, metadata: {name: b}, spec: {workloads: [{name: w, command: x}]}}\n...\n";
        let documents = parse_documents("f.yaml", text).unwrap();
        assert_eq!(documents.windows[0].metadata.name, "a");
        assert_eq!(documents.deployments[0].metadata.name, "b");
        let e = documents_err(&text.replace("command: x", "commandd: x"));
        assert_eq!(e.location.map(|(line, _)| line), Some(6), "{e}");
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
            "kind: Deployment\n---\nkind: MaintenanceWindow\n",
            "--- {kind: Deployment}\n--- {kind: MaintenanceWindow}",
            "\r\rkind: Deployment\r---\rkind: x",
        ] {
            let _ = parse("g", text);
            let _ = parse_documents("g", text);
        }
    }

    proptest! {
        /// Cut a file of both kinds anywhere and splice in random text: never a panic, and
        /// every error says which file it is about.
        #[test]
        fn mutated_mixed_files_never_panic(cut in 0usize..400, insert in "\\PC{0,20}") {
            let mut text = mixed();
            let cut = cut.min(text.len());
            prop_assume!(text.is_char_boundary(cut));
            text.insert_str(cut, &insert);
            if let Err(error) = parse_documents("m.yaml", &text) {
                prop_assert!(error.to_string().starts_with("m.yaml"));
            }
        }
    }
}
