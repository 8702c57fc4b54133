//! Files rendered on the node: the template language of `WorkloadSpec::files` and the
//! rules for file paths and modes.
//!
//! A template is text with `{{ … }}` expressions. An expression is a variable, optionally
//! with a fallback, or a string literal:
//!
//! ```text
//! {{ node.name }}                         the node's name
//! {{ node.labels.site }}                  a label (an error on a node without it)
//! {{ node.labels.site | default "lab" }}  …or "lab" when the node has no such label
//! {{ node.facts.arch }}                   a fact (`node.facts.os.name`, `node.facts.cpu.count`,
//!                                         `node.facts.interfaces.0.name`, …)
//! {{ workload.name }}
//! {{ "{{" }}                              a literal `{{`
//! ```
//!
//! The server parses every template when a deployment is applied, so a syntax error or an
//! unknown variable is refused with its line and column; only values that differ per node
//! (a label the node lacks) can fail on the node, where the workload then fails to start
//! with a message naming the file and the variable.

use std::fmt;

use edgefleet_wire::Labels;
use edgefleet_wire::workload::FileSpec;
use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Literal(String),
    Variable {
        path: Vec<String>,
        default: Option<String>,
        /// 1-based line and column of the `{{`, for render errors.
        line: usize,
        column: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// What a template can refer to on one node.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub node: &'a str,
    pub labels: &'a Labels,
    /// The node's facts as JSON (`NodeFacts` serialised).
    pub facts: &'a Value,
    pub workload: &'a str,
}

fn position(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

impl Template {
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = src;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let start = offset + open;
            let (line, column) = position(src, start);
            let err = |message: String| TemplateError {
                line,
                column,
                message,
            };
            let after = &rest[open + 2..];
            let close =
                find_close(after).ok_or_else(|| err("`{{` without a closing `}}`".to_owned()))?;
            let inner = after[..close].trim();
            parts.push(parse_expression(inner).map_err(err)?);
            if let Some(Part::Variable {
                line: l, column: c, ..
            }) = parts.last_mut()
            {
                *l = line;
                *c = column;
            }
            let consumed = open + 2 + close + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Whether the template has no expressions: its text is its content.
    pub fn is_plain(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Checks that every variable names something a node can have: `node.name`,
    /// `node.labels.<valid label key>`, `workload.name`, or a fact that exists in `facts`
    /// (the shape of `NodeFacts`, as JSON, with empty lists standing for any index).
    pub fn check_variables(&self, facts_shape: &Value) -> Result<(), TemplateError> {
        for part in &self.parts {
            let Part::Variable {
                path, line, column, ..
            } = part
            else {
                continue;
            };
            let err = |message: String| TemplateError {
                line: *line,
                column: *column,
                message,
            };
            let words: Vec<&str> = path.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["node", "name"] | ["workload", "name"] => {}
                ["node", "labels", key] => {
                    crate::labels::validate_key(key)
                        .map_err(|e| err(format!("{{{{ node.labels.{key} }}}}: {e}")))?;
                }
                ["node", "facts", fact @ ..] if !fact.is_empty() => {
                    if !shape_has(facts_shape, fact) {
                        return Err(err(format!(
                            "unknown fact `{}` (facts are the node's `edgefleet describe node` facts, like node.facts.arch or node.facts.os.name)",
                            fact.join(".")
                        )));
                    }
                }
                _ => {
                    return Err(err(format!(
                        "unknown variable `{}` (use node.name, node.labels.KEY, node.facts.FACT or workload.name)",
                        path.join(".")
                    )));
                }
            }
        }
        Ok(())
    }

    /// The content for one node.
    pub fn render(&self, context: &Context<'_>) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) | Part::Literal(text) => out.push_str(text),
                Part::Variable {
                    path,
                    default,
                    line,
                    column,
                } => match (lookup(context, path), default) {
                    (Ok(value), _) => out.push_str(&value),
                    (Err(_), Some(default)) => out.push_str(default),
                    (Err(message), None) => {
                        return Err(TemplateError {
                            line: *line,
                            column: *column,
                            message,
                        });
                    }
                },
            }
        }
        Ok(out)
    }
}

/// The index of the `}}` that ends an expression, skipping over string literals.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'}' if !in_string && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            b'\n' if !in_string => return None,
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_string(s: &str) -> Result<(String, &str), String> {
    let Some(body) = s.strip_prefix('"') else {
        return Err(format!("expected a string in double quotes, found {s:?}"));
    };
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '"')) => out.push('"'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, 'n')) => out.push('\n'),
                Some((_, other)) => return Err(format!("unknown escape \\{other} in a string")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".to_owned())
}

fn parse_expression(inner: &str) -> Result<Part, String> {
    if inner.is_empty() {
        return Err("empty `{{ }}`".to_owned());
    }
    if inner.starts_with('"') {
        let (text, rest) = parse_string(inner)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected {:?} after the string", rest.trim()));
        }
        return Ok(Part::Literal(text));
    }
    let (variable, filter) = match inner.split_once('|') {
        Some((v, f)) => (v.trim(), Some(f.trim())),
        None => (inner, None),
    };
    if variable.is_empty()
        || !variable
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(format!(
            "invalid variable {variable:?} (expected something like node.labels.site)"
        ));
    }
    let path = split_path(variable)?;
    let default = match filter {
        None => None,
        Some(filter) => {
            let Some(arg) = filter.strip_prefix("default") else {
                return Err(format!(
                    "unknown filter {filter:?} (the only filter is: default \"value\")"
                ));
            };
            let (text, rest) = parse_string(arg.trim_start())
                .map_err(|e| format!("default needs a value in double quotes: {e}"))?;
            if !rest.trim().is_empty() {
                return Err(format!("unexpected {:?} after the default", rest.trim()));
            }
            Some(text)
        }
    };
    Ok(Part::Variable {
        path,
        default,
        line: 0,
        column: 0,
    })
}

