//! Where rows go in the lake, decided without IO: which rows of a batch a sink may take
//! (residency), how they are grouped into files (one per stream, date, site and payload
//! kind), each file's key, and which date partitions retention removes.
//!
//! Keys are Hive-style, so query engines read the partitions as columns:
//! `<prefix>stream=<stream>/date=<YYYY-MM-DD>/site=<site>/part-<first_id>-<last_id>.parquet`.
//! Partition values are escaped like Hive does (`%XX` for anything but letters, digits,
//! `-`, `_` and inner `.`), so a value can never add a path segment or climb out of one.
//!
//! **Invariant:** the same rows and labels always give the same files with the same keys
//! (rows are grouped in id order, files are named after the ids they hold), which is what
//! makes a retried batch overwrite its files rather than add new ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use edgefleet_wire::manifest::Selector;
use edgefleet_wire::{Labels, Timestamp};
use time::Date;

use super::rows::{LakeMetricRow, LakeRecordRow, RecordPayload};

/// The node label that names the site partition.
pub const SITE_LABEL: &str = "site";
/// The site partition of nodes without a site label.
pub const NO_SITE: &str = "_none";

/// What a file's rows hold; a file holds one kind, so each file has one schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    /// Stream records whose data is JSON text.
    JsonRecords,
    /// Stream records whose data is bytes.
    BytesRecords,
    Metrics,
}

/// A row the lake can place: its id, node, stream, time and kind.
pub trait LakeRow {
    fn id(&self) -> u64;
    fn node(&self) -> &str;
    fn stream(&self) -> &str;
    fn time(&self) -> Timestamp;
    fn kind(&self) -> FileKind;
}

impl LakeRow for LakeRecordRow {
    fn id(&self) -> u64 {
        self.id
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn stream(&self) -> &str {
        &self.stream
    }
    fn time(&self) -> Timestamp {
        self.time
    }
    fn kind(&self) -> FileKind {
        match self.payload {
            RecordPayload::Json(_) => FileKind::JsonRecords,
            RecordPayload::Bytes(_) => FileKind::BytesRecords,
        }
    }
}

impl LakeRow for LakeMetricRow {
    fn id(&self) -> u64 {
        self.id
    }
    fn node(&self) -> &str {
        &self.node
    }
    fn stream(&self) -> &str {
        edgefleet_wire::telemetry::METRICS_STREAM
    }
    fn time(&self) -> Timestamp {
        self.time
    }
    fn kind(&self) -> FileKind {
        FileKind::Metrics
    }
}

/// One file to write: its key and its rows, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePlan<'r, R> {
    pub key: String,
    pub kind: FileKind,
    pub rows: Vec<&'r R>,
}

/// What a batch becomes in one sink.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan<'r, R> {
    /// Sorted by key.
    pub files: Vec<FilePlan<'r, R>>,
    /// Ids of the rows written (in id order).
    pub exported_ids: Vec<u64>,
    /// Rows held back because their node does not match the sink's residency, by node.
    pub held: BTreeMap<String, u64>,
}

impl<R> BatchPlan<'_, R> {
    pub fn held_rows(&self) -> u64 {
        self.held.values().sum()
    }
}

/// Splits a batch into files for a sink with this residency and key prefix. `labels` are
/// the nodes' labels (a node absent from it has none).
pub fn plan_batch<'r, R: LakeRow>(
    rows: &'r [R],
    labels: &BTreeMap<String, Labels>,
    residency: &Selector,
    prefix: &str,
) -> BatchPlan<'r, R> {
    let no_labels = Labels::new();
    let mut groups: BTreeMap<(String, Date, String, FileKind), Vec<&'r R>> = BTreeMap::new();
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    let mut exported_ids = Vec::with_capacity(rows.len());
    for row in rows {
        let node_labels = labels.get(row.node()).unwrap_or(&no_labels);
        if !edgefleet_core::selector::matches(residency, node_labels) {
            *held.entry(row.node().to_owned()).or_default() += 1;
            continue;
        }
        exported_ids.push(row.id());
        let site = node_labels
            .get(SITE_LABEL)
            .filter(|site| !site.is_empty())
            .map_or(NO_SITE, String::as_str);
        let key = (
            row.stream().to_owned(),
            partition_date(row.time()),
            site.to_owned(),
            row.kind(),
        );
        groups.entry(key).or_default().push(row);
    }
    let mut files: Vec<FilePlan<'r, R>> = groups
        .into_iter()
        .filter_map(|((stream, date, site, kind), rows)| {
            let first = rows.iter().map(|r| r.id()).min()?;
            let last = rows.iter().map(|r| r.id()).max()?;
            Some(FilePlan {
                key: object_key(prefix, &stream, date, &site, first, last),
                kind,
                rows,
            })
        })
        .collect();
    files.sort_by(|a, b| a.key.cmp(&b.key));
    exported_ids.sort_unstable();
    BatchPlan {
        files,
        exported_ids,
        held,
    }
}

