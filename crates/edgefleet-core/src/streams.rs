//! Data streams: names, the validation of a deployment's `streams`, and the redaction of
//! JSON records before they leave the workload's hands.
//!
//! Redaction paths are dotted field names (`operator.email`). A path step that meets an
//! array applies to every element of it, so `readings.raw` removes `raw` from each element
//! of `readings`. Paths that do not exist in a record are not an error: records of one
//! stream need not all have the same shape.

use std::collections::BTreeSet;

use edgefleet_wire::manifest::{StreamFormat, StreamSpec};
use edgefleet_wire::telemetry::METRICS_STREAM;
use serde_json::Value;

/// The longest stream name.
pub const NAME_MAX: usize = 63;

/// Checks a stream name: `[a-z0-9][a-z0-9._-]*`, at most 63 characters.
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("must not be empty".into());
    };
    if name.len() > NAME_MAX {
        return Err(format!("is longer than {NAME_MAX} characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("must start with a lowercase letter or a digit".into());
    }
    if let Some(bad) = chars
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {bad:?}: only lowercase letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Checks a sink name: the same syntax as stream names.
pub fn validate_sink_name(name: &str) -> Result<(), String> {
    validate_stream_name(name)
}

/// Validates a deployment's `streams`; errors name the field (`streams[1].priority`).
pub fn validate_streams(streams: &[StreamSpec]) -> Result<(), (String, String)> {
    let mut seen = BTreeSet::new();
    for (i, stream) in streams.iter().enumerate() {
        let field = |name: &str| format!("streams[{i}].{name}");
        validate_stream_name(&stream.name).map_err(|reason| {
            (
                field("name"),
                format!("stream name {:?} {reason}", stream.name),
            )
        })?;
        if stream.name == METRICS_STREAM {
            return Err((
                field("name"),
                format!(
                    "{METRICS_STREAM:?} is the agent's own stream of host and workload metrics"
                ),
            ));
        }
        if !seen.insert(stream.name.as_str()) {
            return Err((
                field("name"),
                format!("duplicate stream {:?} in this deployment", stream.name),
            ));
        }
        if stream.priority > StreamSpec::MAX_PRIORITY {
            return Err((
                field("priority"),
                format!(
                    "priority {} is out of range: 0 (dropped first) to {}",
                    stream.priority,
                    StreamSpec::MAX_PRIORITY
                ),
            ));
        }
        if stream.ttl.as_duration().is_zero() {
            return Err((field("ttl"), "ttl must be longer than 0s".into()));
        }
        validate_sink_name(&stream.sink).map_err(|reason| {
            (
                field("sink"),
                format!("sink name {:?} {reason}", stream.sink),
            )
        })?;
        if stream.format == StreamFormat::Bytes && !stream.redact.is_empty() {
            return Err((
                field("redact"),
                "redaction needs JSON records: this stream's format is bytes".into(),
            ));
        }
        for (j, path) in stream.redact.iter().enumerate() {
            if path.split('.').any(str::is_empty) {
                return Err((
                    format!("streams[{i}].redact[{j}]"),
                    format!("{path:?} is not a dotted field path like `operator.email`"),
                ));
            }
        }
    }
    Ok(())
}

/// Removes every field named by `paths` from `value`; returns how many were removed.
pub fn redact(value: &mut Value, paths: &[String]) -> usize {
    paths
        .iter()
        .map(|path| {
            let steps: Vec<&str> = path.split('.').collect();
            remove_path(value, &steps)
        })
        .sum()
}

fn remove_path(value: &mut Value, steps: &[&str]) -> usize {
    let Some((first, rest)) = steps.split_first() else {
        return 0;
    };
    match value {
        Value::Object(map) => {
            if rest.is_empty() {
                usize::from(map.remove(*first).is_some())
            } else {
                map.get_mut(*first)
                    .map_or(0, |child| remove_path(child, rest))
            }
        }
        Value::Array(items) => items.iter_mut().map(|item| remove_path(item, steps)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(validate_stream_name("readings").is_ok());
        assert!(validate_stream_name("a.b_c-9").is_ok());
        assert!(validate_stream_name("").is_err());
        assert!(validate_stream_name("Readings").is_err());
        assert!(validate_stream_name("-x").is_err());
        assert!(validate_stream_name("a/b").is_err());
        assert!(validate_stream_name(&"a".repeat(64)).is_err());
        assert!(validate_stream_name(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn stream_validation_names_the_field() {
        let mut a = StreamSpec::named("a");
        a.priority = 10;
        let err = validate_streams(&[StreamSpec::named("ok"), a]).unwrap_err();
        assert_eq!(err.0, "streams[1].priority");
        let err = validate_streams(&[StreamSpec::named("x"), StreamSpec::named("x")]).unwrap_err();
        assert_eq!(err.0, "streams[1].name");
        let err = validate_streams(&[StreamSpec::named("metrics")]).unwrap_err();
        assert!(err.1.contains("agent's own"), "{}", err.1);
        let mut b = StreamSpec::named("b");
        b.format = StreamFormat::Bytes;
        b.redact = vec!["x".into()];
        assert_eq!(validate_streams(&[b]).unwrap_err().0, "streams[0].redact");
        let mut c = StreamSpec::named("c");
        c.redact = vec!["a..b".into()];
        assert_eq!(
            validate_streams(&[c]).unwrap_err().0,
            "streams[0].redact[0]"
        );
        let mut d = StreamSpec::named("d");
        d.ttl = edgefleet_wire::DurationSpec::from_secs(0);
        assert_eq!(validate_streams(&[d]).unwrap_err().0, "streams[0].ttl");
    }

    #[test]
    fn redaction_removes_nested_fields_and_array_elements() {
        let mut v = json!({
            "serial": "S1",
            "operator": {"email": "a@b", "name": "A"},
            "readings": [{"raw": 1, "v": 2}, {"raw": 3, "v": 4}, 5],
        });
        let removed = redact(
            &mut v,
            &[
                "operator.email".into(),
                "readings.raw".into(),
                "serial".into(),
                "no.such".into(),
            ],
        );
        assert_eq!(removed, 4);
        assert_eq!(
            v,
            json!({"operator": {"name": "A"}, "readings": [{"v": 2}, {"v": 4}, 5]})
        );
    }

    #[test]
    fn redaction_of_a_scalar_record_is_a_no_op() {
        let mut v = json!(42);
        assert_eq!(redact(&mut v, &["a".into()]), 0);
        assert_eq!(v, json!(42));
    }
}
