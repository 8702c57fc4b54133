//! The container runtime against real engines: every test runs once on a private `dockerd`
//! and once on a private Podman service (`edgefleet_testkit::docker`), each test with an
//! engine of its own. Needs root and `apt-get install docker.io podman busybox-static runc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefleet_agent::runtime::container::{ContainerConfig, ContainerRuntime};
use edgefleet_agent::runtime::logs::LogRegistry;
use edgefleet_agent::runtime::{ArtifactSource, Launch, Runtime};
use edgefleet_core::supervisor::Event;
use edgefleet_testkit::docker::{Dockerd, EngineKind, Podman, TestEngine};
use edgefleet_testkit::wait_for;
use edgefleet_wire::manifest::WorkloadSpec;
use edgefleet_wire::session::LogStream;
use edgefleet_wire::workload::{ArtifactRef, ByteSize, Cpus, PullPolicy};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

/// How long anything may take.
const LIMIT: Duration = Duration::from_secs(20);
/// The image every test starts from (imported from busybox, no registry needed).
const IMAGE: &str = "eftest/busybox:1";
const AGENT: &str = "node-a";

/// Runs each named test on both engines, as `<test>::docker` and `<test>::podman`.
macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn docker() {
                    super::$test(super::Dockerd::start()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn podman() {
                    super::$test(super::Podman::start()).await;
                }
            }
        )*
    };
}

on_both_engines!(
    containers_start_exit_and_stop,
    the_spec_reaches_the_container,
    a_restarted_agent_adopts_its_containers,
    an_update_prepares_while_the_old_container_runs,
    pull_policies,
    out_of_memory_is_the_reason,
    exec_runs_inside_the_container,
);

// --- Harness ---

/// Image archives by artifact, handed out only once released (`release`), so a test can
/// look at the node while a preparation is in progress.
struct GatedArtifacts {
    files: Mutex<HashMap<ArtifactRef, PathBuf>>,
    gate: Semaphore,
    fetches: AtomicUsize,
}

impl Default for GatedArtifacts {
    fn default() -> Self {
        Self {
            files: Mutex::default(),
            gate: Semaphore::new(0),
            fetches: AtomicUsize::new(0),
        }
    }
}

impl GatedArtifacts {
    fn add(&self, name: &str, path: &Path) -> ArtifactRef {
        let digest = hex::encode(Sha256::digest(std::fs::read(path).unwrap()));
        let artifact: ArtifactRef = format!("{name}@sha256:{digest}").parse().unwrap();
        self.files
            .lock()
            .unwrap()
            .insert(artifact.clone(), path.to_owned());
        artifact
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }
}

impl ArtifactSource for GatedArtifacts {
    fn fetch<'a>(
        &'a self,
        artifact: &'a ArtifactRef,
        progress: &'a (dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> BoxFuture<'a, Result<PathBuf, String>> {
        Box::pin(async move {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let path = self
                .files
                .lock()
                .unwrap()
                .get(artifact)
                .cloned()
                .ok_or_else(|| format!("artifact {artifact} is not on the server"))?;
            let size = std::fs::metadata(&path).unwrap().len();
            progress(0, Some(size));
            self.gate.acquire().await.unwrap().forget();
            progress(size, Some(size));
            Ok(path)
        })
    }
}

struct Harness {
    engine: TestEngine,
    dir: tempfile::TempDir,
    artifacts: Arc<GatedArtifacts>,
    logs: LogRegistry,
    runtime: ContainerRuntime,
    events: mpsc::UnboundedReceiver<Event>,
    /// Progress messages seen, by workload.
    progress: Vec<(String, String)>,
}

impl Harness {
    fn new(engine: TestEngine) -> Self {
        engine.import_busybox(IMAGE, &[]);
        let dir = tempfile::tempdir().unwrap();
        let artifacts = Arc::new(GatedArtifacts::default());
        let logs = LogRegistry::new(dir.path().join("logs"), 1 << 20, 2);
        let (runtime, events) = runtime(&engine, AGENT, &dir, &logs, &artifacts);
        Self {
            engine,
            dir,
            artifacts,
            logs,
            runtime,
            events,
            progress: Vec::new(),
        }
    }

