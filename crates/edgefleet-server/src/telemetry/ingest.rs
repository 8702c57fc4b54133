//! Decoding an upload: the body (gzip or plain, bounded after decompression), its JSON, and
//! every check the store relies on, into an `IngestBatch`. Pure: bytes in, a batch or an
//! `UploadError` that names what was wrong (which stream, which seq) out.
//!
//! Checked here: stream names (`[a-z0-9][a-z0-9._-]{0,62}`), sinks and deployments, each
//! stream at most once per batch, sequence numbers from 1, strictly increasing within a
//! chunk and below 2^63; `metrics` records are metric sets with finite values, sane metric
//! names and labels; byte records are valid base64; times between 1970 and 2200.

use std::collections::HashSet;
use std::io::Read;

use base64::Engine;
use edgefleet_wire::Timestamp;
use edgefleet_wire::telemetry::{
    METRICS_STREAM, MetricSet, RecordData, StreamChunk, UploadBatch, UploadRecord,
};

use super::model::{
    IngestBatch, IngestMetricSet, IngestPayload, IngestRecord, IngestSample, IngestStream,
};

/// How the body is encoded (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    Identity,
    Gzip,
}

impl BodyEncoding {
    /// From a `Content-Encoding` header value (absent means identity).
    pub fn from_header(value: Option<&str>) -> Result<Self, UploadError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Self::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Self::Gzip),
            Some(other) => Err(UploadError::Encoding(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error(
        "content encoding {0:?} is not supported: send the batch gzip-compressed \
         (Content-Encoding: gzip) or uncompressed"
    )]
    Encoding(String),
    #[error(
        "the upload is larger than the limit of {limit} bytes (after decompression; the \
         server's --telemetry-max-upload-size): send smaller batches"
    )]
    TooLarge { limit: usize },
    #[error("the body is not valid gzip: {0}")]
    Gzip(String),
    #[error("invalid JSON in the upload: {0}")]
    Json(String),
    /// A field of the batch is wrong; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// Decompresses `body` as `encoding` says, refusing output beyond `limit` bytes (a
/// gzip bomb stops at the limit, it is never inflated whole).
pub fn decompress(
    body: &[u8],
    encoding: BodyEncoding,
    limit: usize,
) -> Result<Vec<u8>, UploadError> {
    if body.len() > limit {
        return Err(UploadError::TooLarge { limit });
    }
    match encoding {
        BodyEncoding::Identity => Ok(body.to_vec()),
        BodyEncoding::Gzip => {
            let mut decoder = flate2::read::GzDecoder::new(body)
                .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            decoder
                .read_to_end(&mut out)
                .map_err(|e| UploadError::Gzip(e.to_string()))?;
            if out.len() > limit {
                return Err(UploadError::TooLarge { limit });
            }
            Ok(out)
        }
    }
}

/// Parses and checks a (decompressed) upload.
pub fn decode(json: &[u8]) -> Result<IngestBatch, UploadError> {
    let batch: UploadBatch = serde_json::from_slice(json).map_err(|e| {
        let message = e.to_string();
        if message.contains("number out of range") {
            UploadError::Json(format!(
                "{message} (metric values must be finite numbers; infinity and NaN cannot be stored)"
            ))
        } else {
            UploadError::Json(message)
        }
    })?;
    validate(batch)
}

/// The longest outbox id accepted.
const OUTBOX_ID_MAX: usize = 128;
/// Limits of metric names and labels.
const METRIC_NAME_MAX: usize = 200;
const LABELS_MAX: usize = 64;
const LABEL_KEY_MAX: usize = 128;
const LABEL_VALUE_MAX: usize = 1024;

fn invalid(message: String) -> UploadError {
    UploadError::Invalid(message)
}

