//! Telemetry end to end: metrics collected on nodes and queried with `edgefleet metrics`;
//! records a workload publishes through the local API reaching the data lake exactly once
//! while the agent (and the server) are killed at random moments; the outbox on a full
//! disk; a long offline spell.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_testkit::{Fleet, wait_for};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

use crate::{LONG, apply, bin, wait_ready};

/// Agent flags for quick telemetry: collect every second, upload at once.
const FAST: &[&str] = &["--metrics-interval", "1s", "--upload-interval", "0s"];

/// A deployment whose workload publishes `{"n": N, "a": "<attempt>"}` to stream
/// `readings` in a loop, appending `N ATTEMPT SEQ` to `acked` for every publish the agent
/// acknowledged, and `ERR <message>` lines to `errors` for refused ones.
fn publisher(dir: &Path, pause: &str, pad: usize) -> String {
    let pad = "x".repeat(pad);
    let acked = dir.join("acked");
    let errors = dir.join("errors");
    let state = dir.join("counter");
    let script = format!(
        "i=$(cat {state} 2>/dev/null || echo 0); \
         while :; do \
           a=\"$$-$i-$(date +%s%N)\"; \
           if out=$({bin} agent publish readings --json \"{{\\\"n\\\":$i,\\\"a\\\":\\\"$a\\\",\\\"p\\\":\\\"{pad}\\\"}}\" 2>&1); then \
             echo \"$i $a $out\" >> {acked}; i=$((i+1)); echo $i > {state}; \
           else echo \"ERR $out\" >> {errors}; sleep 0.2; fi; \
           sleep {pause}; \
         done",
        state = state.display(),
        acked = acked.display(),
        errors = errors.display(),
        bin = bin().display(),
        pad = pad,
    );
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: sensors\nspec:\n  \
         streams:\n    - name: readings\n      priority: 7\n      redact: [secret]\n  \
         workloads:\n    - name: publisher\n      command: /bin/sh\n      args: [\"-c\", {script:?}]\n      \
         stopGracePeriod: 1s\n"
    )
}

/// The attempts the publisher saw acknowledged: attempt id → counter value.
fn acked(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(dir.join("acked"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let n = parts.next()?.parse().ok()?;
            let attempt = parts.next()?.to_owned();
            Some((attempt, n))
        })
        .collect()
}

/// Every Parquet file under `dir`.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The rows of stream `stream` in the local lake of the fleet's server, as JSON objects.
fn lake_rows(fleet: &Fleet, stream: &str) -> Vec<serde_json::Value> {
    let root = fleet
        .server
        .data_dir()
        .join("lake")
        .join(format!("stream={stream}"));
    let mut rows = Vec::new();
    for file in parquet_files(&root) {
        let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap())
            .unwrap_or_else(|e| panic!("{} is not Parquet: {e}", file.display()));
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let mut object = serde_json::Map::new();
            for (name, field) in row.get_column_iter() {
                let value = match field {
                    Field::Str(text) => serde_json::Value::String(text.clone()),
                    Field::Long(n) => serde_json::Value::from(*n),
                    Field::Int(n) => serde_json::Value::from(*n),
                    Field::Double(x) => serde_json::Value::from(*x),
                    Field::Null => serde_json::Value::Null,
                    other => serde_json::Value::String(other.to_string()),
                };
                object.insert(name.clone(), value);
            }
            rows.push(serde_json::Value::Object(object));
        }
    }
    rows
}

/// The `a` (attempt) of every `readings` record in the lake, with how often it is there.
fn lake_attempts(fleet: &Fleet) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in lake_rows(fleet, "readings") {
        let data: serde_json::Value = match &row["data"] {
            serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
            other => panic!("data column is not JSON text: {other}"),
        };
        assert!(
            data.get("secret").is_none(),
            "a redacted field reached the lake: {data}"
        );
        let attempt = data["a"].as_str().unwrap().to_owned();
        *counts.entry(attempt).or_insert(0) += 1;
    }
    counts
}

async fn fleet(server_args: &[&str], agents: &[(&str, &str)], agent_args: &[&str]) -> Fleet {
    let mut fleet = Fleet::start(&bin(), server_args).await;
    let join = fleet.join_token(&["--ttl", "1h"]);
    for (name, labels) in agents {
        fleet.spawn_agent(name, labels, Some(&join), agent_args);
    }
    wait_ready(&fleet, agents.len()).await;
    fleet
}