    /// Replaces the runtime with a new one, as a restarted agent has: new log registry,
    /// same directories.
    fn restart_agent(&mut self) {
        self.logs = LogRegistry::new(self.dir.path().join("logs"), 1 << 20, 2);
        let (runtime, events) =
            runtime(&self.engine, AGENT, &self.dir, &self.logs, &self.artifacts);
        self.runtime = runtime;
        self.events = events;
    }

    /// The next event for `workload` other than progress, which is kept in `progress`.
    async fn next_event(&mut self, workload: &str) -> Event {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no event for {workload} within {LIMIT:?}"))
                .expect("event channel closed");
            match &event {
                Event::Progress { name, message, .. } => {
                    self.progress.push((name.clone(), message.clone()));
                }
                Event::Prepared { name, .. }
                | Event::PrepareFailed { name, .. }
                | Event::Started { name, .. }
                | Event::StartFailed { name, .. }
                | Event::Exited { name, .. }
                    if name == workload =>
                {
                    return event;
                }
                _ => {}
            }
        }
    }

    async fn prepare(&mut self, instance: u64, spec: &WorkloadSpec) -> Result<(), String> {
        self.runtime
            .prepare(&spec.name, instance, &launch(spec.clone()));
        match self.next_event(&spec.name).await {
            Event::Prepared { instance: i, .. } if i == instance => Ok(()),
            Event::PrepareFailed {
                instance: i, error, ..
            } if i == instance => Err(error),
            other => panic!("expected the preparation of {}: {other:?}", spec.name),
        }
    }

    /// Prepares and starts; returns the pid (none for a container that exited at once).
    async fn start(&mut self, instance: u64, spec: &WorkloadSpec) -> Option<u32> {
        self.start_launch(instance, launch(spec.clone())).await
    }

    async fn start_launch(&mut self, instance: u64, launch: Launch) -> Option<u32> {
        let name = launch.spec.name.clone();
        self.runtime.prepare(&name, instance, &launch);
        match self.next_event(&name).await {
            Event::Prepared { .. } => {}
            other => panic!("expected {name} prepared: {other:?}"),
        }
        self.runtime.start(&name, instance, &launch);
        match self.next_event(&name).await {
            Event::Started {
                instance: i, pid, ..
            } if i == instance => pid,
            other => panic!("expected {name} started: {other:?}"),
        }
    }

    /// Waits for the exit of `workload`'s `instance`: (code, reason).
    async fn exited(&mut self, workload: &str, instance: u64) -> (Option<i32>, Option<String>) {
        match self.next_event(workload).await {
            Event::Exited {
                instance: i,
                code,
                reason,
                ..
            } if i == instance => (code, reason),
            other => panic!("expected {workload} to exit: {other:?}"),
        }
    }

    fn container_name(&self, workload: &str) -> String {
        container_name(AGENT, workload)
    }

    fn container(&self, workload: &str) -> Option<serde_json::Value> {
        self.engine
            .inspect_container(&self.container_name(workload))
    }

    /// The workload's stored log lines (both streams, in order).
    fn log_lines(&self, workload: &str) -> Vec<(LogStream, String)> {
        self.logs
            .workload(workload)
            .read(None, None)
            .unwrap()
            .into_iter()
            .map(|line| (line.stream, line.line))
            .collect()
    }

    async fn wait_for_log(&self, workload: &str, line: &str) {
        wait_for(
            &format!("{line:?} in the log of {workload}"),
            LIMIT,
            || async {
                self.log_lines(workload)
                    .iter()
                    .any(|(_, text)| text == line)
                    .then_some(())
            },
        )
        .await;
    }
}

