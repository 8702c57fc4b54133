//! The node's identity on disk: `identity/node.key` (0600), `node.crt`, `ca.crt`, and
//! `server.json` (`{"url": ..., "node": ...}`).
//!
//! The identity is complete when all four files exist; until then the agent must enroll.
//! A renewed key and certificate are written next to the old ones as `node.key.new` and
//! `node.crt.new`, then renamed into place. Two renames are not one atomic step, so
//! `load` first finishes (or discards) a renewal a crash interrupted: the agent always
//! starts with a key and certificate that belong together.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use edgefleet_tls::{CertInfo, ClientIdentity, NodeKey, cert_info};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::fsutil::{self, FsError};

/// `identity/server.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerFile {
    pub url: String,
    pub node: String,
}

/// Everything the agent needs to talk to its server as itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    pub server_url: String,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
    pub certificate: CertInfo,
}

impl Identity {
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityStore {
    dir: PathBuf,
}

impl IdentityStore {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("node.key")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("node.crt")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn server_path(&self) -> PathBuf {
        self.dir.join("server.json")
    }

    fn new_key_path(&self) -> PathBuf {
        fsutil::with_suffix(&self.key_path(), ".new")
    }

    fn new_cert_path(&self) -> PathBuf {
        fsutil::with_suffix(&self.cert_path(), ".new")
    }

    /// The stored identity; `Ok(None)` when it is not complete (the node must enroll).
    /// Files that exist but are unusable are an error naming the file.
    pub fn load(&self) -> anyhow::Result<Option<Identity>> {
        self.recover_renewal()?;
        let paths = [
            self.key_path(),
            self.cert_path(),
            self.ca_path(),
            self.server_path(),
        ];
        if !paths.iter().all(|p| p.exists()) {
            return Ok(None);
        }
        let [key_pem, cert_pem, ca_pem, server_json] =
            paths.map(|p| fs::read_to_string(&p).map_err(|e| FsError::new("reading", &p, e)));
        let (key_pem, cert_pem, ca_pem) = (key_pem?, cert_pem?, ca_pem?);
        let server: ServerFile = serde_json::from_str(&server_json?)
            .with_context(|| format!("parsing {}", self.server_path().display()))?;
        let certificate = cert_info(&cert_pem)
            .with_context(|| format!("reading the certificate {}", self.cert_path().display()))?;
        if let Err(error) = check_pair(&ca_pem, &cert_pem, &key_pem) {
            bail!(
                "{}, {} and {} do not make a usable identity ({error}); remove {} and enroll again with --join",
                self.key_path().display(),
                self.cert_path().display(),
                self.ca_path().display(),
                self.dir.display()
            );
        }
        if certificate.common_name != server.node {
            warn!(
                certificate = %certificate.common_name,
                node = %server.node,
                "the node certificate names another node than server.json"
            );
        }
        Ok(Some(Identity {
            node: server.node,
            server_url: server.url,
            key_pem,
            cert_pem,
            ca_pem,
            certificate,
        }))
    }

    /// Stores the key generated for enrollment (before the CSR leaves the node).
    pub fn write_key(&self, key: &NodeKey) -> Result<(), FsError> {
        fsutil::write_atomic(&self.key_path(), key.to_pem().as_bytes(), fsutil::PRIVATE)
    }

    /// Stores what enrollment returned. `server.json` goes last: it completes the identity.
    pub fn write_enrolled(
        &self,
        cert_pem: &str,
        ca_pem: &str,
        server: &ServerFile,
    ) -> anyhow::Result<()> {
        fsutil::write_atomic(&self.ca_path(), ca_pem.as_bytes(), fsutil::PUBLIC)?;
        fsutil::write_atomic(&self.cert_path(), cert_pem.as_bytes(), fsutil::PUBLIC)?;
        let json = serde_json::to_vec_pretty(server)?;
        fsutil::write_atomic(&self.server_path(), &json, fsutil::PUBLIC)?;
        Ok(())
    }

    /// Replaces key and certificate after a renewal. Until both new files are on disk the
    /// old pair stays in place; a crash in between is repaired by `load`.
    pub fn write_renewed(&self, key_pem: &str, cert_pem: &str) -> Result<(), FsError> {
        fsutil::write_atomic(&self.new_key_path(), key_pem.as_bytes(), fsutil::PRIVATE)?;
        fsutil::write_atomic(&self.new_cert_path(), cert_pem.as_bytes(), fsutil::PUBLIC)?;
        rename(&self.new_key_path(), &self.key_path())?;
        rename(&self.new_cert_path(), &self.cert_path())?;
        fsutil::sync_dir(&self.dir)
    }

