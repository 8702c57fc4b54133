//! `edgefleet apply -f PATH...`: expand paths, parse every manifest locally, then send them
//! all in one request.
//!
//! Nothing is sent unless every file parses: a half-applied set of files is worse than none.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgefleet_core::hash::short;
use edgefleet_wire::api::{ApplyAction, ApplyRequest, ApplyResponse, ApplyResult};
use edgefleet_wire::manifest::DeploymentManifest;

use crate::client::ApiClient;

/// One place manifests come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    /// The name used in error messages (`-` for standard input).
    pub fn name(&self) -> String {
        match self {
            Self::Stdin => "-".to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// Expands `-f` arguments: `-` is standard input, a file is itself, a directory is every
/// `*.yaml`/`*.yml` file below it (recursively, sorted by path). Symbolic links to files are
/// followed; links to directories are not (they could loop).
pub fn expand_paths(args: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    if args.is_empty() {
        bail!("no manifests given: pass -f FILE, -f DIRECTORY or -f - (standard input)");
    }
    let mut sources = Vec::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            if sources.contains(&Source::Stdin) {
                bail!("-f - (standard input) is given more than once");
            }
            sources.push(Source::Stdin);
            continue;
        }
        let metadata =
            std::fs::metadata(arg).with_context(|| format!("reading {}", arg.display()))?;
        if metadata.is_dir() {
            let mut files = Vec::new();
            collect_yaml(arg, &mut files)?;
            if files.is_empty() {
                bail!("{} holds no .yaml or .yml files", arg.display());
            }
            files.sort();
            sources.extend(files.into_iter().map(Source::File));
        } else {
            sources.push(Source::File(arg.clone()));
        }
    }
    Ok(sources)
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_dir() {
            collect_yaml(&path, files)?;
        } else if is_yaml(&path) && (file_type.is_file() || path.is_file()) {
            files.push(path);
        }
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads and parses every source. On failure the error lists every bad file, one per line.
pub fn load(sources: &[Source]) -> anyhow::Result<Vec<DeploymentManifest>> {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    // Where each deployment name was first seen, to report duplicates across files.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for source in sources {
        let text = match read(source) {
            Ok(text) => text,
            Err(error) => {
                errors.push(format!("{error:#}"));
                continue;
            }
        };
        match edgefleet_core::manifest::parse(&source.name(), &text) {
            Ok(parsed) => {
                for manifest in parsed {
                    let name = manifest.metadata.name.clone();
                    if let Some(first) = seen.get(&name) {
                        errors.push(format!(
                            "{}: deployment {name} is also defined in {first}",
                            source.name()
                        ));
                        continue;
                    }
                    seen.insert(name, source.name());
                    manifests.push(manifest);
                }
            }
            Err(error) => errors.push(error.to_string()),
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        bail!(
            "{}\nnothing was applied: {n} problem{} found",
            errors.join("\n"),
            if n == 1 { "" } else { "s" }
        );
    }
    if manifests.is_empty() {
        bail!("the given files hold no deployments; nothing was applied");
    }
    Ok(manifests)
}

fn read(source: &Source) -> anyhow::Result<String> {
    match source {
        Source::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Ok(text)
        }
        Source::File(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
    }
}

/// `deployment/NAME created (revision abc123def456, 3 nodes)`.
pub fn result_line(result: &ApplyResult) -> String {
    let action = match result.action {
        ApplyAction::Created => "created",
        ApplyAction::Updated => "updated",
        ApplyAction::Unchanged => "unchanged",
    };
    let nodes = if result.selected_nodes == 1 {
        "node"
    } else {
        "nodes"
    };
    format!(
        "deployment/{} {action} (revision {}, {} {nodes})",
        result.name,
        short(&result.revision),
        result.selected_nodes
    )
}

/// Parses and sends; returns the server's answer.
pub async fn apply(client: &ApiClient, paths: &[PathBuf]) -> anyhow::Result<ApplyResponse> {
    let manifests = load(&expand_paths(paths)?)?;
    send(client, manifests).await
}

pub async fn send(
    client: &ApiClient,
    deployments: Vec<DeploymentManifest>,
) -> anyhow::Result<ApplyResponse> {
    let response: ApplyResponse = client
        .post(
            &["v1", "apply"],
            &ApplyRequest {
                deployments,
                windows: Vec::new(),
                plan_basis: None,
            },
        )
        .await?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: NAME
spec:
  workloads:
    - name: w
      command: /bin/true
";

    fn write(dir: &Path, relative: &str, text: &str) -> PathBuf {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn directories_recurse_sorted_yaml_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "b.yaml", "");
        write(root, "a.yml", "");
        write(root, "README.md", "");
        write(root, "sub/z.yaml", "");
        write(root, "sub/deeper/c.yaml", "");
        write(root, "c.yaml.bak", "");
        let single = write(root, "other/single.txt", "");
        let got = expand_paths(&[root.to_path_buf(), PathBuf::from("-"), single.clone()]).unwrap();
        let expected: Vec<Source> = ["a.yml", "b.yaml", "sub/deeper/c.yaml", "sub/z.yaml"]
            .iter()
            .map(|p| Source::File(root.join(p)))
            .chain([Source::Stdin, Source::File(single)])
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "notes.txt", "");
        let error = expand_paths(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            error.to_string().contains("holds no .yaml or .yml files"),
            "{error}"
        );
        let missing = dir.path().join("missing.yaml");
        let error = expand_paths(&[missing]).unwrap_err();
        assert!(error.to_string().contains("missing.yaml"), "{error}");
        let error = expand_paths(&[PathBuf::from("-"), PathBuf::from("-")]).unwrap_err();
        assert!(error.to_string().contains("more than once"), "{error}");
        assert!(expand_paths(&[]).is_err());
    }

    #[test]
    fn every_bad_file_is_reported_and_nothing_loads() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "a.yaml", &GOOD.replace("NAME", "web"));
        let syntax = write(
            dir.path(),
            "b.yaml",
            "apiVersion: edgefleet.io/v1\nkind: [\n",
        );
        let field = write(dir.path(), "c.yaml", &GOOD.replace("NAME", "Bad_Name"));
        let sources = expand_paths(&[dir.path().to_path_buf()]).unwrap();
        let message = format!("{:#}", load(&sources).unwrap_err());
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 3, "{message}");
        assert!(
            lines[0].starts_with(&format!("{}:2:", syntax.display())),
            "{message}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{} (deployment Bad_Name): field metadata.name",
                field.display()
            )),
            "{message}"
        );
        assert_eq!(lines[2], "nothing was applied: 2 problems found");
        assert_eq!(load(&[Source::File(good)]).unwrap().len(), 1);
    }

    #[test]
    fn duplicates_across_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.yaml", &GOOD.replace("NAME", "web"));
        let b = write(dir.path(), "b.yaml", &GOOD.replace("NAME", "web"));
        let message = load(&[Source::File(a.clone()), Source::File(b)])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!(
                "deployment web is also defined in {}",
                a.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn result_lines() {
        let mut result = ApplyResult {
            name: "base".into(),
            action: ApplyAction::Created,
            revision: "0123456789abcdef".into(),
            selected_nodes: 3,
        };
        assert_eq!(
            result_line(&result),
            "deployment/base created (revision 0123456789ab, 3 nodes)"
        );
        result.action = ApplyAction::Unchanged;
        result.selected_nodes = 1;
        assert_eq!(
            result_line(&result),
            "deployment/base unchanged (revision 0123456789ab, 1 node)"
        );
    }
}