fn runtime(
    engine: &TestEngine,
    agent_id: &str,
    dir: &tempfile::TempDir,
    logs: &LogRegistry,
    artifacts: &Arc<GatedArtifacts>,
) -> (ContainerRuntime, mpsc::UnboundedReceiver<Event>) {
    let (events, receiver) = mpsc::unbounded_channel();
    let runtime = ContainerRuntime::new(
        ContainerConfig {
            socket: Some(engine.socket().to_owned()),
            agent_id: agent_id.to_owned(),
            logs: logs.clone(),
            artifacts: artifacts.clone(),
            state_dir: dir.path().join(format!("containers-{agent_id}")),
        },
        events,
    );
    (runtime, receiver)
}

/// The name the runtime gives `workload`'s container: `ef-<8 hex of the agent id's
/// SHA-256>-<workload>`.
fn container_name(agent_id: &str, workload: &str) -> String {
    let short = hex::encode(&Sha256::digest(agent_id.as_bytes())[..4]);
    format!("ef-{short}-{workload}")
}

fn launch(spec: WorkloadSpec) -> Launch {
    Launch {
        spec,
        files_dir: None,
        spec_hash: "hash-1".to_owned(),
        key: "key-1".to_owned(),
        deployment: "shop".to_owned(),
        revision: "r7".to_owned(),
        local_api: None,
    }
}

/// A container workload running `script` with busybox's sh.
fn shell(name: &str, script: &str) -> WorkloadSpec {
    let mut spec = WorkloadSpec::container(name, IMAGE);
    spec.command = "sh".to_owned();
    spec.args = vec!["-c".to_owned(), script.to_owned()];
    spec
}

fn running(container: &serde_json::Value) -> bool {
    container["State"]["Running"].as_bool() == Some(true)
}

// --- Tests ---

async fn containers_start_exit_and_stop(engine: TestEngine) {
    let mut h = Harness::new(engine);

    // The exit code comes back, and the container is removed before `Exited` goes out.
    h.start(1, &shell("job", "exit 3")).await;
    assert_eq!(h.exited("job", 1).await, (Some(3), None));
    assert!(
        h.container("job").is_none(),
        "the exited container is removed"
    );

    // Stop sends SIGTERM, which the container's init passes on to the shell.
    let pid = h.start(1, &shell("web", "sleep 600")).await.expect("a pid");
    let container = h.container("web").expect("the container exists");
    assert!(running(&container));
    assert_eq!(container["State"]["Pid"].as_u64(), Some(u64::from(pid)));
    h.runtime.stop("web", 1);
    assert_eq!(h.exited("web", 1).await, (Some(143), None));
    assert!(h.container("web").is_none());

    // Kill forces what ignores SIGTERM; a stop for an old instance does nothing.
    h.start(
        2,
        &shell("stubborn", "trap '' TERM; while true; do sleep 1; done"),
    )
    .await;
    h.runtime.stop("stubborn", 1);
    h.runtime.kill("stubborn", 2);
    assert_eq!(h.exited("stubborn", 2).await, (Some(137), None));

    // A second start of the same name replaces a leftover container.
    h.start(3, &shell("web", "sleep 600")).await;
    let first = h.container("web").unwrap()["Id"].clone();
    h.restart_agent();
    h.start(4, &shell("web", "sleep 600")).await;
    let second = h.container("web").unwrap()["Id"].clone();
    assert_ne!(first, second);
    assert!(
        h.engine
            .inspect_container(first.as_str().unwrap())
            .is_none()
    );

    // An image the engine does not have fails the start, naming it.
    let mut missing = shell("broken", "true");
    missing.image = Some("eftest/missing:1".to_owned());
    h.runtime.start("broken", 1, &launch(missing));
    match h.next_event("broken").await {
        Event::StartFailed { error, .. } => {
            assert!(
                error.starts_with(&format!(
                    "creating container {} for workload broken: engine said 404",
                    h.container_name("broken")
                )),
                "{error}"
            );
            assert!(error.contains("eftest/missing"), "{error}");
        }
        other => panic!("expected a failed start: {other:?}"),
    }

    // With the engine gone, preparing and starting fail, saying so.
    h.runtime.kill("web", 4);
    h.exited("web", 4).await;
    h.engine.stop();
    let late = shell("late", "true");
    let error = h.prepare(1, &late).await.unwrap_err();
    let unreachable = format!(
        "cannot connect to the container engine at {}",
        h.engine.socket().display()
    );
    assert!(
        error.starts_with("looking for image eftest/busybox:1 for workload late: ")
            && error.contains(&unreachable),
        "{error}"
    );
    h.runtime.start("late", 1, &launch(late));
    match h.next_event("late").await {
        Event::StartFailed { error, .. } => assert!(error.contains(&unreachable), "{error}"),
        other => panic!("expected a failed start: {other:?}"),
    }
}

