//! Label keys and values: syntax, and the `k=v,k2=v2` / `k=v k-` forms used on the command line.

use edgefleet_wire::Labels;
use edgefleet_wire::api::LabelChange;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("invalid label key {key:?}: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("invalid value {value:?} for label {key:?}: {reason}")]
    Value {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("invalid label {input:?}: expected key=value")]
    Assignment { input: String },
    #[error("invalid label edit {input:?}: expected key=value to set or key- to remove")]
    Edit { input: String },
}

const NAME_MAX: usize = 63;
const PREFIX_MAX: usize = 253;

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("name part is empty");
    }
    if name.len() > NAME_MAX {
        return Err("name part is longer than 63 characters");
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Checks a label key: `name` or `prefix/name`, Kubernetes rules.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let err = |reason| LabelError::Key {
        key: key.to_owned(),
        reason,
    };
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || prefix.len() > PREFIX_MAX {
                return Err(err("prefix must be 1 to 253 characters"));
            }
            if !prefix
                .split('.')
                .all(|part| check_name(part).is_ok() && !part.contains('_'))
            {
                return Err(err("prefix must be a DNS subdomain"));
            }
            name
        }
        None => key,
    };
    check_name(name).map_err(err)
}

/// Checks a label value: empty, or up to 63 letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit.
pub fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| LabelError::Value {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: if reason == "name part is longer than 63 characters" {
            "longer than 63 characters"
        } else {
            reason
        },
    })
}

pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    for (key, value) in labels {
        validate_key(key)?;
        validate_value(key, value)?;
    }
    Ok(())
}

/// Parses `k=v,k2=v2` (as given to `--labels`). An empty string is no labels.
pub fn parse_assignments(input: &str) -> Result<Labels, LabelError> {
    let mut labels = Labels::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| LabelError::Assignment {
            input: part.to_owned(),
        })?;
        let (key, value) = (key.trim(), value.trim());
        validate_key(key)?;
        validate_value(key, value)?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// Parses the arguments of `label node NAME k=v k-`: `k=v` sets, `k-` removes.
pub fn parse_edits<S: AsRef<str>>(args: &[S]) -> Result<LabelChange, LabelError> {
    let mut change = LabelChange::default();
    for arg in args {
        let arg = arg.as_ref();
        if let Some((key, value)) = arg.split_once('=') {
            validate_key(key)?;
            validate_value(key, value)?;
            change.set.insert(key.to_owned(), value.to_owned());
        } else if let Some(key) = arg.strip_suffix('-') {
            validate_key(key)?;
            change.remove.push(key.to_owned());
        } else {
            return Err(LabelError::Edit {
                input: arg.to_owned(),
            });
        }
    }
    Ok(change)
}

/// Applies a label change to a set of labels.
pub fn apply_change(labels: &mut Labels, change: &LabelChange) {
    for key in &change.remove {
        labels.remove(key);
    }
    for (key, value) in &change.set {
        labels.insert(key.clone(), value.clone());
    }
}

/// Checks a name of a node, deployment or workload: a DNS label (lowercase letters, digits,
/// `-`; starts and ends with a letter or digit; at most 63 characters).
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > NAME_MAX {
        return Err("is longer than 63 characters");
    }
    let bytes = name.as_bytes();
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err("may contain only lowercase letters, digits and '-'");
    }
    if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["site", "edgefleet.io/role", "a", "a.b-c_d", "x.y.z/name"] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "/x",
            "pre_fix/x",
            &"a".repeat(64),
            "a/b/c",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values() {
        assert!(validate_value("k", "").is_ok());
        assert!(validate_value("k", "eu-west_1.a").is_ok());
        assert!(validate_value("k", "a b").is_err());
        assert!(validate_value("k", &"v".repeat(64)).is_err());
    }

    #[test]
    fn assignments() {
        let labels = parse_assignments("site=a, env=prod,").unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["site"], "a");
        assert_eq!(parse_assignments("").unwrap().len(), 0);
        assert!(matches!(
            parse_assignments("site"),
            Err(LabelError::Assignment { .. })
        ));
        assert!(matches!(
            parse_assignments("bad key=x"),
            Err(LabelError::Key { .. })
        ));
    }

    #[test]
    fn edits() {
        let change = parse_edits(&["site=b", "env-"]).unwrap();
        assert_eq!(change.set["site"], "b");
        assert_eq!(change.remove, vec!["env".to_string()]);
        assert!(parse_edits(&["what"]).is_err());
        let mut labels = parse_assignments("site=a,env=prod").unwrap();
        apply_change(&mut labels, &change);
        assert_eq!(labels, parse_assignments("site=b").unwrap());
    }

    #[test]
    fn names() {
        assert!(validate_name("web-1").is_ok());
        assert!(validate_name("Web").is_err());
        assert!(validate_name("-a").is_err());
        assert!(validate_name("").is_err());
    }
}
