//! Finding the container engine: the configured socket, else `DOCKER_HOST` when it names
//! a unix socket, else the usual places of Docker's and Podman's sockets. Resolved on first
//! use, so an agent that runs no containers never needs an engine, and remembered once an
//! engine answered (an engine that was not there yet is looked for again next time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokio::sync::OnceCell;

use super::engine::{Engine, EngineError};

/// Where engines usually listen, after the configured socket and `DOCKER_HOST`.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const PODMAN_ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no container engine found (tried {tried}); set --container-socket")]
    NotFound { tried: String },
    #[error("no container engine answered ({details}); set --container-socket")]
    NotAnswering { details: String },
    #[error("container engine at {} (--container-socket): {source}", socket.display())]
    Configured {
        socket: PathBuf,
        #[source]
        source: EngineError,
    },
}

/// A place to look for the engine, and why it is looked for there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    pub from: &'static str,
}

/// The places to look, in order. A configured socket is the only place looked at:
/// an operator who named one does not want another engine used behind their back.
pub fn candidates(
    configured: Option<&Path>,
    docker_host: Option<&str>,
    xdg_runtime_dir: Option<&Path>,
) -> Vec<Candidate> {
    if let Some(path) = configured {
        return vec![Candidate {
            path: path.to_owned(),
            from: "--container-socket",
        }];
    }
    let mut candidates = Vec::new();
    if let Some(path) = docker_host.and_then(|host| host.strip_prefix("unix://")) {
        candidates.push(Candidate {
            path: PathBuf::from(path),
            from: "DOCKER_HOST",
        });
    }
    candidates.push(Candidate {
        path: PathBuf::from(DOCKER_SOCKET),
        from: "Docker's default",
    });
    candidates.push(Candidate {
        path: PathBuf::from(PODMAN_ROOTFUL_SOCKET),
        from: "Podman's default",
    });
    if let Some(dir) = xdg_runtime_dir {
        candidates.push(Candidate {
            path: dir.join("podman/podman.sock"),
            from: "Podman's default for this user",
        });
    }
    candidates
}

/// The engine, found on first use.
#[derive(Debug)]
pub struct EngineCell {
    configured: Option<PathBuf>,
    engine: OnceCell<Engine>,
}

impl EngineCell {
    pub fn new(configured: Option<PathBuf>) -> Self {
        Self {
            configured,
            engine: OnceCell::new(),
        }
    }

    /// The engine, looking for it if none answered yet.
    pub async fn get(&self) -> Result<Engine, ResolveError> {
        self.engine
            .get_or_try_init(|| self.resolve())
            .await
            .cloned()
    }

    async fn resolve(&self) -> Result<Engine, ResolveError> {
        if let Some(socket) = &self.configured {
            let engine =
                Engine::connect(socket)
                    .await
                    .map_err(|source| ResolveError::Configured {
                        socket: socket.clone(),
                        source,
                    })?;
            log_found(&engine, "--container-socket");
            return Ok(engine);
        }
        let docker_host = std::env::var("DOCKER_HOST").ok();
        let xdg_runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        find_engine(&candidates(
            None,
            docker_host.as_deref(),
            xdg_runtime_dir.as_deref(),
        ))
        .await
    }
}

/// The first candidate with an engine that answers.
async fn find_engine(candidates: &[Candidate]) -> Result<Engine, ResolveError> {
    let mut failures = String::new();
    for candidate in candidates {
        if !candidate.path.exists() {
            continue;
        }
        match Engine::connect(&candidate.path).await {
            Ok(engine) => {
                log_found(&engine, candidate.from);
                return Ok(engine);
            }
            Err(error) => {
                if !failures.is_empty() {
                    failures.push_str("; ");
                }
                let _ = write!(
                    failures,
                    "{} ({}): {error}",
                    candidate.path.display(),
                    candidate.from
                );
            }
        }
    }
    if failures.is_empty() {
        let tried = candidates
            .iter()
            .map(|c| c.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Err(ResolveError::NotFound { tried })
    } else {
        Err(ResolveError::NotAnswering { details: failures })
    }
}

fn log_found(engine: &Engine, from: &str) {
    tracing::info!(
        socket = %engine.socket().display(),
        engine = %engine.kind(),
        version = engine.version(),
        from,
        "using container engine"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(candidates: &[Candidate]) -> Vec<&str> {
        candidates
            .iter()
            .map(|c| c.path.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_configured_socket_is_the_only_place_looked_at() {
        let found = candidates(
            Some(Path::new("/srv/engine.sock")),
            Some("unix:///run/other.sock"),
            Some(Path::new("/run/user/1000")),
        );
        assert_eq!(paths(&found), ["/srv/engine.sock"]);
    }

    #[test]
    fn discovery_order() {
        let found = candidates(
            None,
            Some("unix:///run/user/1000/docker.sock"),
            Some(Path::new("/run/user/1000")),
        );
        assert_eq!(
            paths(&found),
            [
                "/run/user/1000/docker.sock",
                "/var/run/docker.sock",
                "/run/podman/podman.sock",
                "/run/user/1000/podman/podman.sock",
            ]
        );
        // A TCP DOCKER_HOST is not a socket edgefleet can use.
        let found = candidates(None, Some("tcp://10.0.0.1:2375"), None);
        assert_eq!(
            paths(&found),
            ["/var/run/docker.sock", "/run/podman/podman.sock"]
        );
    }

    #[tokio::test]
    async fn without_an_engine_the_error_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Candidate {
            path: dir.path().join("docker.sock"),
            from: "test",
        };
        let error = find_engine(std::slice::from_ref(&missing))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "no container engine found (tried {}); set --container-socket",
                missing.path.display()
            )
        );
        // Something that is there but is no engine is named with what went wrong.
        std::fs::write(&missing.path, b"").unwrap();
        let error = find_engine(std::slice::from_ref(&missing))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("no container engine answered ("),
            "{error}"
        );
        assert!(
            error.contains("docker.sock (test): cannot connect"),
            "{error}"
        );
    }
}
