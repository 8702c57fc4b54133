//! A small S3 client for S3-compatible object stores: path-style requests signed with
//! SigV4 (`sigv4.rs`), each retried with backoff on server errors (5xx, 429) and connection
//! failures. A refusal (other 4xx) is not retried: its error names the sink, bucket, key,
//! status and the S3 error code of the XML body.
//!
//! The XML of answers is read with a minimal scanner (`xml_elements`) that knows the few
//! flat elements needed: `Key`, `IsTruncated`, `NextContinuationToken`, `Code`, `Message`.

use std::time::Duration;

use bytes::Bytes;
use edgefleet_core::backoff::Backoff;
use reqwest::{Method, StatusCode};

use super::sigv4::{self, Credentials};

/// How many times a request is sent before its error is returned.
const ATTEMPTS: u32 = 4;
/// Pauses between attempts of one request.
const RETRY: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(5),
};
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The store refused the request; retrying the same request will not help.
    #[error(
        "sink {sink}: {operation} s3://{bucket}/{key} was refused with {status}: {code}{}",
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    )]
    Refused {
        sink: String,
        operation: &'static str,
        bucket: String,
        key: String,
        status: u16,
        /// The S3 error code (`NoSuchBucket`, `AccessDenied`, ...), or `-` without one.
        code: String,
        message: Option<String>,
    },
    /// The store could not be reached or kept failing (5xx) after every attempt.
    #[error(
        "sink {sink}: {operation} s3://{bucket}/{key} failed after {attempts} attempts: {reason}"
    )]
    Unavailable {
        sink: String,
        operation: &'static str,
        bucket: String,
        key: String,
        attempts: u32,
        reason: String,
    },
}

/// One bucket of one endpoint, with the credentials that sign for it.
#[derive(Debug, Clone)]
pub struct S3Client {
    sink: String,
    http: reqwest::Client,
    endpoint: reqwest::Url,
    region: String,
    bucket: String,
    credentials: Credentials,
}

/// An answer that succeeded.
struct Answer {
    body: Bytes,
}

impl S3Client {
    /// `tls` is used for `https://` endpoints (any configuration works for `http://`).
    pub fn new(
        sink: &str,
        endpoint: reqwest::Url,
        region: &str,
        bucket: &str,
        credentials: Credentials,
        tls: tokio_rustls::rustls::ClientConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(2)
            .user_agent(concat!("edgefleet-server/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            sink: sink.to_owned(),
            http,
            endpoint,
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            credentials,
        })
    }

    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// Writes (or overwrites) an object.
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(), S3Error> {
        self.send(
            "PUT object",
            Method::PUT,
            key,
            &[],
            body,
            Some(content_type),
        )
        .await
        .map(drop)
    }

    #[cfg(test)]
    pub async fn get_object(&self, key: &str) -> Result<Bytes, S3Error> {
        let answer = self
            .send("GET object", Method::GET, key, &[], Bytes::new(), None)
            .await?;
        Ok(answer.body)
    }

    /// Deletes an object (deleting a missing one succeeds, as S3 answers).
    pub async fn delete_object(&self, key: &str) -> Result<(), S3Error> {
        self.send(
            "DELETE object",
            Method::DELETE,
            key,
            &[],
            Bytes::new(),
            None,
        )
        .await
        .map(drop)
    }