    /// Finishes or discards a renewal that a crash interrupted (see the module docs).
    fn recover_renewal(&self) -> anyhow::Result<()> {
        let (new_key, new_cert) = (self.new_key_path(), self.new_cert_path());
        let ca = fs::read_to_string(self.ca_path()).unwrap_or_default();
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        match (new_key.exists(), new_cert.exists()) {
            (false, false) => {}
            (true, true) if pair_matches(&ca, &read(&new_cert), &read(&new_key)) => {
                warn!(dir = %self.dir.display(), "completing a certificate renewal interrupted by a crash");
                rename(&new_key, &self.key_path())?;
                rename(&new_cert, &self.cert_path())?;
            }
            // The key was renamed into place, the certificate not yet.
            (false, true) if pair_matches(&ca, &read(&new_cert), &read(&self.key_path())) => {
                warn!(dir = %self.dir.display(), "completing a certificate renewal interrupted by a crash");
                rename(&new_cert, &self.cert_path())?;
            }
            _ => {
                warn!(dir = %self.dir.display(), "discarding an incomplete certificate renewal");
                for path in [&new_key, &new_cert] {
                    match fs::remove_file(path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(FsError::new("removing", path, e).into());
                        }
                        _ => {}
                    }
                }
            }
        }
        fsutil::sync_dir(&self.dir)?;
        Ok(())
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), FsError> {
    fs::rename(from, to).map_err(|e| FsError::new("renaming into place", to, e))
}

/// Whether the certificate and key form a usable client identity under the CA (rustls
/// refuses a key that does not match the certificate's public key).
pub fn pair_matches(ca_pem: &str, cert_pem: &str, key_pem: &str) -> bool {
    check_pair(ca_pem, cert_pem, key_pem).is_ok()
}

/// As `pair_matches`, with the reason when they do not.
pub fn check_pair(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), edgefleet_tls::TlsError> {
    let identity = ClientIdentity {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
    };
    edgefleet_tls::client_config(ca_pem, Some(&identity)).map(|_| ())
}

/// The node name to ask for when `--name` is not given: the hostname, lowercased, with
/// anything a node name cannot hold turned into `-`.
pub fn name_from_hostname(hostname: &str) -> Option<String> {
    let mapped: String = hostname
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut name = mapped.trim_matches('-').to_owned();
    name.truncate(63);
    let name = name.trim_end_matches('-').to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_tls::Ca;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: IdentityStore,
        ca: Ca,
    }

    fn issue(ca: &Ca, node: &str) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_pem(node).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (cert, _) = ca
            .sign_node_csr(&csr, node, now, Duration::from_secs(3600))
            .unwrap();
        (key.to_pem(), cert)
    }

    fn enrolled() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(dir.path());
        let (ca, _) = Ca::generate("test CA", time::OffsetDateTime::now_utc()).unwrap();
        let (key, cert) = issue(&ca, "node-a");
        fs::write(store.key_path(), &key).unwrap();
        store
            .write_enrolled(
                &cert,
                ca.cert_pem(),
                &ServerFile {
                    url: "https://127.0.0.1:7443".into(),
                    node: "node-a".into(),
                },
            )
            .unwrap();
        Fixture {
            _dir: dir,
            store,
            ca,
        }
    }

    #[test]
    fn incomplete_identity_means_enroll() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(dir.path());
        assert!(store.load().unwrap().is_none());
        store.write_key(&NodeKey::generate().unwrap()).unwrap();
        assert!(store.load().unwrap().is_none());
    }

    #[test]
    fn complete_identity_loads() {
        let f = enrolled();
        let identity = f.store.load().unwrap().unwrap();
        assert_eq!(identity.node, "node-a");
        assert_eq!(identity.certificate.common_name, "node-a");
    }

    #[test]
    fn mismatched_pair_is_an_error_naming_files() {
        let f = enrolled();
        fs::write(f.store.key_path(), NodeKey::generate().unwrap().to_pem()).unwrap();
        let error = f.store.load().unwrap_err().to_string();
        assert!(error.contains("node.crt"), "{error}");
    }

    #[test]
    fn renewal_replaces_the_pair() {
        let f = enrolled();
        let (key, cert) = issue(&f.ca, "node-a");
        f.store.write_renewed(&key, &cert).unwrap();
        let identity = f.store.load().unwrap().unwrap();
        assert_eq!(identity.cert_pem, cert);
        assert_eq!(identity.key_pem, key);
    }

    #[test]
    fn interrupted_renewal_is_completed_or_discarded() {
        // Crash after both new files were written: completed.
        let f = enrolled();
        let (key, cert) = issue(&f.ca, "node-a");
        fs::write(f.store.new_key_path(), &key).unwrap();
        fs::write(f.store.new_cert_path(), &cert).unwrap();
        assert_eq!(f.store.load().unwrap().unwrap().cert_pem, cert);
        assert!(!f.store.new_cert_path().exists());

        // Crash after the key was renamed: completed.
        let f = enrolled();
        let (key, cert) = issue(&f.ca, "node-a");
        fs::write(f.store.key_path(), &key).unwrap();
        fs::write(f.store.new_cert_path(), &cert).unwrap();
        let identity = f.store.load().unwrap().unwrap();
        assert_eq!((identity.key_pem, identity.cert_pem), (key, cert));

        // Crash while writing the certificate: the old pair stays.
        let f = enrolled();
        let old = f.store.load().unwrap().unwrap();
        let (key, _) = issue(&f.ca, "node-a");
        fs::write(f.store.new_key_path(), &key).unwrap();
        fs::write(f.store.new_cert_path(), "-----BEGIN CERT").unwrap();
        let identity = f.store.load().unwrap().unwrap();
        assert_eq!(identity.cert_pem, old.cert_pem);
        assert!(!f.store.new_key_path().exists() && !f.store.new_cert_path().exists());
    }

    #[test]
    fn hostnames_become_node_names() {
        assert_eq!(name_from_hostname("Gateway-17"), Some("gateway-17".into()));
        assert_eq!(
            name_from_hostname("edge01.shop.example.com"),
            Some("edge01-shop-example-com".into())
        );
        assert_eq!(name_from_hostname("my_box\n"), Some("my-box".into()));
        assert_eq!(name_from_hostname("--"), None);
        let long = name_from_hostname(&format!("{}-b", "a".repeat(62))).unwrap();
        assert_eq!(long, "a".repeat(62));
        for name in ["Gateway-17", "edge01.shop", "x_y"] {
            let name = name_from_hostname(name).unwrap();
            assert!(
                edgefleet_core::labels::validate_name(&name).is_ok(),
                "{name}"
            );
        }
    }
}
