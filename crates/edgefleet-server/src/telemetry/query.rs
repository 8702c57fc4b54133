//! Metric queries, the pure part: reading the query string (times, the grouping key, the
//! selector), choosing the resolution and the bucket grid, and turning the store's buckets
//! into wire series.
//!
//! Rules: `since` defaults to one hour back, `until` to now; either is an RFC 3339 time or a
//! duration back from now. A range that starts within the raw retention is answered from
//! raw samples, an older one from five-minute rollups (plus raw samples not rolled up yet).
//! A per-node series has at most `MAX_POINTS` points: samples are averaged into equal
//! buckets when there are more. A group series (`group_by`) has buckets of
//! max(60 s, range / 200), each the mean of the nodes' averages, with their minimum and
//! maximum. An answer has at most `MAX_SERIES` series.

use std::time::Duration;

use edgefleet_core::selector;
use edgefleet_wire::manifest::Selector;
use edgefleet_wire::telemetry::{MetricPoint, MetricQuery, MetricSeries, Resolution};
use edgefleet_wire::{DurationSpec, Labels, Timestamp};
use time::format_description::well_known::Rfc3339;

use super::model::{BucketGrid, BucketQuery, GroupSeries, NodeSeries, ROLLUP_BUCKET};

/// Points per per-node series, at most.
pub const MAX_POINTS: u64 = 1000;
/// Series per answer, at most.
pub const MAX_SERIES: usize = 500;
/// Buckets per group series, at most, and their smallest width.
pub const GROUP_BUCKETS: u64 = 200;
pub const MIN_GROUP_BUCKET: Duration = Duration::from_secs(60);
/// The range of a query that gives no `since`.
pub const DEFAULT_RANGE: Duration = Duration::from_secs(3600);
/// The group of nodes that lack the grouping label.
pub const NO_GROUP: &str = "(none)";

const METRIC_NAME_MAX: usize = 200;

/// A checked query: what to read and how to shape it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPlan {
    pub query: BucketQuery,
    pub selector: Option<Selector>,
    /// The node label to group by.
    pub group_by: Option<String>,
}

/// A time bound: RFC 3339, or a duration back from `now`.
pub fn parse_bound(field: &str, text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(at) = Timestamp::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let back: DurationSpec = text.parse().map_err(|_| {
        format!(
            "invalid {field} {text:?}: expected an RFC 3339 time (2024-05-01T12:00:00Z) or a \
             duration back from now (30m, 6h, 7d)"
        )
    })?;
    let back = time::Duration::try_from(back.as_duration())
        .map_err(|_| format!("invalid {field} {text:?}: too far back"))?;
    now.checked_sub(back)
        .filter(|at| at.year() >= 1970)
        .ok_or_else(|| format!("invalid {field} {text:?}: reaches before 1970"))
}

/// Checks a query and plans its read. `raw_retention` decides raw against rollups.
pub fn plan(
    query: &MetricQuery,
    now: Timestamp,
    raw_retention: Duration,
) -> Result<MetricPlan, String> {
    let node = non_empty("node", query.node.as_deref())?;
    let metric = non_empty("metric", query.metric.as_deref())?;
    if let Some(metric) = &metric
        && metric.len() > METRIC_NAME_MAX
    {
        return Err(format!(
            "metric name is longer than {METRIC_NAME_MAX} characters"
        ));
    }
    let group_by = non_empty("group_by", query.group_by.as_deref())?;
    if node.is_none() && metric.is_none() {
        return Err(
            "name what to read: node= (every metric of one node) or metric= (one metric of \
             every node), or both"
                .to_owned(),
        );
    }
    if let Some(key) = &group_by {
        if metric.is_none() {
            return Err(format!(
                "group_by={key} needs metric=: a group series aggregates one metric"
            ));
        }
        edgefleet_core::labels::validate_key(key).map_err(|e| format!("group_by: {e}"))?;
    }
    let selector = non_empty("selector", query.selector.as_deref())?
        .map(|text| selector::parse(&text).map_err(|e| format!("selector: {e}")))
        .transpose()?;
    let until = match &query.until {
        Some(text) => parse_bound("until", text, now)?,
        None => now,
    };
    let since = match &query.since {
        Some(text) => parse_bound("since", text, now)?,
        None => until - time::Duration::try_from(DEFAULT_RANGE).unwrap_or(time::Duration::HOUR),
    };
    if since >= until {
        return Err(format!(
            "since ({}) must be before until ({})",
            crate::status::rfc3339(since),
            crate::status::rfc3339(until)
        ));
    }
    let raw_retention = time::Duration::try_from(raw_retention).unwrap_or(time::Duration::MAX);
    let source = if since >= now.saturating_sub(raw_retention) {
        Resolution::Raw
    } else {
        Resolution::Rollup
    };
    let step = match source {
        Resolution::Raw => Duration::from_secs(1),
        Resolution::Rollup => ROLLUP_BUCKET,
    };
    let grid = match &group_by {
        Some(_) => grid(
            since,
            until,
            MIN_GROUP_BUCKET.max(step),
            step,
            GROUP_BUCKETS,
        ),
        None => grid(since, until, step, step, MAX_POINTS),
    };
    Ok(MetricPlan {
        query: BucketQuery {
            node,
            metric,
            since,
            until,
            grid,
            source,
        },
        selector,
        group_by,
    })
}

