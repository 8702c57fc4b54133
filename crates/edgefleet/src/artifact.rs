//! `edgefleet artifact push|list|rm`: artifacts are files the server hosts for workloads
//! (WebAssembly modules, container image archives), referenced from manifests as
//! `NAME@sha256:DIGEST`.
//!
//! `push` hashes the file first, skips the upload when the server already has that name
//! with that content, and otherwise streams the file with its digest, so the server
//! refuses it if what arrived differs. The file is never read whole into memory. The
//! reference goes to stdout (for `$(...)` in scripts); progress and hints to stderr.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use edgefleet_core::hash::short;
use edgefleet_wire::artifact::{
    ArtifactInfo, ArtifactList, ArtifactRemoval, ArtifactTarget, DIGEST_HEADER,
};
use edgefleet_wire::workload::ArtifactRef;
use reqwest::Method;
use reqwest::header::CONTENT_LENGTH;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::cli::OutputArgs;
use crate::client::ApiClient;
use crate::human;
use crate::output::{self, OutputFormat, note};
use crate::table::Table;

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Upload a file as an artifact; prints the reference to use in manifests
    #[command(after_help = "\
Examples:
  edgefleet artifact push app.wasm
  edgefleet artifact push build/image.tar --name web-image.tar
  MODULE=$(edgefleet artifact push app.wasm)    # app.wasm@sha256:...

Reference the printed NAME@sha256:DIGEST from a workload: `module:` for `runtime: wasm`,
`imageArtifact:` for a container image archive (`docker save` output).")]
    Push {
        /// The file to upload
        file: std::path::PathBuf,
        /// The artifact's name [default: the file's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// List artifacts, their sizes and the deployments that use them
    #[command(
        after_help = "Examples:\n  edgefleet artifact list\n  edgefleet artifact list -o json"
    )]
    List(OutputArgs),
    /// Delete every version of an artifact, or one version; refused while a deployment uses it
    #[command(after_help = "\
Examples:
  edgefleet artifact rm app.wasm
  edgefleet artifact rm app.wasm@sha256:3f9a...   # only that version")]
    Rm {
        /// NAME (every version) or NAME@sha256:DIGEST (one version)
        target: String,
    },
}

pub async fn run(client: &ApiClient, command: &ArtifactCommand) -> anyhow::Result<()> {
    match command {
        ArtifactCommand::Push { file, name } => push(client, file, name.as_deref()).await,
        ArtifactCommand::List(output) => list(client, output.output).await,
        ArtifactCommand::Rm { target } => remove(client, target).await,
    }
}

/// Files at least this large show progress on a terminal.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Bytes read from the file at a time, for hashing and for the upload.
const CHUNK: usize = 256 * 1024;

/// The artifact name of `file` when none is given: its file name.
fn default_name(file: &Path) -> anyhow::Result<String> {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !ArtifactRef::valid_name(&name) {
        bail!(
            "the file name {name:?} is not a valid artifact name (1 to 128 letters, digits, '.', \
             '_' and '-', not starting with '.' or '-'); pass --name NAME"
        );
    }
    Ok(name)
}

async fn push(client: &ApiClient, file: &Path, name: Option<&str>) -> anyhow::Result<()> {
    let name = match name {
        Some(name) if ArtifactRef::valid_name(name) => name.to_owned(),
        Some(name) => bail!(
            "invalid artifact name {name:?}: use 1 to 128 letters, digits, '.', '_' and '-', not \
             starting with '.' or '-'"
        ),
        None => default_name(file)?,
    };
    let metadata =
        std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let size = metadata.len();
    let stored: ArtifactList = client.get(&["v1", "artifacts"], &[]).await?;
    if let Some(limit) = stored.max_size
        && size > limit
    {
        bail!(
            "{} is {} ({size} bytes), more than the server accepts: {} (its --max-artifact-size)",
            file.display(),
            human::size(size),
            human::size(limit)
        );
    }
    let digest = hash_file(file, size, &name).await?;
    let reference = format!("{name}@sha256:{digest}");
    if stored
        .artifacts
        .iter()
        .any(|a| a.name == name && a.digest == digest)
    {
        note(&format!(
            "{reference} is already on the server; nothing to upload"
        ));
        return output::stdout(&format!("{reference}\n"));
    }
    let body = upload_body(file, size, &name).await?;
    let info: ArtifactInfo = client
        .send_with(
            Method::POST,
            &["v1", "artifacts"],
            &[("name", name.clone())],
            |request| {
                request
                    .header(DIGEST_HEADER, digest.as_str())
                    .header(CONTENT_LENGTH, size)
                    .timeout(upload_timeout(size))
                    .body(body)
            },
        )
        .await
        .with_context(|| format!("uploading {} as artifact {name}", file.display()))?;
    note(&format!(
        "pushed {} ({}); use it in a workload as `module: {}` (wasm) or `imageArtifact: {}` (container)",
        info.name,
        human::size(info.size),
        info.reference(),
        info.reference()
    ));
    output::stdout(&format!("{}\n", info.reference()))
}

/// Generous: the upload may take as long as a slow link (64 KiB/s) needs, plus a margin.
fn upload_timeout(size: u64) -> Duration {
    Duration::from_secs(300 + size / (64 * 1024))
}

