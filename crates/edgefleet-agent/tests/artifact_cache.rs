//! The node's artifact cache against the real edgefleet server (the server library on
//! loopback, with a real enrolled node identity): downloads that resume after a cut
//! connection or an agent restart, corrupted content refused, cached artifacts used
//! offline, concurrent fetches sharing one download, and LRU garbage collection.
//!
//! Network failures are real: a small TCP relay between the cache and the server counts
//! the bytes it forwards and cuts a connection after a given number of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use edgefleet_agent::artifacts::ArtifactCache;
use edgefleet_agent::channel::ServerChannel;
use edgefleet_agent::identity::Identity;
use edgefleet_server::{Server, ServerArgs, StartInfo};
use edgefleet_tls::NodeKey;
use edgefleet_wire::JoinString;
use edgefleet_wire::api::{CreatedJoinToken, EnrollResponse};
use edgefleet_wire::workload::ArtifactRef;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A real server in a temporary directory, with an enrolled node.
struct Fixture {
    dir: tempfile::TempDir,
    info: StartInfo,
    admin: reqwest::Client,
    admin_token: String,
    identity: Identity,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = ServerArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..ServerArgs::with_data_dir(dir.path().join("server"))
        };
        let (server, info) = Server::start(args).await.expect("server starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        let admin_token = info.admin_token.clone().unwrap();
        let tls = edgefleet_tls::client_config(&info.ca_pem, None).unwrap();
        let admin = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let identity = enroll(&admin, &info, &admin_token, "edge-1").await;
        Self {
            dir,
            info,
            admin,
            admin_token,
            identity,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A channel as the node, to the server or to `via` (a relay in front of it).
    fn channel(&self, via: Option<&Relay>) -> Arc<ServerChannel> {
        let mut identity = self.identity.clone();
        if let Some(relay) = via {
            identity.server_url = format!("https://127.0.0.1:{}", relay.port);
        }
        Arc::new(ServerChannel::new(&identity).unwrap())
    }

    fn cache_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Pushes `bytes` as `name`; returns its reference.
    async fn push(&self, name: &str, bytes: &[u8]) -> ArtifactRef {
        let response = self
            .admin
            .post(format!("{}/v1/artifacts?name={name}", self.info.url))
            .bearer_auth(&self.admin_token)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        ArtifactRef {
            name: name.to_owned(),
            digest: sha256(bytes),
        }
    }

    fn server_content(&self, digest: &str) -> PathBuf {
        self.info.data_dir.join("artifacts/sha256").join(digest)
    }

    async fn stop_server(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10s")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn enroll(admin: &reqwest::Client, info: &StartInfo, token: &str, name: &str) -> Identity {
    let created: CreatedJoinToken = admin
        .post(format!("{}/v1/tokens", info.url))
        .bearer_auth(token)
        .json(&json!({ "ttl_seconds": 600, "uses": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = JoinString::decode(&created.join).unwrap().secret;
    let key = NodeKey::generate().unwrap();
    let enrolled: EnrollResponse = admin
        .post(format!("{}/v1/enroll", info.url))
        .json(&json!({
            "token": secret,
            "name": name,
            "labels": {},
            "csr_pem": key.csr_pem(name).unwrap(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Identity {
        node: enrolled.node,
        server_url: info.url.clone(),
        key_pem: key.to_pem(),
        certificate: edgefleet_tls::cert_info(&enrolled.certificate_pem).unwrap(),
        cert_pem: enrolled.certificate_pem,
        ca_pem: enrolled.ca_pem,
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `n` bytes that do not repeat in any short period.
fn content(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i.wrapping_add(seed).wrapping_mul(2_654_435_761)) >> 13) as u8)
        .collect()
}

fn no_progress(_: u64, _: Option<u64>) {}

/// A TCP relay on loopback in front of the server. It counts the bytes each connection
/// carries from the server, and cuts the first connection after `cut_first_after` of them.
struct Relay {
    port: u16,
    /// Bytes sent from the server to the client, per connection, in accept order.
    from_server: Arc<Mutex<Vec<u64>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr, cut_first_after: Option<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let counts = from_server.clone();
        let task = tokio::spawn(async move {
            let mut index = 0;
            while let Ok((client, _)) = listener.accept().await {
                let slot = {
                    let mut counts = counts.lock().unwrap();
                    counts.push(0);
                    counts.len() - 1
                };
                let cut = if index == 0 { cut_first_after } else { None };
                index += 1;
                tokio::spawn(relay(client, target, cut, counts.clone(), slot));
            }
        });
        Self {
            port,
            from_server,
            task,
        }
    }

    fn counts(&self) -> Vec<u64> {
        self.from_server.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    cut_after: Option<u64>,
    counts: Arc<Mutex<Vec<u64>>>,
    slot: usize,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut buffer = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    loop {
        let room = cut_after.map_or(buffer.len() as u64, |cut| {
            (cut - sent).min(buffer.len() as u64)
        });
        if room == 0 {
            break;
        }
        let n = match server_read.read(&mut buffer[..room as usize]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
        counts.lock().unwrap()[slot] = sent;
    }
    // Cut (or done): both directions go away, like a dropped link.
    upstream.abort();
    drop(client_write);
}

async fn read_content(path: &Path) -> Vec<u8> {
    tokio::fs::read(path).await.unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_with_a_range_request() {
    let fixture = Fixture::start().await;
    let bytes = content(1 << 20, 1);
    let artifact = fixture.push("model.bin", &bytes).await;
    let relay = Relay::start(fixture.info.local_addr, Some(300 * 1024)).await;
    let cache = ArtifactCache::open(
        &fixture.cache_dir("cache"),
        64 << 20,
        fixture.channel(Some(&relay)),
    )
    .unwrap();

    let seen = Mutex::new(Vec::new());
    let record = |done: u64, total: Option<u64>| seen.lock().unwrap().push((done, total));
    let path = cache.fetch(&artifact, &record).await.unwrap();
    assert_eq!(read_content(&path).await, bytes);
    assert_eq!(path, fixture.cache_dir("cache").join(&artifact.digest));
    assert_eq!(
        files_in(&fixture.cache_dir("cache")),
        std::slice::from_ref(&artifact.digest)
    );

    // The first connection was cut; the second carried only the rest: a range request.
    let counts = relay.counts();
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts[0], 300 * 1024);
    assert!(
        counts[1] < (bytes.len() as u64) - 200 * 1024,
        "the resumed download carried {} bytes of a {}-byte artifact: {counts:?}",
        counts[1],
        bytes.len()
    );
    let seen = seen.into_inner().unwrap();
    assert_eq!(
        seen.last(),
        Some(&(bytes.len() as u64, Some(bytes.len() as u64)))
    );
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_download_from_before_a_restart_resumes() {
    let fixture = Fixture::start().await;
    let bytes = content(600 * 1024, 2);
    let artifact = fixture.push("module.wasm", &bytes).await;
    // What an agent that died during the download left behind.
    let dir = fixture.cache_dir("cache");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{}.partial", artifact.digest)),
        &bytes[..500 * 1024],
    )
    .unwrap();

    let relay = Relay::start(fixture.info.local_addr, None).await;
    let cache = ArtifactCache::open(&dir, 64 << 20, fixture.channel(Some(&relay))).unwrap();
    let path = cache.fetch(&artifact, &no_progress).await.unwrap();
    assert_eq!(read_content(&path).await, bytes);
    let counts = relay.counts();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert!(
        counts[0] < 200 * 1024,
        "only the missing 100 KiB (plus TLS) should have come: {counts:?}"
    );
    assert_eq!(files_in(&dir), std::slice::from_ref(&artifact.digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_content_is_refused_and_deleted() {
    let fixture = Fixture::start().await;
    let bytes = content(100 * 1024, 3);
    let artifact = fixture.push("model.bin", &bytes).await;
    let dir = fixture.cache_dir("cache");
    let cache = ArtifactCache::open(&dir, 64 << 20, fixture.channel(None)).unwrap();

    // The server's copy rots on its disk.
    let on_server = fixture.server_content(&artifact.digest);
    let mut rotten = std::fs::read(&on_server).unwrap();
    rotten[5000] ^= 0xff;
    rotten[70_000] ^= 0x01;
    std::fs::write(&on_server, &rotten).unwrap();
    let error = cache.fetch(&artifact, &no_progress).await.unwrap_err();
    assert_eq!(
        error,
        format!(
            "artifact {artifact}: downloaded content has sha256 {}; deleted, will retry",
            sha256(&rotten)
        )
    );
    assert!(files_in(&dir).is_empty(), "{:?}", files_in(&dir));

    // Repaired on the server: the next fetch gets it.
    std::fs::write(&on_server, &bytes).unwrap();
    let path = cache.fetch(&artifact, &no_progress).await.unwrap();
    assert_eq!(read_content(&path).await, bytes);

    // A damaged partial file on the node is caught the same way, then downloaded afresh.
    let other = content(50 * 1024, 4);
    let second = fixture.push("other.bin", &other).await;
    let mut damaged = other[..20 * 1024].to_vec();
    damaged[100] ^= 0xff;
    std::fs::write(dir.join(format!("{}.partial", second.digest)), &damaged).unwrap();
    let error = cache.fetch(&second, &no_progress).await.unwrap_err();
    assert!(
        error.contains("downloaded content has sha256") && error.contains("deleted, will retry"),
        "{error}"
    );
    assert!(!dir.join(format!("{}.partial", second.digest)).exists());
    let path = cache.fetch(&second, &no_progress).await.unwrap();
    assert_eq!(read_content(&path).await, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_artifacts_work_offline() {
    let mut fixture = Fixture::start().await;
    let bytes = content(64 * 1024, 5);
    let artifact = fixture.push("model.bin", &bytes).await;
    let missing = fixture.push("later.bin", &content(10, 6)).await;
    let cache =
        ArtifactCache::open(&fixture.cache_dir("cache"), 64 << 20, fixture.channel(None)).unwrap();
    let path = cache.fetch(&artifact, &no_progress).await.unwrap();

    fixture.stop_server().await;
    let started = Instant::now();
    let again = cache.fetch(&artifact, &no_progress).await.unwrap();
    assert_eq!(again, path);
    assert_eq!(read_content(&again).await, bytes);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a cached artifact must not wait for the server"
    );
    // A fresh cache over the same directory (an agent restart) has it too.
    let restarted =
        ArtifactCache::open(&fixture.cache_dir("cache"), 64 << 20, fixture.channel(None)).unwrap();
    assert_eq!(
        restarted.fetch(&artifact, &no_progress).await.unwrap(),
        path
    );
    // What is not cached fails, naming the artifact.
    let error = restarted.fetch(&missing, &no_progress).await.unwrap_err();
    assert!(
        error.starts_with(&format!("artifact {missing}: ")) && error.contains("failed"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_share_one_download() {
    let fixture = Fixture::start().await;
    let bytes = content(2 << 20, 7);
    let artifact = fixture.push("big.bin", &bytes).await;
    let relay = Relay::start(fixture.info.local_addr, None).await;
    let cache = ArtifactCache::open(
        &fixture.cache_dir("cache"),
        64 << 20,
        fixture.channel(Some(&relay)),
    )
    .unwrap();
    let (first, second) = tokio::join!(
        cache.fetch(&artifact, &no_progress),
        cache.fetch(&artifact, &no_progress)
    );
    assert_eq!(first.unwrap(), second.unwrap());
    let total: u64 = relay.counts().iter().sum();
    assert!(
        total < bytes.len() as u64 + 512 * 1024,
        "{total} bytes came for one {}-byte artifact",
        bytes.len()
    );
}

fn set_used(path: &Path, seconds_ago: u64) {
    let at = SystemTime::now() - Duration::from_secs(seconds_ago);
    std::fs::File::open(path).unwrap().set_modified(at).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_what_is_kept_and_evicts_the_least_recently_used() {
    let fixture = Fixture::start().await;
    let mut artifacts = Vec::new();
    for (index, name) in ["a", "b", "c", "d"].into_iter().enumerate() {
        artifacts.push(fixture.push(name, &content(1000, index as u64)).await);
    }
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| artifacts[i].clone());
    let dir = fixture.cache_dir("cache");
    let cache = ArtifactCache::open(&dir, 2500, fixture.channel(None)).unwrap();
    for artifact in [&a, &b, &c] {
        cache.fetch(artifact, &no_progress).await.unwrap();
    }
    set_used(&dir.join(&a.digest), 30);
    set_used(&dir.join(&b.digest), 20);
    set_used(&dir.join(&c.digest), 10);
    // Using `a` again makes it the most recently used.
    cache.fetch(&a, &no_progress).await.unwrap();

    let keep = |set: &[&ArtifactRef]| -> BTreeSet<String> {
        set.iter().map(|a| a.digest.clone()).collect()
    };
    let report = cache.gc(&keep(&[&c]));
    assert_eq!(report.removed, std::slice::from_ref(&b.digest));
    assert_eq!(report.used_bytes, 2000);
    assert_eq!(report.freed_bytes, 1000);
    assert!(!report.over_limit);
    let mut expected = vec![a.digest.clone(), c.digest.clone()];
    expected.sort();
    assert_eq!(files_in(&dir), expected);

    // Under the limit: nothing goes, kept or not.
    let report = cache.gc(&keep(&[]));
    assert!(report.removed.is_empty(), "{report:?}");

    // Everything kept: nothing goes even over the limit.
    cache.fetch(&d, &no_progress).await.unwrap();
    let report = cache.gc(&keep(&[&a, &c, &d]));
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(report.over_limit);
    assert_eq!(report.used_bytes, 3000);

    // Partial downloads of what is no longer wanted go; wanted ones stay.
    let stale = format!("{}.partial", "e".repeat(64));
    let wanted = format!("{}.partial", "f".repeat(64));
    std::fs::write(dir.join(&stale), b"0123456789").unwrap();
    std::fs::write(dir.join(&wanted), b"0123456789").unwrap();
    let mut kept = keep(&[&a, &c, &d]);
    kept.insert("f".repeat(64));
    let report = cache.gc(&kept);
    assert_eq!(report.removed_partial, ["e".repeat(64)]);
    assert!(!dir.join(&stale).exists());
    assert!(dir.join(&wanted).exists());

    // Nothing kept any more: the least recently used go until it fits.
    set_used(&dir.join(&a.digest), 5);
    set_used(&dir.join(&c.digest), 50);
    set_used(&dir.join(&d.digest), 40);
    let report = cache.gc(&keep(&[]));
    assert_eq!(report.removed, std::slice::from_ref(&c.digest));
    assert_eq!(report.removed_partial, ["f".repeat(64)]);
    assert_eq!(report.used_bytes, 2000);
    let mut expected = vec![a.digest.clone(), d.digest.clone()];
    expected.sort();
    assert_eq!(files_in(&dir), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_larger_than_the_cache_is_still_downloaded() {
    let fixture = Fixture::start().await;
    let bytes = content(10_000, 8);
    let artifact = fixture.push("large.bin", &bytes).await;
    let cache =
        ArtifactCache::open(&fixture.cache_dir("cache"), 100, fixture.channel(None)).unwrap();
    let path = cache.fetch(&artifact, &no_progress).await.unwrap();
    assert_eq!(read_content(&path).await, bytes);
    // Kept while it is needed.
    let report = cache.gc(&[artifact.digest.clone()].into());
    assert!(report.removed.is_empty() && report.over_limit, "{report:?}");
    assert!(path.exists());
}