fn non_empty(field: &str, value: Option<&str>) -> Result<Option<String>, String> {
    match value.map(str::trim) {
        None => Ok(None),
        Some("") => Err(format!("{field} is empty: give a value or leave it out")),
        Some(value) => Ok(Some(value.to_owned())),
    }
}

/// Buckets over [since, until): a width that is a multiple of `step`, at least
/// `min_width`, aligned on multiples of itself since the epoch (so repeated queries get the
/// same buckets), and no more than `max_buckets` of them.
pub fn grid(
    since: Timestamp,
    until: Timestamp,
    min_width: Duration,
    step: Duration,
    max_buckets: u64,
) -> BucketGrid {
    let step = step.as_nanos().max(1) as i128;
    let since_nanos = since.unix_timestamp_nanos();
    let until_nanos = until.unix_timestamp_nanos().max(since_nanos + 1);
    let max_buckets = i128::from(max_buckets.max(1));
    let round_up = |nanos: i128| (nanos + step - 1).div_euclid(step) * step;
    let range = until_nanos - since_nanos;
    let mut width =
        round_up((min_width.as_nanos() as i128).max((range + max_buckets - 1) / max_buckets));
    loop {
        let origin = since_nanos.div_euclid(width) * width;
        let buckets = (until_nanos - origin + width - 1) / width;
        if buckets <= max_buckets {
            return BucketGrid {
                origin: Timestamp::from_unix_timestamp_nanos(origin).unwrap_or(since),
                width: Duration::from_nanos(u64::try_from(width).unwrap_or(u64::MAX)),
            };
        }
        width += step;
    }
}

/// The group a node belongs to: its value of the label, or `NO_GROUP`.
pub fn group_of(labels: &Labels, key: &str) -> String {
    labels
        .get(key)
        .cloned()
        .unwrap_or_else(|| NO_GROUP.to_owned())
}

/// Per-node series on the wire. A raw bucket with one sample is that sample, at its own
/// time; a bucket of several is their average at the bucket's start, with min and max.
pub fn node_series_to_wire(series: Vec<NodeSeries>, resolution: Resolution) -> Vec<MetricSeries> {
    series
        .into_iter()
        .map(|series| MetricSeries {
            metric: series.name,
            labels: series.labels,
            node: Some(series.node),
            group: None,
            nodes: None,
            resolution,
            points: series
                .buckets
                .into_iter()
                .filter(|bucket| bucket.count > 0)
                .map(|bucket| {
                    if resolution == Resolution::Raw && bucket.count == 1 {
                        MetricPoint {
                            time: bucket.first,
                            value: bucket.sum,
                            min: None,
                            max: None,
                            count: 1,
                        }
                    } else {
                        MetricPoint {
                            time: bucket.start,
                            value: bucket.sum / bucket.count as f64,
                            min: Some(bucket.min),
                            max: Some(bucket.max),
                            count: bucket.count,
                        }
                    }
                })
                .collect(),
        })
        .collect()
}

/// Group series on the wire: the mean of node averages, their min and max, samples behind.
pub fn group_series_to_wire(series: Vec<GroupSeries>, resolution: Resolution) -> Vec<MetricSeries> {
    series
        .into_iter()
        .map(|series| MetricSeries {
            metric: series.name,
            labels: series.labels,
            node: None,
            group: Some(series.group),
            nodes: Some(series.nodes),
            resolution,
            points: series
                .buckets
                .into_iter()
                .map(|bucket| MetricPoint {
                    time: bucket.start,
                    value: bucket.mean,
                    min: Some(bucket.min),
                    max: Some(bucket.max),
                    count: bucket.samples,
                })
                .collect(),
        })
        .collect()
}