/// The UTC day of a time.
pub fn partition_date(time: Timestamp) -> Date {
    time.to_offset(time::UtcOffset::UTC).date()
}

/// `YYYY-MM-DD` (years beyond 9999 are not dates any real clock gives; they keep the
/// `time` crate's `+YYYYY` form).
pub fn format_date(date: Date) -> String {
    date.to_string()
}

/// The key of a file holding rows `first_id..=last_id` of one partition.
pub fn object_key(
    prefix: &str,
    stream: &str,
    date: Date,
    site: &str,
    first_id: u64,
    last_id: u64,
) -> String {
    format!(
        "{prefix}stream={}/date={}/site={}/part-{first_id}-{last_id}.parquet",
        escape_value(stream),
        format_date(date),
        escape_value(site)
    )
}

/// The key prefix of every file of one stream.
pub fn stream_prefix(prefix: &str, stream: &str) -> String {
    format!("{prefix}stream={}/", escape_value(stream))
}

/// Escapes a partition value for a path segment: letters, digits, `-` and `_` stay, and `.`
/// unless it starts the value (no hidden files, no `.` or `..`); every other byte of the
/// UTF-8 form becomes `%XX`. The empty value becomes `_none`.
pub fn escape_value(value: &str) -> String {
    if value.is_empty() {
        return NO_SITE.to_owned();
    }
    let mut escaped = String::with_capacity(value.len());
    for (index, byte) in value.bytes().enumerate() {
        let keep = byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_')
            || (byte == b'.' && index > 0);
        if keep {
            escaped.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(escaped, "%{byte:02X}");
        }
    }
    escaped
}

/// The first day retention keeps: a date partition holds data up to its end, so it goes once
/// its last moment is older than `retention`, that is once the day is before this one.
pub fn retention_cutoff(now: Timestamp, retention: Duration) -> Option<Date> {
    let retention = time::Duration::try_from(retention).ok()?;
    now.checked_sub(retention).map(partition_date)
}

/// The date of a `date=YYYY-MM-DD` segment.
pub fn parse_date_segment(segment: &str) -> Option<Date> {
    let text = segment.strip_prefix("date=")?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, format).ok()
}

/// Whether the object at `key` (a key under `stream_prefix`) is in a date partition before
/// `cutoff`. Keys not in the lake's layout are never expired.
pub fn is_expired(key: &str, stream_prefix: &str, cutoff: Date) -> bool {
    key.strip_prefix(stream_prefix)
        .and_then(|rest| rest.split('/').next())
        .and_then(parse_date_segment)
        .is_some_and(|date| date < cutoff)
}

#[cfg(test)]
mod tests {
    use time::macros::{date, datetime};

    use super::*;

    fn record(id: u64, node: &str, stream: &str, time: Timestamp, json: bool) -> LakeRecordRow {
        LakeRecordRow {
            id,
            node: node.into(),
            stream: stream.into(),
            deployment: "dep".into(),
            seq: id,
            time,
            received_at: time,
            payload: if json {
                RecordPayload::Json("{}".into())
            } else {
                RecordPayload::Bytes(vec![1])
            },
        }
    }

