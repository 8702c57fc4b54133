//! Stream names, stream policies, and which records make room when the outbox is full.
//! Pure: the outbox describes what it holds, these functions decide.

use std::time::Duration;

/// The longest stream name.
pub const STREAM_NAME_MAX: usize = 63;

/// How long a stream's records are kept, and how they rank when room is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPolicy {
    /// 0 to 9; when the outbox is full the lowest goes first.
    pub priority: u8,
    /// Records older than this are dropped unsent.
    pub ttl: Duration,
}

/// The highest priority.
pub const MAX_PRIORITY: u8 = 9;
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

impl StreamPolicy {
    /// The policy of a stream nobody set one for.
    pub const DEFAULT: Self = Self {
        priority: 5,
        ttl: WEEK,
    };
    /// The built-in `metrics` stream's policy.
    pub const METRICS: Self = Self {
        priority: 3,
        ttl: WEEK,
    };

    /// The policy of `stream` when none was set.
    pub fn built_in(stream: &str) -> Self {
        if stream == edgefleet_wire::telemetry::METRICS_STREAM {
            Self::METRICS
        } else {
            Self::DEFAULT
        }
    }

    /// Why this policy cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.priority > MAX_PRIORITY {
            return Some(format!(
                "priority {} is out of range (0 to {MAX_PRIORITY})",
                self.priority
            ));
        }
        if self.ttl.is_zero() {
            return Some("the time to live must be above zero".to_owned());
        }
        None
    }

    /// The time to live in milliseconds, saturating.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Why `name` is not a stream name (`[a-z0-9][a-z0-9._-]{0,62}`), if it is not.
pub fn stream_name_problem(name: &str) -> Option<String> {
    let Some(first) = name.bytes().next() else {
        return Some("a stream name cannot be empty".to_owned());
    };
    if name.len() > STREAM_NAME_MAX {
        return Some(format!(
            "a stream name has at most {STREAM_NAME_MAX} characters, this one {}",
            name.len()
        ));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Some("a stream name starts with a lowercase letter or a digit".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "a stream name holds only lowercase letters, digits, '.', '_' and '-', not {bad:?}"
        ));
    }
    None
}

/// One stream as the room planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub priority: u8,
    /// Its segments, oldest first.
    pub segments: Vec<SegmentHolding>,
}

/// One segment as the room planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHolding {
    /// Bytes on disk: what dropping it frees.
    pub file_bytes: u64,
    /// When the oldest record still waiting in it was accepted (unix ms).
    pub oldest_ms: i64,
}

/// Which segments to drop, as (index into the holdings, number of its oldest segments).
pub type RoomPlan = Vec<(usize, usize)>;