/// The message of an answer with too many series.
pub fn too_many_series() -> String {
    format!(
        "the query matches more than {MAX_SERIES} series; narrow it with node=, metric=, \
         selector= or a coarser group_by"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::model::{GroupBucket, NodeBucket};
    use time::macros::datetime;

    const NOW: Timestamp = datetime!(2024-05-01 12:00:00 UTC);
    const DAY: Duration = Duration::from_secs(86_400);

    fn query(pairs: &[(&str, &str)]) -> MetricQuery {
        let mut query = MetricQuery::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "node" => query.node = value,
                "metric" => query.metric = value,
                "since" => query.since = value,
                "until" => query.until = value,
                "group_by" => query.group_by = value,
                "selector" => query.selector = value,
                other => panic!("unknown key {other}"),
            }
        }
        query
    }

    fn planned(pairs: &[(&str, &str)]) -> MetricPlan {
        plan(&query(pairs), NOW, DAY).unwrap()
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        plan(&query(pairs), NOW, DAY).unwrap_err()
    }

    #[test]
    fn bounds_are_times_or_durations_back() {
        assert_eq!(
            parse_bound("since", "2h", NOW),
            Ok(datetime!(2024-05-01 10:00 UTC))
        );
        assert_eq!(
            parse_bound("since", "1h30m", NOW),
            Ok(datetime!(2024-05-01 10:30 UTC))
        );
        assert_eq!(
            parse_bound("since", "2024-04-30T00:00:00Z", NOW),
            Ok(datetime!(2024-04-30 0:00 UTC))
        );
        assert_eq!(
            parse_bound("until", "2024-04-30T02:00:00+02:00", NOW),
            Ok(datetime!(2024-04-30 0:00 UTC))
        );
        let error = parse_bound("since", "yesterday", NOW).unwrap_err();
        assert_eq!(
            error,
            "invalid since \"yesterday\": expected an RFC 3339 time (2024-05-01T12:00:00Z) or \
             a duration back from now (30m, 6h, 7d)"
        );
        assert!(
            parse_bound("since", "30000d", NOW)
                .unwrap_err()
                .contains("before 1970")
        );
    }

    #[test]
    fn defaults_and_resolution() {
        let plan = planned(&[("node", "gw-1")]);
        assert_eq!(plan.query.since, datetime!(2024-05-01 11:00 UTC));
        assert_eq!(plan.query.until, NOW);
        assert_eq!(plan.query.source, Resolution::Raw);
        assert_eq!(plan.query.node.as_deref(), Some("gw-1"));
        assert_eq!(plan.query.metric, None);
        // 1 h in at most 1000 buckets: 4 s.
        assert_eq!(plan.query.grid.width, Duration::from_secs(4));
        assert_eq!(plan.query.grid.origin, datetime!(2024-05-01 11:00 UTC));

        let plan = planned(&[("metric", "cpu"), ("since", "23h")]);
        assert_eq!(plan.query.source, Resolution::Raw);
        let plan = planned(&[("metric", "cpu"), ("since", "25h"), ("until", "24h")]);
        assert_eq!(
            plan.query.source,
            Resolution::Rollup,
            "starts beyond raw retention"
        );
        assert_eq!(plan.query.grid.width, ROLLUP_BUCKET);
        let plan = planned(&[("metric", "cpu"), ("since", "30d")]);
        assert_eq!(plan.query.source, Resolution::Rollup);
        // 30 d / 1000 = 43.2 min, rounded up to whole rollup buckets: 45 min.
        assert_eq!(plan.query.grid.width, Duration::from_secs(45 * 60));
    }

    #[test]
    fn group_grids() {
        let plan = planned(&[("metric", "cpu"), ("group_by", "site")]);
        assert_eq!(plan.group_by.as_deref(), Some("site"));
        assert_eq!(plan.query.grid.width, MIN_GROUP_BUCKET);
        let plan = planned(&[("metric", "cpu"), ("group_by", "site"), ("since", "20h")]);
        // 20 h / 200 = 6 min.
        assert_eq!(plan.query.grid.width, Duration::from_secs(360));
        let plan = planned(&[("metric", "cpu"), ("group_by", "site"), ("since", "7d")]);
        assert_eq!(plan.query.source, Resolution::Rollup);
        // 7 d / 200 = 50.4 min: 55 min in whole rollup buckets.
        assert_eq!(plan.query.grid.width, Duration::from_secs(55 * 60));
    }

    #[test]
    fn grids_hold_the_cap_and_align() {
        let check = |since: Timestamp, until: Timestamp, min: u64, step: u64, max: u64| {
            let grid = grid(
                since,
                until,
                Duration::from_secs(min),
                Duration::from_secs(step),
                max,
            );
            let width = grid.width.as_nanos() as i128;
            assert!(grid.width >= Duration::from_secs(min));
            assert_eq!(width % (step as i128 * 1_000_000_000), 0);
            assert_eq!(grid.origin.unix_timestamp_nanos() % width, 0, "aligned");
            assert!(grid.origin <= since);
            let buckets =
                (until.unix_timestamp_nanos() - grid.origin.unix_timestamp_nanos() + width - 1)
                    / width;
            assert!(
                buckets as u64 <= max,
                "{buckets} buckets of {:?}",
                grid.width
            );
            grid
        };
        let since = datetime!(2024-05-01 10:17:33.5 UTC);
        for hours in [1, 5, 24, 100] {
            let until = since + time::Duration::hours(hours);
            check(since, until, 1, 1, 1000);
            check(since, until, 60, 1, 200);
            check(since, until, 300, 300, 1000);
        }
        // A range shorter than a bucket is one or two buckets.
        let grid = check(since, since + time::Duration::seconds(1), 60, 1, 200);
        assert_eq!(grid.width, Duration::from_secs(60));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(refused(&[]).starts_with("name what to read"));
        assert_eq!(
            refused(&[("node", "")]),
            "node is empty: give a value or leave it out"
        );
        assert!(refused(&[("node", "a"), ("group_by", "site")]).contains("needs metric="));
        assert!(
            refused(&[("metric", "m"), ("group_by", "bad key!")])
                .starts_with("group_by: invalid label key")
        );
        assert!(refused(&[("metric", "m"), ("selector", "site in (")]).starts_with("selector: "));
        assert!(
            refused(&[("metric", "m"), ("since", "soon")]).starts_with("invalid since \"soon\"")
        );
        assert!(refused(&[("metric", "m"), ("until", "x")]).starts_with("invalid until \"x\""));
        assert_eq!(
            refused(&[("metric", "m"), ("since", "1h"), ("until", "2h")]),
            "since (2024-05-01T11:00:00Z) must be before until (2024-05-01T10:00:00Z)"
        );
        assert!(refused(&[("metric", &"m".repeat(201))]).contains("longer than 200"));
        let plan = planned(&[("metric", "m"), ("selector", "site=a")]);
        assert!(plan.selector.is_some());
    }

    #[test]
    fn groups_of_nodes() {
        let labels: Labels = [("site".to_owned(), "berlin".to_owned())].into();
        assert_eq!(group_of(&labels, "site"), "berlin");
        assert_eq!(group_of(&labels, "rack"), NO_GROUP);
    }

    fn bucket(
        start: Timestamp,
        first: Timestamp,
        count: u64,
        sum: f64,
        min: f64,
        max: f64,
    ) -> NodeBucket {
        NodeBucket {
            start,
            first,
            count,
            sum,
            min,
            max,
        }
    }

    #[test]
    fn raw_points_keep_their_time_and_averaged_ones_say_so() {
        let t0 = datetime!(2024-05-01 11:00 UTC);
        let t1 = datetime!(2024-05-01 11:00:01.5 UTC);
        let series = vec![NodeSeries {
            node: "gw-1".into(),
            name: "cpu".into(),
            labels: Labels::new(),
            buckets: vec![
                bucket(t0, t1, 1, 5.0, 5.0, 5.0),
                bucket(t0 + time::Duration::seconds(4), t0, 4, 10.0, 1.0, 4.0),
            ],
        }];
        let wire = node_series_to_wire(series.clone(), Resolution::Raw);
        assert_eq!(wire[0].node.as_deref(), Some("gw-1"));
        assert_eq!(wire[0].resolution, Resolution::Raw);
        assert_eq!(
            wire[0].points,
            vec![
                MetricPoint {
                    time: t1,
                    value: 5.0,
                    min: None,
                    max: None,
                    count: 1
                },
                MetricPoint {
                    time: t0 + time::Duration::seconds(4),
                    value: 2.5,
                    min: Some(1.0),
                    max: Some(4.0),
                    count: 4
                },
            ]
        );
        let rollup = node_series_to_wire(series, Resolution::Rollup);
        assert_eq!(rollup[0].points[0].time, t0, "rollup points are buckets");
        assert_eq!(rollup[0].points[0].min, Some(5.0));
    }

    #[test]
    fn group_points() {
        let t0 = datetime!(2024-05-01 11:00 UTC);
        let wire = group_series_to_wire(
            vec![GroupSeries {
                group: NO_GROUP.into(),
                name: "cpu".into(),
                labels: Labels::new(),
                nodes: 3,
                buckets: vec![GroupBucket {
                    start: t0,
                    mean: 2.0,
                    min: 1.0,
                    max: 3.0,
                    samples: 6,
                    nodes: 3,
                }],
            }],
            Resolution::Raw,
        );
        assert_eq!(wire[0].group.as_deref(), Some("(none)"));
        assert_eq!(wire[0].nodes, Some(3));
        assert_eq!(wire[0].node, None);
        assert_eq!(
            wire[0].points,
            vec![MetricPoint {
                time: t0,
                value: 2.0,
                min: Some(1.0),
                max: Some(3.0),
                count: 6
            }]
        );
    }
}