async fn the_spec_reaches_the_container(engine: TestEngine) {
    let mut h = Harness::new(engine);
    let files = h.dir.path().join("files/app");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("app.conf"), "greeting=hello\n").unwrap();
    let mut spec = shell(
        "app",
        "echo \"mode=$MODE files=$EDGEFLEET_FILES_DIR args=$0,$1\"; cat $EDGEFLEET_FILES_DIR/app.conf; pwd; echo oops >&2; \
         touch $EDGEFLEET_FILES_DIR/x 2>/dev/null || echo read-only; sleep 600",
    );
    spec.args.extend(["first".to_owned(), "second".to_owned()]);
    spec.env.insert("MODE".to_owned(), "edge".to_owned());
    spec.working_dir = Some("/tmp".to_owned());
    spec.resources.cpus = Some(Cpus(500));
    spec.resources.memory = Some(ByteSize(64 << 20));
    let mut launch = launch(spec);
    launch.files_dir = Some(files.clone());
    h.start_launch(1, launch).await;

    h.wait_for_log("app", "read-only").await;
    let lines = h.log_lines("app");
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(stream, _)| *stream == LogStream::Stdout)
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(
        stdout,
        [
            "mode=edge files=/run/edgefleet/files args=first,second",
            "greeting=hello",
            "/tmp",
            "read-only",
        ]
    );
    assert!(
        lines.contains(&(LogStream::Stderr, "oops".to_owned())),
        "{lines:?}"
    );

    let container = h.container("app").unwrap();
    let labels = &container["Config"]["Labels"];
    for (key, value) in [
        ("edgefleet.managed", "true"),
        ("edgefleet.agent", AGENT),
        ("edgefleet.workload", "app"),
        ("edgefleet.spec-hash", "hash-1"),
        ("edgefleet.key", "key-1"),
        ("edgefleet.deployment", "shop"),
        ("edgefleet.revision", "r7"),
    ] {
        assert_eq!(labels[key], value, "label {key} in {labels}");
    }
    let host = &container["HostConfig"];
    assert_eq!(host["NanoCpus"], 500_000_000, "{host}");
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(host["MemorySwap"], 64 << 20);
    assert_eq!(host["Init"], true);
    assert_eq!(host["NetworkMode"], "host");
    // The engine never restarts it: Podman shows "no" as an empty name.
    let restart = host["RestartPolicy"]["Name"].as_str().unwrap_or_default();
    assert!(
        restart == "no" || restart.is_empty(),
        "restart policy {restart:?}"
    );
    h.runtime.kill("app", 1);
    h.exited("app", 1).await;
}

