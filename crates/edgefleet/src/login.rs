//! `edgefleet login`: fetch a server's CA over a connection pinned to its fingerprint,
//! check the token works, and save all three to the config file.
//!
//! The fingerprint comes from the operator (printed by `edgefleet server`), so the CA is
//! never trusted on first use.

use anyhow::{Context, bail};
use edgefleet_wire::api::{CaInfo, NodeSummary};

use crate::cli::{GlobalArgs, LoginArgs};
use crate::client::{ApiClient, ClientError};
use crate::commands::config_path;
use crate::config::{CliConfig, Connection, normalise_url};
use crate::output;

/// Lower-case hex without separators; accepts `AB:CD:...` as printed by openssl.
pub fn normalise_fingerprint(input: &str) -> anyhow::Result<String> {
    let hex: String = input
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("invalid CA fingerprint {input:?}: expected the 64 hex digits of a SHA-256 digest");
    }
    Ok(hex)
}

/// The fingerprint to pin: from `--ca-fingerprint`, or computed from `--ca-cert`.
fn expected_fingerprint(global: &GlobalArgs, args: &LoginArgs) -> anyhow::Result<String> {
    let from_file = match &global.ca_cert {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let fingerprint = edgefleet_tls::fingerprint_pem(&pem)
                .with_context(|| format!("reading the CA certificate {}", path.display()))?;
            Some(fingerprint)
        }
        None => None,
    };
    let from_flag = args
        .ca_fingerprint
        .as_deref()
        .map(normalise_fingerprint)
        .transpose()?;
    match (from_flag, from_file) {
        (Some(flag), Some(file)) if flag != file => bail!(
            "--ca-fingerprint {flag} does not match the certificate given with --ca-cert (fingerprint {file})"
        ),
        (Some(fingerprint), _) | (None, Some(fingerprint)) => Ok(fingerprint),
        (None, None) => bail!(
            "login needs the server's CA: pass --ca-fingerprint HEX (printed by `edgefleet server`) or --ca-cert FILE"
        ),
    }
}

pub async fn run(global: &GlobalArgs, args: &LoginArgs) -> anyhow::Result<()> {
    let Some(server) = global.server.as_deref().map(normalise_url) else {
        bail!("login needs --server URL (or EDGEFLEET_SERVER)");
    };
    let Some(token) = global.token.clone() else {
        bail!("login needs --token TOKEN (or EDGEFLEET_TOKEN)");
    };
    let fingerprint = expected_fingerprint(global, args)?;
    let tls = edgefleet_tls::pinned_client_config(&fingerprint)
        .context("building the TLS configuration")?;
    let pinned = ApiClient::with_tls(&server, None, tls)?;
    let ca: CaInfo = pinned
        .get(&["v1", "ca"], &[])
        .await
        .map_err(|error| match error {
            ClientError::Tls { url, cause } => anyhow::anyhow!(
                "the server at {url} is not the one with CA fingerprint {fingerprint}: {cause} \
             (compare with the fingerprint `edgefleet server` printed)"
            ),
            other => other.into(),
        })?;
    // The TLS layer already checked the chain; check the PEM we are about to store, too.
    let actual = edgefleet_tls::fingerprint_pem(&ca.ca_pem)
        .context("the server sent an unreadable CA certificate")?;
    if actual != fingerprint {
        bail!(
            "the server's CA certificate has fingerprint {actual}, not the expected {fingerprint}; nothing was saved"
        );
    }
    let connection = Connection {
        server: server.clone(),
        token: Some(token.clone()),
        ca_pem: ca.ca_pem.clone(),
    };
    let nodes: Vec<NodeSummary> = ApiClient::new(&connection)?
        .get(&["v1", "nodes"], &[])
        .await?;
    let path = config_path(global)?;
    CliConfig {
        server: Some(server.clone()),
        token: Some(token),
        ca_cert: Some(ca.ca_pem),
    }
    .save(&path)?;
    output::stdout(&format!(
        "logged in to {server} ({} nodes); saved to {}\n",
        nodes.len(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_normalised() {
        let hex = "AB".repeat(32);
        assert_eq!(normalise_fingerprint(&hex).unwrap(), "ab".repeat(32));
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(normalise_fingerprint(&colons).unwrap(), "ab".repeat(32));
        assert!(normalise_fingerprint("abc").is_err());
        assert!(normalise_fingerprint(&"zz".repeat(32)).is_err());
    }
}
