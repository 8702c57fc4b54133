//! The exporter against a real S3-compatible server: moto's, started by each test on a free
//! loopback port and killed by pid when the test ends. Needs
//! `python3 -m pip install 'moto[server]'`; a test fails, saying so, without it.
//!
//! Every request is signed. Moto can check signatures (`Signatures::Checked`, with an IAM
//! user's keys), but its check is only right for plain paths: it rebuilds the canonical
//! request from a decoded URL, so it refuses correctly signed requests whose key holds `=`
//! or `%`, and every request with a query string (boto3's own requests fail the same way,
//! e.g. `put_object(Key="a=b")` and `list_objects_v2`). The lake's keys hold `=`
//! (`stream=...`), so the export tests run with `Signatures::Unchecked`, and
//! `signatures_are_verified_by_a_real_server` checks signing where moto can.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use bytes::Bytes;
use time::macros::datetime;

use super::{CrashBeforeCommit, Db, exporter_with, pacing, record_rows, sink};
use crate::lake::config::{LakeConfig, S3Target, SinkConfig, SinkTarget};
use crate::lake::s3::{S3Client, S3Error, xml_elements};
use crate::lake::sigv4::{self, Credentials};
use crate::store::LakeStore;

const INSTALL: &str = "python3 -m pip install 'moto[server]'";
const REGION: &str = "eu-west-1";

/// A moto server; killed (by pid) on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    /// Keys of an IAM user allowed `s3:*`; every request must be signed with them.
    pub credentials: Credentials,
    log: tempfile::NamedTempFile,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // `Child::kill` signals exactly this process id.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether moto checks signatures (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signatures {
    Checked,
    Unchecked,
}

impl Moto {
    pub async fn start(signatures: Signatures) -> Self {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, flask"])
            .output();
        match probe {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "moto's server is not installed ({}); install it with: {INSTALL}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("python3 cannot run ({error}); then install moto: {INSTALL}"),
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("starting moto's server: {error}; install it with: {INSTALL}")
            });
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            credentials: Credentials {
                access_key_id: "AKIDBOOTSTRAP".into(),
                secret_access_key: "bootstrap".into(),
                session_token: None,
            },
            log,
        };
        moto.wait_until_up().await;
        moto.credentials = moto.create_user().await;
        if signatures == Signatures::Checked {
            moto.enforce_signatures().await;
        }
        moto
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn wait_until_up(&mut self) {
        let http = plain_http();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto's server exited with {status}:\n{}", self.log_text());
            }
            let answer = http
                .get(format!("{}/moto-api/data.json", self.endpoint))
                .send()
                .await;
            if answer.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto's server did not answer within 30s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An IAM query-API call, signed (moto routes on the signature's service; it does not
    /// check signatures yet at this point).
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let body = params
            .iter()
            .chain(&[("Version", "2010-05-08")])
            .map(|(k, v)| format!("{}={}", sigv4::encode(k, false), sigv4::encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let amz_date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let payload = sigv4::sha256_hex(body.as_bytes());
        let host = self.endpoint.trim_start_matches("http://").to_owned();
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("host".to_owned(), host),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        let signature = sigv4::sign(
            &self.credentials,
            "us-east-1",
            "iam",
            &amz_date,
            &sigv4::Request {
                method: "POST",
                path: "/",
                query: &[],
                headers: &headers,
                payload_sha256: &payload,
            },
        );
        let mut request = plain_http().post(format!("{}/", self.endpoint)).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .header("authorization", signature.authorization)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "IAM {params:?}: {status}: {text}");
        text
    }

    async fn create_user(&self) -> Credentials {
        self.iam(&[("Action", "CreateUser"), ("UserName", "lake")])
            .await;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "lake"),
            ("PolicyName", "lake-s3"),
            ("PolicyDocument", policy),
        ])
        .await;
        let answer = self
            .iam(&[("Action", "CreateAccessKey"), ("UserName", "lake")])
            .await;
        let element = |name| {
            xml_elements(&answer, name)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no {name} in {answer}"))
        };
        Credentials {
            access_key_id: element("AccessKeyId"),
            secret_access_key: element("SecretAccessKey"),
            session_token: None,
        }
    }

    /// From now on moto checks every request's signature and the user's policy.
    async fn enforce_signatures(&self) {
        let response = plain_http()
            .post(format!("{}/moto-api/reset-auth", self.endpoint))
            .body("0")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    pub fn client(&self, bucket: &str, credentials: Credentials) -> S3Client {
        let tls =
            tokio_rustls::rustls::ClientConfig::builder_with_provider(edgefleet_tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                .with_no_client_auth();
        S3Client::new(
            "test",
            self.endpoint.parse().unwrap(),
            REGION,
            bucket,
            credentials,
            tls,
        )
        .unwrap()
    }

    pub fn sink(&self, name: &str, bucket: &str, prefix: &str, residency: &str) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            target: SinkTarget::S3(Box::new(S3Target {
                endpoint: self.endpoint.parse().unwrap(),
                region: REGION.into(),
                bucket: bucket.into(),
                access_key_env: "LAKE_KEY".into(),
                secret_key_env: "LAKE_SECRET".into(),
                session_token_env: None,
                ca_file: None,
            })),
            prefix: prefix.into(),
            residency: edgefleet_core::selector::parse(residency).unwrap(),
        }
    }

    /// Looks up the sinks' credential variables.
    pub fn env(&self) -> impl Fn(&str) -> Option<String> + use<> {
        let credentials = self.credentials.clone();
        move |name| match name {
            "LAKE_KEY" => Some(credentials.access_key_id.clone()),
            "LAKE_SECRET" => Some(credentials.secret_access_key.clone()),
            _ => None,
        }
    }
}