async fn a_restarted_agent_adopts_its_containers(engine: TestEngine) {
    let mut h = Harness::new(engine);
    // 20 lines a second: many share a second, which is all Podman's stamps tell apart.
    let counter = shell(
        "counter",
        "i=0; while true; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done",
    );
    let pid = h.start(1, &counter).await.expect("a pid");
    h.wait_for_log("counter", "line 10").await;
    let before = h.container("counter").unwrap();

    // Another agent on the same engine runs a workload of the same name.
    let (mut other, mut other_events) = runtime(&h.engine, "node-b", &h.dir, &h.logs, &h.artifacts);
    let other_spec = shell("counter", "sleep 600");
    other.prepare("counter", 1, &launch(other_spec.clone()));
    other.start("counter", 1, &launch(other_spec));
    loop {
        match tokio::time::timeout(LIMIT, other_events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Started { .. } => break,
            Event::Prepared { .. } => {}
            other => panic!("other agent: {other:?}"),
        }
    }
    let other_container = container_name("node-b", "counter");
    // And this agent left an exited container behind.
    let leftover = create_exited_leftover(&h.engine, AGENT, "old");

    // The agent goes away (its runtime dropped, a new one not yet looking): the container
    // keeps running and its output is no longer copied.
    h.restart_agent();
    let copied = h.log_lines("counter").len();
    let container_id = before["Id"].as_str().unwrap().to_owned();
    let ahead = format!("line {}", copied + 10);
    wait_for("the container to go on writing", LIMIT, || async {
        let (_, body) = h.engine.request(
            "GET",
            &format!("/containers/{container_id}/logs?stdout=1"),
            None,
        );
        String::from_utf8_lossy(&body)
            .contains(&ahead)
            .then_some(())
    })
    .await;
    assert!(
        h.log_lines("counter").len() < copied + 10,
        "output was still copied after the runtime was dropped"
    );

    let found = h.runtime.discover().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let adoptable = &found[0];
    assert_eq!(adoptable.name, "counter");
    assert_eq!(adoptable.spec_hash, "hash-1");
    assert_eq!(adoptable.key, "key-1");
    assert_eq!(adoptable.deployment, "shop");
    assert_eq!(adoptable.revision, "r7");
    assert_eq!(adoptable.pid, Some(pid));
    assert!(adoptable.started_at.is_some());
    assert!(
        h.engine.inspect_container(&leftover).is_none(),
        "the exited leftover is removed"
    );
    assert!(
        running(&h.engine.inspect_container(&other_container).unwrap()),
        "another agent's container is left alone"
    );

    h.runtime.adopt("counter", 5);
    let target = copied + 40;
    h.wait_for_log("counter", &format!("line {target}")).await;
    let numbers: Vec<usize> = h
        .log_lines("counter")
        .iter()
        .map(|(_, text)| text.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    let expected: Vec<usize> = (1..=numbers.len()).collect();
    assert_eq!(
        numbers, expected,
        "every line exactly once, in order, across the restart"
    );
    let after = h.container("counter").unwrap();
    assert_eq!(after["Id"], before["Id"], "the same container");
    assert_eq!(
        after["State"]["StartedAt"], before["State"]["StartedAt"],
        "not restarted"
    );

    // Adopted, it is stopped and reported like any other.
    h.runtime.stop("counter", 5);
    assert_eq!(h.exited("counter", 5).await.0, Some(143));
    assert!(h.container("counter").is_none());
    drop(other);
}

/// A container labelled as `agent_id`'s, created, run and exited without the runtime.
fn create_exited_leftover(engine: &TestEngine, agent_id: &str, workload: &str) -> String {
    let name = container_name(agent_id, workload);
    let body = serde_json::json!({
        "Image": IMAGE,
        "Cmd": ["true"],
        "Labels": {
            "edgefleet.managed": "true",
            "edgefleet.agent": agent_id,
            "edgefleet.workload": workload,
        },
        "HostConfig": {"NetworkMode": "none"},
    });
    let (status, answer) = engine.request(
        "POST",
        &format!("/containers/create?name={name}"),
        Some(("application/json", body.to_string().as_bytes())),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    engine.json("POST", &format!("/containers/{name}/start"));
    engine.json("POST", &format!("/containers/{name}/wait"));
    name
}

async fn an_update_prepares_while_the_old_container_runs(engine: TestEngine) {
    let mut h = Harness::new(engine);
    h.engine
        .import_busybox("eftest/app:1", &[("version", b"1\n")]);
    h.engine
        .import_busybox("eftest/app:2", &[("version", b"2\n")]);
    let archive = h.dir.path().join("app-2.tar");
    h.engine.save_image("eftest/app:2", &archive);
    h.engine.remove_image("eftest/app:2");
    assert!(!h.engine.has_image("eftest/app:2"));
    let artifact = h.artifacts.add("app-2.tar", &archive);

    let mut old = shell("app", "echo \"version $(cat /version)\"; sleep 600");
    old.image = Some("eftest/app:1".to_owned());
    h.start(1, &old).await;
    h.wait_for_log("app", "version 1").await;
    let old_id = h.container("app").unwrap()["Id"].clone();

    // The new instance is prepared from the image archive, held back by the artifact
    // source: meanwhile the old container runs untouched.
    let mut new = old.clone();
    new.image = Some("eftest/app:2".to_owned());
    new.image_artifact = Some(artifact);
    new.image_pull_policy = PullPolicy::Never;
    h.runtime.prepare("app", 2, &launch(new.clone()));
    wait_for("the archive to be fetched", LIMIT, || async {
        (h.artifacts.fetches.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let during = h.container("app").unwrap();
    assert!(running(&during));
    assert_eq!(during["Id"], old_id);
    assert!(!h.engine.has_image("eftest/app:2"));
    h.artifacts.release();
    match h.next_event("app").await {
        Event::Prepared { instance: 2, .. } => {}
        other => panic!("expected the new instance prepared: {other:?}"),
    }
    assert!(h.engine.has_image("eftest/app:2"));
    assert!(
        h.progress.iter().any(|(name, message)| name == "app"
            && message.starts_with("fetching image archive app-2.tar for eftest/app:2: ")),
        "{:?}",
        h.progress
    );
    let after = h.container("app").unwrap();
    assert!(
        running(&after),
        "preparing never touches the running container"
    );
    assert_eq!(after["Id"], old_id);

    // Only then is the container replaced (as the supervisor does: stop, then start).
    h.runtime.stop("app", 1);
    h.exited("app", 1).await;
    h.runtime.start("app", 2, &launch(new));
    match h.next_event("app").await {
        Event::Started { instance: 2, .. } => {}
        other => panic!("expected the new instance started: {other:?}"),
    }
    h.wait_for_log("app", "version 2").await;

    // Clean-up: the loaded image is edgefleet's, and kept while needed or used; the
    // imported ones are not edgefleet's and are never removed.
    let needed: BTreeSet<String> = ["eftest/app:2".to_owned()].into();
    assert_eq!(
        h.runtime.collect_images(&needed).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        h.runtime.collect_images(&BTreeSet::new()).await.unwrap(),
        Vec::<String>::new(),
        "an image a container uses stays"
    );
    h.runtime.stop("app", 2);
    h.exited("app", 2).await;
    assert_eq!(
        h.runtime.collect_images(&BTreeSet::new()).await.unwrap(),
        ["eftest/app:2"]
    );
    assert!(!h.engine.has_image("eftest/app:2"));
    assert!(h.engine.has_image("eftest/app:1"));
    assert!(h.engine.has_image(IMAGE));
}

async fn pull_policies(engine: TestEngine) {
    let mut h = Harness::new(engine);
    // Present and if-not-present: nothing to fetch.
    h.prepare(1, &shell("here", "true")).await.unwrap();
    assert!(h.progress.is_empty(), "{:?}", h.progress);

    // Never, and not there: a clear error, no pull.
    let mut never = shell("never", "true");
    never.image = Some("eftest/missing:1".to_owned());
    never.image_pull_policy = PullPolicy::Never;
    let error = h.prepare(1, &never).await.unwrap_err();
    assert_eq!(
        error,
        "image eftest/missing:1 is not on the node and workload never has imagePullPolicy: never (load the image into the engine, or give the workload an imageArtifact)"
    );

    // Behind a registry that does not answer: if-not-present uses the image that is there,
    // always pulls it anyway, and the engine's error names it.
    let remote = "127.0.0.1:9/eftest/busybox:1";
    let (status, body) = h.engine.request(
        "POST",
        &format!("/images/{IMAGE}/tag?repo=127.0.0.1:9/eftest/busybox&tag=1"),
        None,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let mut pull = shell("pull", "true");
    pull.image = Some(remote.to_owned());
    h.prepare(1, &pull).await.unwrap();
    pull.image_pull_policy = PullPolicy::Always;
    let error = h.prepare(2, &pull).await.unwrap_err();
    assert!(
        error.starts_with(&format!("pulling {remote} for workload pull: engine said ")),
        "{error}"
    );
    assert!(error.contains("127.0.0.1:9"), "{error}");

    // An archive that does not hold the image says what it holds.
    let archive = h.dir.path().join("busybox.tar");
    h.engine.save_image(IMAGE, &archive);
    let mut wrong = shell("wrong", "true");
    wrong.image = Some("eftest/other:1".to_owned());
    wrong.image_artifact = Some(h.artifacts.add("busybox.tar", &archive));
    h.artifacts.release();
    let error = h.prepare(1, &wrong).await.unwrap_err();
    assert!(
        error.starts_with("image archive busybox.tar@sha256:")
            && error.contains("does not hold image eftest/other:1"),
        "{error}"
    );
}

async fn out_of_memory_is_the_reason(engine: TestEngine) {
    let kind = engine.kind;
    let mut h = Harness::new(engine);
    // The shell keeps `yes`'s endless output in a variable until the limit kills it.
    let mut hungry = shell("hungry", "x=$(yes)");
    hungry.resources.memory = Some(ByteSize(32 << 20));
    h.start(1, &hungry).await;
    let (code, reason) = h.exited("hungry", 1).await;
    assert_eq!(
        code,
        Some(137),
        "killed (this needs a kernel that enforces memory cgroups)"
    );
    let reason = reason.expect("a reason");
    match kind {
        EngineKind::Docker => assert_eq!(reason, "out of memory (limit 32Mi)"),
        // Podman does not report OOM kills on hybrid cgroup layouts: the runtime infers it.
        EngineKind::Podman => assert!(
            reason == "out of memory (limit 32Mi)"
                || reason
                    == "killed (exit code 137) under a memory limit of 32Mi: probably out of memory",
            "{reason}"
        ),
    }
}

async fn exec_runs_inside_the_container(engine: TestEngine) {
    let mut h = Harness::new(engine);
    let exec = h.runtime.exec_handle();
    let command = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let error = exec
        .exec("app", &command(&["true"]), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error, "workload app has no running container");

    h.start(1, &shell("app", "touch /tmp/ready; sleep 600"))
        .await;
    let code = exec
        .exec(
            "app",
            &command(&["sh", "-c", "test -f /tmp/ready && exit 4"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(code, 4, "the command ran inside the container");

    // Past its timeout the command fails and is killed.
    let error = exec
        .exec(
            "app",
            &command(&["sleep", "77"]),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(error.contains("ran longer than 500ms"), "{error}");
    let still_there = exec
        .exec(
            "app",
            &command(&["sh", "-c", "ps | grep -v grep | grep -q 'sleep 77'"]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(still_there, 1, "the timed-out command was killed");
    h.runtime.kill("app", 1);
    h.exited("app", 1).await;
}

#[tokio::test]
async fn without_an_engine_containers_fail_to_prepare_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing.sock");
    let (events, mut receiver) = mpsc::unbounded_channel();
    let mut runtime = ContainerRuntime::new(
        ContainerConfig {
            socket: Some(socket.clone()),
            agent_id: AGENT.to_owned(),
            logs: LogRegistry::new(dir.path().join("logs"), 1 << 20, 1),
            artifacts: Arc::new(GatedArtifacts::default()),
            state_dir: dir.path().join("containers"),
        },
        events,
    );
    let spec = shell("web", "true");
    runtime.prepare("web", 1, &launch(spec.clone()));
    runtime.start("web", 1, &launch(spec));
    let mut errors = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(LIMIT, receiver.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Event::PrepareFailed { error, .. } | Event::StartFailed { error, .. } => {
                errors.push(error)
            }
            other => panic!("{other:?}"),
        }
    }
    for error in errors {
        assert!(
            error.starts_with(&format!(
                "container engine at {} (--container-socket): cannot connect to the container engine at {}",
                socket.display(),
                socket.display()
            )),
            "{error}"
        );
    }
    // Nothing to adopt and nothing to clean up needs no engine either way.
    assert!(
        runtime
            .collect_images(&BTreeSet::new())
            .await
            .unwrap()
            .is_empty()
    );
}
