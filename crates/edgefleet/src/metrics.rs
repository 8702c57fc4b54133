//! `edgefleet metrics`: a node's metric series, or fleet aggregates by a node label, as a
//! table with summary columns and, on a terminal, a sparkline per series.

use std::io::IsTerminal;

use anyhow::bail;
use edgefleet_wire::telemetry::{MetricSeries, MetricsResponse, Resolution};

use crate::cli::MetricsArgs;
use crate::client::ApiClient;
use crate::output::{self, OutputFormat};
use crate::table::Table;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

pub async fn run(client: &ApiClient, args: &MetricsArgs) -> anyhow::Result<()> {
    let mut query = vec![("since", args.since.query_value())];
    if let Some(until) = &args.until {
        query.push(("until", until.query_value()));
    }
    if let Some(selector) = &args.selector {
        query.push(("selector", selector.clone()));
    }
    match (&args.group_by, args.targets.as_slice()) {
        (Some(group), [metric]) => {
            query.push(("group_by", group.clone()));
            query.push(("metric", metric.clone()));
        }
        (Some(_), _) => bail!("with --group-by, give exactly one METRIC (e.g. disk.used_percent)"),
        (None, [node]) => query.push(("node", node.clone())),
        (None, [node, metric]) => {
            query.push(("node", node.clone()));
            query.push(("metric", metric.clone()));
        }
        (None, _) => bail!("give a NODE (and optionally a METRIC), or --group-by LABEL METRIC"),
    }
    let response: MetricsResponse = client.get(&["v1", "metrics"], &query).await?;
    if args.output.output != OutputFormat::Table {
        return output::print(&response, args.output.output, String::new);
    }
    if response.series.is_empty() {
        output::note("no samples in that range");
        return Ok(());
    }
    let width = if std::io::stdout().is_terminal() {
        args.width
    } else {
        0
    };
    output::stdout(&render(&response.series, args.group_by.is_some(), width))
}

/// The table of `series`; with a sparkline column when `width` > 0.
pub fn render(series: &[MetricSeries], grouped: bool, width: usize) -> String {
    let mut header = vec![if grouped { "GROUP" } else { "NODE" }, "METRIC", "LABELS"];
    if grouped {
        header.push("NODES");
    }
    header.extend(["LAST", "MIN", "AVG", "MAX", "POINTS", "RES"]);
    if width > 0 {
        header.push("TREND");
    }
    let mut table = Table::new(header);
    for s in series {
        let values: Vec<f64> = s.points.iter().map(|p| p.value).collect();
        let min = s
            .points
            .iter()
            .map(|p| p.min.unwrap_or(p.value))
            .fold(f64::INFINITY, f64::min);
        let max = s
            .points
            .iter()
            .map(|p| p.max.unwrap_or(p.value))
            .fold(f64::NEG_INFINITY, f64::max);
        let weights: u64 = s.points.iter().map(|p| p.count.max(1)).sum();
        let avg = s
            .points
            .iter()
            .map(|p| p.value * p.count.max(1) as f64)
            .sum::<f64>()
            / weights.max(1) as f64;
        let labels = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut row = vec![
            if grouped {
                s.group.clone().unwrap_or_default()
            } else {
                s.node.clone().unwrap_or_default()
            },
            s.metric.clone(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
        ];
        if grouped {
            row.push(s.nodes.map_or("-".into(), |n| n.to_string()));
        }
        let empty = values.is_empty();
        row.extend([
            values.last().map_or("-".into(), |v| number(*v)),
            if empty { "-".into() } else { number(min) },
            if empty { "-".into() } else { number(avg) },
            if empty { "-".into() } else { number(max) },
            values.len().to_string(),
            match s.resolution {
                Resolution::Raw => "raw".into(),
                Resolution::Rollup => "5m".into(),
            },
        ]);
        if width > 0 {
            row.push(sparkline(&values, width));
        }
        table.row(row);
    }
    table.render()
}

/// A value with at most three significant decimals, large ones with a unit prefix.
pub fn number(value: f64) -> String {
    let abs = value.abs();
    let (scaled, suffix) = if abs >= 1e12 {
        (value / 1e12, "T")
    } else if abs >= 1e9 {
        (value / 1e9, "G")
    } else if abs >= 1e6 {
        (value / 1e6, "M")
    } else if abs >= 1e4 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.fract() == 0.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 100.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    format!("{text}{suffix}")
}

/// `values` resampled (bucket averages) to at most `width` bars between their min and max.
pub fn sparkline(values: &[f64], width: usize) -> String {
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let buckets = width.min(values.len());
    let resampled: Vec<f64> = (0..buckets)
        .map(|i| {
            let start = i * values.len() / buckets;
            let end = ((i + 1) * values.len() / buckets).max(start + 1);
            let slice = &values[start..end];
            slice.iter().sum::<f64>() / slice.len() as f64
        })
        .collect();
    let min = resampled.iter().copied().fold(f64::INFINITY, f64::min);
    let max = resampled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    resampled
        .iter()
        .map(|v| {
            if max - min <= f64::EPSILON * max.abs().max(1.0) {
                BARS[3]
            } else {
                let level = ((v - min) / (max - min) * (BARS.len() - 1) as f64).round();
                BARS[(level as usize).min(BARS.len() - 1)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_wire::telemetry::MetricPoint;

    #[test]
    fn sparkline_spans_min_to_max() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0, 5.0, 5.0], 10), "▄▄▄");
        assert_eq!(sparkline(&[], 10), "");
        // Resampled to the width by averaging.
        assert_eq!(sparkline(&[0.0, 0.0, 10.0, 10.0], 2), "▁█");
        assert_eq!(sparkline(&[1.0, 2.0], 0), "");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(42.0), "42");
        assert_eq!(number(1.23456), "1.23");
        assert_eq!(number(123.456), "123.5");
        assert_eq!(number(2_500_000.0), "2.50M");
        assert_eq!(number(8.0e9), "8G");
    }

    #[test]
    fn table_summarises_each_series() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let point = |value: f64| MetricPoint {
            time: at,
            value,
            min: None,
            max: None,
            count: 1,
        };
        let series = vec![MetricSeries {
            metric: "disk.used_percent".into(),
            labels: [("mount".to_owned(), "/".to_owned())].into(),
            node: Some("edge-1".into()),
            group: None,
            nodes: None,
            resolution: Resolution::Raw,
            points: vec![point(10.0), point(20.0), point(30.0)],
        }];
        let text = render(&series, false, 5);
        assert!(text.contains("edge-1"), "{text}");
        assert!(text.contains("mount=/"), "{text}");
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[3..8], &["30", "10", "20", "30", "3"], "{text}");
        assert!(row.contains('▁') && row.contains('█'), "{text}");
    }
}