/// A TLS configuration for plain-http clients (reqwest is built without a default
/// crypto provider, so every client gets one).
fn no_tls() -> tokio_rustls::rustls::ClientConfig {
    tokio_rustls::rustls::ClientConfig::builder_with_provider(edgefleet_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn plain_http() -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(no_tls())
        .build()
        .unwrap()
}

/// Every object of the bucket, read back with signed requests.
async fn objects(client: &S3Client) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for key in client.list_keys("").await.unwrap() {
        let body = client.get_object(&key).await.unwrap();
        out.insert(key, body.to_vec());
    }
    out
}

#[tokio::test]
async fn exports_to_s3_exactly_once_with_residency() {
    let moto = Moto::start(Signatures::Unchecked).await;
    let bucket = moto.client("fleet-data", moto.credentials.clone());
    bucket.create_bucket().await.unwrap();
    let db = Db::new().await;
    db.node("eu-1", &[("region", "eu"), ("site", "dublin")]);
    db.node("us-1", &[("region", "us"), ("site", "austin")]);
    let t = datetime!(2024-05-01 10:00 UTC);
    let mut expected_default = BTreeSet::new();
    for seq in 1..=12u64 {
        let node = if seq % 2 == 0 { "eu-1" } else { "us-1" };
        db.record(node, "readings", "default", seq, t);
        expected_default.insert((node.to_owned(), "readings".to_owned(), seq as i64));
        db.record(node, "readings", "eu", seq, t);
    }
    for i in 0..4 {
        db.metric("eu-1", "cpu.used_percent", t, f64::from(i));
    }
    let config = LakeConfig {
        sinks: vec![
            moto.sink("default", "fleet-data", "edgefleet/", ""),
            moto.sink("eu", "fleet-data", "eu-only/", "region in (eu)"),
        ],
        retention: BTreeMap::new(),
    };
    let env = moto.env();

    // The first attempt uploads the first batch of the default sink, then "crashes".
    let crashing: Arc<dyn LakeStore> = Arc::new(CrashBeforeCommit {
        inner: db.store.clone(),
        crashes: AtomicU32::new(1),
    });
    let first = exporter_with(crashing, config.clone(), pacing(5), &env);
    first
        .export_sink(sink(&first, "default"))
        .await
        .unwrap_err();
    let after_crash = objects(&bucket).await;
    assert_eq!(after_crash.len(), 2, "{:?}", after_crash.keys());

    let exporter = exporter_with(db.store.clone(), config, pacing(5), &env);
    let default = exporter
        .export_sink(sink(&exporter, "default"))
        .await
        .unwrap();
    assert_eq!((default.rows, default.held), (12 + 4, 0));
    let eu = exporter.export_sink(sink(&exporter, "eu")).await.unwrap();
    assert_eq!((eu.rows, eu.held), (6, 6));

    let stored = objects(&bucket).await;
    for (key, bytes) in &after_crash {
        assert_eq!(
            stored.get(key),
            Some(bytes),
            "{key} was overwritten with the same file"
        );
    }
    for key in stored.keys() {
        assert!(
            key.starts_with("edgefleet/stream=") || key.starts_with("eu-only/stream=readings/"),
            "{key}"
        );
    }
    let default_objects: BTreeMap<_, _> = stored
        .iter()
        .filter(|(k, _)| k.starts_with("edgefleet/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let rows = record_rows(&default_objects);
    assert_eq!(rows.len(), 12, "each record once: {rows:?}");
    assert_eq!(
        rows.into_iter()
            .map(|(row, _)| row)
            .collect::<BTreeSet<_>>(),
        expected_default
    );
    assert!(
        default_objects
            .keys()
            .any(|k| k.starts_with("edgefleet/stream=metrics/date=2024-05-01/site=dublin/")),
        "{:?}",
        default_objects.keys()
    );
    let eu_objects: BTreeMap<_, _> = stored
        .iter()
        .filter(|(k, _)| k.starts_with("eu-only/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let eu_rows = record_rows(&eu_objects);
    assert_eq!(eu_rows.len(), 6);
    assert!(
        eu_rows
            .iter()
            .all(|((node, _, _), key)| node == "eu-1" && key.contains("site=dublin"))
    );
    assert_eq!(db.count("stream_records"), 6, "the held us records stay");
}

#[tokio::test]
async fn s3_retention_removes_old_partitions() {
    let moto = Moto::start(Signatures::Unchecked).await;
    let bucket = moto.client("retention", moto.credentials.clone());
    bucket.create_bucket().await.unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let old = today - time::Duration::days(30);
    let keys = [
        format!("p/stream=readings/date={old}/site=a/part-1-1.parquet"),
        format!("p/stream=readings/date={old}/site=b/part-2-2.parquet"),
        format!("p/stream=readings/date={today}/site=a/part-3-3.parquet"),
        format!("p/stream=events/date={old}/site=a/part-4-4.parquet"),
        "p/stream=readings/README".to_owned(),
    ];
    for key in &keys {
        bucket
            .put_object(key, Bytes::from_static(b"x"), "text/plain")
            .await
            .unwrap();
    }
    let db = Db::new().await;
    let config = LakeConfig {
        sinks: vec![moto.sink("default", "retention", "p/", "")],
        retention: [("readings".to_owned(), Duration::from_secs(7 * 86_400))].into(),
    };
    let exporter = exporter_with(db.store.clone(), config, pacing(10), &moto.env());
    assert_eq!(
        exporter
            .expire_sink(sink(&exporter, "default"))
            .await
            .unwrap(),
        2
    );
    let left: BTreeSet<String> = bucket.list_keys("").await.unwrap().into_iter().collect();
    assert_eq!(
        left,
        [keys[2].clone(), keys[3].clone(), keys[4].clone()]
            .into_iter()
            .collect()
    );
}

#[tokio::test]
async fn signatures_are_verified_by_a_real_server() {
    let moto = Moto::start(Signatures::Checked).await;
    let missing = moto.client("no-such-bucket", moto.credentials.clone());
    let error = missing
        .put_object("k/part-1-1.parquet", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, S3Error::Refused { status: 404, code, .. } if code == "NoSuchBucket"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("sink test: PUT object s3://no-such-bucket/k/part-1-1.parquet was refused with 404: NoSuchBucket"),
        "{error}"
    );

    let bucket = moto.client("fleet", moto.credentials.clone());
    bucket.create_bucket().await.unwrap();
    let parquet = Bytes::from_static(b"PAR1 not really");
    bucket
        .put_object(
            "lake/part-1-9.parquet",
            parquet.clone(),
            "application/vnd.apache.parquet",
        )
        .await
        .unwrap();
    assert_eq!(
        bucket.get_object("lake/part-1-9.parquet").await.unwrap(),
        parquet
    );
    bucket.delete_object("lake/part-1-9.parquet").await.unwrap();
    let error = bucket
        .get_object("lake/part-1-9.parquet")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, S3Error::Refused { status: 404, code, .. } if code == "NoSuchKey"),
        "{error:?}"
    );
    let forged = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..moto.credentials.clone()
    };
    let error = moto
        .client("fleet", forged)
        .put_object("k", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, S3Error::Refused { status: 403, code, .. } if code == "SignatureDoesNotMatch"),
        "moto checks signatures: {error:?}"
    );
}
