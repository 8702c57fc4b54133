//! From a workload's spec to the engine's container: the create request, the container's
//! name and labels, and back from labels to what a restarted agent may adopt.

use std::collections::BTreeMap;

use edgefleet_wire::workload::{FILES_DIR_ENV, FILES_MOUNT_PATH, NetworkMode};
use sha2::{Digest, Sha256};

use super::engine::{CreateContainer, EmptyObject, HostConfig, Mount, PortBinding, RestartPolicy};
use crate::runtime::Launch;

/// Every container the agent creates carries `managed=true`.
pub const LABEL_MANAGED: &str = "edgefleet.managed";
/// The id of the agent that created it: agents sharing an engine never touch each
/// other's containers.
pub const LABEL_AGENT: &str = "edgefleet.agent";
pub const LABEL_WORKLOAD: &str = "edgefleet.workload";
pub const LABEL_SPEC_HASH: &str = "edgefleet.spec-hash";
pub const LABEL_KEY: &str = "edgefleet.key";
pub const LABEL_DEPLOYMENT: &str = "edgefleet.deployment";
pub const LABEL_REVISION: &str = "edgefleet.revision";

/// 8 hex digits standing for an agent id in container names: short, fixed-length, and
/// distinct for agents whose ids share a prefix.
pub fn short_agent_id(agent_id: &str) -> String {
    hex::encode(&Sha256::digest(agent_id.as_bytes())[..4])
}

/// `ef-<short agent id>-<workload>`.
pub fn container_name(short_agent_id: &str, workload: &str) -> String {
    format!("ef-{short_agent_id}-{workload}")
}

/// The create request for `launch`, or what is wrong with the spec.
pub fn create_request(
    agent_id: &str,
    workload: &str,
    launch: &Launch,
) -> Result<CreateContainer, String> {
    let spec = &launch.spec;
    let image = spec
        .image
        .clone()
        .filter(|image| !image.trim().is_empty())
        .ok_or_else(|| format!("container workload {workload} has no image"))?;
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut mounts = Vec::new();
    for volume in &spec.volumes {
        if !volume.target.starts_with('/') {
            return Err(format!(
                "volume {:?} of workload {workload}: target {:?} must be an absolute path",
                volume.source, volume.target
            ));
        }
        let kind = if volume.source.starts_with('/') {
            "bind"
        } else {
            "volume"
        };
        mounts.push(Mount {
            kind: kind.to_owned(),
            source: volume.source.clone(),
            target: volume.target.clone(),
            read_only: volume.read_only,
        });
    }
    if let Some(dir) = &launch.files_dir {
        mounts.push(Mount {
            kind: "bind".to_owned(),
            source: dir.display().to_string(),
            target: FILES_MOUNT_PATH.to_owned(),
            read_only: true,
        });
        env.push(format!("{FILES_DIR_ENV}={FILES_MOUNT_PATH}"));
    }
    if let Some(api) = &launch.local_api
        && let (Some(dir), Some(file)) = (api.socket.parent(), api.socket.file_name())
    {
        // The socket's directory, not the socket: an agent restart makes a new socket
        // file, which a mount of the old one would not see.
        let api_dir = edgefleet_wire::local::CONTAINER_API_DIR;
        mounts.push(Mount {
            kind: "bind".to_owned(),
            source: dir.display().to_string(),
            target: api_dir.to_owned(),
            read_only: true,
        });
        env.push(format!(
            "{}={api_dir}/{}",
            edgefleet_wire::local::LOCAL_API_ENV,
            file.to_string_lossy()
        ));
        env.push(format!(
            "{}={}",
            edgefleet_wire::local::WORKLOAD_TOKEN_ENV,
            api.token
        ));
    }
    let mut exposed_ports = BTreeMap::new();
    let mut port_bindings: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
    if !spec.ports.is_empty() && spec.network != NetworkMode::Bridge {
        return Err(format!(
            "workload {workload} publishes ports, which needs network: bridge (it has network: {})",
            spec.network.as_str()
        ));
    }
    for port in &spec.ports {
        let key = format!("{}/{}", port.container_port, port.protocol.as_str());
        exposed_ports.insert(key.clone(), EmptyObject {});
        port_bindings.entry(key).or_default().push(PortBinding {
            host_ip: port.host_ip.clone().unwrap_or_default(),
            host_port: port.host_port.unwrap_or(port.container_port).to_string(),
        });
    }
    let memory = spec.resources.memory.map(|m| m.0);
    let host_config = HostConfig {
        init: true,
        network_mode: spec.network.as_str().to_owned(),
        port_bindings,
        mounts,
        nano_cpus: spec
            .resources
            .cpus
            .map(|cpus| u64::from(cpus.0) * 1_000_000),
        memory,
        // Equal to the memory limit: no swap on top of it.
        memory_swap: memory,
        restart_policy: RestartPolicy::default(),
    };
    Ok(CreateContainer {
        image,
        // `command` replaces the image's entrypoint (and with it the image's CMD, as the
        // engine drops that when the entrypoint is given); `args` are the CMD.
        entrypoint: (!spec.command.is_empty()).then(|| vec![spec.command.clone()]),
        cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
        env,
        working_dir: spec.working_dir.clone(),
        labels: labels(agent_id, workload, launch),
        exposed_ports,
        host_config,
    })
}

