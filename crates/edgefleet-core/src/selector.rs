//! Label selectors: matching, explaining a mismatch, validating, and the `-l` string form.

use std::fmt;

use edgefleet_wire::Labels;
use edgefleet_wire::manifest::{Selector, SelectorOperator, SelectorRequirement};

use crate::labels::{LabelError, validate_key, validate_value};

/// One term of a selector and whether a node's labels satisfy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermResult {
    /// The term as text: `site=a`, `tier in (a,b)`, `!gpu`.
    pub term: String,
    pub key: String,
    pub satisfied: bool,
    /// The node's value for the key (`None`: the node has no such label).
    pub actual: Option<String>,
}

impl fmt::Display for TermResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.actual {
            Some(v) => write!(f, "{} (node has {}={v})", self.term, self.key),
            None => write!(f, "{} (node has no label {})", self.term, self.key),
        }
    }
}

fn requirement_holds(req: &SelectorRequirement, labels: &Labels) -> bool {
    let value = labels.get(&req.key);
    match req.operator {
        SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
        SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
        SelectorOperator::Exists => value.is_some(),
        SelectorOperator::DoesNotExist => value.is_none(),
    }
}

/// Whether the selector selects a node with these labels. An empty selector selects all.
pub fn matches(selector: &Selector, labels: &Labels) -> bool {
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector
            .match_expressions
            .iter()
            .all(|req| requirement_holds(req, labels))
}

fn requirement_text(req: &SelectorRequirement) -> String {
    let values = req.values.join(",");
    match req.operator {
        SelectorOperator::In => format!("{} in ({values})", req.key),
        // `k!=v` form for one value: it also carries an empty value (`k!=`), which
        // `k notin ()` could not.
        SelectorOperator::NotIn if req.values.len() == 1 => {
            format!("{}!={}", req.key, req.values[0])
        }
        SelectorOperator::NotIn => format!("{} notin ({values})", req.key),
        SelectorOperator::Exists => req.key.clone(),
        SelectorOperator::DoesNotExist => format!("!{}", req.key),
    }
}

/// Every term of the selector with its result against the labels, in selector order.
pub fn explain(selector: &Selector, labels: &Labels) -> Vec<TermResult> {
    let label_terms = selector.match_labels.iter().map(|(k, v)| TermResult {
        term: format!("{k}={v}"),
        key: k.clone(),
        satisfied: labels.get(k) == Some(v),
        actual: labels.get(k).cloned(),
    });
    let expr_terms = selector.match_expressions.iter().map(|req| TermResult {
        term: requirement_text(req),
        key: req.key.clone(),
        satisfied: requirement_holds(req, labels),
        actual: labels.get(&req.key).cloned(),
    });
    label_terms.chain(expr_terms).collect()
}

/// Renders a selector in the `-l` string form.
pub fn to_string(selector: &Selector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    terms.extend(selector.match_expressions.iter().map(requirement_text));
    terms.join(",")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{field}: {source}")]
    Label {
        field: String,
        #[source]
        source: LabelError,
    },
    #[error("{field}: operator {operator:?} needs at least one value")]
    MissingValues {
        field: String,
        operator: &'static str,
    },
    #[error("{field}: operator {operator:?} takes no values")]
    UnexpectedValues {
        field: String,
        operator: &'static str,
    },
    #[error("invalid selector {input:?} at character {position}: {reason}")]
    Syntax {
        input: String,
        position: usize,
        reason: &'static str,
    },
}