    /// Creates the bucket in the client's region.
    #[cfg(test)]
    pub async fn create_bucket(&self) -> Result<(), S3Error> {
        // us-east-1 is the default location and must not be named.
        let body = if self.region == "us-east-1" {
            Bytes::new()
        } else {
            Bytes::from(format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            ))
        };
        self.send("PUT bucket", Method::PUT, "", &[], body, None)
            .await
            .map(drop)
    }

    /// Every key under `prefix` (ListObjectsV2, following continuation tokens).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        Ok(self.list(prefix, false).await?.keys)
    }

    /// The "directories" right under `prefix`: the distinct key prefixes up to the next `/`
    /// (ListObjectsV2 with a delimiter), each ending with `/`.
    pub async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        Ok(self.list(prefix, true).await?.prefixes)
    }

    async fn list(&self, prefix: &str, by_directory: bool) -> Result<ListPage, S3Error> {
        let mut all = ListPage::default();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_owned(), "2".to_owned()),
                ("prefix".to_owned(), prefix.to_owned()),
            ];
            if by_directory {
                query.push(("delimiter".to_owned(), "/".to_owned()));
            }
            if let Some(token) = &token {
                query.push(("continuation-token".to_owned(), token.clone()));
            }
            let answer = self
                .send("LIST objects", Method::GET, "", &query, Bytes::new(), None)
                .await?;
            let page = parse_list_page(&answer.body);
            all.keys.extend(page.keys);
            all.prefixes.extend(page.prefixes);
            match page.next_token {
                Some(next) if page.truncated => token = Some(next),
                _ => return Ok(all),
            }
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        key: &str,
        query: &[(String, String)],
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Answer, S3Error> {
        let mut last_reason = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RETRY.jittered(attempt - 1, rand::random())).await;
            }
            let request = self.build(method.clone(), key, query, body.clone(), content_type);
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    last_reason = transport_reason(&error);
                    continue;
                }
            };
            let status = response.status();
            let answer_body = match response.bytes().await {
                Ok(bytes) => bytes,
                Err(error) => {
                    last_reason = transport_reason(&error);
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Answer { body: answer_body });
            }
            let (code, message) = parse_error(&answer_body);
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last_reason = format!("{status}: {code}");
                continue;
            }
            return Err(S3Error::Refused {
                sink: self.sink.clone(),
                operation,
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        Err(S3Error::Unavailable {
            sink: self.sink.clone(),
            operation,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            attempts: ATTEMPTS,
            reason: last_reason,
        })
    }

    /// A signed request; signed anew for every attempt (the date is part of the signature).
    fn build(
        &self,
        method: Method,
        key: &str,
        query: &[(String, String)],
        body: Bytes,
        content_type: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let path = sigv4::encode_path(self.endpoint.path(), &self.bucket, key);
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        let query_text = query
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::encode(k, false), sigv4::encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        url.set_query((!query_text.is_empty()).then_some(query_text.as_str()));
        let amz_date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let payload_sha256 = sigv4::sha256_hex(&body);
        let mut headers = vec![
            ("host".to_owned(), host_header(&self.endpoint)),
            ("x-amz-content-sha256".to_owned(), payload_sha256.clone()),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        if let Some(content_type) = content_type {
            headers.push(("content-type".to_owned(), content_type.to_owned()));
        }
        let signature = sigv4::sign(
            &self.credentials,
            &self.region,
            "s3",
            &amz_date,
            &sigv4::Request {
                method: method.as_str(),
                path: url.path(),
                query,
                headers: &headers,
                payload_sha256: &payload_sha256,
            },
        );
        let mut request = self.http.request(method, url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.header("authorization", signature.authorization)
    }
}

/// The `Host` header for an endpoint: the host, with the port unless it is the scheme's.
fn host_header(endpoint: &reqwest::Url) -> String {
    let host = endpoint.host_str().unwrap_or_default();
    match endpoint.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn transport_reason(error: &reqwest::Error) -> String {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// One page of a ListObjectsV2 answer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<String>,
    /// `CommonPrefixes` (listings with a delimiter).
    pub prefixes: Vec<String>,
    pub truncated: bool,
    pub next_token: Option<String>,
}

pub fn parse_list_page(xml: &[u8]) -> ListPage {
    let text = String::from_utf8_lossy(xml);
    let contents = xml_elements(&text, "Contents");
    ListPage {
        keys: contents
            .iter()
            .filter_map(|entry| xml_elements(entry, "Key").into_iter().next())
            .map(|key| xml_unescape(&key))
            .collect(),
        prefixes: xml_elements(&text, "CommonPrefixes")
            .iter()
            .filter_map(|entry| xml_elements(entry, "Prefix").into_iter().next())
            .map(|prefix| xml_unescape(&prefix))
            .collect(),
        truncated: xml_elements(&text, "IsTruncated")
            .first()
            .is_some_and(|value| value.trim() == "true"),
        next_token: xml_elements(&text, "NextContinuationToken")
            .first()
            .map(|token| xml_unescape(token)),
    }
}

/// The error code and message of an S3 error body (`-` when there is none).
pub fn parse_error(xml: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(xml);
    let code = xml_elements(&text, "Code")
        .first()
        .map(|code| xml_unescape(code))
        .filter(|code| !code.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let message = xml_elements(&text, "Message")
        .first()
        .map(|message| xml_unescape(message));
    (code, message)
}

/// The contents of every `<name>…</name>` element (also `<name attr="…">`), in order.
/// `<name/>` yields an empty string. Elements of this name must not nest (true of every
/// element read here).
pub fn xml_elements(text: &str, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    let close = format!("</{name}>");
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let Some(after_name) = rest.strip_prefix(name) else {
            continue;
        };
        let Some(tag_end) = after_name.find('>') else {
            break;
        };
        let attributes = &after_name[..tag_end];
        if !(attributes.is_empty() || attributes.starts_with([' ', '\t', '\n', '\r', '/'])) {
            // Another element whose name starts with `name` (`<KeyCount>` for `Key`).
            continue;
        }
        rest = &after_name[tag_end + 1..];
        if attributes.ends_with('/') {
            found.push(String::new());
            continue;
        }
        let Some(end) = rest.find(&close) else {
            break;
        };
        found.push(rest[..end].to_owned());
        rest = &rest[end + close.len()..];
    }
    found
}

/// Replaces the five predefined entities and character references.
pub fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';') else {
            break;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_page() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>fleet</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
  <IsTruncated>true</IsTruncated>
  <Contents><Key>p/stream=a/date=2024-01-01/site=x/part-1-2.parquet</Key><Size>10</Size></Contents>
  <Contents>
    <Key>p/a&amp;b &lt;c&gt; &#233;&#x4E2D;</Key>
    <ETag>&quot;abc&quot;</ETag>
  </Contents>
  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"#;
        assert_eq!(
            parse_list_page(xml),
            ListPage {
                keys: vec![
                    "p/stream=a/date=2024-01-01/site=x/part-1-2.parquet".into(),
                    "p/a&b <c> é中".into()
                ],
                prefixes: vec![],
                truncated: true,
                next_token: Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=".into()),
            }
        );
        let directories =
            br#"<ListBucketResult><Prefix>p/stream=a/</Prefix><Delimiter>/</Delimiter>
  <CommonPrefixes><Prefix>p/stream=a/date=2024-01-01/</Prefix></CommonPrefixes>
  <CommonPrefixes><Prefix>p/stream=a/date=2024-01-02/</Prefix></CommonPrefixes>
  <IsTruncated>false</IsTruncated></ListBucketResult>"#;
        assert_eq!(
            parse_list_page(directories),
            ListPage {
                prefixes: vec![
                    "p/stream=a/date=2024-01-01/".into(),
                    "p/stream=a/date=2024-01-02/".into()
                ],
                ..ListPage::default()
            }
        );
        let last = br#"<ListBucketResult><IsTruncated>false</IsTruncated><KeyCount>0</KeyCount></ListBucketResult>"#;
        assert_eq!(parse_list_page(last), ListPage::default());
        assert_eq!(parse_list_page(b"not xml at all <"), ListPage::default());
    }

    #[test]
    fn error_body() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>
<BucketName>fleet</BucketName><RequestId>4442587FB7D0A2F9</RequestId></Error>"#;
        assert_eq!(
            parse_error(xml),
            (
                "NoSuchBucket".into(),
                Some("The specified bucket does not exist".into())
            )
        );
        assert_eq!(parse_error(b""), ("-".into(), None));
        assert_eq!(parse_error(b"<Error><Code/></Error>"), ("-".into(), None));
    }

    #[test]
    fn unescaping() {
        assert_eq!(xml_unescape("a &amp;&amp; b"), "a && b");
        assert_eq!(xml_unescape("&bogus; &#xZZ; & end"), "&bogus; &#xZZ; & end");
        assert_eq!(xml_unescape("&#128512;"), "😀");
        assert_eq!(xml_unescape("&#xD800;"), "&#xD800;");
    }

    #[test]
    fn refusals_name_everything() {
        let error = S3Error::Refused {
            sink: "eu-bucket".into(),
            operation: "PUT object",
            bucket: "fleet".into(),
            key: "p/part-1-2.parquet".into(),
            status: 403,
            code: "AccessDenied".into(),
            message: Some("Access Denied".into()),
        };
        assert_eq!(
            error.to_string(),
            "sink eu-bucket: PUT object s3://fleet/p/part-1-2.parquet was refused with 403: \
             AccessDenied (Access Denied)"
        );
    }

    #[test]
    fn host_headers() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(host_header(&url("http://127.0.0.1:9000")), "127.0.0.1:9000");
        assert_eq!(
            host_header(&url("https://s3.example.com:443/base")),
            "s3.example.com"
        );
        assert_eq!(host_header(&url("http://[::1]:80")), "[::1]");
    }
}