    fn labels(pairs: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, Labels> {
        pairs
            .iter()
            .map(|(node, labels)| {
                let labels = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                ((*node).to_owned(), labels)
            })
            .collect()
    }

    fn keys<'p, R>(plan: &'p BatchPlan<'_, R>) -> Vec<&'p str> {
        plan.files.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn groups_by_stream_date_site_and_kind() {
        let day1 = datetime!(2024-03-01 23:59:59.999 UTC);
        let day2 = datetime!(2024-03-02 00:00 UTC);
        let rows = vec![
            record(1, "n1", "readings", day1, true),
            record(2, "n2", "readings", day1, true),
            record(3, "n1", "readings", day2, true),
            record(4, "n3", "readings", day1, true),
            record(5, "n1", "events", day1, true),
            record(6, "n1", "readings", day1, false),
            record(7, "n1", "readings", day1, true),
        ];
        let labels = labels(&[("n1", &[("site", "berlin")]), ("n2", &[("site", "berlin")])]);
        let plan = plan_batch(&rows, &labels, &Selector::default(), "p/");
        assert_eq!(
            keys(&plan),
            [
                "p/stream=events/date=2024-03-01/site=berlin/part-5-5.parquet",
                "p/stream=readings/date=2024-03-01/site=_none/part-4-4.parquet",
                "p/stream=readings/date=2024-03-01/site=berlin/part-1-7.parquet",
                "p/stream=readings/date=2024-03-01/site=berlin/part-6-6.parquet",
                "p/stream=readings/date=2024-03-02/site=berlin/part-3-3.parquet",
            ]
        );
        let berlin = &plan.files[2];
        assert_eq!(berlin.kind, FileKind::JsonRecords);
        assert_eq!(
            berlin.rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2, 7]
        );
        assert_eq!(plan.files[3].kind, FileKind::BytesRecords);
        assert_eq!(plan.exported_ids, [1, 2, 3, 4, 5, 6, 7]);
        assert!(plan.held.is_empty());
    }

    #[test]
    fn same_rows_same_files() {
        let t = datetime!(2024-03-01 12:00 UTC);
        let rows: Vec<_> = (1..50)
            .map(|id| record(id, ["a", "b", "c"][id as usize % 3], "s", t, id % 7 != 0))
            .collect();
        let labels = labels(&[("a", &[("site", "x")]), ("b", &[("site", "y")])]);
        let first = plan_batch(&rows, &labels, &Selector::default(), "");
        let second = plan_batch(&rows, &labels, &Selector::default(), "");
        assert_eq!(first, second);
        let total: usize = first.files.iter().map(|f| f.rows.len()).sum();
        assert_eq!(total, rows.len());
    }

    #[test]
    fn residency_holds_rows_of_other_nodes() {
        let t = datetime!(2024-03-01 12:00 UTC);
        let rows = vec![
            record(1, "eu1", "s", t, true),
            record(2, "us1", "s", t, true),
            record(3, "nolabels", "s", t, true),
            record(4, "us1", "s", t, true),
        ];
        let labels = labels(&[("eu1", &[("region", "eu")]), ("us1", &[("region", "us")])]);
        let residency = edgefleet_core::selector::parse("region in (eu)").unwrap();
        let plan = plan_batch(&rows, &labels, &residency, "");
        assert_eq!(
            keys(&plan),
            ["stream=s/date=2024-03-01/site=_none/part-1-1.parquet"]
        );
        assert_eq!(plan.exported_ids, [1]);
        assert_eq!(
            plan.held,
            [("nolabels".to_owned(), 1), ("us1".to_owned(), 2)].into()
        );
        assert_eq!(plan.held_rows(), 3);
    }

    #[test]
    fn metrics_go_to_the_metrics_stream() {
        let rows = vec![LakeMetricRow {
            id: 9,
            node: "n".into(),
            name: "cpu".into(),
            labels: "{}".into(),
            time: datetime!(2024-01-31 10:00 UTC),
            value: 1.0,
        }];
        let plan = plan_batch(&rows, &BTreeMap::new(), &Selector::default(), "");
        assert_eq!(
            keys(&plan),
            ["stream=metrics/date=2024-01-31/site=_none/part-9-9.parquet"]
        );
        assert_eq!(plan.files[0].kind, FileKind::Metrics);
    }

    #[test]
    fn dates_are_utc() {
        let t = datetime!(2024-03-02 01:00 +03:00);
        assert_eq!(partition_date(t), date!(2024 - 03 - 01));
    }

    #[test]
    fn values_cannot_escape_their_segment() {
        for (value, escaped) in [
            ("berlin", "berlin"),
            ("eu-west_1.a", "eu-west_1.a"),
            ("", "_none"),
            (".", "%2E"),
            ("..", "%2E."),
            (".hidden", "%2Ehidden"),
            ("a/b", "a%2Fb"),
            ("a=b", "a%3Db"),
            ("100%", "100%25"),
            ("x y", "x%20y"),
            ("köln", "k%C3%B6ln"),
        ] {
            assert_eq!(escape_value(value), escaped, "{value:?}");
        }
        for value in ["..", "../..", "/", "a/../b", "%2F"] {
            let escaped = escape_value(value);
            assert!(!escaped.contains('/'), "{escaped}");
            assert!(escaped != "." && escaped != "..", "{escaped}");
        }
    }

    #[test]
    fn retention_removes_whole_days_only() {
        let week = Duration::from_secs(7 * 86_400);
        // Now minus 7 days is 2024-03-03 12:00: days up to 03-02 are entirely older.
        let cutoff = retention_cutoff(datetime!(2024-03-10 12:00 UTC), week).unwrap();
        assert_eq!(cutoff, date!(2024 - 03 - 03));
        let prefix = stream_prefix("lake/", "readings");
        assert_eq!(prefix, "lake/stream=readings/");
        let key = |date: &str| format!("{prefix}date={date}/site=a/part-1-2.parquet");
        assert!(is_expired(&key("2024-03-02"), &prefix, cutoff));
        assert!(is_expired(&key("2023-12-31"), &prefix, cutoff));
        assert!(!is_expired(&key("2024-03-03"), &prefix, cutoff));
        assert!(!is_expired(&key("2024-03-10"), &prefix, cutoff));
        assert!(!is_expired(
            "lake/stream=readings/notes.txt",
            &prefix,
            cutoff
        ));
        assert!(!is_expired(
            "lake/stream=readings/date=garbage/x",
            &prefix,
            cutoff
        ));
        assert!(!is_expired(
            &key("2024-03-01").replace("readings", "other"),
            &prefix,
            cutoff
        ));
        assert_eq!(
            retention_cutoff(datetime!(2024-03-10 12:00 UTC), Duration::MAX),
            None
        );
    }
}
