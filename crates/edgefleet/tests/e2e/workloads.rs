//! Workloads beyond processes, end to end: containers on a real dockerd (adopted across an
//! agent restart, updated, removed), files rendered with node values, health probes
//! gating a rollout and restarting a workload, and a WebAssembly module from an artifact.

use std::path::Path;
use std::time::Duration;

use edgefleet_testkit::docker::Dockerd;
use edgefleet_testkit::{Fleet, wait_for, workload};

use crate::{LONG, apply, bin, fleet_with, node_detail};

fn container_manifest(image: &str) -> String {
    format!(
        r#"apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: shop
spec:
  workloads:
    - name: web
      runtime: container
      image: {image}
      imagePullPolicy: never
      command: /bin/sh
      args: ["-c", "cat $EDGEFLEET_FILES_DIR/hello.txt; exec sleep 1000"]
      stopGracePeriod: 2s
      resources:
        memory: 64Mi
        cpus: 0.5
      files:
        - path: hello.txt
          content: "hello from {{{{ node.name }}}} at {{{{ node.labels.site | default \"nowhere\" }}}}\n"
"#
    )
}

/// The engine's containers labelled with `workload`.
fn containers_of(
    engine: &edgefleet_testkit::docker::TestEngine,
    workload: &str,
) -> Vec<serde_json::Value> {
    engine
        .containers()
        .into_iter()
        .filter(|c| c["Labels"]["edgefleet.workload"] == workload)
        .collect()
}

async fn running_container(
    engine: &edgefleet_testkit::docker::TestEngine,
    workload_name: &str,
    image: &str,
) -> serde_json::Value {
    wait_for(
        &format!("a running container of {workload_name} with {image}"),
        LONG,
        || {
            let found = containers_of(engine, workload_name)
                .into_iter()
                .find(|c| c["State"] == "running" && c["Image"] == image);
            async move { found }
        },
    )
    .await
}

