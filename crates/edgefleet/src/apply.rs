//! `edgefleet apply -f PATH...`: expand paths, parse every manifest (deployments and
//! maintenance windows) locally, then send them all in one request. `edgefleet apply --plan
//! FILE` sends the documents of a saved plan with the basis it was computed against.
//!
//! Nothing is sent unless every file parses: a half-applied set of files is worse than none.
//! `edgefleet plan` loads its files the same way.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgefleet_core::hash::short;
use edgefleet_core::manifest::Documents;
use edgefleet_wire::alert::AlertRuleApplyResult;
use edgefleet_wire::api::{
    ApplyAction, ApplyRequest, ApplyResponse, ApplyResult, WindowApplyResult,
};

use crate::client::{ApiClient, ClientError, render_error_body};

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

/// What the documents are loaded for; it names what did not happen when they are bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Apply,
    Plan,
}

impl Intent {
    fn nothing_done(self) -> &'static str {
        match self {
            Self::Apply => "nothing was applied",
            Self::Plan => "nothing was planned",
        }
    }
}

/// Reads and parses every source. On failure the error lists every bad file, one per line.
/// A set without any document is refused too: applying it would be a silent no-op.
pub fn load(sources: &[Source], intent: Intent) -> anyhow::Result<Documents> {
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    // Where each name was first seen, per kind, to report duplicates across files.
    let mut seen_deployments: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_windows: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_rules: BTreeMap<String, String> = BTreeMap::new();
    for source in sources {
        let parsed = match read(source) {
            Ok(text) => edgefleet_core::manifest::parse_documents(&source.name(), &text),
            Err(error) => {
                errors.push(format!("{error:#}"));
                continue;
            }
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                errors.push(error.to_string());
                continue;
            }
        };
        for manifest in parsed.deployments {
            match first_definition(&mut seen_deployments, &manifest.metadata.name, source) {
                Some(first) => errors.push(format!(
                    "{}: deployment {} is also defined in {first}",
                    source.name(),
                    manifest.metadata.name
                )),
                None => documents.deployments.push(manifest),
            }
        }
        for window in parsed.windows {
            match first_definition(&mut seen_windows, &window.metadata.name, source) {
                Some(first) => errors.push(format!(
                    "{}: maintenance window {} is also defined in {first}",
                    source.name(),
                    window.metadata.name
                )),
                None => documents.windows.push(window),
            }
        }
        for rule in parsed.alert_rules {
            match first_definition(&mut seen_rules, &rule.metadata.name, source) {
                Some(first) => errors.push(format!(
                    "{}: alert rule {} is also defined in {first}",
                    source.name(),
                    rule.metadata.name
                )),
                None => documents.alert_rules.push(rule),
            }
        }
    }
    if !errors.is_empty() {
        let n = errors.len();
        bail!(
            "{}\n{}: {n} problem{} found",
            errors.join("\n"),
            intent.nothing_done(),
            if n == 1 { "" } else { "s" }
        );
    }
    if documents.deployments.is_empty()
        && documents.windows.is_empty()
        && documents.alert_rules.is_empty()
    {
        bail!(
            "the given files hold no deployments, maintenance windows or alert rules; {}",
            intent.nothing_done()
        );
    }
    Ok(documents)
}

/// Records that `name` is defined in `source`; the source of an earlier definition if any.
fn first_definition(
    seen: &mut BTreeMap<String, String>,
    name: &str,
    source: &Source,
) -> Option<String> {
    if let Some(first) = seen.get(name) {
        return Some(first.clone());
    }
    seen.insert(name.to_owned(), source.name());
    None
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

fn action_word(action: ApplyAction) -> &'static str {
    match action {
        ApplyAction::Created => "created",
        ApplyAction::Updated => "updated",
        ApplyAction::Unchanged => "unchanged",
    }
}

/// `1 node`, `3 nodes`.
pub fn n_nodes(n: impl Into<u64>) -> String {
    let n = n.into();
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
}

/// `deployment/NAME created (revision abc123def456, 3 nodes)`.
pub fn result_line(result: &ApplyResult) -> String {
    format!(
        "deployment/{} {} (revision {}, {})",
        result.name,
        action_word(result.action),
        short(&result.revision),
        n_nodes(result.selected_nodes)
    )
}

/// `window/NAME created (3 nodes)`.
pub fn window_result_line(result: &WindowApplyResult) -> String {
    format!(
        "window/{} {} ({})",
        result.name,
        action_word(result.action),
        n_nodes(result.selected_nodes)
    )
}

/// Every line of an apply's answer: deployments first, then windows.
pub fn response_lines(response: &ApplyResponse) -> String {
    let deployments = response.results.iter().map(result_line);
    let windows = response.windows.iter().map(window_result_line);
    deployments.chain(windows).map(|line| line + "\n").collect()
}

/// `rule/NAME created`.
pub fn rule_result_line(result: &AlertRuleApplyResult) -> String {
    format!("rule/{} {}", result.name, action_word(result.action))
}

