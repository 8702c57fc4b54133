//! Label templates: `site=site-{i%10}` gives node 1 `site=site-1`, node 10 `site=site-0`.
//!
//! Placeholders: `{i}` the node's number (1-based, as in its name), `{i%K}` the number
//! modulo K, `{i/K}` the number divided by K (rounded down), `{name}` the node's name.
//! Templates are parsed once; expanding one is string formatting only.

use edgefleet_wire::Labels;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("label template {input:?}: expected KEY=TEMPLATE, like site=site-{{i%10}}")]
    NoEquals { input: String },
    #[error("label template {input:?}: {source}")]
    Key {
        input: String,
        #[source]
        source: edgefleet_core::labels::LabelError,
    },
    #[error("label template {input:?}: the {{ at character {at} of the value is not closed by }}")]
    Unclosed { input: String, at: usize },
    #[error(
        "label template {input:?}: unknown placeholder {{{placeholder}}}; use {{i}}, {{i%K}}, {{i/K}} or {{name}} with K > 0"
    )]
    Placeholder { input: String, placeholder: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Index,
    IndexModulo(u64),
    IndexDivided(u64),
    Name,
}

/// One `KEY=TEMPLATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTemplate {
    key: String,
    parts: Vec<Part>,
}

impl LabelTemplate {
    pub fn parse(input: &str) -> Result<Self, TemplateError> {
        let (key, template) = input
            .split_once('=')
            .ok_or_else(|| TemplateError::NoEquals {
                input: input.to_owned(),
            })?;
        let key = key.trim();
        edgefleet_core::labels::validate_key(key).map_err(|source| TemplateError::Key {
            input: input.to_owned(),
            source,
        })?;
        let template = template.trim();
        let mut parts = Vec::new();
        let mut rest = template;
        let mut offset = 0;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed {
                    input: input.to_owned(),
                    at: template[..offset + open].chars().count() + 1,
                })?;
            let placeholder = &rest[open + 1..open + close];
            parts.push(placeholder_part(placeholder).ok_or_else(|| {
                TemplateError::Placeholder {
                    input: input.to_owned(),
                    placeholder: placeholder.to_owned(),
                }
            })?);
            offset += open + close + 1;
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            key: key.to_owned(),
            parts,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The label value for node number `index` named `name`.
    pub fn expand(&self, index: u64, name: &str) -> String {
        let mut value = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => value.push_str(text),
                Part::Index => value.push_str(&index.to_string()),
                Part::IndexModulo(k) => value.push_str(&(index % k).to_string()),
                Part::IndexDivided(k) => value.push_str(&(index / k).to_string()),
                Part::Name => value.push_str(name),
            }
        }
        value
    }
}

fn placeholder_part(placeholder: &str) -> Option<Part> {
    let placeholder = placeholder.trim();
    match placeholder {
        "i" => return Some(Part::Index),
        "name" => return Some(Part::Name),
        _ => {}
    }
    let divisor = |rest: &str| rest.trim().parse::<u64>().ok().filter(|k| *k > 0);
    let rest = placeholder.strip_prefix('i')?.trim_start();
    if let Some(k) = rest.strip_prefix('%') {
        return divisor(k).map(Part::IndexModulo);
    }
    if let Some(k) = rest.strip_prefix('/') {
        return divisor(k).map(Part::IndexDivided);
    }
    None
}

/// Expands every template for one node.
pub fn expand_all(templates: &[LabelTemplate], index: u64, name: &str) -> Labels {
    templates
        .iter()
        .map(|t| (t.key.clone(), t.expand(index, name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, index: u64, expected: (&str, &str)) {
        let parsed = LabelTemplate::parse(template).unwrap();
        let name = format!("sim-{index:05}");
        assert_eq!(
            (parsed.key(), parsed.expand(index, &name).as_str()),
            expected,
            "{template} for {index}"
        );
    }

    #[test]
    fn expands() {
        check("site=site-{i%10}", 1, ("site", "site-1"));
        check("site=site-{i%10}", 10, ("site", "site-0"));
        check("site=site-{i%10}", 23, ("site", "site-3"));
        check("rack=r{i/4}", 7, ("rack", "r1"));
        check("n={i}", 42, ("n", "42"));
        check("id={name}", 3, ("id", "sim-00003"));
        check("tier=edge", 3, ("tier", "edge"));
        check("both={i%2}-{i/2}", 5, ("both", "1-2"));
        check(" pos = { i % 3 }x ", 5, ("pos", "2x"));
        check("empty=", 1, ("empty", ""));
    }

    #[test]
    fn errors_say_what_and_where() {
        let cases = [
            ("site", "expected KEY=TEMPLATE"),
            ("=x", "invalid label key \"\""),
            (
                "site=site-{i%10",
                "the { at character 6 of the value is not closed",
            ),
            ("site={j}", "unknown placeholder {j}"),
            ("site={i%0}", "unknown placeholder {i%0}"),
            ("site={i%x}", "unknown placeholder {i%x}"),
            ("site={}", "unknown placeholder {}"),
        ];
        for (input, needle) in cases {
            let error = LabelTemplate::parse(input).unwrap_err().to_string();
            assert!(error.contains(needle), "{input}: {error}");
            assert!(error.contains(&format!("{input:?}")), "{input}: {error}");
        }
    }

    #[test]
    fn expand_all_builds_labels() {
        let templates = vec![
            LabelTemplate::parse("site=site-{i%3}").unwrap(),
            LabelTemplate::parse("tier=edge").unwrap(),
        ];
        let labels = expand_all(&templates, 4, "sim-00004");
        assert_eq!(labels.get("site").map(String::as_str), Some("site-1"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("edge"));
    }
}