/// Plans room for `needed` more bytes in an outbox holding `used` of at most `max_bytes`:
/// whole segments go, oldest first, from the stream with the lowest priority; between
/// streams of equal priority the one whose oldest record is older goes first (then the
/// lower index). The stream being appended to is a stream like any other: it loses
/// records only when no stream of lower priority holds any. `None` when even an empty
/// outbox could not hold `needed` bytes.
pub fn plan_room(holdings: &[Holding], used: u64, needed: u64, max_bytes: u64) -> Option<RoomPlan> {
    if needed > max_bytes {
        return None;
    }
    let mut dropped = vec![0usize; holdings.len()];
    let mut used = used;
    while used.saturating_add(needed) > max_bytes {
        let victim = holdings
            .iter()
            .enumerate()
            .filter_map(|(index, holding)| {
                let front = holding.segments.get(dropped[index])?;
                Some((holding.priority, front.oldest_ms, index, front.file_bytes))
            })
            .min();
        // Nothing left to drop while still over: the bookkeeping of `used` is off, but
        // the outbox is empty, so the record fits.
        let Some((_, _, index, bytes)) = victim else {
            break;
        };
        dropped[index] += 1;
        used = used.saturating_sub(bytes);
    }
    Some(
        dropped
            .into_iter()
            .enumerate()
            .filter(|&(_, count)| count > 0)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(priority: u8, segments: &[(u64, i64)]) -> Holding {
        Holding {
            priority,
            segments: segments
                .iter()
                .map(|&(file_bytes, oldest_ms)| SegmentHolding {
                    file_bytes,
                    oldest_ms,
                })
                .collect(),
        }
    }

    #[test]
    fn stream_names() {
        for good in ["metrics", "a", "0", "app.logs_v2-x", &"a".repeat(63)] {
            assert_eq!(stream_name_problem(good), None, "{good}");
        }
        for (bad, expected) in [
            ("", "empty"),
            ("Metrics", "starts with"),
            (".hidden", "starts with"),
            ("-x", "starts with"),
            ("a/b", "'/'"),
            ("a b", "' '"),
            ("aé", "'é'"),
            (&"a".repeat(64), "at most 63"),
        ] {
            let problem = stream_name_problem(bad).unwrap_or_default();
            assert!(problem.contains(expected), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn policies() {
        assert_eq!(StreamPolicy::built_in("metrics").priority, 3);
        assert_eq!(StreamPolicy::built_in("app").priority, 5);
        assert_eq!(StreamPolicy::built_in("app").ttl, WEEK);
        let bad = StreamPolicy {
            priority: 10,
            ttl: WEEK,
        };
        assert!(bad.problem().unwrap_or_default().contains("0 to 9"));
        let zero = StreamPolicy {
            priority: 1,
            ttl: Duration::ZERO,
        };
        assert!(zero.problem().is_some());
        assert_eq!(StreamPolicy::DEFAULT.problem(), None);
    }

    fn check(holdings: &[Holding], used: u64, needed: u64, max: u64, expected: Option<RoomPlan>) {
        assert_eq!(plan_room(holdings, used, needed, max), expected);
    }

    #[test]
    fn nothing_goes_while_there_is_room() {
        let h = [holding(1, &[(100, 1)])];
        check(&h, 100, 50, 150, Some(vec![]));
        check(&h, 0, 150, 150, Some(vec![]));
    }

    #[test]
    fn a_record_larger_than_the_bound_is_refused() {
        check(&[], 0, 151, 150, None);
    }

    #[test]
    fn the_lowest_priority_goes_first_oldest_segment_first() {
        let h = [
            holding(5, &[(100, 1), (100, 2)]),
            holding(3, &[(100, 10), (100, 11)]),
            holding(9, &[(100, 0)]),
        ];
        // 500 used of 500; 10 more need one segment: stream 1's oldest, although stream
        // 2's and stream 0's records are older.
        check(&h, 500, 10, 500, Some(vec![(1, 1)]));
        // 150 more need two segments: both of stream 1.
        check(&h, 500, 150, 500, Some(vec![(1, 2)]));
        // 250 more: stream 1 is empty after two, then stream 0's oldest.
        check(&h, 500, 250, 500, Some(vec![(0, 1), (1, 2)]));
        // Everything but the highest priority.
        check(&h, 500, 400, 500, Some(vec![(0, 2), (1, 2)]));
        check(&h, 500, 500, 500, Some(vec![(0, 2), (1, 2), (2, 1)]));
    }

    #[test]
    fn equal_priorities_lose_their_oldest_records_first() {
        let h = [
            holding(4, &[(100, 50), (100, 60)]),
            holding(4, &[(100, 40), (100, 55)]),
        ];
        // 40 (stream 1), then 50 (stream 0), then 55 (stream 1), then 60 (stream 0).
        check(&h, 400, 1, 400, Some(vec![(1, 1)]));
        check(&h, 400, 101, 400, Some(vec![(0, 1), (1, 1)]));
        check(&h, 400, 201, 400, Some(vec![(0, 1), (1, 2)]));
        // A tie in age too: the lower index.
        let tie = [holding(4, &[(100, 5)]), holding(4, &[(100, 5)])];
        check(&tie, 200, 1, 200, Some(vec![(0, 1)]));
    }

    #[test]
    fn the_appending_stream_loses_its_own_records_only_when_it_ranks_lowest() {
        // The caller appends to stream 0 (priority 7); stream 1 (priority 2) holds a
        // newer segment and still goes first.
        let h = [holding(7, &[(100, 1)]), holding(2, &[(100, 99)])];
        check(&h, 200, 100, 200, Some(vec![(1, 1)]));
        // Only itself and higher: its own oldest.
        let h = [holding(7, &[(100, 1), (100, 2)]), holding(8, &[(100, 0)])];
        check(&h, 300, 100, 300, Some(vec![(0, 1)]));
    }
}