/// Checks an upload and turns it into what the store writes.
pub fn validate(batch: UploadBatch) -> Result<IngestBatch, UploadError> {
    check_outbox_id(&batch.outbox)?;
    let mut seen = HashSet::new();
    let mut streams = Vec::with_capacity(batch.streams.len());
    for chunk in batch.streams {
        if !seen.insert(chunk.stream.clone()) {
            return Err(invalid(format!(
                "stream {:?} appears twice in the batch: send each stream's records in one chunk",
                chunk.stream
            )));
        }
        streams.push(validate_chunk(chunk)?);
    }
    let mut drop_keys = HashSet::new();
    for dropped in &batch.dropped {
        check_stream_name(&dropped.stream)
            .map_err(|reason| invalid(format!("dropped: stream {:?} {reason}", dropped.stream)))?;
        if !drop_keys.insert((dropped.stream.clone(), dropped.reason)) {
            return Err(invalid(format!(
                "dropped: stream {:?} has two totals for reason {:?}",
                dropped.stream, dropped.reason
            )));
        }
        if i64::try_from(dropped.records).is_err() || i64::try_from(dropped.bytes).is_err() {
            return Err(invalid(format!(
                "dropped: the totals of stream {:?} exceed 2^63",
                dropped.stream
            )));
        }
    }
    Ok(IngestBatch {
        outbox: batch.outbox,
        streams,
        dropped: batch.dropped,
        backlog_bytes: batch.backlog_bytes,
        backlog_records: batch.backlog_records,
    })
}

fn check_outbox_id(id: &str) -> Result<(), UploadError> {
    if id.is_empty() || id.len() > OUTBOX_ID_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "outbox id {id:?} is invalid: it must be 1 to {OUTBOX_ID_MAX} printable ASCII characters"
        )));
    }
    Ok(())
}

/// `[a-z0-9][a-z0-9._-]{0,62}`.
fn check_stream_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match bytes.first() {
        None => Err("is empty"),
        _ if bytes.len() > 63 => Err("is longer than 63 characters"),
        Some(first) if !allowed(first) => Err("must start with a lowercase letter or digit"),
        _ if !bytes
            .iter()
            .all(|b| allowed(b) || matches!(b, b'.' | b'_' | b'-')) =>
        {
            Err("may contain only lowercase letters, digits, '.', '_' and '-'")
        }
        _ => Ok(()),
    }
}

fn validate_chunk(chunk: StreamChunk) -> Result<IngestStream, UploadError> {
    let stream = chunk.stream;
    check_stream_name(&stream).map_err(|reason| invalid(format!("stream {stream:?} {reason}")))?;
    check_stream_name(&chunk.sink)
        .map_err(|reason| invalid(format!("stream {stream:?}: sink {:?} {reason}", chunk.sink)))?;
    if !chunk.deployment.is_empty() {
        edgefleet_core::labels::validate_name(&chunk.deployment).map_err(|reason| {
            invalid(format!(
                "stream {stream:?}: deployment {:?} {reason}",
                chunk.deployment
            ))
        })?;
    }
    let mut records = Vec::with_capacity(chunk.records.len());
    let mut previous: Option<u64> = None;
    for record in chunk.records {
        check_seq(&stream, record.seq, previous)?;
        previous = Some(record.seq);
        records.push(validate_record(&stream, record)?);
    }
    Ok(IngestStream {
        stream,
        sink: chunk.sink,
        deployment: chunk.deployment,
        records,
    })
}

fn check_seq(stream: &str, seq: u64, previous: Option<u64>) -> Result<(), UploadError> {
    if seq == 0 {
        return Err(invalid(format!(
            "stream {stream:?}: seq 0 is invalid: sequence numbers start at 1"
        )));
    }
    if i64::try_from(seq).is_err() {
        return Err(invalid(format!(
            "stream {stream:?}: seq {seq} is larger than 2^63 - 1"
        )));
    }
    if let Some(previous) = previous
        && seq <= previous
    {
        return Err(invalid(format!(
            "stream {stream:?}: seq {seq} follows seq {previous}: sequence numbers must \
             increase strictly within a stream"
        )));
    }
    Ok(())
}

fn check_time(stream: &str, seq: u64, what: &str, time: Timestamp) -> Result<(), UploadError> {
    if !(1970..2200).contains(&time.year()) {
        return Err(invalid(format!(
            "stream {stream:?} seq {seq}: {what} {} is out of range (years 1970 to 2199)",
            crate::status::rfc3339(time)
        )));
    }
    Ok(())
}

