//! Zero-trust enrollment, node isolation, revocation, certificate renewal.

use std::time::Duration;

use edgefleet_testkit::{Api, wait_for};
use edgefleet_wire::JoinString;

use crate::*;

async fn agent_fails_with(
    fleet: &mut edgefleet_testkit::Fleet,
    name: &str,
    join: &str,
    needle: &str,
) {
    fleet.spawn_agent(name, "", Some(join), &[]);
    let agent = fleet.agent(name);
    let proc = agent.proc.as_mut().unwrap();
    let code = wait_for(&format!("agent {name} to give up"), LONG, || {
        let code = proc.try_exit_code();
        async move { code }
    })
    .await;
    let log = proc.log_text();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.to_lowercase().contains(needle),
        "expected {needle:?} in:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_checked() {
    let mut fleet = fleet_with(&[], &[]).await;

    let once = fleet.join_token(&["--uses", "1"]);
    fleet.spawn_agent("first", "", Some(&once), &[]);
    wait_ready(&fleet, 1).await;
    agent_fails_with(&mut fleet, "second", &once, "used").await;

    let short = fleet.join_token(&["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    agent_fails_with(&mut fleet, "late", &short, "expired").await;

    let revoked = fleet.join_token(&[]);
    let tokens: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.cli_ok(&["token", "list", "-o", "json"])).unwrap();
    let id = tokens
        .iter()
        .find(|t| t["state"] == "active" && t["uses"] == 0)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    fleet.cli_ok(&["token", "revoke", &id]);
    agent_fails_with(&mut fleet, "denied", &revoked, "revoked").await;

    // A join string whose CA fingerprint is not the server's: the agent refuses the server
    // before sending the token, so the server never enrolls it.
    let mut forged = JoinString::decode(&fleet.join_token(&[])).unwrap();
    forged.ca_sha256 = "0".repeat(64);
    agent_fails_with(&mut fleet, "mitm", &forged.encode(), "fingerprint").await;
    let nodes: Vec<serde_json::Value> = fleet.api().get_json("/v1/nodes").await.unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["first"]);

    // Tokens are stored hashed: the secret is nowhere in the database file.
    let secret = JoinString::decode(&once).unwrap().secret;
    let secret_part = secret.split('.').nth(1).unwrap();
    let db = std::fs::read(fleet.server.data_dir().join("edgefleet.db")).unwrap();
    assert!(
        !db.windows(secret_part.len())
            .any(|w| w == secret_part.as_bytes())
    );
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    for file in ["ca.key", "server.key", "admin.token"] {
        let mode = std::fs::metadata(fleet.server.data_dir().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others: {mode:o}");
    }
    let mode = std::fs::metadata(fleet.path().join("agents/first/identity/node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_isolated_and_revocation_is_immediate() {
    let fleet = fleet_with(&[], &[("edge-a", "site=a"), ("edge-b", "site=b")]).await;
    apply(
        &fleet,
        "b.yaml",
        &manifest("b-only", "site=b", 0, &[("secret", "exec sleep 1000")]),
    );
    fleet.wait_converged("edge-b", LONG).await;

    let a = fleet.node_api("edge-a");
    // A's certificate reads A's desired state, which does not contain B's workload.
    let own = a
        .get("/v1/agent/desired?known_generation=999999&wait_seconds=0")
        .await
        .unwrap();
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.json()["node"], "edge-a");
    assert!(!own.body.contains("secret"));
    // A cannot report as B.
    let forged = serde_json::json!({"node": "edge-b", "applied_generation": 99, "workloads": [], "agent_version": "x"});
    let reply = a
        .send(reqwest::Method::PUT, "/v1/agent/status", Some(&forged))
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["code"], "forbidden");
    // A certificate is no operator credential.
    for path in ["/v1/nodes", "/v1/nodes/edge-b", "/v1/deployments"] {
        assert_eq!(a.get(path).await.unwrap().status, 401, "{path}");
    }
    let b_detail: serde_json::Value = fleet.api().get_json("/v1/nodes/edge-b").await.unwrap();
    assert_ne!(b_detail["reported"]["applied_generation"], 99);

    // Revocation: refused at once, shown as Revoked.
    let b = fleet.node_api("edge-b");
    assert_eq!(
        b.get("/v1/agent/desired?known_generation=999999&wait_seconds=0")
            .await
            .unwrap()
            .status,
        200
    );
    fleet.cli_ok(&["node", "revoke", "edge-b"]);
    let refused = b
        .get("/v1/agent/desired?known_generation=999999&wait_seconds=0")
        .await
        .unwrap();
    assert!(
        matches!(refused.status, 401 | 403),
        "{} {}",
        refused.status,
        refused.body
    );
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&fleet.cli_ok(&["get", "nodes", "-o", "json"])).unwrap();
    let b_row = nodes.iter().find(|n| n["name"] == "edge-b").unwrap();
    assert_eq!(b_row["status"], "Revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_without_disruption() {
    // Nine-second certificates: renewed at two thirds of their life, several times here.
    let fleet = fleet_with(&["--node-cert-validity", "9s"], &[("edge-1", "site=a")]).await;
    apply(
        &fleet,
        "a.yaml",
        &manifest("app", "", 0, &[("web", "exec sleep 1000")]),
    );
    let before = fleet.wait_converged("edge-1", LONG).await;
    let cert_path = fleet.path().join("agents/edge-1/identity/node.crt");
    let serial = |path: &std::path::Path| {
        edgefleet_tls::cert_info(&std::fs::read_to_string(path).unwrap_or_default())
            .map(|i| i.serial)
            .ok()
    };
    let first = serial(&cert_path).unwrap();
    let agent_pid = fleet.agents[0].proc.as_ref().unwrap().pid();
    let mut seen = vec![first.clone()];
    wait_for("two certificate renewals", Duration::from_secs(40), || {
        if let Some(s) = serial(&cert_path)
            && !seen.contains(&s)
        {
            seen.push(s);
        }
        let done = seen.len() >= 3;
        async move { done.then_some(()) }
    })
    .await;
    // The node kept working across renewals: same agent process, same workload process,
    // still Ready, and its last certificate is what the server knows.
    let after = fleet.wait_converged("edge-1", LONG).await;
    assert_eq!(fleet.agents[0].proc.as_ref().unwrap().pid(), agent_pid);
    assert_eq!(reported_pid(&after, "web"), reported_pid(&before, "web"));
    assert_eq!(after["summary"]["status"], "Ready");
    let api: Api = fleet.node_api("edge-1");
    assert_eq!(
        api.get("/v1/agent/desired?known_generation=999999&wait_seconds=0")
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_writes_cli_config_and_login_verifies_the_ca() {
    let mut fleet = fleet_with(&[], &[]).await;
    let token = fleet.server.admin_token();
    // First start: the admin token is shown once, and the user's CLI config is written.
    let first = fleet.server.log_text();
    assert!(first.contains(&token), "{first}");
    let user_config = fleet.path().join("home/.config/edgefleet/config.yaml");
    let text =
        std::fs::read_to_string(&user_config).expect("user CLI config written at first start");
    assert!(text.contains(&fleet.server.url()), "{text}");
    let out = std::process::Command::new(&fleet.bin)
        .args(["get", "nodes"])
        .env("HOME", fleet.path().join("home"))
        .env_remove("EDGEFLEET_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Second start: the token is not printed again.
    fleet.server.stop();
    let log = fleet.path().join("logs/server.log");
    std::fs::write(&log, "").unwrap();
    fleet.server.start().await;
    assert!(!fleet.server.log_text().contains(&token));

    // login: the right fingerprint writes a working config; a wrong one is refused and
    // writes nothing.
    let fingerprint = edgefleet_tls::fingerprint_pem(&fleet.server.ca_pem()).unwrap();
    let config = fleet.path().join("login.yaml");
    let login = |fp: &str| {
        std::process::Command::new(&fleet.bin)
            .args([
                "login",
                "--server",
                &fleet.server.url(),
                "--token",
                &token,
                "--ca-fingerprint",
                fp,
            ])
            .env("EDGEFLEET_CONFIG", &config)
            .env("HOME", fleet.path().join("home"))
            .output()
            .unwrap()
    };
    let out = login(&"0".repeat(64));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fingerprint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!config.exists());
    let out = login(&fingerprint);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&fleet.bin)
        .args(["get", "deployments", "-o", "json"])
        .env("EDGEFLEET_CONFIG", &config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o077,
        0
    );
}
