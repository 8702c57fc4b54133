//! Image references and pull progress: what to ask the engine for, and how to say how far
//! a pull has come in one line ("pulling busybox:1.36: 12.3 of 40.1 MiB").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::engine::StreamMessage;

/// Progress reports are sent at most this often.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The `fromImage` and `tag` query parameters that pull exactly `image`.
///
/// An image named without a tag or digest means `:latest`, as for `docker pull`: the
/// engine API would otherwise pull every tag of the repository.
pub fn pull_parameters(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let last_component = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[last_component..].rfind(':') {
        Some(colon) => {
            let colon = last_component + colon;
            (&image[..colon], &image[colon + 1..])
        }
        None => (image, "latest"),
    }
}

/// Download progress of one pull, summed over its layers.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Layer id → (bytes downloaded, size), once the size is known.
    layers: BTreeMap<String, (u64, u64)>,
}

impl PullProgress {
    /// Takes in one message of the pull stream.
    pub fn update(&mut self, message: &StreamMessage) {
        let (Some(status), Some(id)) = (&message.status, &message.id) else {
            return;
        };
        let detail = message.progress_detail.unwrap_or_default();
        match status.as_str() {
            "Downloading" => {
                if let Some(total) = detail.total.filter(|&t| t > 0) {
                    let current = detail.current.unwrap_or(0).min(total);
                    self.layers.insert(id.clone(), (current, total));
                }
            }
            // Extraction reports progress too, in the same fields: it does not count as
            // downloading, but a layer that got there has all its bytes.
            "Download complete" | "Verifying Checksum" | "Extracting" | "Pull complete" => {
                if let Some(layer) = self.layers.get_mut(id) {
                    layer.0 = layer.1;
                }
            }
            _ => {}
        }
    }

    /// (downloaded, total) bytes over the layers whose size is known so far.
    pub fn totals(&self) -> Option<(u64, u64)> {
        if self.layers.is_empty() {
            return None;
        }
        Some(
            self.layers
                .values()
                .fold((0, 0), |(done, total), (d, t)| (done + d, total + t)),
        )
    }
}

/// `12.3 of 40.1 MiB`, or `12.3 MiB` when the total is unknown.
pub fn describe_bytes(done: u64, total: Option<u64>) -> String {
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    match total {
        Some(total) => format!("{:.1} of {:.1} MiB", mib(done), mib(total)),
        None => format!("{:.1} MiB", mib(done)),
    }
}

/// Lets through at most one report per `PROGRESS_INTERVAL`.
#[derive(Debug)]
pub struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    pub fn new() -> Self {
        Self { last: None }
    }

    /// Whether a report may go out at `now` (and if so, counts it as sent).
    pub fn ready(&mut self, now: Instant) -> bool {
        match self.last {
            Some(last) if now.duration_since(last) < PROGRESS_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        let check = |image, expected| assert_eq!(pull_parameters(image), expected, "{image}");
        check("busybox", ("busybox", "latest"));
        check("busybox:1.36", ("busybox", "1.36"));
        check("library/busybox:1.36", ("library/busybox", "1.36"));
        check(
            "registry.example:5000/app",
            ("registry.example:5000/app", "latest"),
        );
        check(
            "registry.example:5000/app:2",
            ("registry.example:5000/app", "2"),
        );
        check(
            "registry.example/app@sha256:abcd",
            ("registry.example/app", "sha256:abcd"),
        );
    }

    fn message(json: &str) -> StreamMessage {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn progress_sums_downloads_over_layers() {
        let mut progress = PullProgress::default();
        assert_eq!(progress.totals(), None);
        for line in [
            r#"{"status":"Pulling from library/busybox","id":"1.36"}"#,
            r#"{"status":"Pulling fs layer","progressDetail":{},"id":"a"}"#,
            r#"{"status":"Downloading","progressDetail":{"current":1048576,"total":4194304},"id":"a"}"#,
            r#"{"status":"Downloading","progressDetail":{"current":524288,"total":2097152},"id":"b"}"#,
        ] {
            progress.update(&message(line));
        }
        assert_eq!(progress.totals(), Some((1_572_864, 6_291_456)));
        assert_eq!(describe_bytes(1_572_864, Some(6_291_456)), "1.5 of 6.0 MiB");
        // Extraction progress does not count as download progress, but finishes the layer.
        progress.update(&message(
            r#"{"status":"Extracting","progressDetail":{"current":100,"total":4194304},"id":"a"}"#,
        ));
        assert_eq!(progress.totals(), Some((4_194_304 + 524_288, 6_291_456)));
        progress.update(&message(
            r#"{"status":"Pull complete","progressDetail":{},"id":"b"}"#,
        ));
        assert_eq!(progress.totals(), Some((6_291_456, 6_291_456)));
    }

    #[test]
    fn throttle_allows_one_report_a_second() {
        let start = Instant::now();
        let mut throttle = Throttle::new();
        assert!(throttle.ready(start));
        assert!(!throttle.ready(start + Duration::from_millis(999)));
        assert!(throttle.ready(start + Duration::from_millis(1000)));
        assert!(!throttle.ready(start + Duration::from_millis(1500)));
    }

    #[test]
    fn byte_counts_read_as_mib() {
        assert_eq!(
            describe_bytes(12_897_485, Some(42_047_488)),
            "12.3 of 40.1 MiB"
        );
        assert_eq!(describe_bytes(0, None), "0.0 MiB");
    }
}