fn labels(agent_id: &str, workload: &str, launch: &Launch) -> BTreeMap<String, String> {
    [
        (LABEL_MANAGED, "true"),
        (LABEL_AGENT, agent_id),
        (LABEL_WORKLOAD, workload),
        (LABEL_SPEC_HASH, &launch.spec_hash),
        (LABEL_KEY, &launch.key),
        (LABEL_DEPLOYMENT, &launch.deployment),
        (LABEL_REVISION, &launch.revision),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A label's value, empty when missing.
pub fn label<'a>(labels: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    labels.get(key).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use edgefleet_wire::manifest::WorkloadSpec;
    use edgefleet_wire::workload::{ByteSize, Cpus, PortMapping, Protocol, VolumeMount};
    use serde_json::json;

    use super::*;

    fn launch(spec: WorkloadSpec) -> Launch {
        Launch {
            spec,
            files_dir: None,
            spec_hash: "hash1".to_owned(),
            key: "key1".to_owned(),
            deployment: "shop".to_owned(),
            revision: "r3".to_owned(),
            local_api: None,
        }
    }

    #[test]
    fn a_minimal_container_runs_the_image_as_it_is_on_the_host_network() {
        let body = create_request(
            "node-1",
            "web",
            &launch(WorkloadSpec::container("web", "busybox:1.36")),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            json!({
                "Image": "busybox:1.36",
                "Labels": {
                    "edgefleet.agent": "node-1",
                    "edgefleet.deployment": "shop",
                    "edgefleet.key": "key1",
                    "edgefleet.managed": "true",
                    "edgefleet.revision": "r3",
                    "edgefleet.spec-hash": "hash1",
                    "edgefleet.workload": "web",
                },
                "HostConfig": {
                    "Init": true,
                    "NetworkMode": "host",
                    "RestartPolicy": {"Name": "no"},
                },
            })
        );
    }

    #[test]
    fn every_field_reaches_the_engine() {
        let mut spec = WorkloadSpec::container("web", "app:2");
        spec.command = "/bin/app".to_owned();
        spec.args = vec!["--port".to_owned(), "80".to_owned()];
        spec.env.insert("MODE".to_owned(), "edge".to_owned());
        spec.working_dir = Some("/srv".to_owned());
        spec.network = NetworkMode::Bridge;
        spec.ports = vec![PortMapping {
            container_port: 80,
            host_port: Some(8080),
            protocol: Protocol::Tcp,
            host_ip: Some("127.0.0.1".to_owned()),
        }];
        spec.volumes = vec![
            VolumeMount {
                source: "/var/lib/app".to_owned(),
                target: "/data".to_owned(),
                read_only: false,
            },
            VolumeMount {
                source: "cache".to_owned(),
                target: "/cache".to_owned(),
                read_only: true,
            },
        ];
        spec.resources.cpus = Some(Cpus(500));
        spec.resources.memory = Some(ByteSize(64 << 20));
        let mut launch = launch(spec);
        launch.files_dir = Some(PathBuf::from("/var/lib/edgefleet/files/web"));
        let body = serde_json::to_value(create_request("node-1", "web", &launch).unwrap()).unwrap();
        assert_eq!(body["Entrypoint"], json!(["/bin/app"]));
        assert_eq!(body["Cmd"], json!(["--port", "80"]));
        assert_eq!(
            body["Env"],
            json!(["MODE=edge", "EDGEFLEET_FILES_DIR=/run/edgefleet/files"])
        );
        assert_eq!(body["WorkingDir"], "/srv");
        assert_eq!(body["ExposedPorts"], json!({"80/tcp": {}}));
        let host = &body["HostConfig"];
        assert_eq!(host["NetworkMode"], "bridge");
        assert_eq!(
            host["PortBindings"],
            json!({"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]})
        );
        assert_eq!(
            host["Mounts"],
            json!([
                {"Type": "bind", "Source": "/var/lib/app", "Target": "/data", "ReadOnly": false},
                {"Type": "volume", "Source": "cache", "Target": "/cache", "ReadOnly": true},
                {"Type": "bind", "Source": "/var/lib/edgefleet/files/web", "Target": "/run/edgefleet/files", "ReadOnly": true},
            ])
        );
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host["Memory"], 64 << 20);
        assert_eq!(host["MemorySwap"], 64 << 20);
    }

    #[test]
    fn specs_the_engine_cannot_run_are_refused_with_the_reason() {
        let mut spec = WorkloadSpec::container("web", "app:2");
        spec.image = None;
        let error = create_request("n", "web", &launch(spec)).unwrap_err();
        assert_eq!(error, "container workload web has no image");

        let mut spec = WorkloadSpec::container("web", "app:2");
        spec.ports = vec![PortMapping {
            container_port: 80,
            host_port: None,
            protocol: Protocol::Udp,
            host_ip: None,
        }];
        let error = create_request("n", "web", &launch(spec)).unwrap_err();
        assert!(error.contains("needs network: bridge"), "{error}");

        let mut spec = WorkloadSpec::container("web", "app:2");
        spec.volumes = vec![VolumeMount {
            source: "data".to_owned(),
            target: "data".to_owned(),
            read_only: false,
        }];
        let error = create_request("n", "web", &launch(spec)).unwrap_err();
        assert!(error.contains("must be an absolute path"), "{error}");
    }

    #[test]
    fn names_are_short_and_distinct_per_agent() {
        let a = short_agent_id("gateway-berlin-01");
        let b = short_agent_id("gateway-berlin-02");
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
        assert_eq!(container_name(&a, "web"), format!("ef-{a}-web"));
    }
}