/// Checks a selector's keys, values and operators; `field` is its path for error messages
/// (for example `spec.selector`).
pub fn validate(selector: &Selector, field: &str) -> Result<(), SelectorError> {
    for (key, value) in &selector.match_labels {
        let field = format!("{field}.matchLabels.{key}");
        validate_key(key)
            .and_then(|()| validate_value(key, value))
            .map_err(|source| SelectorError::Label { field, source })?;
    }
    for (i, req) in selector.match_expressions.iter().enumerate() {
        let field = format!("{field}.matchExpressions[{i}]");
        validate_key(&req.key).map_err(|source| SelectorError::Label {
            field: format!("{field}.key"),
            source,
        })?;
        for value in &req.values {
            validate_value(&req.key, value).map_err(|source| SelectorError::Label {
                field: format!("{field}.values"),
                source,
            })?;
        }
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if req.values.is_empty() => {
                return Err(SelectorError::MissingValues {
                    field,
                    operator: if req.operator == SelectorOperator::In {
                        "In"
                    } else {
                        "NotIn"
                    },
                });
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !req.values.is_empty() => {
                return Err(SelectorError::UnexpectedValues {
                    field,
                    operator: if req.operator == SelectorOperator::Exists {
                        "Exists"
                    } else {
                        "DoesNotExist"
                    },
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses the string form used by `-l`: comma-separated terms `k=v`, `k==v`, `k!=v`,
/// `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist).
pub fn parse(input: &str) -> Result<Selector, SelectorError> {
    let mut selector = Selector::default();
    let syntax = |position: usize, reason: &'static str| SelectorError::Syntax {
        input: input.to_owned(),
        position,
        reason,
    };
    let label_err = |source: LabelError| SelectorError::Label {
        field: "selector".to_owned(),
        source,
    };
    for (offset, term) in split_terms(input) {
        let term_trimmed = term.trim();
        if term_trimmed.is_empty() {
            if input.trim().is_empty() {
                continue;
            }
            return Err(syntax(offset, "empty term"));
        }
        if let Some(key) = term_trimmed.strip_prefix('!') {
            let key = key.trim();
            validate_key(key).map_err(label_err)?;
            selector.match_expressions.push(SelectorRequirement {
                key: key.to_owned(),
                operator: SelectorOperator::DoesNotExist,
                values: vec![],
            });
        } else if let Some((key, value)) = term_trimmed.split_once("!=") {
            let (key, value) = (key.trim(), value.trim());
            validate_key(key).map_err(label_err)?;
            validate_value(key, value).map_err(label_err)?;
            selector.match_expressions.push(SelectorRequirement {
                key: key.to_owned(),
                operator: SelectorOperator::NotIn,
                values: vec![value.to_owned()],
            });
        } else if let Some((key, value)) = term_trimmed.split_once('=') {
            let value = value.strip_prefix('=').unwrap_or(value);
            let (key, value) = (key.trim(), value.trim());
            validate_key(key).map_err(label_err)?;
            validate_value(key, value).map_err(label_err)?;
            selector
                .match_labels
                .insert(key.to_owned(), value.to_owned());
        } else if let Some(open) = term_trimmed.find('(') {
            let close = term_trimmed
                .rfind(')')
                .filter(|c| *c == term_trimmed.len() - 1)
                .ok_or_else(|| syntax(offset + term.len(), "missing ')'"))?;
            let head: Vec<&str> = term_trimmed[..open].split_whitespace().collect();
            let [key, op] = head.as_slice() else {
                return Err(syntax(
                    offset,
                    "expected 'key in (...)' or 'key notin (...)'",
                ));
            };
            let operator = match *op {
                "in" => SelectorOperator::In,
                "notin" => SelectorOperator::NotIn,
                _ => return Err(syntax(offset, "operator must be 'in' or 'notin'")),
            };
            validate_key(key).map_err(label_err)?;
            let values: Vec<String> = term_trimmed[open + 1..close]
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect();
            if values.is_empty() {
                return Err(syntax(
                    offset,
                    "an 'in'/'notin' list needs at least one value",
                ));
            }
            for value in &values {
                validate_value(key, value).map_err(label_err)?;
            }
            selector.match_expressions.push(SelectorRequirement {
                key: (*key).to_owned(),
                operator,
                values,
            });
        } else {
            validate_key(term_trimmed).map_err(label_err)?;
            selector.match_expressions.push(SelectorRequirement {
                key: term_trimmed.to_owned(),
                operator: SelectorOperator::Exists,
                values: vec![],
            });
        }
    }
    Ok(selector)
}

/// Splits on commas that are not inside parentheses, keeping each term's byte offset.
fn split_terms(input: &str) -> Vec<(usize, &str)> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push((start, &input[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push((start, &input[start..]));
    terms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::parse_assignments;

    fn check(selector: &str, labels: &str, expected: bool) {
        let selector = parse(selector).unwrap();
        let labels = parse_assignments(labels).unwrap();
        assert_eq!(
            matches(&selector, &labels),
            expected,
            "{selector:?} on {labels:?}"
        );
    }

    #[test]
    fn matching() {
        check("", "site=a", true);
        check("site=a", "site=a,env=prod", true);
        check("site==a", "site=a", true);
        check("site=a", "site=b", false);
        check("site=a", "", false);
        check("site!=a", "site=b", true);
        check("site!=a", "", true);
        check("site!=a", "site=a", false);
        check("site in (a, b)", "site=b", true);
        check("site in (a,b)", "site=c", false);
        check("site in (a,b)", "", false);
        check("site notin (a,b)", "site=c", true);
        check("site notin (a,b)", "", true);
        check("site notin (a,b)", "site=a", false);
        check("gpu", "gpu=", true);
        check("gpu", "", false);
        check("!gpu", "", true);
        check("!gpu", "gpu=nvidia", false);
        check("site=a,tier in (x,y),!gpu", "site=a,tier=y", true);
        check("site=a,tier in (x,y),!gpu", "site=a,tier=y,gpu=1", false);
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "site in a",
            "site in (a",
            "site foo (a)",
            "site in ()",
            "a b",
            "=x",
            "site=a,,b=c",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn explain_names_failing_term_and_actual_value() {
        let selector = parse("site=a,!gpu").unwrap();
        let labels = parse_assignments("site=b,gpu=1").unwrap();
        let terms = explain(&selector, &labels);
        assert_eq!(terms.len(), 2);
        assert!(!terms[0].satisfied);
        assert_eq!(terms[0].to_string(), "site=a (node has site=b)");
        assert!(!terms[1].satisfied);
    }

    #[test]
    fn validation() {
        let mut selector = Selector::default();
        selector.match_expressions.push(SelectorRequirement {
            key: "site".into(),
            operator: SelectorOperator::In,
            values: vec![],
        });
        let err = validate(&selector, "spec.selector").unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.selector.matchExpressions[0]: operator \"In\" needs at least one value"
        );
        selector.match_expressions[0].operator = SelectorOperator::Exists;
        assert!(validate(&selector, "spec.selector").is_ok());
        selector.match_expressions[0].values.push("x".into());
        assert!(validate(&selector, "spec.selector").is_err());
    }

    #[test]
    fn string_form_round_trips() {
        let text = "site=a,tier in (x,y),!gpu";
        assert_eq!(to_string(&parse(text).unwrap()), text);
    }
}
