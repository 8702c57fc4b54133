//! `edgefleet server`: start the control plane, write the CLI config so the other commands
//! work at once, tell the operator how to reach it, and serve until Ctrl-C/SIGTERM.

use std::path::{Path, PathBuf};

use anyhow::Context;
use edgefleet_server::{Server, ServerArgs, StartInfo};

use crate::cli::GlobalArgs;
use crate::commands::config_path;
use crate::config::{CliConfig, normalise_url};
use crate::output::note;

/// What to do with the user's own CLI config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserConfig {
    /// It does not exist yet: write it.
    Write,
    /// It already points at this server (same URL and CA): leave it, it works.
    AlreadyThisServer,
    /// It points somewhere else (or cannot be read): leave it, and say how to use this one.
    OtherServer { reason: String },
}

/// Decides about the user's config file from its current content (`Ok(None)`: absent).
pub fn user_config_action(
    existing: anyhow::Result<Option<CliConfig>>,
    ours: &CliConfig,
) -> UserConfig {
    let existing = match existing {
        Ok(None) => return UserConfig::Write,
        Ok(Some(existing)) => existing,
        Err(error) => {
            return UserConfig::OtherServer {
                reason: format!("it cannot be read ({error:#})"),
            };
        }
    };
    let same_url =
        existing.server.as_deref().map(normalise_url) == ours.server.as_deref().map(normalise_url);
    let same_ca =
        existing.ca_cert.as_deref().map(str::trim) == ours.ca_cert.as_deref().map(str::trim);
    match (same_url, same_ca) {
        (true, true) => UserConfig::AlreadyThisServer,
        (true, false) => UserConfig::OtherServer {
            reason: "it names this URL but another CA (a server from an earlier data directory?)"
                .to_owned(),
        },
        (false, _) => UserConfig::OtherServer {
            reason: format!(
                "it names another server ({})",
                existing.server.as_deref().unwrap_or("none")
            ),
        },
    }
}

pub async fn run(global: &GlobalArgs, args: ServerArgs) -> anyhow::Result<()> {
    // Installed before starting, so a SIGTERM during start-up still shuts down cleanly.
    let shutdown = crate::shutdown::requested()?;
    let (server, info) = Server::start(args).await?;
    let token = match &info.admin_token {
        Some(token) => token.clone(),
        None => {
            let path = info.data_dir.join("admin.token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading the admin token {}", path.display()))?
                .trim()
                .to_owned()
        }
    };
    let config = CliConfig {
        server: Some(info.url.clone()),
        token: Some(token),
        ca_cert: Some(info.ca_pem.clone()),
    };
    let data_dir_config = info.data_dir.join("cli-config.yaml");
    config.save(&data_dir_config)?;
    let user = match config_path(global) {
        Ok(path) => {
            let action = user_config_action(CliConfig::load(&path), &config);
            if action == UserConfig::Write {
                config.save(&path)?;
            }
            Some((path, action))
        }
        // No HOME: nothing to write, the data directory's copy is there.
        Err(_) => None,
    };
    note(&banner(&info, &data_dir_config, user.as_ref()));
    server.run_until(shutdown).await
}

