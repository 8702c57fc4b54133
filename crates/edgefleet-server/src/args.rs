//! The server's typed configuration (`edgefleet server` flags), as fixed in
//! `docs/dev/contracts.md`.

use std::net::SocketAddr;
use std::path::PathBuf;

use edgefleet_wire::DurationSpec;
use edgefleet_wire::workload::ByteSize;

/// Everything `Server::start` needs. Every flag is also readable from an `EDGEFLEET_*`
/// environment variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Where the server keeps its CA, certificates, admin token and database
    /// [default: $XDG_DATA_HOME/edgefleet/server or ~/.local/share/edgefleet/server]
    #[arg(long, env = "EDGEFLEET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, env = "EDGEFLEET_LISTEN", default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// URL agents and the CLI use to reach the server [default: https://<listen ip>:<port>]
    #[arg(long, env = "EDGEFLEET_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Extra DNS names or IP addresses for the server certificate (repeatable, comma separated)
    #[arg(long = "san", env = "EDGEFLEET_SAN", value_delimiter = ',')]
    pub san: Vec<String>,
    /// Lifetime of node certificates
    #[arg(long, env = "EDGEFLEET_NODE_CERT_VALIDITY", default_value = "7d")]
    pub node_cert_validity: DurationSpec,
    /// A node is NotReady when not heard from for this long. Agents are heard from at
    /// least at every desired-state poll (every 90 s when idle), so keep it above that
    #[arg(long, env = "EDGEFLEET_NOT_READY_AFTER", default_value = "150s")]
    pub not_ready_after: DurationSpec,
    /// Largest request body accepted, in bytes
    #[arg(long, env = "EDGEFLEET_MAX_BODY_BYTES", default_value_t = 1048576)]
    pub max_body_bytes: usize,
    /// Largest artifact accepted by `POST /v1/artifacts` (512Mi, 8Gi, 10G, ...)
    #[arg(long, env = "EDGEFLEET_MAX_ARTIFACT_SIZE", default_value = "8Gi")]
    pub max_artifact_size: ByteSize,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    #[command(flatten)]
    pub lake: crate::lake::LakeArgs,
    #[command(flatten)]
    pub alerts: crate::alerts::AlertArgs,
}

impl ServerArgs {
    /// The defaults, with the data directory set: what tests and embedders start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: Some(data_dir.into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            advertise_url: None,
            san: Vec::new(),
            node_cert_validity: DurationSpec::from_secs(7 * 86_400),
            not_ready_after: DurationSpec::from_secs(150),
            max_body_bytes: 1_048_576,
            max_artifact_size: ByteSize(8 << 30),
            telemetry: Default::default(),
            lake: Default::default(),
            alerts: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    #[test]
    fn clap_defaults_match_with_data_dir() {
        let parsed = Cli::try_parse_from(["edgefleet", "--data-dir", "/x"])
            .unwrap()
            .args;
        let built = ServerArgs::with_data_dir("/x");
        assert_eq!(parsed.listen, built.listen);
        assert_eq!(parsed.node_cert_validity, built.node_cert_validity);
        assert_eq!(parsed.not_ready_after, built.not_ready_after);
        assert_eq!(parsed.max_body_bytes, built.max_body_bytes);
        assert_eq!(parsed.max_artifact_size, built.max_artifact_size);
        let sans = Cli::try_parse_from(["edgefleet", "--san", "a.example,10.0.0.1", "--san", "b"])
            .unwrap()
            .args
            .san;
        assert_eq!(sans, ["a.example", "10.0.0.1", "b"]);
    }
}
