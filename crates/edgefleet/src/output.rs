//! `-o table|json|yaml`: the human view, or the API body as pretty JSON or YAML.

use anyhow::Context;
use serde::Serialize;

/// How `get`, `describe` and `audit` print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (for `describe`: the human description).
    #[default]
    Table,
    /// The API body as pretty-printed JSON.
    Json,
    /// The API body as YAML.
    Yaml,
}

/// The API body in a machine format, with a final newline; `None` for `table`.
pub fn structured<T: Serialize>(value: &T, format: OutputFormat) -> anyhow::Result<Option<String>> {
    match format {
        OutputFormat::Table => Ok(None),
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
            text.push('\n');
            Ok(Some(text))
        }
        OutputFormat::Yaml => {
            let mut text = serde_saphyr::to_string(value).context("encoding YAML")?;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Ok(Some(text))
        }
    }
}

/// Prints `value` in `format`, or the human view from `table` for `table`.
pub fn print<T: Serialize>(
    value: &T,
    format: OutputFormat,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = match structured(value, format)? {
        Some(text) => text,
        None => table(),
    };
    stdout(&text)
}

/// Writes to standard output. A closed pipe (`edgefleet get nodes | head -1`) is not an
/// error worth reporting, and must not panic as `print!` would.
pub fn stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// Writes a line to standard error (hints, progress), ignoring failures: a message that
/// cannot be shown must not turn success into failure or panic as `eprintln!` would.
pub fn note(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Item {
        name: &'static str,
        count: u32,
    }

    #[test]
    fn machine_formats() {
        let items = vec![Item {
            name: "a",
            count: 1,
        }];
        assert_eq!(structured(&items, OutputFormat::Table).unwrap(), None);
        assert_eq!(
            structured(&items, OutputFormat::Json).unwrap().unwrap(),
            "[\n  {\n    \"name\": \"a\",\n    \"count\": 1\n  }\n]\n"
        );
        let yaml = structured(&items, OutputFormat::Yaml).unwrap().unwrap();
        assert!(
            yaml.contains("name: a") && yaml.contains("count: 1") && yaml.ends_with('\n'),
            "{yaml}"
        );
    }
}
