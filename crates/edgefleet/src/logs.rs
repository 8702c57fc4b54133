//! `edgefleet logs NODE WORKLOAD`: a workload's output, fetched from its node through the
//! server (which relays it from the node's agent), optionally followed live.
//!
//! Lines the workload wrote to stdout go to stdout, stderr lines to stderr, each flushed as
//! it arrives so that `edgefleet logs -f ... | grep` sees lines at once. An error frame
//! from the agent (unknown workload, unreadable log) ends the command with its message;
//! Ctrl-C ends a follow cleanly.

use std::io::Write;
use std::str::FromStr;

use anyhow::{Context, bail};
use edgefleet_wire::DurationSpec;
use edgefleet_wire::session::{LogFrame, LogLine, LogStream};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use crate::cli::LogsArgs;
use crate::client::ApiClient;
use crate::shutdown;

/// `--since`: a time, or how far back from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    At(OffsetDateTime),
    Ago(DurationSpec),
}

impl FromStr for Since {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
            return Ok(Self::At(at));
        }
        text.parse::<DurationSpec>().map(Self::Ago).map_err(|_| {
            format!(
                "{text:?} is neither a duration back from now (10m, 2h, 1d) nor an RFC 3339 time (2026-11-26T16:00:00Z)"
            )
        })
    }
}

impl Since {
    /// As the server takes it: the duration is measured back from the server's clock, not
    /// this machine's.
    pub fn query_value(&self) -> String {
        match self {
            Self::At(at) => at.format(&Rfc3339).unwrap_or_else(|_| at.to_string()),
            Self::Ago(duration) => duration.to_string(),
        }
    }
}

pub async fn run(client: &ApiClient, args: &LogsArgs) -> anyhow::Result<()> {
    let stop = shutdown::requested()?;
    let mut query = vec![("follow", args.follow.to_string())];
    if let Some(since) = &args.since {
        query.push(("since", since.query_value()));
    }
    if let Some(tail) = args.tail {
        query.push(("tail", tail.to_string()));
    }
    let segments = [
        "v1",
        "nodes",
        args.node.as_str(),
        "workloads",
        args.workload.as_str(),
        "logs",
    ];
    tokio::select! {
        () = stop => Ok(()),
        result = stream(client, &segments, &query, args) => result,
    }
}

async fn stream(
    client: &ApiClient,
    segments: &[&str],
    query: &[(&str, String)],
    args: &LogsArgs,
) -> anyhow::Result<()> {
    let mut response = client.get_stream(segments, query).await?;
    let mut printer = Printer {
        timestamps: args.timestamps,
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = response.chunk().await.with_context(|| {
            format!(
                "the log stream of workload {:?} on node {:?} broke",
                args.workload, args.node
            )
        })?;
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if !printer.frame(&line[..end])? {
                return Ok(());
            }
        }
    }
    if !pending.is_empty() {
        bail!(
            "the log stream of workload {:?} on node {:?} ended in the middle of a line",
            args.workload,
            args.node
        );
    }
    if args.follow {
        bail!(
            "the server ended the log stream of workload {:?} on node {:?}",
            args.workload,
            args.node
        );
    }
    Ok(())
}

struct Printer {
    timestamps: bool,
}

impl Printer {
    /// Prints one JSON line. False when there is no point going on (stdout closed).
    fn frame(&mut self, json: &[u8]) -> anyhow::Result<bool> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(true);
        }
        let frame: LogFrame = serde_json::from_slice(json).with_context(|| {
            format!(
                "unexpected line in the log stream: {}",
                String::from_utf8_lossy(&json[..json.len().min(200)])
            )
        })?;
        match frame {
            LogFrame::Line(line) => self.line(&line),
            LogFrame::Error { message } => bail!("{message}"),
        }
    }

    fn line(&self, line: &LogLine) -> anyhow::Result<bool> {
        let text = render(line, self.timestamps);
        let written = match line.stream {
            LogStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            LogStream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(text.as_bytes()).and_then(|()| err.flush())
            }
        };
        match written {
            Ok(()) => Ok(true),
            // `edgefleet logs ... | head`: the reader has what it wanted.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(error).context("writing the log output"),
        }
    }
}

/// `--timestamps`: RFC 3339 in UTC with exactly six fractional digits, as the node stores
/// it (`2026-11-26T16:02:42.123450Z`). Plain RFC 3339 formatting drops trailing zeros
/// (`.12345Z`, or none at all on a whole second), which would make the column ragged and
/// the stamp's length depend on its value. Cut, never rounded, to the microsecond: a stamp
/// passed back as `--since` still selects its own line.
const STAMP_FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// One output line, with its time in front if asked for.
fn render(line: &LogLine, timestamps: bool) -> String {
    if timestamps {
        let at = line
            .ts
            .to_offset(time::UtcOffset::UTC)
            .format(STAMP_FORMAT)
            .unwrap_or_else(|_| line.ts.to_string());
        format!("{at} {}\n", line.line)
    } else {
        format!("{}\n", line.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        assert_eq!(
            "10m".parse::<Since>().unwrap(),
            Since::Ago(DurationSpec::from_secs(600))
        );
        assert_eq!("10m".parse::<Since>().unwrap().query_value(), "10m");
        let at = "2026-11-26T16:00:00Z".parse::<Since>().unwrap();
        assert_eq!(at.query_value(), "2026-11-26T16:00:00Z");
        let error = "yesterday".parse::<Since>().unwrap_err();
        assert!(
            error.contains("\"yesterday\"") && error.contains("10m"),
            "{error}"
        );
    }

    #[test]
    fn lines_render_with_optional_timestamps() {
        let line = LogLine {
            ts: OffsetDateTime::parse("2026-11-26T16:02:42.123456Z", &Rfc3339).unwrap(),
            stream: LogStream::Stdout,
            line: "hello".into(),
        };
        assert_eq!(render(&line, false), "hello\n");
        assert_eq!(render(&line, true), "2026-11-26T16:02:42.123456Z hello\n");
        // Every stamp has the same width: trailing zeros are kept, sub-microsecond digits
        // are cut (not rounded), and the time is shown in UTC whatever its offset.
        for (ts, shown) in [
            ("2026-11-26T16:02:42.123450Z", "2026-11-26T16:02:42.123450Z"),
            ("2026-11-26T16:02:42Z", "2026-11-26T16:02:42.000000Z"),
            (
                "2026-11-26T16:02:42.999999999Z",
                "2026-11-26T16:02:42.999999Z",
            ),
            ("2026-11-26T18:02:42.5+02:00", "2026-11-26T16:02:42.500000Z"),
        ] {
            let line = LogLine {
                ts: OffsetDateTime::parse(ts, &Rfc3339).unwrap(),
                ..line.clone()
            };
            assert_eq!(render(&line, true), format!("{shown} hello\n"), "{ts}");
        }
    }

    #[test]
    fn error_frames_end_with_their_message() {
        let mut printer = Printer { timestamps: false };
        let error = printer
            .frame(br#"{"type":"error","message":"node \"a\" has no workload \"b\""}"#)
            .unwrap_err();
        assert_eq!(error.to_string(), "node \"a\" has no workload \"b\"");
        let garbage = printer.frame(b"not json").unwrap_err();
        assert!(garbage.to_string().contains("not json"), "{garbage}");
    }
}
