//! The Prometheus text exposition format, version 0.0.4: plain data in, text out.
//!
//! A `Family` is one metric name with its HELP and TYPE lines and its series; rendering
//! escapes HELP text (`\\`, `\n`) and label values (`\\`, `\"`, `\n`), prints floats the
//! way Prometheus parses them (`+Inf`, `-Inf`, `NaN`), and expands histograms into
//! cumulative `_bucket{le=...}` series ending with `le="+Inf"`, then `_sum` and `_count`.
//!
//! **Invariant:** a histogram's `+Inf` bucket equals its `_count`, and bucket counts never
//! decrease with `le`: both are computed here from per-bucket counts, not taken from the
//! caller.

use std::fmt::Write as _;

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric: its name, help, type and series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<Series>,
}

impl Family {
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    /// Adds a series; for chaining.
    pub fn with(mut self, labels: Labels, value: Value) -> Self {
        self.series.push(Series { labels, value });
        self
    }

    /// A family of one series without labels.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: Value) -> Self {
        Self::new(name, help, kind).with(Vec::new(), value)
    }
}

/// Label names and values, in the order they are printed.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Counters and counts, printed exactly (no detour through `f64`).
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Histogram(HistogramSnapshot),
}

/// A histogram as counted: `counts[i]` observations fell in `(bounds[i-1], bounds[i]]`,
/// and `counts[bounds.len()]` above the last bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Renders every family, in order.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(families.len() * 256);
    for family in families {
        render_family(&mut out, family);
    }
    out
}

fn render_family(out: &mut String, family: &Family) {
    // Names are compile-time constants of this crate; the unit tests check every one.
    debug_assert!(is_valid_metric_name(family.name), "{}", family.name);
    let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
    for series in &family.series {
        let text = match &series.value {
            Value::Histogram(histogram) => {
                render_histogram(out, family.name, &series.labels, histogram);
                continue;
            }
            Value::Unsigned(value) => value.to_string(),
            Value::Signed(value) => value.to_string(),
            Value::Float(value) => format_float(*value),
        };
        out.push_str(family.name);
        push_labels(out, &series.labels, None);
        out.push(' ');
        out.push_str(&text);
        out.push('\n');
    }
}

fn render_histogram(out: &mut String, name: &str, labels: &Labels, histogram: &HistogramSnapshot) {
    let mut cumulative: u64 = 0;
    for (index, bound) in histogram.bounds.iter().enumerate() {
        cumulative = cumulative.saturating_add(histogram.counts.get(index).copied().unwrap_or(0));
        let _ = write!(out, "{name}_bucket");
        push_labels(out, labels, Some(&format_float(*bound)));
        let _ = writeln!(out, " {cumulative}");
    }
    let total = histogram
        .counts
        .iter()
        .fold(0u64, |sum, count| sum.saturating_add(*count));
    let _ = write!(out, "{name}_bucket");
    push_labels(out, labels, Some("+Inf"));
    let _ = writeln!(out, " {total}");
    let _ = write!(out, "{name}_sum");
    push_labels(out, labels, None);
    let _ = writeln!(out, " {}", format_float(histogram.sum));
    let _ = write!(out, "{name}_count");
    push_labels(out, labels, None);
    let _ = writeln!(out, " {total}");
}

fn push_labels(out: &mut String, labels: &Labels, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let all = labels
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain(le.map(|le| ("le", le)));
    for (name, value) in all {
        debug_assert!(is_valid_label_name(name), "{name}");
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        push_escaped_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// A float as Prometheus parses it.
pub fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Rust prints the shortest representation that reads back exactly, never with
        // an exponent: `0.005`, `30`, `1234.5`.
        format!("{value}")
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn push_escaped_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(families: &[Family], expected: &str) {
        assert_eq!(render(families), expected);
    }

    #[test]
    fn counters_and_gauges_with_and_without_labels() {
        check(
            &[
                Family::single(
                    "edgefleet_deployments",
                    "Deployments.",
                    Kind::Gauge,
                    Value::Unsigned(3),
                ),
                Family::new("x_total", "Things.", Kind::Counter)
                    .with(
                        vec![("a", "1".into()), ("b", "two".into())],
                        Value::Unsigned(u64::MAX),
                    )
                    .with(vec![("a", "2".into()), ("b", "".into())], Value::Signed(-4)),
            ],
            "# HELP edgefleet_deployments Deployments.\n\
             # TYPE edgefleet_deployments gauge\n\
             edgefleet_deployments 3\n\
             # HELP x_total Things.\n\
             # TYPE x_total counter\n\
             x_total{a=\"1\",b=\"two\"} 18446744073709551615\n\
             x_total{a=\"2\",b=\"\"} -4\n",
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        check(
            &[Family::new(
                "m",
                "Back\\slash and\nnewline; \"quotes\" stay.",
                Kind::Gauge,
            )
            .with(vec![("v", "a\\b\"c\nd".into())], Value::Float(1.5))],
            "# HELP m Back\\\\slash and\\nnewline; \"quotes\" stay.\n\
             # TYPE m gauge\n\
             m{v=\"a\\\\b\\\"c\\nd\"} 1.5\n",
        );
    }

    #[test]
    fn floats_are_printed_as_prometheus_reads_them() {
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(30.0), "30");
        assert_eq!(format_float(-2.25), "-2.25");
        assert_eq!(format_float(1e-9), "0.000000001");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        static BOUNDS: [f64; 3] = [0.005, 0.1, 1.0];
        let histogram = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![2, 0, 3, 1],
            sum: 4.25,
        };
        check(
            &[
                Family::new("d_seconds", "Durations.", Kind::Histogram).with(
                    vec![("route", "/v1/nodes/{name}".into())],
                    Value::Histogram(histogram),
                ),
            ],
            "# HELP d_seconds Durations.\n\
             # TYPE d_seconds histogram\n\
             d_seconds_bucket{route=\"/v1/nodes/{name}\",le=\"0.005\"} 2\n\
             d_seconds_bucket{route=\"/v1/nodes/{name}\",le=\"0.1\"} 2\n\
             d_seconds_bucket{route=\"/v1/nodes/{name}\",le=\"1\"} 5\n\
             d_seconds_bucket{route=\"/v1/nodes/{name}\",le=\"+Inf\"} 6\n\
             d_seconds_sum{route=\"/v1/nodes/{name}\"} 4.25\n\
             d_seconds_count{route=\"/v1/nodes/{name}\"} 6\n",
        );
    }

    #[test]
    fn histogram_without_labels_and_with_short_counts() {
        static BOUNDS: [f64; 2] = [1.0, 2.0];
        // Fewer counts than buckets (a caller bug) still renders a consistent histogram.
        let histogram = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![1],
            sum: 0.5,
        };
        check(
            &[Family::single(
                "h",
                "H.",
                Kind::Histogram,
                Value::Histogram(histogram),
            )],
            "# HELP h H.\n# TYPE h histogram\n\
             h_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 1\n\
             h_sum 0.5\nh_count 1\n",
        );
    }

    #[test]
    fn empty_families_keep_their_help_and_type() {
        check(
            &[Family::new("e_total", "Nothing yet.", Kind::Counter)],
            "# HELP e_total Nothing yet.\n# TYPE e_total counter\n",
        );
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "edgefleet_nodes", "_x", "a:b_c9"] {
            assert!(is_valid_metric_name(good), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é"] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
        for good in ["route", "le", "_x9"] {
            assert!(is_valid_label_name(good), "{good}");
        }
        for bad in ["", "__name__", "a:b", "1x", "a-b"] {
            assert!(!is_valid_label_name(bad), "{bad}");
        }
    }
}
