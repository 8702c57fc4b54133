//! The CLI config file (`server`, `token`, `caCert`) and how a command finds its server.
//!
//! Precedence, per setting: a flag, then its `EDGEFLEET_*` environment variable (clap merges
//! those two), then the config file. The file's token and CA are only used for the server the
//! file names: pointing `--server` at another server never sends it this file's token.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The config file, as written by `edgefleet server` and `edgefleet login`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CliConfig {
    /// The server's https URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// An API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The PEM certificate of the server's CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

impl CliConfig {
    pub fn to_yaml(&self) -> anyhow::Result<String> {
        serde_saphyr::to_string(self).context("serialising the CLI config")
    }

    /// Parses a config file's text; `path` is only used in the error message.
    pub fn from_yaml(text: &str, path: &Path) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).with_context(|| {
            format!(
                "{} is not a valid edgefleet CLI config (expected the keys server, token, caCert)",
                path.display()
            )
        })
    }

    /// Reads the file at `path`; `None` when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_yaml(&text, path).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the file readable by its owner only (it holds a token), creating parent dirs.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_private(path, self.to_yaml()?.as_bytes())
    }
}

/// `~/.config/edgefleet/config.yaml`.
pub fn default_path() -> anyhow::Result<PathBuf> {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => {
            Ok(PathBuf::from(home).join(".config/edgefleet/config.yaml"))
        }
        _ => bail!(
            "cannot find the default CLI config: HOME is not set (pass --config or set EDGEFLEET_CONFIG)"
        ),
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (a reader sees the old file or the
/// whole new one, never half of it), creating missing parent directories with mode 0700.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("creating directory {}", parent.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = parent.join(temp_name);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // The mode above only applies to a new file; a stale temp file keeps its own.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// What flags and environment variables said (clap has already merged those two).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub token: Option<String>,
    pub ca_cert: Option<PathBuf>,
}

/// Where and how to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The base URL, without a trailing slash.
    pub server: String,
    pub token: Option<String>,
    pub ca_pem: String,
}

/// Combines flags/environment with the config file at `config_path` (`file` is its content,
/// `None` when it does not exist).
pub fn resolve(
    overrides: &Overrides,
    config_path: &Path,
    file: Option<&CliConfig>,
) -> anyhow::Result<Connection> {
    let file_server = file.and_then(|f| f.server.as_deref()).map(normalise_url);
    let server = match (&overrides.server, &file_server) {
        (Some(server), _) => normalise_url(server),
        (None, Some(server)) => server.clone(),
        (None, None) => bail!("{}", missing_config_message(config_path, file.is_some())),
    };
    if !server.starts_with("https://") {
        bail!("invalid server URL {server:?}: it must start with https://");
    }
    // A file that names no server, or this server, may supply the rest.
    let file = file.filter(|_| file_server.as_deref().is_none_or(|s| s == server));
    let token = overrides
        .token
        .clone()
        .or_else(|| file.and_then(|f| f.token.clone()))
        .filter(|t| !t.trim().is_empty());
    let ca_pem = match &overrides.ca_cert {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the CA certificate {}", path.display()))?,
        None => match file.and_then(|f| f.ca_cert.clone()) {
            Some(pem) => pem,
            None => bail!(
                "no CA certificate for {server}: pass --ca-cert FILE (or set EDGEFLEET_CA_CERT), \
                 or run `edgefleet login --server {server} --token TOKEN --ca-fingerprint HEX`"
            ),
        },
    };
    Ok(Connection {
        server,
        token,
        ca_pem,
    })
}

fn missing_config_message(config_path: &Path, file_exists: bool) -> String {
    let what = if file_exists {
        format!("{} names no server", config_path.display())
    } else {
        format!("{} does not exist", config_path.display())
    };
    format!(
        "no edgefleet server configured: {what}\n  \
         start a server with `edgefleet server` (it writes this file), \
         or log in to one with `edgefleet login --server URL --token TOKEN --ca-fingerprint HEX`\n  \
         (or pass --server, --token and --ca-cert, or point EDGEFLEET_CONFIG at another config file)"
    )
}

/// `https://host:port/` and `https://host:port` are the same server.
pub fn normalise_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn file() -> CliConfig {
        CliConfig {
            server: Some("https://127.0.0.1:7443/".into()),
            token: Some("file-token".into()),
            ca_cert: Some(CA.into()),
        }
    }

    #[test]
    fn file_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/config.yaml");
        let config = CliConfig {
            server: Some("https://127.0.0.1:7443".into()),
            token: Some("efa_".to_owned() + &"x".repeat(120)),
            ca_cert: Some(CA.into()),
        };
        config.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("caCert:"), "{text}");
        assert_eq!(CliConfig::load(&path).unwrap(), Some(config.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Overwriting keeps the mode and leaves no temp file behind.
        config.save(&path).unwrap();
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(
            CliConfig::load(&dir.path().join("missing.yaml")).unwrap(),
            None
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error =
            CliConfig::from_yaml("server: https://x\ntokn: y\n", Path::new("c.yaml")).unwrap_err();
        assert!(
            format!("{error:#}").contains("c.yaml is not a valid edgefleet CLI config"),
            "{error:#}"
        );
        assert_eq!(
            CliConfig::from_yaml("", Path::new("c.yaml")).unwrap(),
            CliConfig::default()
        );
    }

    #[test]
    fn file_supplies_what_flags_do_not() {
        let got = resolve(&Overrides::default(), Path::new("c.yaml"), Some(&file())).unwrap();
        assert_eq!(
            got,
            Connection {
                server: "https://127.0.0.1:7443".into(),
                token: Some("file-token".into()),
                ca_pem: CA.into()
            }
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, "other CA").unwrap();
        let overrides = Overrides {
            server: Some("https://127.0.0.1:7443".into()),
            token: Some("flag-token".into()),
            ca_cert: Some(ca_path),
        };
        let got = resolve(&overrides, Path::new("c.yaml"), Some(&file())).unwrap();
        assert_eq!(got.token.as_deref(), Some("flag-token"));
        assert_eq!(got.ca_pem, "other CA");
    }

    #[test]
    fn another_server_never_gets_the_file_token() {
        let overrides = Overrides {
            server: Some("https://10.0.0.1:7443".into()),
            ca_cert: None,
            token: None,
        };
        let error = resolve(&overrides, Path::new("c.yaml"), Some(&file())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no CA certificate for https://10.0.0.1:7443"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, CA).unwrap();
        let overrides = Overrides {
            ca_cert: Some(ca_path),
            ..overrides
        };
        assert_eq!(
            resolve(&overrides, Path::new("c.yaml"), Some(&file()))
                .unwrap()
                .token,
            None
        );
    }

    #[test]
    fn missing_config_says_how_to_get_one() {
        let error = resolve(&Overrides::default(), Path::new("/x/config.yaml"), None).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("/x/config.yaml does not exist"),
            "{message}"
        );
        assert!(message.contains("`edgefleet server`"), "{message}");
        assert!(message.contains("edgefleet login"), "{message}");
        let plain_http = Overrides {
            server: Some("http://127.0.0.1:7443".into()),
            ..Overrides::default()
        };
        let error = resolve(&plain_http, Path::new("c.yaml"), None).unwrap_err();
        assert!(error.to_string().contains("must start with https://"));
    }
}
