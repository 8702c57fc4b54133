//! The data directory: where it is, private file writes, and the PKI kept in it.
//!
//! On every start the CA is loaded (created on the first start) and the server certificate
//! is checked against what it should be: the wanted names (`SanSet`), issued by this CA,
//! and not expiring within `SERVER_CERT_RENEW_BEFORE`. Otherwise it is reissued, so a new
//! `--san` or `--advertise-url` takes effect on the next start without manual steps.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use edgefleet_tls::Ca;
use edgefleet_wire::Timestamp;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";
pub const ADMIN_TOKEN: &str = "admin.token";

const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const SERVER_CERT_RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// `$XDG_DATA_HOME/edgefleet/server`, else `~/.local/share/edgefleet/server`.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    if let Some(base) = xdg {
        return Ok(base.join("edgefleet").join("server"));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .context("cannot choose a data directory: HOME is not set; pass --data-dir or set EDGEFLEET_DATA_DIR")?;
    Ok(home.join(".local/share/edgefleet/server"))
}

/// Creates the directory (and parents) and makes it private to this user.
pub fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading data directory {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making data directory {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Writes a file readable only by this user, atomically (temporary file, fsync, rename):
/// a crash leaves either the old or the new content, never half a key.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The mode only applies when the file is created; a leftover temporary file keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting permissions of {}", tmp.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Where artifact contents live, one file per SHA-256: `<data dir>/artifacts/sha256/<hex>`.
pub const ARTIFACTS_DIR: &str = "artifacts/sha256";
/// Uploads in progress are written next to the contents under this prefix, then renamed.
pub const ARTIFACT_UPLOAD_PREFIX: &str = ".upload-";

/// Creates the artifacts directory and deletes uploads a crash interrupted (their content
/// was never acknowledged, so nothing accepted is lost).
pub fn prepare_artifacts_dir(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join(ARTIFACTS_DIR);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the artifacts directory {}", dir.display()))?;
    let entries = std::fs::read_dir(&dir)
        .with_context(|| format!("reading the artifacts directory {}", dir.display()))?;
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(ARTIFACT_UPLOAD_PREFIX)
        {
            let path = entry.path();
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the interrupted upload {}", path.display()))?;
        }
    }
    Ok(dir)
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The names the server certificate must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SanSet {
    pub dns: BTreeSet<String>,
    pub ips: BTreeSet<IpAddr>,
}

impl SanSet {
    fn add(&mut self, name: &str) -> anyhow::Result<()> {
        let name = name.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = name.parse::<IpAddr>() {
            self.ips.insert(ip);
            return Ok(());
        }
        let name = name.to_ascii_lowercase();
        if !is_dns_name(&name) {
            bail!("{name:?} is neither an IP address nor a valid DNS name");
        }
        self.dns.insert(name);
        Ok(())
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (label == "*" && i == 0)
                || (!label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-'))
        })
}

/// localhost and the loopback addresses, the listen address when it is a specific one,
/// the machine's hostname, the advertised host, and every `--san`.
pub fn wanted_sans(
    listen: SocketAddr,
    hostname: Option<&str>,
    advertise_url: Option<&str>,
    extra: &[String],
) -> anyhow::Result<SanSet> {
    let mut sans = SanSet::default();
    sans.dns.insert("localhost".into());
    sans.ips.insert(IpAddr::from([127, 0, 0, 1]));
    sans.ips.insert(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
    if !listen.ip().is_unspecified() {
        sans.ips.insert(listen.ip());
    }
    if let Some(hostname) = hostname {
        // A hostname that is not a valid DNS name cannot go into a certificate; skip it.
        let _ = sans.add(hostname);
    }
    if let Some(url) = advertise_url {
        sans.add(&url_host(url)?)
            .with_context(|| format!("the host of --advertise-url {url:?}"))?;
    }
    for name in extra.iter().filter(|n| !n.trim().is_empty()) {
        sans.add(name)
            .with_context(|| format!("invalid --san value {name:?}"))?;
    }
    Ok(sans)
}

/// The host part of an `https://host[:port][/path]` URL (IPv6 without brackets).
pub fn url_host(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("https://")
        .with_context(|| format!("advertise URL {url:?} must start with https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed
            .split_once(']')
            .map(|(host, _)| host)
            .with_context(|| format!("advertise URL {url:?} has an unclosed '['"))?
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        bail!("advertise URL {url:?} has no host");
    }
    Ok(host.to_owned())
}

/// The URL agents and the CLI are told to use when none was given: the listen address
/// with the real port, or the hostname when listening on every address.
pub fn default_advertise_url(local_addr: SocketAddr, hostname: Option<&str>) -> String {
    let port = local_addr.port();
    match local_addr.ip() {
        ip if ip.is_unspecified() => format!("https://{}:{port}", hostname.unwrap_or("localhost")),
        IpAddr::V6(ip) => format!("https://[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("https://{ip}:{port}"),
    }
}

/// The machine's hostname, lower-cased, when it has one.
pub fn hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

/// The CA and the server's TLS identity, loaded or created.
pub struct Pki {
    pub ca: Ca,
    pub ca_sha256: String,
    /// Server certificate followed by the CA certificate.
    pub server_chain_pem: String,
    pub server_key_pem: String,
}

pub fn load_or_create_pki(dir: &Path, wanted: &SanSet, now: Timestamp) -> anyhow::Result<Pki> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca = match (read_optional(&ca_cert_path)?, read_optional(&ca_key_path)?) {
        (Some(cert), Some(key)) => Ca::load(&cert, &key).with_context(|| {
            format!(
                "loading the CA from {} and {}",
                ca_cert_path.display(),
                ca_key_path.display()
            )
        })?,
        (None, None) => {
            let (ca, issued) = Ca::generate("edgefleet CA", now).context("creating the CA")?;
            write_private(&ca_key_path, &issued.key_pem)?;
            write_private(&ca_cert_path, &issued.cert_pem)?;
            tracing::info!(path = %ca_cert_path.display(), "created certificate authority");
            ca
        }
        _ => bail!(
            "only one of {} and {} exists; restore the missing file or remove both to create a new CA \
             (which every enrolled node would then have to re-enroll against)",
            ca_cert_path.display(),
            ca_key_path.display()
        ),
    };
    let ca_sha256 = ca
        .fingerprint()
        .context("fingerprinting the CA certificate")?;

    let chain_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let existing = match (read_optional(&chain_path)?, read_optional(&key_path)?) {
        (Some(chain), Some(key)) => Some((chain, key)),
        _ => None,
    };
    let reason = match &existing {
        None => Some("no server certificate yet".to_owned()),
        Some((chain, _)) => reissue_reason(chain, ca.cert_pem(), wanted, now),
    };
    let (server_chain_pem, server_key_pem) = match (reason, existing) {
        (None, Some(existing)) => existing,
        (reason, _) => {
            let dns: Vec<String> = wanted.dns.iter().cloned().collect();
            let ips: Vec<IpAddr> = wanted.ips.iter().copied().collect();
            let issued = ca
                .issue_server(&dns, &ips, now, SERVER_CERT_VALIDITY)
                .context("issuing the server certificate")?;
            let chain = format!("{}{}", issued.cert_pem, ca.cert_pem());
            write_private(&key_path, &issued.key_pem)?;
            write_private(&chain_path, &chain)?;
            tracing::info!(
                reason = reason.as_deref().unwrap_or_default(),
                dns = ?dns,
                ips = ?ips,
                "issued server certificate"
            );
            (chain, issued.key_pem)
        }
    };
    Ok(Pki {
        ca,
        ca_sha256,
        server_chain_pem,
        server_key_pem,
    })
}

/// Why the existing server certificate must be replaced, or `None` when it is fine.
fn reissue_reason(
    chain_pem: &str,
    ca_pem: &str,
    wanted: &SanSet,
    now: Timestamp,
) -> Option<String> {
    let blocks: Vec<Pem> = Pem::iter_from_buffer(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let ca_der = Pem::iter_from_buffer(ca_pem.as_bytes()).find_map(Result::ok)?;
    let [server, chain_ca, ..] = blocks.as_slice() else {
        return Some("the server certificate chain is incomplete".into());
    };
    if chain_ca.contents != ca_der.contents {
        return Some("the server certificate was not issued by the current CA".into());
    }
    let Ok(cert) = server.parse_x509() else {
        return Some("the server certificate cannot be parsed".into());
    };
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - now < SERVER_CERT_RENEW_BEFORE {
        return Some(format!("the server certificate expires at {not_after}"));
    }
    let mut present = SanSet::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    present.dns.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Ok(octets) = <[u8; 4]>::try_from(*bytes) {
                        present.ips.insert(IpAddr::from(octets));
                    } else if let Ok(octets) = <[u8; 16]>::try_from(*bytes) {
                        present.ips.insert(IpAddr::from(octets));
                    }
                }
                _ => {}
            }
        }
    }
    (present != *wanted).then(|| "the wanted certificate names changed".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://edge.example.com:7443").unwrap(),
            "edge.example.com"
        );
        assert_eq!(url_host("https://10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(url_host("https://[::1]:7443/x").unwrap(), "::1");
        assert_eq!(url_host("https://h/path").unwrap(), "h");
        assert!(url_host("http://h").is_err());
        assert!(url_host("https://:7443").is_err());
        assert!(url_host("https://[::1").is_err());
    }

    #[test]
    fn default_urls() {
        assert_eq!(
            default_advertise_url("127.0.0.1:7443".parse().unwrap(), Some("h")),
            "https://127.0.0.1:7443"
        );
        assert_eq!(
            default_advertise_url("[::1]:9".parse().unwrap(), None),
            "https://[::1]:9"
        );
        assert_eq!(
            default_advertise_url("0.0.0.0:9".parse().unwrap(), Some("box")),
            "https://box:9"
        );
    }

    #[test]
    fn sans_collect_every_source() {
        let sans = wanted_sans(
            "10.1.2.3:7443".parse().unwrap(),
            Some("Gateway-1"),
            Some("https://cp.example.com:443"),
            &["192.168.1.1".into(), "alt.example.com".into()],
        )
        .unwrap();
        for dns in [
            "localhost",
            "gateway-1",
            "cp.example.com",
            "alt.example.com",
        ] {
            assert!(sans.dns.contains(dns), "{dns} in {sans:?}");
        }
        for ip in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1"] {
            assert!(sans.ips.contains(&ip.parse().unwrap()), "{ip} in {sans:?}");
        }
        let unspecified = wanted_sans("0.0.0.0:1".parse().unwrap(), None, None, &[]).unwrap();
        assert!(!unspecified.ips.contains(&"0.0.0.0".parse().unwrap()));
        assert!(
            wanted_sans(
                "0.0.0.0:1".parse().unwrap(),
                None,
                None,
                &["bad name!".into()]
            )
            .is_err()
        );
    }

    #[test]
    fn server_cert_is_kept_until_something_changes() {
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let wanted = wanted_sans("127.0.0.1:0".parse().unwrap(), None, None, &[]).unwrap();
        let first = load_or_create_pki(dir.path(), &wanted, now).unwrap();
        for file in [CA_KEY, SERVER_KEY, CA_CERT, SERVER_CERT] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let again = load_or_create_pki(dir.path(), &wanted, now).unwrap();
        assert_eq!(first.server_chain_pem, again.server_chain_pem);
        assert_eq!(first.ca_sha256, again.ca_sha256);
        assert!(again.server_chain_pem.ends_with(again.ca.cert_pem()));

        let more = wanted_sans(
            "127.0.0.1:0".parse().unwrap(),
            None,
            None,
            &["extra.example".into()],
        )
        .unwrap();
        let reissued = load_or_create_pki(dir.path(), &more, now).unwrap();
        assert_ne!(first.server_chain_pem, reissued.server_chain_pem);
        assert_eq!(first.ca_sha256, reissued.ca_sha256, "the CA is kept");

        let much_later = now + time::Duration::days(340);
        let renewed = load_or_create_pki(dir.path(), &more, much_later).unwrap();
        assert_ne!(
            reissued.server_chain_pem, renewed.server_chain_pem,
            "renewed 30 days before expiry"
        );
    }

    #[test]
    fn data_dir_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        prepare_dir(&data).unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