#[tokio::test]
async fn metrics_are_collected_stored_and_shown_per_node_and_per_site() {
    let fleet = fleet(&[], &[("m1", "site=berlin"), ("m2", "site=lisbon")], FAST).await;
    // Both nodes deliver several collections.
    for node in ["m1", "m2"] {
        wait_for(&format!("3 memory samples of {node}"), LONG, || {
            let out = fleet.cli(&["metrics", node, "mem.used_bytes", "-o", "json"]);
            async move {
                let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let points = body["series"][0]["points"].as_array()?.len();
                (points >= 3).then_some(())
            }
        })
        .await;
    }
    let table = fleet.cli_ok(&["metrics", "m1", "--since", "10m"]);
    for metric in [
        "cpu.used_percent",
        "mem.used_bytes",
        "disk.used_percent",
        "uptime.seconds",
    ] {
        assert!(table.contains(metric), "{metric} missing from:\n{table}");
    }
    assert!(table.lines().next().unwrap().contains("LAST"), "{table}");

    let grouped = fleet.cli_ok(&[
        "metrics",
        "--group-by",
        "site",
        "mem.used_percent",
        "-o",
        "json",
    ]);
    let body: serde_json::Value = serde_json::from_str(&grouped).unwrap();
    let groups: BTreeSet<&str> = body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, BTreeSet::from(["berlin", "lisbon"]), "{grouped}");

    // Bad queries get clear errors.
    let (_, text) = crate::cli_fails(&fleet, &["metrics", "nope"]);
    assert!(text.contains("nope"), "{text}");
    let (_, text) = crate::cli_fails(&fleet, &["metrics", "m1", "--since", "yesterday"]);
    assert!(text.contains("yesterday"), "{text}");

    // The node's traffic by category is counted.
    let describe = fleet.cli_ok(&["describe", "node", "m1"]);
    assert!(describe.contains("Traffic:"), "{describe}");
    assert!(describe.contains("telemetry"), "{describe}");
}

#[tokio::test]
async fn published_records_reach_the_lake_exactly_once_while_agent_and_server_are_killed() {
    let mut fleet = fleet(
        &["--lake-interval", "1s"],
        &[("pub-1", "site=berlin")],
        FAST,
    )
    .await;
    let dir = fleet.path().join("publisher");
    std::fs::create_dir_all(&dir).unwrap();
    apply(&fleet, "sensors.yaml", &publisher(&dir, "0.05", 0));
    wait_for("the first acknowledged record", LONG, || {
        let n = acked(&dir).len();
        async move { (n > 0).then_some(()) }
    })
    .await;
    // Kill the agent at random moments while it accepts and uploads; once, the server too.
    let join: Option<&str> = None;
    for round in 0..8u64 {
        let pause = 300 + (round * 7919 + 131) % 900;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        fleet.agent("pub-1").kill9();
        if round == 4 {
            fleet.server.kill9();
            fleet.server.start().await;
        }
        fleet.spawn_agent("pub-1", "site=berlin", join, FAST);
        let before = acked(&dir).len();
        wait_for(
            &format!("publishing again after kill {round}"),
            LONG,
            || {
                let n = acked(&dir).len();
                async move { (n > before).then_some(()) }
            },
        )
        .await;
    }
    // Stop publishing, then everything acknowledged must arrive.
    fleet.cli_ok(&["delete", "deployment", "sensors"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = acked(&dir);
    assert!(
        acked.len() > 20,
        "only {} records acknowledged",
        acked.len()
    );
    let lake = wait_for("every acknowledged record in the lake", LONG, || {
        let lake = lake_attempts(&fleet);
        let missing = acked.keys().filter(|a| !lake.contains_key(*a)).count();
        async move { (missing == 0).then_some(lake) }
    })
    .await;
    let duplicated: Vec<_> = lake.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "records duplicated in the lake: {duplicated:?}"
    );
    // The lake's sequence numbers of the stream are unique and increase with the counter.
    let rows = lake_rows(&fleet, "readings");
    let seqs: BTreeSet<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), rows.len(), "a sequence number was stored twice");
}

