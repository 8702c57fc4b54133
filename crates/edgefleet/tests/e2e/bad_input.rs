//! Bad input gets clear errors naming what and where, and never a crash.

use crate::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_manifest_errors_with_location() {
    let fleet = fleet_with(&[], &[]).await;
    let dir = fleet.path();

    let bad = write(
        dir,
        "bad.yaml",
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: [oops\n",
    );
    let out = fleet.cli(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("bad.yaml:3:"),
        "{}",
        stderr_of(&out)
    );

    let good = manifest("app", "", 0, &[("web", "exec sleep 1")]);
    let unknown = write(
        dir,
        "unknown.yaml",
        &good.replace("stopGracePeriod", "stopGracePeriodd"),
    );
    let out = fleet.cli(&["apply", "-f", unknown.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("stopGracePeriodd"),
        "{}",
        stderr_of(&out)
    );

    let dup = format!("{good}    - name: web\n      command: /bin/true\n");
    let dup = write(dir, "dup.yaml", &dup);
    let out = fleet.cli(&["apply", "-f", dup.to_str().unwrap()]);
    assert!(
        stderr_of(&out).contains("spec.workloads[1].name"),
        "{}",
        stderr_of(&out)
    );

    let bad_selector = write(
        dir,
        "sel.yaml",
        &manifest("app", "bad key=x", 0, &[("web", "exec sleep 1")])
            .replace("bad key", "\"bad key\""),
    );
    let out = fleet.cli(&["apply", "-f", bad_selector.to_str().unwrap()]);
    assert!(
        stderr_of(&out).contains("spec.selector.matchLabels"),
        "{}",
        stderr_of(&out)
    );

    // A directory with one bad file applies nothing at all.
    let sub = dir.join("many");
    std::fs::create_dir_all(&sub).unwrap();
    write(&sub, "1-good.yaml", &good);
    write(&sub, "2-bad.yaml", "kind: [");
    let out = fleet.cli(&["apply", "-f", sub.to_str().unwrap()]);
    assert!(!out.status.success());
    let deployments: Vec<serde_json::Value> =
        fleet.api().get_json("/v1/deployments").await.unwrap();
    assert!(deployments.is_empty());

    // Standard input works, and names itself.
    let out = fleet.cli_with_stdin(&["apply", "-f", "-"], Some("kind: ["));
    assert!(
        stderr_of(&out).contains("-:1:") || stderr_of(&out).contains("<stdin>:1:"),
        "{}",
        stderr_of(&out)
    );
    let out = fleet.cli_with_stdin(&["apply", "-f", "-"], Some(&good));
    assert!(out.status.success(), "{}", stderr_of(&out));

    let out = fleet.cli(&["label", "node", "nope", "bad key=1"]);
    assert!(!out.status.success());
    let out = fleet.cli(&["get", "nodes", "-l", "site in (a"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("site in (a"),
        "{}",
        stderr_of(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_consistent() {
    let fleet = fleet_with(&[], &[]).await;
    let admin = fleet.api();

    // Oversized body: 413 with the error body.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let reply = admin
        .raw(reqwest::Method::POST, "/v1/apply", "application/json", huge)
        .await
        .unwrap();
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(reply.json()["code"], "payload_too_large");

    let reply = admin
        .raw(
            reqwest::Method::POST,
            "/v1/apply",
            "application/json",
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.json()["message"].is_string());

    // An invalid manifest sent straight to the API (no CLI check first) names the field.
    let mut doc: serde_json::Value = serde_json::to_value(
        serde_saphyr::from_str::<edgefleet_wire::manifest::DeploymentManifest>(&manifest(
            "app",
            "",
            0,
            &[("web", "x")],
        ))
        .unwrap(),
    )
    .unwrap();
    doc["spec"]["workloads"][0]["name"] = "Not A Name".into();
    let reply = admin
        .send(
            reqwest::Method::POST,
            "/v1/apply",
            Some(&serde_json::json!({"deployments": [doc]})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("spec.workloads[0].name"),
        "{}",
        reply.body
    );

    // No token, a wrong token, a viewer's change.
    let anonymous =
        edgefleet_testkit::Api::new(&fleet.server.url(), &fleet.server.ca_pem(), None, None);
    assert_eq!(anonymous.get("/v1/nodes").await.unwrap().status, 401);
    let wrong = edgefleet_testkit::Api::new(
        &fleet.server.url(),
        &fleet.server.ca_pem(),
        Some("abc.def".into()),
        None,
    );
    let reply = wrong.get("/v1/nodes").await.unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["code"], "unauthorized");
    let viewer_token = fleet.cli_ok(&["api-token", "create", "--name", "dash", "--role", "viewer"]);
    let viewer_token = viewer_token
        .split_whitespace()
        .find(|w| w.contains('.'))
        .unwrap()
        .to_owned();
    let viewer = edgefleet_testkit::Api::new(
        &fleet.server.url(),
        &fleet.server.ca_pem(),
        Some(viewer_token),
        None,
    );
    assert_eq!(viewer.get("/v1/nodes").await.unwrap().status, 200);
    let reply = viewer
        .send(
            reqwest::Method::POST,
            "/v1/apply",
            Some(&serde_json::json!({"deployments": []})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.json()["code"], "forbidden");

    let reply = admin.get("/v1/nodes/nope").await.unwrap();
    assert_eq!(reply.status, 404);
    assert!(reply.json()["message"].as_str().unwrap().contains("nope"));

    let openapi: serde_json::Value = admin.get_json("/v1/openapi.json").await.unwrap();
    assert!(openapi["paths"]["/v1/apply"].is_object(), "{openapi:#}");

    // Garbage on the TLS port does not hurt the server.
    use std::io::Write;
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", fleet.server.port)).unwrap();
    let _ = raw.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage");
    drop(raw);
    assert_eq!(admin.get("/healthz").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_unusable_data_dir() {
    let mut fleet = fleet_with(&[], &[]).await;
    let join = fleet.join_token(&[]);
    let file = write(fleet.path(), "not-a-dir", "x");
    let data_dir = file.join("agent");
    let proc = edgefleet_testkit::Proc::spawn(
        "bad-dir",
        &fleet.bin,
        &[
            "agent".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--join".into(),
            join.clone(),
        ],
        &fleet.path().join("logs"),
        &[],
    );
    let mut proc = proc;
    let code = edgefleet_testkit::wait_for("agent with a bad data dir to exit", LONG, || {
        let code = proc.try_exit_code();
        async move { code }
    })
    .await;
    assert_ne!(code, Some(0));
    let log = proc.log_text();
    assert!(
        log.contains(&data_dir.display().to_string()) || log.contains("not-a-dir"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // A join string that is not one.
    agent_garbage(&mut fleet).await;
}

async fn agent_garbage(fleet: &mut edgefleet_testkit::Fleet) {
    fleet.spawn_agent("garbage", "", Some("EFJ1.not-base64!"), &[]);
    let proc = fleet.agent("garbage").proc.as_mut().unwrap();
    let code = edgefleet_testkit::wait_for("agent with a bad join string to exit", LONG, || {
        let code = proc.try_exit_code();
        async move { code }
    })
    .await;
    assert_ne!(code, Some(0));
    assert!(proc.log_text().contains("join"), "{}", proc.log_text());
}
