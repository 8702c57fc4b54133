//! The local API on a real unix socket: the line protocol, bad and overlong lines, the
//! socket file's life cycle, and locks kept across a restart of the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_agent::local_api::{LocalApi, LocalApiError, SOCKET_FILE};
use edgefleet_agent::locks::{FILE_NAME, Locks};
use edgefleet_agent::shutdown::{self, ShutdownTrigger};
use edgefleet_wire::local::LocalResponse;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

const LIMIT: Duration = Duration::from_secs(10);

/// The service as the agent runs it, on `dir`.
struct Service {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<()>,
}

fn serve(dir: &Path) -> Service {
    let locks = Arc::new(Locks::open(&dir.join(FILE_NAME), None).unwrap());
    let api = LocalApi::bind(&dir.join(SOCKET_FILE)).unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(api.serve(
        edgefleet_agent::local_api::Handlers { locks, data: None },
        shutdown,
    ));
    Service { trigger, task }
}

impl Service {
    async fn stop(self) {
        self.trigger.trigger();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Client {
    async fn connect(dir: &Path) -> Self {
        let stream = UnixStream::connect(dir.join(SOCKET_FILE)).await.unwrap();
        let (reader, writer) = stream.into_split();
        Self {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Sends `line` (a line end is added) and reads one response line.
    async fn send(&mut self, line: &str) -> LocalResponse {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(LIMIT, self.reader.read_line(&mut answer))
            .await
            .expect("no answer")
            .unwrap();
        assert!(answer.ends_with('\n'), "{answer:?}");
        serde_json::from_str(&answer).unwrap()
    }
}

fn workloads(response: &LocalResponse) -> Vec<&str> {
    response.locks.iter().map(|l| l.workload.as_str()).collect()
}

#[tokio::test]
async fn acquire_list_release_and_bad_lines_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let service = serve(dir.path());
    let mode = std::fs::metadata(dir.path().join(SOCKET_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let mut client = Client::connect(dir.path()).await;
    let acquired = client
        .send(r#"{"op":"acquire","workload":"till","reason":"sale in progress"}"#)
        .await;
    assert!(acquired.ok, "{acquired:?}");
    assert_eq!(workloads(&acquired), ["till"]);
    let since = acquired.locks[0].since;

    // Not JSON: an error, and the connection goes on.
    let bad = client.send("this is not json").await;
    assert!(!bad.ok);
    assert_eq!(
        workloads(&bad),
        ["till"],
        "an error answer must still list the locks"
    );
    assert!(
        bad.error.as_deref().unwrap().contains("bad request"),
        "{bad:?}"
    );
    let unknown = client.send(r#"{"op":"unlock"}"#).await;
    assert!(!unknown.ok && unknown.error.as_deref().unwrap().contains("unlock"));
    // Too long: an error, the rest of the line is skipped, and the connection goes on.
    let long = format!(
        r#"{{"op":"acquire","workload":"x","reason":"{}"}}"#,
        "a".repeat(edgefleet_agent::local_api::LINE_MAX_BYTES + 1)
    );
    let refused = client.send(&long).await;
    assert!(!refused.ok);
    assert!(
        refused.error.as_deref().unwrap().contains("longer than"),
        "{refused:?}"
    );

    // Idempotent: the first `since` stays.
    let again = client
        .send(r#"{"op":"acquire","workload":"till","reason":"other"}"#)
        .await;
    assert!(again.ok);
    assert_eq!(again.locks[0].since, since);
    assert_eq!(again.locks[0].reason, "sale in progress");

    let invalid = client
        .send(r#"{"op":"acquire","workload":"Not A Name"}"#)
        .await;
    assert!(!invalid.ok);
    assert!(
        invalid.error.as_deref().unwrap().contains("\"Not A Name\""),
        "{invalid:?}"
    );

    // A second client sees the same locks.
    let mut other = Client::connect(dir.path()).await;
    let listed = other.send(r#"{"op":"list"}"#).await;
    assert!(listed.ok);
    assert_eq!(workloads(&listed), ["till"]);

    let not_held = client.send(r#"{"op":"release","workload":"arm"}"#).await;
    assert!(!not_held.ok);
    let message = not_held.error.unwrap();
    assert!(
        message.contains("\"arm\" holds no update lock") && message.contains("till"),
        "{message}"
    );
    let released = client.send(r#"{"op":"release","workload":"till"}"#).await;
    assert!(released.ok, "{released:?}");
    assert!(released.locks.is_empty());

    service.stop().await;
    assert!(!dir.path().join(SOCKET_FILE).exists());
}

#[tokio::test]
async fn locks_survive_a_restart_and_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let service = serve(dir.path());
    let mut client = Client::connect(dir.path()).await;
    let acquired = client
        .send(r#"{"op":"acquire","workload":"robot-arm","reason":"mid-task"}"#)
        .await;
    assert!(acquired.ok);
    drop(client);
    // A crash: the service goes away without cleaning up; the socket file stays.
    service.task.abort();
    let _ = service.task.await;
    drop(service.trigger);
    let socket = dir.path().join(SOCKET_FILE);
    if !socket.exists() {
        // Aborting ran the clean-up; leave a stale socket the way a SIGKILL would.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    }
    assert!(socket.exists());

    let service = serve(dir.path());
    let mut client = Client::connect(dir.path()).await;
    let listed = client.send(r#"{"op":"list"}"#).await;
    assert_eq!(listed.locks, acquired.locks);
    service.stop().await;
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(SOCKET_FILE);
    std::fs::write(&path, "precious").unwrap();
    let error = LocalApi::bind(&path).unwrap_err();
    assert!(matches!(error, LocalApiError::NotASocket { .. }), "{error}");
    assert!(error.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

/// Records kept in memory: the outbox's place for a protocol test.
#[derive(Default)]
struct MemorySink(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

impl edgefleet_agent::data_api::RecordSink for MemorySink {
    fn append_many(
        &self,
        stream: &str,
        _kind: edgefleet_agent::data_api::RecordKind,
        payloads: Vec<Vec<u8>>,
    ) -> Result<Vec<u64>, String> {
        let mut records = self.0.lock().unwrap();
        let mut seqs = Vec::new();
        for payload in payloads {
            records.push((stream.to_owned(), payload));
            seqs.push(records.len() as u64);
        }
        Ok(seqs)
    }

    fn set_policy(&self, _stream: &str, _priority: u8, _ttl: Duration) {}
}

#[tokio::test]
async fn loopback_tcp_serves_publish_and_config_with_a_token_and_refuses_locks() {
    use edgefleet_agent::data_api::DataApi;
    use edgefleet_wire::api::{DesiredState, DesiredWorkload};
    use edgefleet_wire::manifest::{StreamSpec, WorkloadSpec};
    use tokio::net::TcpStream;

    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemorySink::default());
    let data = Arc::new(
        DataApi::open(dir.path(), "n1", dir.path().join("api.sock"), sink.clone()).unwrap(),
    );
    data.update(
        &DesiredState {
            node: "n1".into(),
            generation: 1,
            workloads: vec![DesiredWorkload {
                deployment: "sensors".into(),
                revision: "r1".into(),
                spec_hash: "h".into(),
                spec: WorkloadSpec::process("reader", "/bin/true"),
                rolled_back: false,
                labels: Default::default(),
                streams: vec![StreamSpec::named("readings")],
            }],
        },
        &Default::default(),
    );
    let token = data.token("reader");
    let locks = Arc::new(Locks::open(&dir.path().join(FILE_NAME), None).unwrap());
    let refused = LocalApi::bind_tcp("0.0.0.0:0".parse().unwrap()).await;
    assert!(
        refused.unwrap_err().to_string().contains("loopback"),
        "a non-loopback address must be refused"
    );
    let api = LocalApi::bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = api.tcp_addr().unwrap();
    let (trigger, shutdown) = shutdown::channel();
    let task = tokio::spawn(api.serve(
        edgefleet_agent::local_api::Handlers {
            locks,
            data: Some(data),
        },
        shutdown,
    ));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut ask = async |line: String| -> LocalResponse {
        writer
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(LIMIT, reader.read_line(&mut answer))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let published = ask(format!(
        r#"{{"op":"publish","token":"{token}","stream":"readings","records":[{{"t":1}},{{"t":2}}]}}"#
    ))
    .await;
    assert!(published.ok, "{published:?}");
    assert_eq!(published.seqs, vec![1, 2]);
    let config = ask(format!(r#"{{"op":"config","token":"{token}"}}"#)).await;
    assert_eq!(config.config.unwrap().workload, "reader");
    let lock = ask(r#"{"op":"acquire","workload":"reader"}"#.to_owned()).await;
    assert!(
        !lock.ok && lock.error.as_deref().unwrap().contains("unix socket"),
        "{lock:?}"
    );
    let wrong = ask(r#"{"op":"config","token":"nope"}"#.to_owned()).await;
    assert!(!wrong.ok);
    assert_eq!(sink.0.lock().unwrap().len(), 2);
    trigger.trigger();
    tokio::time::timeout(LIMIT, task).await.unwrap().unwrap();
}