#[tokio::test]
async fn a_full_disk_refuses_new_records_clearly_and_keeps_what_was_accepted() {
    let mut fleet = fleet(
        &["--lake-interval", "1s"],
        &[("disk-1", "site=berlin")],
        &[
            "--metrics-interval",
            "1s",
            "--upload-interval",
            "0s",
            "--outbox-max",
            "64Mi",
        ],
    )
    .await;
    // The outbox on a 400 KiB file system, far below its configured bound.
    let agent_dir = fleet.agent("disk-1").dir.clone();
    fleet.agent("disk-1").stop();
    let outbox = agent_dir.join("outbox");
    std::fs::remove_dir_all(&outbox).unwrap();
    std::fs::create_dir_all(&outbox).unwrap();
    let _mount = Tmpfs::mount(&outbox, "400k");
    fleet.spawn_agent(
        "disk-1",
        "site=berlin",
        None,
        &[
            "--metrics-interval",
            "1s",
            "--upload-interval",
            "0s",
            "--outbox-max",
            "64Mi",
        ],
    );
    wait_ready(&fleet, 1).await;
    let dir = fleet.path().join("publisher");
    std::fs::create_dir_all(&dir).unwrap();
    apply(&fleet, "sensors.yaml", &publisher(&dir, "0", 4000));
    wait_for("records acknowledged", LONG, || {
        let n = acked(&dir).len();
        async move { (n > 10).then_some(()) }
    })
    .await;
    // Without the server nothing drains: the small disk fills.
    fleet.server.stop();
    wait_for("a refused publish", LONG, || {
        let errors = std::fs::read_to_string(dir.join("errors")).unwrap_or_default();
        async move { errors.contains("ERR").then_some(errors) }
    })
    .await;
    let errors = std::fs::read_to_string(dir.join("errors")).unwrap();
    assert!(
        errors.to_lowercase().contains("space") || errors.to_lowercase().contains("full"),
        "the refusal does not say the disk is full:\n{}",
        errors.lines().last().unwrap_or_default()
    );
    // The agent and its workload keep running.
    let agent_pid = fleet.agent("disk-1").proc.as_ref().unwrap().pid();
    assert!(
        edgefleet_testkit::pid_alive(agent_pid),
        "the agent died on a full disk"
    );
    let accepted = acked(&dir);
    // The server comes back: everything accepted arrives, and publishing works again.
    fleet.server.start().await;
    let before = accepted.len();
    wait_for("publishing works again", LONG, || {
        let n = acked(&dir).len();
        async move { (n > before + 5).then_some(()) }
    })
    .await;
    fleet.cli_ok(&["delete", "deployment", "sensors"]);
    let lake = wait_for("every accepted record in the lake", LONG, || {
        let lake = lake_attempts(&fleet);
        let missing = accepted.keys().filter(|a| !lake.contains_key(*a)).count();
        async move { (missing == 0).then_some(lake) }
    })
    .await;
    assert!(lake.values().all(|n| *n == 1), "duplicates in the lake");
    fleet.agent("disk-1").stop();
}

#[tokio::test]
async fn an_offline_spell_delivers_everything_in_order_afterwards() {
    let mut fleet = fleet(&[], &[("off-1", "site=berlin")], FAST).await;
    wait_for("first samples", LONG, || {
        let out = fleet.cli(&["metrics", "off-1", "uptime.seconds", "-o", "json"]);
        async move {
            let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (body["series"][0]["points"].as_array()?.len() >= 2).then_some(())
        }
    })
    .await;
    fleet.server.stop();
    let offline = Duration::from_secs(15);
    tokio::time::sleep(offline).await;
    fleet.server.start().await;
    // One sample a second was taken on the node meanwhile; all of them arrive.
    let points = wait_for("the offline samples", LONG, || {
        let out = fleet.cli(&[
            "metrics",
            "off-1",
            "uptime.seconds",
            "--since",
            "10m",
            "-o",
            "json",
        ]);
        async move {
            let body: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let points: Vec<serde_json::Value> = body["series"][0]["points"].as_array()?.clone();
            (points.len() >= 18).then_some(points)
        }
    })
    .await;
    let times: Vec<String> = points
        .iter()
        .map(|p| p["time"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), times.len(), "a sample was stored twice");
    // No gap longer than a few seconds: nothing taken offline was lost.
    let values: Vec<f64> = points
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    for pair in values.windows(2) {
        assert!(
            pair[1] - pair[0] < 4.0,
            "a gap in the samples: uptime jumped from {} to {}",
            pair[0],
            pair[1]
        );
    }
    fleet.agent("off-1").stop();
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount (this test needs root)");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed (this test needs root)",
            at.display()
        );
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