fn validate_record(stream: &str, record: UploadRecord) -> Result<IngestRecord, UploadError> {
    let seq = record.seq;
    check_time(stream, seq, "record time", record.time)?;
    let payload = match (stream == METRICS_STREAM, record.data) {
        (true, RecordData::Json(value)) => {
            let set: MetricSet = serde_json::from_value(value).map_err(|e| {
                invalid(format!(
                    "stream {stream:?} seq {seq}: the metric set does not parse: {e}"
                ))
            })?;
            IngestPayload::Metrics(validate_metric_set(stream, seq, set)?)
        }
        (true, RecordData::Bytes(_)) => {
            return Err(invalid(format!(
                "stream {stream:?} seq {seq}: metric records must be JSON metric sets, not bytes"
            )));
        }
        (false, RecordData::Json(value)) => IngestPayload::Json(value.to_string()),
        (false, RecordData::Bytes(text)) => IngestPayload::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| {
                    invalid(format!(
                        "stream {stream:?} seq {seq}: data is not valid base64 \
                         (standard alphabet, padded): {e}"
                    ))
                })?,
        ),
    };
    Ok(IngestRecord {
        seq,
        time: record.time,
        payload,
    })
}

fn validate_metric_set(
    stream: &str,
    seq: u64,
    set: MetricSet,
) -> Result<IngestMetricSet, UploadError> {
    check_time(stream, seq, "metric set time", set.time)?;
    let mut samples = Vec::with_capacity(set.samples.len());
    for sample in set.samples {
        let at = || format!("stream {stream:?} seq {seq}: sample {:?}", sample.name);
        check_metric_name(&sample.name).map_err(|reason| invalid(format!("{} {reason}", at())))?;
        if !sample.value.is_finite() {
            return Err(invalid(format!(
                "{}: value {} is not finite",
                at(),
                sample.value
            )));
        }
        check_labels(&sample.labels).map_err(|reason| invalid(format!("{}: {reason}", at())))?;
        let labels = serde_json::to_string(&sample.labels)
            .map_err(|e| invalid(format!("{}: labels cannot be encoded: {e}", at())))?;
        samples.push(IngestSample {
            name: sample.name,
            labels,
            value: sample.value,
        });
    }
    Ok(IngestMetricSet {
        time: set.time,
        samples,
    })
}