async fn logs_contain(fleet: &Fleet, node: &str, workload_name: &str, needle: &str) -> String {
    wait_for(
        &format!("logs of {workload_name} with {needle:?}"),
        LONG,
        || {
            let out = fleet.cli(&["logs", node, workload_name, "--tail", "20"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            async move { text.contains(needle).then_some(text) }
        },
    )
    .await
}

#[tokio::test]
async fn containers_are_adopted_after_an_agent_restart_updated_and_removed() {
    let engine = Dockerd::start();
    engine.import_busybox("edgefleet-e2e/busybox:1", &[]);
    engine.import_busybox("edgefleet-e2e/busybox:2", &[("/etc/version", b"2\n")]);
    let socket = engine.socket().display().to_string();
    let mut fleet = Fleet::start(&bin(), &[]).await;
    let join = fleet.join_token(&["--ttl", "1h"]);
    fleet.spawn_agent(
        "edge-1",
        "site=berlin",
        Some(&join),
        &["--container-socket", &socket],
    );
    crate::wait_ready(&fleet, 1).await;

    apply(
        &fleet,
        "shop.yaml",
        &container_manifest("edgefleet-e2e/busybox:1"),
    );
    let detail = fleet.wait_converged("edge-1", LONG).await;
    let status = workload(&detail, "web").unwrap();
    assert_eq!(status["runtime"], "container", "{status:#}");
    let first = running_container(&engine, "web", "edgefleet-e2e/busybox:1").await;
    let id = first["Id"].as_str().unwrap().to_owned();
    // Limits reached the engine; the files were rendered with the node's name and label.
    let inspect = engine.inspect_container(&id).unwrap();
    assert_eq!(inspect["HostConfig"]["Memory"], 64 << 20, "{inspect:#}");
    assert_eq!(
        inspect["HostConfig"]["NanoCpus"], 500_000_000i64,
        "{inspect:#}"
    );
    logs_contain(&fleet, "edge-1", "web", "hello from edge-1 at berlin").await;

    // The agent dies and comes back: the same container keeps running, adopted.
    fleet.agent("edge-1").kill9();
    fleet.spawn_agent(
        "edge-1",
        "site=berlin",
        None,
        &["--container-socket", &socket],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let detail = fleet.wait_converged("edge-1", LONG).await;
    let after = containers_of(&engine, "web");
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(
        after[0]["Id"],
        id.as_str(),
        "the container was recreated: {after:#?}"
    );
    assert_eq!(
        workload(&detail, "web").unwrap()["restarts"],
        0,
        "{detail:#}"
    );

    // A new image replaces the container.
    apply(
        &fleet,
        "shop.yaml",
        &container_manifest("edgefleet-e2e/busybox:2"),
    );
    fleet.wait_converged("edge-1", LONG).await;
    let second = running_container(&engine, "web", "edgefleet-e2e/busybox:2").await;
    assert_ne!(second["Id"], id.as_str());
    wait_for("the old container to be gone", LONG, || {
        let gone = engine.inspect_container(&id).is_none();
        async move { gone.then_some(()) }
    })
    .await;

    // A relabel changes the rendered file: the workload restarts with the new content.
    fleet.cli_ok(&["label", "node", "edge-1", "site=hamburg"]);
    logs_contain(&fleet, "edge-1", "web", "hello from edge-1 at hamburg").await;

    // Deleting the deployment removes the container.
    fleet.cli_ok(&["delete", "deployment", "shop"]);
    wait_for("the containers to be removed", LONG, || {
        let left = containers_of(&engine, "web");
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

fn probed_manifest(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"apiVersion: edgefleet.io/v1
kind: Deployment
metadata:
  name: probed
spec:
  workloads:
    - name: svc
      command: /bin/sh
      args: ["-c", "echo started; exec sleep 1000"]
      stopGracePeriod: 1s
      readinessProbe:
        exec:
          command: ["test", "-f", "{dir}/ready"]
        period: 200ms
        timeout: 200ms
        failureThreshold: 1
      livenessProbe:
        exec:
          command: ["test", "-f", "{dir}/alive"]
        period: 200ms
        timeout: 200ms
        failureThreshold: 2
"#
    )
}

#[tokio::test]
async fn readiness_gates_the_rollout_and_a_failed_liveness_probe_restarts() {
    let fleet = fleet_with(&[], &[("edge-1", "")]).await;
    let flags = tempfile::tempdir().unwrap();
    std::fs::write(flags.path().join("alive"), "").unwrap();
    apply(&fleet, "probed.yaml", &probed_manifest(flags.path()));

    // Running but not ready: `ready` is false from the start, and once the probe has
    // failed, the status says why. The rollout waits.
    let not_ready = wait_for("svc running and not ready, with the reason", LONG, || {
        let fleet = &fleet;
        async move {
            let detail = node_detail(fleet, "edge-1").await;
            let w = workload(&detail, "svc")?.clone();
            let said_why = w["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("not ready: "));
            (w["state"] == "running" && w["ready"] == false && said_why).then_some(w)
        }
    })
    .await;
    assert!(
        not_ready["message"]
            .as_str()
            .unwrap_or("")
            .contains("exec probe [test -f"),
        "{not_ready:#}"
    );
    let status = fleet.cli_ok(&["rollout", "status", "probed"]);
    assert!(!status.contains("succeeded"), "{status}");

    // Ready: the rollout completes.
    std::fs::write(flags.path().join("ready"), "").unwrap();
    let detail = fleet.wait_converged("edge-1", LONG).await;
    let svc = workload(&detail, "svc").unwrap();
    assert_eq!(svc["ready"], true, "{svc:#}");
    let pid = svc["pid"].as_u64().unwrap();

    // Not alive any more: restarted, and the restart is counted with the reason.
    std::fs::remove_file(flags.path().join("alive")).unwrap();
    let restarted = wait_for("svc restarted by its liveness probe", LONG, || {
        let fleet = &fleet;
        async move {
            let detail = node_detail(fleet, "edge-1").await;
            let w = workload(&detail, "svc")?.clone();
            (w["restarts"].as_u64() >= Some(1)).then_some(w)
        }
    })
    .await;
    let events = fleet.cli_ok(&["events", "node", "edge-1"]);
    assert!(
        events.contains("liveness probe failed"),
        "{restarted:#}\n{events}"
    );
    std::fs::write(flags.path().join("alive"), "").unwrap();
    let detail = fleet.wait_converged("edge-1", LONG).await;
    assert_ne!(workload(&detail, "svc").unwrap()["pid"].as_u64(), Some(pid));
}

/// A WASI module printing a line to stdout and exiting 0.
const HELLO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

#[tokio::test]
async fn a_webassembly_module_runs_from_an_artifact() {
    let fleet = fleet_with(&[], &[("edge-1", "")]).await;
    let module = wat::parse_str(HELLO_WAT).unwrap();
    let path = fleet.path().join("hello.wasm");
    std::fs::write(&path, &module).unwrap();
    let pushed = fleet.cli_ok(&["artifact", "push", path.to_str().unwrap()]);
    let reference = pushed
        .split_whitespace()
        .find(|w| w.starts_with("hello.wasm@sha256:"))
        .unwrap_or_else(|| panic!("no reference in {pushed:?}"))
        .to_owned();
    apply(
        &fleet,
        "wasm.yaml",
        &format!(
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: hello\nspec:\n  workloads:\n    - name: hello\n      runtime: wasm\n      module: {reference}\n      restartPolicy: never\n      resources:\n        memory: 16Mi\n"
        ),
    );
    // It prints, returns from `_start` and, by its restart policy, stays down.
    let hello = wait_for("the module to run and exit", LONG, || {
        let fleet = &fleet;
        async move {
            let detail = node_detail(fleet, "edge-1").await;
            let w = workload(&detail, "hello")?.clone();
            (w["state"] == "exited").then_some(w)
        }
    })
    .await;
    assert_eq!(hello["last_exit_code"], 0, "{hello:#}");
    logs_contain(&fleet, "edge-1", "hello", "hello from wasm").await;
    // The module is cached on the node, verified.
    let cached = fleet
        .path()
        .join("agents/edge-1/artifacts")
        .join(reference.rsplit(':').next().unwrap());
    assert_eq!(std::fs::read(cached).unwrap(), module);
}