/// What the operator needs to know, printed to stderr on every start.
fn banner(
    info: &StartInfo,
    data_dir_config: &Path,
    user: Option<&(PathBuf, UserConfig)>,
) -> String {
    let token_file = info.data_dir.join("admin.token");
    let mut text = format!(
        "edgefleet server {version} listening on {url}\n  \
         data directory:  {data}\n  \
         CA fingerprint:  {fingerprint}\n  \
         CLI config:      {config}\n",
        version = env!("CARGO_PKG_VERSION"),
        url = info.url,
        data = info.data_dir.display(),
        fingerprint = info.ca_sha256,
        config = data_dir_config.display(),
    );
    match user {
        Some((path, UserConfig::Write)) => {
            text.push_str(&format!(
                "                   {} (written now)\n",
                path.display()
            ));
        }
        Some((path, UserConfig::AlreadyThisServer)) => {
            text.push_str(&format!(
                "                   {} (already points here)\n",
                path.display()
            ));
        }
        Some((path, UserConfig::OtherServer { reason })) => {
            text.push_str(&format!(
                "\nYour CLI config {path} was left unchanged: {reason}. To use this server:\n  \
                 export EDGEFLEET_CONFIG={config}\n\
                 or save it as your default:\n  \
                 edgefleet login --server {url} --token \"$(cat {token_file})\" --ca-fingerprint {fingerprint}\n",
                path = path.display(),
                config = data_dir_config.display(),
                url = info.url,
                token_file = token_file.display(),
                fingerprint = info.ca_sha256,
            ));
        }
        None => {}
    }
    if let Some(token) = &info.admin_token {
        text.push_str(&format!(
            "\nAdmin API token (shown only now; stored in {}, mode 0600):\n\n    {token}\n",
            token_file.display()
        ));
    }
    text.push_str(
        "\nEnroll a node:\n  \
         JOIN=$(edgefleet token create)\n  \
         edgefleet agent --data-dir /var/lib/edgefleet-agent --join \"$JOIN\"\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str, ca: &str) -> CliConfig {
        CliConfig {
            server: Some(server.into()),
            token: Some("t".into()),
            ca_cert: Some(ca.into()),
        }
    }

    #[test]
    fn user_config_is_written_only_when_absent() {
        let ours = config("https://127.0.0.1:7443", "CA1\n");
        assert_eq!(user_config_action(Ok(None), &ours), UserConfig::Write);
        assert_eq!(
            user_config_action(Ok(Some(config("https://127.0.0.1:7443/", "CA1"))), &ours),
            UserConfig::AlreadyThisServer
        );
        let other = user_config_action(Ok(Some(config("https://10.0.0.9:7443", "CA1"))), &ours);
        assert!(
            matches!(&other, UserConfig::OtherServer { reason } if reason.contains("https://10.0.0.9:7443")),
            "{other:?}"
        );
        let stale = user_config_action(Ok(Some(config("https://127.0.0.1:7443", "CA0"))), &ours);
        assert!(
            matches!(&stale, UserConfig::OtherServer { reason } if reason.contains("another CA")),
            "{stale:?}"
        );
        let broken = user_config_action(Err(anyhow::anyhow!("bad yaml")), &ours);
        assert!(
            matches!(&broken, UserConfig::OtherServer { reason } if reason.contains("bad yaml")),
            "{broken:?}"
        );
    }

    fn info(admin_token: Option<&str>) -> StartInfo {
        StartInfo {
            url: "https://127.0.0.1:7443".into(),
            local_addr: "127.0.0.1:7443".parse().unwrap(),
            data_dir: "/data".into(),
            ca_pem: "CA".into(),
            ca_sha256: "ab".repeat(32),
            admin_token: admin_token.map(str::to_owned),
        }
    }

    #[test]
    fn banner_shows_the_token_once_and_how_to_switch() {
        let first = banner(
            &info(Some("efa_secret")),
            Path::new("/data/cli-config.yaml"),
            None,
        );
        assert!(
            first.contains("listening on https://127.0.0.1:7443"),
            "{first}"
        );
        assert!(first.contains(&"ab".repeat(32)), "{first}");
        assert!(
            first.contains("efa_secret") && first.contains("/data/admin.token"),
            "{first}"
        );
        assert!(first.contains("edgefleet token create"), "{first}");
        let user = (
            PathBuf::from("/home/u/.config/edgefleet/config.yaml"),
            UserConfig::OtherServer {
                reason: "it names another server (https://x)".into(),
            },
        );
        let later = banner(&info(None), Path::new("/data/cli-config.yaml"), Some(&user));
        assert!(!later.contains("Admin API token"), "{later}");
        assert!(
            later.contains("export EDGEFLEET_CONFIG=/data/cli-config.yaml"),
            "{later}"
        );
        assert!(
            later.contains("edgefleet login --server https://127.0.0.1:7443"),
            "{later}"
        );
    }
}