/// Parses and sends: deployments and windows in one request, then alert rules in another
/// (rules are checked by the server before anything of theirs is stored); returns the
/// server's answers.
pub async fn apply(
    client: &ApiClient,
    paths: &[PathBuf],
) -> anyhow::Result<(ApplyResponse, Vec<AlertRuleApplyResult>)> {
    let documents = load(&expand_paths(paths)?, Intent::Apply)?;
    let response = if documents.deployments.is_empty() && documents.windows.is_empty() {
        ApplyResponse {
            results: Vec::new(),
            windows: Vec::new(),
        }
    } else {
        send(
            client,
            &ApplyRequest {
                deployments: documents.deployments,
                windows: documents.windows,
                plan_basis: None,
            },
        )
        .await?
    };
    let rules = if documents.alert_rules.is_empty() {
        Vec::new()
    } else {
        client
            .post(&["v1", "alert-rules"], &documents.alert_rules)
            .await?
    };
    Ok((response, rules))
}

/// Applies exactly the documents of the plan saved in `path`, if the fleet and the
/// deployments are still what the plan was computed against.
pub async fn apply_plan(client: &ApiClient, path: &Path) -> anyhow::Result<ApplyResponse> {
    let plan = crate::plan::read_plan_file(path)?;
    let request = ApplyRequest {
        deployments: plan.request.deployments,
        windows: plan.request.windows,
        plan_basis: Some(plan.basis),
    };
    match client.post(&["v1", "apply"], &request).await {
        Ok(response) => Ok(response),
        Err(ClientError::Api { status: 409, body }) => Err(anyhow::anyhow!(
            "{}\n{}",
            render_error_body(&body),
            stale_plan_hint(path)
        )),
        Err(error) => Err(error.into()),
    }
}

/// What to do when the server refuses a plan because the fleet changed since.
fn stale_plan_hint(path: &Path) -> String {
    let path = crate::views::shell_word(&path.display().to_string());
    format!(
        "  hint: {path} is out of date; run `edgefleet plan -f ... --out {path}` again, review \
         it, and apply the new plan"
    )
}

pub async fn send(client: &ApiClient, request: &ApplyRequest) -> anyhow::Result<ApplyResponse> {
    let response: ApplyResponse = client.post(&["v1", "apply"], request).await?;
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
        let message = format!("{:#}", load(&sources, Intent::Apply).unwrap_err());
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
        let documents = load(&[Source::File(good)], Intent::Apply).unwrap();
        assert_eq!(documents.deployments.len(), 1);
        assert!(documents.windows.is_empty());
    }

    #[test]
    fn duplicates_across_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.yaml", &GOOD.replace("NAME", "web"));
        let b = write(dir.path(), "b.yaml", &GOOD.replace("NAME", "web"));
        let message = load(&[Source::File(a.clone()), Source::File(b)], Intent::Plan)
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

    const WINDOW: &str = "\
apiVersion: edgefleet.io/v1
kind: MaintenanceWindow
metadata:
  name: NAME
spec:
  schedule:
    - start: \"02:00\"
      duration: 2h
";

    #[test]
    fn deployments_and_windows_load_together() {
        let dir = tempfile::tempdir().unwrap();
        let both = format!(
            "{}---\n{}",
            GOOD.replace("NAME", "web"),
            WINDOW.replace("NAME", "night")
        );
        let a = write(dir.path(), "a.yaml", &both);
        let b = write(dir.path(), "b.yaml", &WINDOW.replace("NAME", "weekend"));
        let documents = load(&[Source::File(a.clone()), Source::File(b)], Intent::Apply).unwrap();
        let names: Vec<&str> = documents
            .windows
            .iter()
            .map(|w| w.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["night", "weekend"]);
        assert_eq!(documents.deployments.len(), 1);
        // A set of only windows is fine too.
        let only = load(&[Source::File(a.clone())], Intent::Plan).unwrap();
        assert_eq!(only.windows.len(), 1);
        let c = write(dir.path(), "c.yaml", &WINDOW.replace("NAME", "night"));
        let message = load(
            &[Source::File(a.clone()), Source::File(c.clone())],
            Intent::Apply,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            format!(
                "{}: maintenance window night is also defined in {}\nnothing was applied: 1 problem found",
                c.display(),
                a.display()
            )
        );
    }

    #[test]
    fn a_set_without_documents_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.yaml", "# nothing yet\n");
        let message = load(&[Source::File(empty.clone())], Intent::Apply)
            .unwrap_err()
            .to_string();
        assert_eq!(
            message,
            "the given files hold no deployments, maintenance windows or alert rules; nothing was applied"
        );
        let message = load(&[Source::File(empty)], Intent::Plan)
            .unwrap_err()
            .to_string();
        assert!(message.ends_with("nothing was planned"), "{message}");
    }

    #[test]
    fn stale_plans_get_a_hint() {
        assert_eq!(
            stale_plan_hint(Path::new("plan.json")),
            "  hint: plan.json is out of date; run `edgefleet plan -f ... --out plan.json` \
             again, review it, and apply the new plan"
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
        let response = ApplyResponse {
            results: vec![result],
            windows: vec![WindowApplyResult {
                name: "night".into(),
                action: ApplyAction::Updated,
                selected_nodes: 20,
            }],
        };
        assert_eq!(
            response_lines(&response),
            "deployment/base unchanged (revision 0123456789ab, 1 node)\n\
             window/night updated (20 nodes)\n"
        );
    }
}
