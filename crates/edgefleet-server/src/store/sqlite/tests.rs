//! The SQLite store against a real database file in a temporary directory.

use super::*;
use edgefleet_wire::api::{Conflict, DesiredWorkload};
use edgefleet_wire::manifest::*;
use time::macros::datetime;

const T0: Timestamp = datetime!(2026-01-01 12:00 UTC);

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("edgefleet.db"))
        .await
        .unwrap();
    (dir, store)
}

fn audit(action: &str, object: &str) -> NewAudit {
    NewAudit::new(T0, "token:test", action, object, "detail")
}

fn join_token(id: &str, uses_allowed: Option<u32>) -> JoinTokenRecord {
    JoinTokenRecord {
        id: id.into(),
        secret_sha256: "hash".into(),
        labels: [("site".to_string(), "a".to_string())].into(),
        created_at: T0,
        expires_at: T0 + time::Duration::hours(1),
        uses_allowed,
        uses: 0,
        revoked: false,
        description: Some("for tests".into()),
    }
}

fn enrollment(name: &str, token_id: &str, at: Timestamp) -> Enrollment {
    Enrollment {
        name: name.into(),
        labels: [("site".to_string(), "a".to_string())].into(),
        facts: NodeFacts {
            hostname: name.into(),
            ..NodeFacts::default()
        },
        cert: CertRecord {
            serial: format!("serial-{name}"),
            not_after: at + time::Duration::days(7),
        },
        token_id: token_id.into(),
        now: at,
        audit: NewAudit::new(
            at,
            format!("node:{name}"),
            "enroll",
            format!("node/{name}"),
            "enrolled",
        ),
    }
}

fn manifest(name: &str, command: &str) -> DeploymentManifest {
    DeploymentManifest {
        api_version: edgefleet_wire::API_VERSION.into(),
        kind: "Deployment".into(),
        metadata: Metadata {
            name: name.into(),
            labels: Default::default(),
        },
        spec: DeploymentSpec {
            streams: Vec::new(),
            selector: Selector::default(),
            priority: 0,
            workloads: vec![WorkloadSpec::process("w", command)],
            rollout: Default::default(),
        },
    }
}

fn item(name: &str, command: &str) -> ApplyItem {
    let manifest = manifest(name, command);
    ApplyItem {
        revision: edgefleet_core::hash::revision_hash(&manifest.spec),
        manifest,
    }
}

