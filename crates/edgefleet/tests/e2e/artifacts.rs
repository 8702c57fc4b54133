//! Artifacts through the CLI: `artifact push`, `list` and `rm` against a real server, and
//! deployments that reference artifacts (refused until the artifact is pushed; the
//! artifact cannot be removed while they use it).

use edgefleet_wire::artifact::ArtifactList;

use crate::*;

fn wasm_manifest(name: &str, module: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  \
         workloads:\n    - name: app\n      runtime: wasm\n      module: {module}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_and_rm_through_the_cli() {
    let fleet = fleet_with(&[], &[]).await;
    let bytes: Vec<u8> = (0..300_000u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = write_bytes(fleet.path(), "app.wasm", &bytes);
    let file = file.to_str().unwrap();
    let digest = edgefleet_core::hash::sha256_hex(&bytes);
    let reference = format!("app.wasm@sha256:{digest}");

    // Push prints the reference (and only that) on stdout; again, nothing is uploaded.
    assert_eq!(
        fleet.cli_ok(&["artifact", "push", file]),
        format!("{reference}\n")
    );
    let again = fleet.cli(&["artifact", "push", file]);
    assert!(again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("{reference}\n")
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already on the server"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        fleet.cli_ok(&["artifact", "push", file, "--name", "copy.wasm"]),
        format!("copy.wasm@sha256:{digest}\n")
    );
    let (_, text) = cli_fails(&fleet, &["artifact", "push", file, "--name", "no/slash"]);
    assert!(text.contains("invalid artifact name"), "{text}");
    let (_, text) = cli_fails(&fleet, &["artifact", "push", "/nonexistent/file.wasm"]);
    assert!(text.contains("/nonexistent/file.wasm"), "{text}");

    let table = fleet.cli_ok(&["artifact", "list"]);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "DIGEST", "SIZE", "CREATED", "USED-BY"],
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert_eq!(lines[1][0], "app.wasm");
    assert_eq!(lines[1][1], format!("sha256:{}", &digest[..12]));
    assert_eq!(lines[1][2], "293.0KiB");
    assert_eq!(lines[1][4], "-");
    let listed: ArtifactList =
        serde_json::from_str(&fleet.cli_ok(&["artifact", "list", "-o", "json"])).unwrap();
    assert_eq!(listed.artifacts.len(), 2);
    assert_eq!(listed.artifacts[0].digest, digest);

    // A deployment may only reference what the server has.
    let missing = format!("other.wasm@sha256:{}", "0".repeat(64));
    let path = write(
        fleet.path(),
        "missing.yaml",
        &wasm_manifest("app", &missing),
    );
    let (_, text) = cli_fails(&fleet, &["apply", "-f", path.to_str().unwrap()]);
    assert!(
        text.contains("spec.workloads[0].module")
            && text.contains(&missing)
            && text.contains("edgefleet artifact push"),
        "{text}"
    );
    let (_, text) = cli_fails(&fleet, &["plan", "-f", path.to_str().unwrap()]);
    assert!(text.contains("is not on the server"), "{text}");
    apply(&fleet, "app.yaml", &wasm_manifest("app", &reference));
    let table = fleet.cli_ok(&["artifact", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app.wasm ") && l.ends_with(" app")),
        "{table}"
    );

    // In use: not removed, and the error says by whom.
    let (code, text) = cli_fails(&fleet, &["artifact", "rm", "app.wasm"]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("used by deployment app") && text.contains("spec.workloads[0].module"),
        "{text}"
    );
    assert!(fleet.cli_ok(&["artifact", "list"]).contains("app.wasm"));

    fleet.cli_ok(&["delete", "deployment", "app"]);
    assert_eq!(
        fleet.cli_ok(&["artifact", "rm", "app.wasm"]),
        format!("artifact/{reference} deleted\n")
    );
    // The other name keeps the content; one version can be named.
    assert_eq!(
        fleet.cli_ok(&["artifact", "rm", &format!("copy.wasm@sha256:{digest}")]),
        format!("artifact/copy.wasm@sha256:{digest} deleted\n")
    );
    let listed: ArtifactList =
        serde_json::from_str(&fleet.cli_ok(&["artifact", "list", "-o", "json"])).unwrap();
    assert!(listed.artifacts.is_empty(), "{listed:?}");
    let (_, text) = cli_fails(&fleet, &["artifact", "rm", "app.wasm"]);
    assert!(text.contains("no artifact named \"app.wasm\""), "{text}");
}

fn write_bytes(dir: &Path, file: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_servers_limit_is_refused_before_it_is_sent() {
    let fleet = fleet_with(&["--max-artifact-size", "64Ki"], &[]).await;
    let file = write_bytes(fleet.path(), "big.bin", &vec![7u8; 100 * 1024]);
    let (code, text) = cli_fails(&fleet, &["artifact", "push", file.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("100.0 KiB")
            && text.contains("64.0 KiB")
            && text.contains("--max-artifact-size"),
        "{text}"
    );
    let listed: ArtifactList =
        serde_json::from_str(&fleet.cli_ok(&["artifact", "list", "-o", "json"])).unwrap();
    assert!(listed.artifacts.is_empty());
    assert_eq!(listed.max_size, Some(64 * 1024));
}