/// Letters, digits, `_ . : / -`, at most 200 characters.
fn check_metric_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > METRIC_NAME_MAX {
        return Err(format!(
            "has an invalid name: use 1 to {METRIC_NAME_MAX} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'-'))
    {
        return Err(
            "has an invalid name: use letters, digits, '_', '.', ':', '/' and '-'".to_owned(),
        );
    }
    Ok(())
}

fn check_labels(labels: &edgefleet_wire::Labels) -> Result<(), String> {
    if labels.len() > LABELS_MAX {
        return Err(format!(
            "has {} labels, more than {LABELS_MAX}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > LABEL_KEY_MAX || key.chars().any(char::is_control) {
            return Err(format!(
                "label key {key:?} is invalid: use 1 to {LABEL_KEY_MAX} characters, no control characters"
            ));
        }
        if value.len() > LABEL_VALUE_MAX || value.chars().any(char::is_control) {
            return Err(format!(
                "the value of label {key:?} is invalid: use at most {LABEL_VALUE_MAX} characters, \
                 no control characters"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use serde_json::{Value, json};

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn metric_record(seq: u64, value: Value) -> Value {
        json!({
            "seq": seq,
            "time": "2024-05-01T12:00:00Z",
            "data": { "json": {
                "time": "2024-05-01T11:59:59Z",
                "samples": [
                    { "name": "cpu.used_percent", "value": value },
                    { "name": "disk.used_percent", "labels": { "mount": "/" }, "value": 50.5 }
                ]
            }}
        })
    }

    fn batch(streams: Value) -> Value {
        json!({ "outbox": "ob-1", "streams": streams })
    }

    /// Decodes `body` and returns the error message, or "ok".
    fn check(body: Value) -> String {
        match decode(body.to_string().as_bytes()) {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_good_batch_decodes() {
        let body = batch(json!([
            { "stream": "metrics", "records": [metric_record(1, json!(12.5)), metric_record(3, json!(1))] },
            { "stream": "app.events", "sink": "archive", "deployment": "web", "records": [
                { "seq": 7, "time": "2024-05-01T12:00:00Z", "data": { "json": { "k": [1, 2] } } },
                { "seq": 8, "time": "2024-05-01T12:00:01Z", "data": { "bytes": "aGVsbG8=" } }
            ]}
        ]));
        let decoded = decode(body.to_string().as_bytes()).unwrap();
        assert_eq!(decoded.outbox, "ob-1");
        let metrics = &decoded.streams[0];
        assert_eq!(metrics.sink, "default");
        let IngestPayload::Metrics(set) = &metrics.records[0].payload else {
            panic!("not metrics: {:?}", metrics.records[0].payload);
        };
        assert_eq!(set.time, time::macros::datetime!(2024-05-01 11:59:59 UTC));
        assert_eq!(set.samples[0].labels, "{}");
        assert_eq!(set.samples[1].labels, r#"{"mount":"/"}"#);
        assert_eq!(set.samples[0].value, 12.5);
        let app = &decoded.streams[1];
        assert_eq!(
            (app.sink.as_str(), app.deployment.as_str()),
            ("archive", "web")
        );
        assert_eq!(
            app.records[0].payload,
            IngestPayload::Json(r#"{"k":[1,2]}"#.into())
        );
        assert_eq!(
            app.records[1].payload,
            IngestPayload::Bytes(b"hello".to_vec())
        );
    }

    #[test]
    fn mistakes_are_named() {
        let stream =
            |name: &str, records: Value| batch(json!([{ "stream": name, "records": records }]));
        let cases = [
            (
                stream("Bad", json!([])),
                r#"stream "Bad" must start with a lowercase letter or digit"#,
            ),
            (stream("", json!([])), r#"stream "" is empty"#),
            (
                stream(&"a".repeat(64), json!([])),
                "is longer than 63 characters",
            ),
            (
                stream("a b", json!([])),
                "may contain only lowercase letters",
            ),
            (
                stream(
                    "metrics",
                    json!([metric_record(2, json!(1)), metric_record(2, json!(1))]),
                ),
                r#"stream "metrics": seq 2 follows seq 2: sequence numbers must increase strictly"#,
            ),
            (
                stream("metrics", json!([metric_record(0, json!(1))])),
                "seq 0 is invalid",
            ),
            (
                stream(
                    "metrics",
                    json!([metric_record(9_300_000_000_000_000_000, json!(1))]),
                ),
                "larger than 2^63 - 1",
            ),
            (
                stream(
                    "metrics",
                    json!([{ "seq": 4, "time": "2024-05-01T12:00:00Z", "data": { "json": { "samples": [] } } }]),
                ),
                r#"stream "metrics" seq 4: the metric set does not parse: missing field `time`"#,
            ),
            (
                stream(
                    "metrics",
                    json!([{ "seq": 4, "time": "2024-05-01T12:00:00Z", "data": { "bytes": "AA==" } }]),
                ),
                r#"stream "metrics" seq 4: metric records must be JSON metric sets"#,
            ),
            (
                stream(
                    "logs",
                    json!([{ "seq": 5, "time": "2024-05-01T12:00:00Z", "data": { "bytes": "%%%" } }]),
                ),
                r#"stream "logs" seq 5: data is not valid base64"#,
            ),
            (
                stream(
                    "logs",
                    json!([{ "seq": 5, "time": "1960-05-01T12:00:00Z", "data": { "json": 1 } }]),
                ),
                "record time 1960-05-01T12:00:00Z is out of range",
            ),
            (
                batch(json!([{ "stream": "a", "records": [] }, { "stream": "a", "records": [] }])),
                r#"stream "a" appears twice in the batch"#,
            ),
            (
                batch(json!([{ "stream": "a", "sink": "S3", "records": [] }])),
                r#"stream "a": sink "S3" must start with a lowercase letter or digit"#,
            ),
            (
                batch(json!([{ "stream": "a", "deployment": "Web", "records": [] }])),
                r#"stream "a": deployment "Web" may contain only lowercase letters"#,
            ),
            (
                json!({ "outbox": "", "streams": [] }),
                r#"outbox id "" is invalid"#,
            ),
            (
                json!({ "outbox": "x", "dropped": [
                    { "stream": "a", "reason": "full", "records": 1, "bytes": 2 },
                    { "stream": "a", "reason": "full", "records": 3, "bytes": 4 }
                ] }),
                r#"dropped: stream "a" has two totals for reason Full"#,
            ),
            (
                json!({ "streams": [] }),
                "invalid JSON in the upload: missing field `outbox`",
            ),
            (
                json!({ "outbox": "x", "streams": 3 }),
                "invalid JSON in the upload: invalid type",
            ),
        ];
        for (body, expected) in cases {
            let message = check(body.clone());
            assert!(
                message.contains(expected),
                "{body}\n  got: {message}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn metric_samples_are_checked() {
        let sample = |sample: Value| {
            batch(json!([{ "stream": "metrics", "records": [{
                "seq": 1, "time": "2024-05-01T12:00:00Z",
                "data": { "json": { "time": "2024-05-01T12:00:00Z", "samples": [sample] } }
            }]}]))
        };
        assert_eq!(
            check(sample(json!({ "name": "cpu.used_percent", "value": 1 }))),
            "ok"
        );
        assert_eq!(
            check(sample(
                json!({ "name": "a:b/c-d_e.F", "labels": { "k": "v" }, "value": -1e300 })
            )),
            "ok"
        );
        let cases = [
            (
                json!({ "name": "", "value": 1 }),
                r#"sample "" has an invalid name"#,
            ),
            (
                json!({ "name": "cpu used", "value": 1 }),
                r#"sample "cpu used" has an invalid name"#,
            ),
            (
                json!({ "name": "x", "labels": { "": "v" }, "value": 1 }),
                r#"label key "" is invalid"#,
            ),
            (
                json!({ "name": "x", "labels": { "k": "a\nb" }, "value": 1 }),
                r#"the value of label "k" is invalid"#,
            ),
            (
                json!({ "name": "x", "value": "high" }),
                "the metric set does not parse",
            ),
        ];
        for (bad, expected) in cases {
            let message = check(sample(bad.clone()));
            assert!(message.contains(expected), "{bad}\n  got: {message}");
            assert!(message.contains(r#"stream "metrics" seq 1"#), "{message}");
        }
        // JSON has no infinity: an overflowing number fails to parse, with a hint.
        let text = sample(json!({ "name": "x", "value": 1 }))
            .to_string()
            .replace(r#""value":1"#, r#""value":1e999"#);
        let message = decode(text.as_bytes()).unwrap_err().to_string();
        assert!(message.contains("number out of range"), "{message}");
        assert!(message.contains("must be finite"), "{message}");
    }

    #[test]
    fn non_finite_values_are_refused_even_when_parsed() {
        let set = MetricSet {
            time: time::macros::datetime!(2024-05-01 12:00 UTC),
            samples: vec![edgefleet_wire::telemetry::MetricSample {
                name: "x".into(),
                labels: Default::default(),
                value: f64::NAN,
            }],
        };
        let error = validate_metric_set("metrics", 9, set).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"stream "metrics" seq 9: sample "x": value NaN is not finite"#
        );
    }

    #[test]
    fn bodies_are_decompressed_within_the_limit() {
        let json = br#"{"outbox":"x"}"#;
        assert_eq!(decompress(json, BodyEncoding::Identity, 100).unwrap(), json);
        assert_eq!(
            decompress(&gzip(json), BodyEncoding::Gzip, 100).unwrap(),
            json
        );
        assert_eq!(
            decompress(json, BodyEncoding::Identity, 5),
            Err(UploadError::TooLarge { limit: 5 })
        );
        // A small body that inflates beyond the limit stops at the limit.
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 10_000);
        assert_eq!(
            decompress(&bomb, BodyEncoding::Gzip, 1000),
            Err(UploadError::TooLarge { limit: 1000 })
        );
        assert_eq!(
            decompress(&bomb, BodyEncoding::Gzip, 1 << 20)
                .unwrap()
                .len(),
            1 << 20
        );
        let error = decompress(b"not gzip at all", BodyEncoding::Gzip, 100).unwrap_err();
        assert!(matches!(error, UploadError::Gzip(_)), "{error:?}");
        let truncated = &gzip(json)[..10];
        assert!(matches!(
            decompress(truncated, BodyEncoding::Gzip, 100),
            Err(UploadError::Gzip(_))
        ));
    }

    #[test]
    fn encodings() {
        assert_eq!(BodyEncoding::from_header(None), Ok(BodyEncoding::Identity));
        assert_eq!(
            BodyEncoding::from_header(Some("identity")),
            Ok(BodyEncoding::Identity)
        );
        assert_eq!(
            BodyEncoding::from_header(Some(" GZIP ")),
            Ok(BodyEncoding::Gzip)
        );
        assert_eq!(
            BodyEncoding::from_header(Some("br")),
            Err(UploadError::Encoding("br".into()))
        );
    }

    #[test]
    fn stream_names() {
        for ok in ["metrics", "a", "0", "app.events_v2-x", &"a".repeat(63)] {
            assert_eq!(check_stream_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "_a", "-a", "A", "a/b", "é", &"a".repeat(64)] {
            assert!(check_stream_name(bad).is_err(), "{bad}");
        }
    }
}