#[tokio::test]
async fn schema_is_versioned_and_data_survives_reopen() {
    let (dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", None),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();
    drop(store);
    let path = dir.path().join("edgefleet.db");
    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        reopened.get_join_token("aaaa0001").await.unwrap(),
        Some(join_token("aaaa0001", None))
    );
    drop(reopened);

    let connection = Connection::open(&path).unwrap();
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A database from a newer release is refused with a message saying so.
    connection.pragma_update(None, "user_version", 99).unwrap();
    drop(connection);
    let error = SqliteStore::open(&path).await.err().unwrap().to_string();
    assert!(error.contains("schema version 99"), "{error}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn enrollment_consumes_the_token_and_refuses_a_taken_name() {
    let (_dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", Some(2)),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();

    let outcome = store
        .enroll_node(enrollment("n1", "aaaa0001", T0))
        .await
        .unwrap();
    let EnrollOutcome::Enrolled(node) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(node.name, "n1");
    assert_eq!(node.facts.hostname, "n1");
    assert_eq!(node.cert.serial, "serial-n1");
    assert_eq!(
        (node.desired_generation, node.last_seen, node.revoked),
        (0, None, false)
    );
    assert_eq!(
        store
            .get_join_token("aaaa0001")
            .await
            .unwrap()
            .unwrap()
            .uses,
        1
    );

    // The same name again: refused, and the token use is not consumed.
    assert_eq!(
        store
            .enroll_node(enrollment("n1", "aaaa0001", T0))
            .await
            .unwrap(),
        EnrollOutcome::NameTaken
    );
    assert_eq!(
        store
            .get_join_token("aaaa0001")
            .await
            .unwrap()
            .unwrap()
            .uses,
        1
    );

    assert!(matches!(
        store
            .enroll_node(enrollment("n2", "aaaa0001", T0))
            .await
            .unwrap(),
        EnrollOutcome::Enrolled(_)
    ));
    // Used up.
    assert_eq!(
        store
            .enroll_node(enrollment("n3", "aaaa0001", T0))
            .await
            .unwrap(),
        EnrollOutcome::TokenUnusable
    );
    assert_eq!(store.get_node("n3").await.unwrap(), None);
    assert_eq!(
        store.list_audit(10, Some("node/n1")).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn expired_revoked_and_unknown_tokens_cannot_enroll() {
    let (_dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", None),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();
    let late = T0 + time::Duration::hours(2);
    assert_eq!(
        store
            .enroll_node(enrollment("n1", "aaaa0001", late))
            .await
            .unwrap(),
        EnrollOutcome::TokenUnusable
    );
    assert_eq!(
        store
            .enroll_node(enrollment("n1", "nope", T0))
            .await
            .unwrap(),
        EnrollOutcome::TokenUnusable
    );
    assert!(
        store
            .revoke_join_token("aaaa0001", audit("token.revoke", "token/aaaa0001"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_join_token("missing", audit("token.revoke", "token/missing"))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .enroll_node(enrollment("n1", "aaaa0001", T0))
            .await
            .unwrap(),
        EnrollOutcome::TokenUnusable
    );
    assert!(store.list_nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn revoked_name_re_enrolls_keeping_its_generation() {
    let (_dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", None),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();
    store
        .enroll_node(enrollment("n1", "aaaa0001", T0))
        .await
        .unwrap();
    let workloads = vec![DesiredWorkload {
        streams: Vec::new(),
        deployment: "d".into(),
        revision: "r".into(),
        spec_hash: "h".into(),
        spec: manifest("d", "/bin/true").spec.workloads.remove(0),
        rolled_back: false,
        labels: Default::default(),
    }];
    let conflicts = vec![Conflict {
        workload: "w".into(),
        winner: "d".into(),
        losers: vec!["e".into()],
        priority: 0,
    }];
    store
        .set_desired_states(vec![DesiredUpdate {
            node: "n1".into(),
            generation: 4,
            workloads: workloads.clone(),
            conflicts: conflicts.clone(),
        }])
        .await
        .unwrap();
    for presence in [
        Presence {
            node: "n1".into(),
            last_seen: T0,
            applied_generation: Some(4),
            reported: None,
        },
        // Older news (a request answered late) never moves last_seen back.
        Presence {
            node: "n1".into(),
            last_seen: T0 - time::Duration::seconds(5),
            applied_generation: None,
            reported: None,
        },
        Presence {
            node: "unknown".into(),
            last_seen: T0,
            applied_generation: None,
            reported: None,
        },
    ] {
        store.record_presence(presence).await.unwrap();
    }
    // Reads see buffered presence at once...
    let buffered = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (buffered.applied_generation, buffered.last_seen),
        (4, Some(T0))
    );
    // ...and a flush writes it: a new store on the same file sees it too.
    store.flush_presence().await.unwrap();
    let reopened = SqliteStore::open(&_dir.path().join("edgefleet.db"))
        .await
        .unwrap();
    let written = reopened.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (written.applied_generation, written.last_seen),
        (4, Some(T0))
    );
    let node = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (
            node.desired_generation,
            node.applied_generation,
            node.last_seen
        ),
        (4, 4, Some(T0))
    );
    assert_eq!(
        (node.desired_workloads, node.conflicts),
        (workloads, conflicts)
    );

    let revoked = store
        .revoke_node("n1", audit("revoke", "node/n1"))
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked);
    assert_eq!(
        store
            .revoke_node("ghost", audit("revoke", "node/ghost"))
            .await
            .unwrap(),
        None
    );

    let later = T0 + time::Duration::minutes(1);
    let EnrollOutcome::Enrolled(again) = store
        .enroll_node(enrollment("n1", "aaaa0001", later))
        .await
        .unwrap()
    else {
        panic!("a revoked name may enroll again");
    };
    assert!(!again.revoked);
    assert_eq!(
        again.desired_generation, 4,
        "generations never go backwards"
    );
    assert_eq!(
        (again.applied_generation, again.last_seen, again.enrolled_at),
        (0, None, later)
    );
}

#[tokio::test]
async fn renewal_keeps_the_presented_certificate_as_previous() {
    let (_dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", None),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();
    store
        .enroll_node(enrollment("n1", "aaaa0001", T0))
        .await
        .unwrap();
    let new = CertRecord {
        serial: "s2".into(),
        not_after: T0 + time::Duration::days(14),
    };
    assert!(
        store
            .renew_node_cert("n1", new.clone(), "serial-n1", audit("renew", "node/n1"))
            .await
            .unwrap()
    );
    let node = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(node.cert, new);
    assert_eq!(node.previous_cert_serial.as_deref(), Some("serial-n1"));
    assert!(
        !store
            .renew_node_cert("ghost", new, "x", audit("renew", "node/ghost"))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn reports_facts_and_labels_are_stored() {
    let (_dir, store) = store().await;
    store
        .create_join_token(
            join_token("aaaa0001", None),
            audit("token.create", "token/aaaa0001"),
        )
        .await
        .unwrap();
    store
        .enroll_node(enrollment("n1", "aaaa0001", T0))
        .await
        .unwrap();
    let report = ReportedState {
        node: "n1".into(),
        applied_generation: 3,
        workloads: vec![],
        agent_version: "1.2.3".into(),
        certificate_not_after: Some(T0),
        locks: vec![],
    };
    store
        .set_node_reported("n1", report.clone(), T0)
        .await
        .unwrap();
    let facts = NodeFacts {
        arch: "aarch64".into(),
        ..NodeFacts::default()
    };
    store
        .set_node_facts("n1", facts.clone(), T0 + time::Duration::seconds(1))
        .await
        .unwrap();
    let change = LabelChange {
        set: [("env".to_string(), "prod".to_string())].into(),
        remove: vec!["site".into()],
    };
    let changed = store
        .change_node_labels("n1", change.clone(), audit("label", "node/n1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        changed.labels,
        [("env".to_string(), "prod".to_string())].into()
    );
    assert_eq!(
        store
            .change_node_labels("ghost", change, audit("label", "node/ghost"))
            .await
            .unwrap(),
        None
    );
    let node = store.get_node("n1").await.unwrap().unwrap();
    assert_eq!(node.reported, Some(report.clone()));
    // Reports are buffered like heartbeats; a flush makes them durable.
    store.flush_presence().await.unwrap();
    let reopened = SqliteStore::open(&_dir.path().join("edgefleet.db"))
        .await
        .unwrap();
    let written = reopened.get_node("n1").await.unwrap().unwrap();
    assert_eq!(
        (written.reported, written.applied_generation),
        (Some(report), 3)
    );
    assert_eq!(node.applied_generation, 3);
    assert_eq!(node.facts, facts);
    assert_eq!(node.last_seen, Some(T0 + time::Duration::seconds(1)));
    store
        .record_presence(Presence {
            node: "n1".into(),
            last_seen: T0 + time::Duration::seconds(9),
            applied_generation: None,
            reported: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.get_node("n1").await.unwrap().unwrap().last_seen,
        Some(T0 + time::Duration::seconds(9))
    );
    let trail: Vec<String> = store
        .list_audit(10, Some("node/n1"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(trail, ["label", "enroll"], "newest first, only this node");
}

#[tokio::test]
async fn apply_creates_revisions_only_on_change() {
    let (_dir, store) = store().await;
    let results = store
        .apply_deployments(
            vec![item("web", "/bin/a"), item("db", "/bin/b")],
            "token:ops",
            T0,
        )
        .await
        .unwrap();
    let actions: Vec<ApplyAction> = results.iter().map(|r| r.action).collect();
    assert_eq!(actions, [ApplyAction::Created, ApplyAction::Created]);

    let again = store
        .apply_deployments(vec![item("web", "/bin/a")], "token:ops", T0)
        .await
        .unwrap();
    assert_eq!(again[0].action, ApplyAction::Unchanged);
    assert_eq!(again[0].revision, results[0].revision);

    let later = T0 + time::Duration::minutes(5);
    let updated = store
        .apply_deployments(vec![item("web", "/bin/c")], "token:bob", later)
        .await
        .unwrap();
    assert_eq!(updated[0].action, ApplyAction::Updated);
    let web = store.get_deployment("web").await.unwrap().unwrap();
    assert_eq!(
        (web.revision.as_str(), web.revision_count, web.updated_at),
        (updated[0].revision.as_str(), 2, later)
    );
    assert_eq!(web.manifest.spec.workloads[0].command, "/bin/c");
    let revisions = store.list_revisions("web").await.unwrap();
    let numbers: Vec<(u32, &str)> = revisions
        .iter()
        .map(|r| (r.number, r.created_by.as_str()))
        .collect();
    assert_eq!(numbers, [(2, "token:bob"), (1, "token:ops")]);
    assert_eq!(
        revisions[1].manifest.spec.workloads[0].command, "/bin/a",
        "revisions are immutable"
    );

    let names: Vec<String> = store
        .list_deployments()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["db", "web"]);
    let trail = store.list_audit(10, Some("deployment/web")).await.unwrap();
    assert_eq!(trail.len(), 2, "no audit entry for an unchanged apply");
    assert!(
        trail[0].detail.starts_with("updated: revision 2"),
        "{}",
        trail[0].detail
    );

    assert!(
        store
            .delete_deployment("web", audit("delete", "deployment/web"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_deployment("web", audit("delete", "deployment/web"))
            .await
            .unwrap()
    );
    assert_eq!(store.get_deployment("web").await.unwrap(), None);
    assert!(store.list_revisions("web").await.unwrap().is_empty());
}

#[tokio::test]
async fn api_tokens_keep_an_admin() {
    let (_dir, store) = store().await;
    let token = |id: &str, name: &str, role: Role| ApiTokenRecord {
        id: id.into(),
        name: name.into(),
        role,
        secret_sha256: "h".into(),
        created_at: T0,
        revoked: false,
    };
    let create = |t: ApiTokenRecord| {
        let a = audit("api-token.create", "api-token/x");
        let store = &store;
        async move { store.create_api_token(t, a).await.unwrap() }
    };
    assert_eq!(
        create(token("00000001", "admin", Role::Admin)).await,
        CreateOutcome::Created
    );
    assert_eq!(
        create(token("00000001", "other", Role::Viewer)).await,
        CreateOutcome::IdTaken
    );
    assert_eq!(
        create(token("00000002", "admin", Role::Viewer)).await,
        CreateOutcome::NameTaken
    );
    assert_eq!(
        create(token("00000003", "viewer", Role::Viewer)).await,
        CreateOutcome::Created
    );
    let revoke = |id: &'static str| {
        let store = &store;
        async move {
            store
                .revoke_api_token(id, audit("api-token.revoke", "api-token/x"))
                .await
                .unwrap()
        }
    };
    assert_eq!(revoke("00000001").await, RevokeApiTokenOutcome::LastAdmin);
    assert_eq!(revoke("00000009").await, RevokeApiTokenOutcome::NotFound);
    assert_eq!(revoke("00000003").await, RevokeApiTokenOutcome::Revoked);
    assert_eq!(
        create(token("00000004", "root", Role::Admin)).await,
        CreateOutcome::Created
    );
    assert_eq!(revoke("00000001").await, RevokeApiTokenOutcome::Revoked);
    let listed = store.list_api_tokens().await.unwrap();
    let states: Vec<(&str, bool)> = listed.iter().map(|t| (t.id.as_str(), t.revoked)).collect();
    assert_eq!(
        states,
        [("00000001", true), ("00000003", true), ("00000004", false)]
    );
    assert_eq!(
        store.get_api_token("00000004").await.unwrap().unwrap().role,
        Role::Admin
    );
    // A revoked token's name is free again.
    assert_eq!(
        create(token("00000005", "viewer", Role::Viewer)).await,
        CreateOutcome::Created
    );
}

#[tokio::test]
async fn audit_is_newest_first_and_limited() {
    let (_dir, store) = store().await;
    for i in 0..5 {
        store
            .record_audit(NewAudit::new(T0, "server", format!("a{i}"), "x/y", ""))
            .await
            .unwrap();
    }
    let entries = store.list_audit(3, None).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["a4", "a3", "a2"]);
    assert!(entries[0].id > entries[1].id);
    assert_eq!(entries[0].at, T0);
    store.ping().await.unwrap();
}