/// Splits `node.labels.example.com/zone` into `node`, `labels`, `example.com/zone`: a label
/// key may itself contain dots, so everything after `node.labels.` is the key.
fn split_path(variable: &str) -> Result<Vec<String>, String> {
    let path: Vec<String> = if let Some(key) = variable.strip_prefix("node.labels.") {
        vec!["node".into(), "labels".into(), key.into()]
    } else {
        variable.split('.').map(str::to_owned).collect()
    };
    if path.iter().any(String::is_empty) {
        return Err(format!("invalid variable {variable:?}: empty name part"));
    }
    Ok(path)
}

fn shape_has(shape: &Value, path: &[&str]) -> bool {
    let mut current = shape;
    for word in path {
        current = match current {
            Value::Object(map) => match map.get(*word) {
                Some(next) => next,
                None => return false,
            },
            // An empty list in the shape stands for "any element": the rest of the path
            // cannot be checked without an element to look at.
            Value::Array(items) if word.parse::<usize>().is_ok() => match items.first() {
                Some(first) => first,
                None => return true,
            },
            _ => return false,
        };
    }
    true
}

fn lookup(context: &Context<'_>, path: &[String]) -> Result<String, String> {
    let words: Vec<&str> = path.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["node", "name"] => Ok(context.node.to_owned()),
        ["workload", "name"] => Ok(context.workload.to_owned()),
        ["node", "labels", key] => context.labels.get(*key).cloned().ok_or_else(|| {
            format!(
                "node {} has no label {key:?} (add it, or give a fallback: {{{{ node.labels.{key} | default \"…\" }}}})",
                context.node
            )
        }),
        ["node", "facts", fact @ ..] => {
            let mut current = context.facts;
            for word in fact {
                current = match current {
                    Value::Object(map) => map.get(*word),
                    Value::Array(items) => word.parse::<usize>().ok().and_then(|i| items.get(i)),
                    _ => None,
                }
                .ok_or_else(|| {
                    format!(
                        "node {} has no fact {:?}",
                        context.node,
                        fact.join(".")
                    )
                })?;
            }
            match current {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                Value::Null => Err(format!(
                    "node {} does not know its fact {:?}",
                    context.node,
                    fact.join(".")
                )),
                _ => Err(format!(
                    "fact {:?} is a list or a group, not one value",
                    fact.join(".")
                )),
            }
        }
        _ => Err(format!("unknown variable `{}`", path.join("."))),
    }
}

/// Why a file of a workload's spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// Relative to the file: `path`, `mode`, `content`.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The default permissions of a rendered file.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The permission bits of `file` (`mode`, default 0644).
pub fn file_mode(file: &FileSpec) -> Result<u32, FileError> {
    let Some(mode) = &file.mode else {
        return Ok(DEFAULT_FILE_MODE);
    };
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    match u32::from_str_radix(digits, 8) {
        Ok(bits) if bits <= 0o777 && !digits.is_empty() => Ok(bits),
        _ => Err(FileError {
            field: "mode",
            message: format!(
                "invalid mode {mode:?}: expected octal permissions like \"0644\" or \"0600\""
            ),
        }),
    }
}

/// Checks a file's path: relative, normal components only (no `..`, `.` or empty parts),
/// at most 16 levels and 255 bytes per part.
pub fn check_path(path: &str) -> Result<(), FileError> {
    let err = |message: String| FileError {
        field: "path",
        message,
    };
    if path.is_empty() {
        return Err(err("path is empty".into()));
    }
    if path.starts_with('/') {
        return Err(err(format!(
            "path {path:?} must be relative: files live in the workload's files directory"
        )));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 16 {
        return Err(err(format!("path {path:?} is more than 16 levels deep")));
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return Err(err(format!(
                "path {path:?} must not contain empty, `.` or `..` parts"
            )));
        }
        if part.len() > 255 || part.contains('\0') {
            return Err(err(format!("path {path:?} has an invalid part")));
        }
    }
    Ok(())
}

/// Checks a workload's files as the server does at apply time: paths, modes, duplicate
/// paths, template syntax and variables. The error is `(index of the file, error)`.
pub fn check_files(files: &[FileSpec], facts_shape: &Value) -> Result<(), (usize, FileError)> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, file) in files.iter().enumerate() {
        check_path(&file.path).map_err(|e| (i, e))?;
        if !seen.insert(file.path.as_str()) {
            return Err((
                i,
                FileError {
                    field: "path",
                    message: format!("duplicate path {:?}", file.path),
                },
            ));
        }
        // One file cannot also be the directory of another.
        if let Some(parent) = seen.iter().find(|p| {
            **p != file.path
                && (file.path.starts_with(&format!("{p}/"))
                    || p.starts_with(&format!("{}/", file.path)))
        }) {
            return Err((
                i,
                FileError {
                    field: "path",
                    message: format!("{:?} and {parent:?} cannot both be files", file.path),
                },
            ));
        }
        file_mode(file).map_err(|e| (i, e))?;
        let template = Template::parse(&file.content).map_err(|e| {
            (
                i,
                FileError {
                    field: "content",
                    message: e.to_string(),
                },
            )
        })?;
        template.check_variables(facts_shape).map_err(|e| {
            (
                i,
                FileError {
                    field: "content",
                    message: e.to_string(),
                },
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