/// The SHA-256 of the file, read in chunks on a blocking thread.
async fn hash_file(file: &Path, size: u64, name: &str) -> anyhow::Result<String> {
    let path = file.to_owned();
    let label = format!("hashing {name}");
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut reader =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        let mut progress = ProgressLine::new(label, size);
        loop {
            let n = reader
                .read(&mut buffer)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            progress.advance(n as u64);
        }
        progress.finish();
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .context("hashing the file")?
}

/// The file as a request body streamed in chunks, with progress.
async fn upload_body(file: &Path, size: u64, name: &str) -> anyhow::Result<reqwest::Body> {
    let opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let progress = ProgressLine::new(format!("uploading {name}"), size);
    let chunks = futures_util::stream::unfold(
        (opened, progress, false),
        |(mut opened, mut progress, done)| async move {
            if done {
                return None;
            }
            let mut buffer = vec![0u8; CHUNK];
            match opened.read(&mut buffer).await {
                Ok(0) => {
                    progress.finish();
                    None
                }
                Ok(n) => {
                    buffer.truncate(n);
                    progress.advance(n as u64);
                    Some((Ok(buffer), (opened, progress, false)))
                }
                Err(error) => Some((Err(error), (opened, progress, true))),
            }
        },
    );
    Ok(reqwest::Body::wrap_stream(chunks))
}

/// `label: 42% (1.2 GiB of 2.9 GiB)` rewritten in place on stderr, for large files on a
/// terminal only (a log or a pipe gets nothing).
struct ProgressLine {
    label: String,
    total: u64,
    done: u64,
    enabled: bool,
    last_drawn: Option<Instant>,
}

impl ProgressLine {
    fn new(label: String, total: u64) -> Self {
        Self {
            label,
            total,
            done: 0,
            enabled: total >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal(),
            last_drawn: None,
        }
    }

    fn advance(&mut self, bytes: u64) {
        self.done = self.done.saturating_add(bytes);
        if !self.enabled {
            return;
        }
        let due = self
            .last_drawn
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(200));
        if due {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let percent = (self.done.min(self.total) * 100)
            .checked_div(self.total)
            .unwrap_or(100);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {percent:>3}% ({} of {})\x1b[K",
            self.label,
            human::size(self.done),
            human::size(self.total)
        );
        let _ = err.flush();
        self.last_drawn = Some(Instant::now());
    }

    fn finish(&mut self) {
        if self.enabled {
            self.draw();
            let _ = writeln!(std::io::stderr().lock());
            self.enabled = false;
        }
    }
}

async fn list(client: &ApiClient, format: OutputFormat) -> anyhow::Result<()> {
    let listed: ArtifactList = client.get(&["v1", "artifacts"], &[]).await?;
    output::print(&listed, format, || artifacts_table(&listed.artifacts))
}

/// NAME, DIGEST (short), SIZE, CREATED, USED-BY.
pub fn artifacts_table(artifacts: &[ArtifactInfo]) -> String {
    let mut table = Table::new(["NAME", "DIGEST", "SIZE", "CREATED", "USED-BY"]);
    for artifact in artifacts {
        table.row([
            artifact.name.clone(),
            format!("sha256:{}", short(&artifact.digest)),
            human::size(artifact.size).replace(' ', ""),
            human::timestamp(artifact.created_at),
            if artifact.used_by.is_empty() {
                "-".to_owned()
            } else {
                artifact.used_by.join(",")
            },
        ]);
    }
    table.render()
}

async fn remove(client: &ApiClient, target: &str) -> anyhow::Result<()> {
    let parsed: ArtifactTarget = target.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let removal: ArtifactRemoval = client
        .delete(&["v1", "artifacts", &parsed.to_string()])
        .await?;
    let mut text = String::new();
    for removed in &removal.removed {
        text.push_str(&format!("artifact/{} deleted\n", removed.reference()));
    }
    output::stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn table_shows_short_digests_sizes_and_users() {
        let at = datetime!(2026-03-04 05:06:07 UTC);
        let artifacts = [
            ArtifactInfo {
                name: "app.wasm".into(),
                digest: "ab".repeat(32),
                size: 1536,
                created_at: at,
                created_by: "token:admin".into(),
                used_by: vec!["edge".into(), "web".into()],
            },
            ArtifactInfo {
                name: "model.bin".into(),
                digest: "cd".repeat(32),
                size: 3 << 30,
                created_at: at,
                created_by: "token:ci".into(),
                used_by: vec![],
            },
        ];
        assert_eq!(
            artifacts_table(&artifacts),
            "NAME        DIGEST                SIZE     CREATED                USED-BY\n\
             app.wasm    sha256:abababababab   1.5KiB   2026-03-04T05:06:07Z   edge,web\n\
             model.bin   sha256:cdcdcdcdcdcd   3.0GiB   2026-03-04T05:06:07Z   -\n"
        );
    }

    #[test]
    fn default_names_come_from_the_file_name() {
        assert_eq!(
            default_name(Path::new("/tmp/build/app.wasm")).unwrap(),
            "app.wasm"
        );
        let error = default_name(Path::new("/tmp/my file.tar"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--name"), "{error}");
    }

    #[test]
    fn uploads_get_time_for_their_size() {
        assert_eq!(upload_timeout(0), Duration::from_secs(300));
        assert!(upload_timeout(8 << 30) > Duration::from_secs(36 * 3600));
    }
}
