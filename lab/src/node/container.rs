//! Container nodes: a container started through the local engine (testcontainers, network
//! mode none) whose network namespace is named like a netns node's (`/run/netns/<ns>`), so
//! the lab wires, addresses and routes it like any other node.
//!
//! Every container carries the labels [`LABEL_PREFIX`], [`LABEL_LAB`] and [`LABEL_NODE`]:
//! `lab down` finds and removes a lab's containers by them even when `lab up` was killed
//! before it could record anything. Containers outlive the `lab up` that started them
//! (testcontainers' reuse directive keeps them on drop); only teardown removes them.

use std::{collections::HashMap, io, process::Output, time::Instant};

use testcontainers::{
    GenericImage, ImageExt as _, ReuseDirective,
    bollard::{
        self,
        models::{ContainerCreateBody, HostConfig},
        query_parameters::{
            CreateContainerOptionsBuilder, ListContainersOptions, RemoveContainerOptions,
        },
    },
    runners::AsyncRunner as _,
};

use super::{NetnsNode, Node};

/// Label holding the kernel-name prefix of the lab a container belongs to.
pub const LABEL_PREFIX: &str = "org.disgrafs-lab.prefix";
/// Label holding the lab's name.
pub const LABEL_LAB: &str = "org.disgrafs-lab.lab";
/// Label holding the node's name.
pub const LABEL_NODE: &str = "org.disgrafs-lab.node";

/// What to do when no engine answers (setup installs and starts one).
const NO_ENGINE_HELP: &str = "run ./setup (it installs docker.io and starts dockerd), or start \
     dockerd yourself; labs of netns nodes work without an engine";

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No engine answers on the local socket.
    #[error("no container engine can be reached ({0}): {NO_ENGINE_HELP}")]
    Unreachable(String),
    /// The engine refused or failed a request.
    #[error("container engine: {action}: {message}")]
    Failed {
        /// What was asked.
        action: String,
        /// The engine's answer.
        message: String,
    },
}

impl EngineError {
    fn failed(action: impl Into<String>, error: impl std::fmt::Display) -> Self {
        EngineError::Failed {
            action: action.into(),
            message: error.to_string(),
        }
    }
}

/// A container node to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name, also the name of its network namespace.
    pub name: String,
    /// The node.
    pub node: String,
    /// The lab.
    pub lab: String,
    /// The lab's kernel-name prefix.
    pub prefix: String,
    /// Image reference (`repo[:tag]`, tag `latest` when omitted).
    pub image: String,
    /// Command replacing the image's (empty: the image's own).
    pub cmd: Vec<String>,
}

/// A container that joins the network namespace of a node's container (network mode
/// `container:NODE`), e.g. a service of `[deploy]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedSpec {
    /// The container's name.
    pub name: String,
    /// The node container whose network namespace it shares.
    pub join: String,
    /// The node.
    pub node: String,
    /// The lab.
    pub lab: String,
    /// The lab's kernel-name prefix.
    pub prefix: String,
    /// Image reference (`repo[:tag]`).
    pub image: String,
    /// Program and arguments (run as the entrypoint, replacing the image's).
    pub argv: Vec<String>,
    /// Environment, `NAME=value`.
    pub env: Vec<String>,
    /// Host directories mounted at the same path inside.
    pub binds: Vec<String>,
}

/// A connection to the local container engine (Docker API on its Unix socket).
#[derive(Debug, Clone)]
pub struct Engine {
    docker: bollard::Docker,
}

impl Engine {
    /// Connects to the engine and checks that it answers.
    pub async fn connect() -> Result<Self, EngineError> {
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| EngineError::Unreachable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| EngineError::Unreachable(e.to_string()))?;
        Ok(Self { docker })
    }

    /// The engine's API client.
    pub fn docker(&self) -> &bollard::Docker {
        &self.docker
    }

    /// Starts `spec`'s container with network mode none and names its network namespace
    /// `spec.name`. Fails (naming the container, with its logs) when it exits at once.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<ContainerNode, EngineError> {
        let started = Instant::now();
        let (repo, tag) = split_image(&spec.image);
        let mut request = GenericImage::new(repo, tag)
            .with_container_name(&spec.name)
            .with_network("none")
            .with_labels([
                (LABEL_PREFIX, spec.prefix.as_str()),
                (LABEL_LAB, spec.lab.as_str()),
                (LABEL_NODE, spec.node.as_str()),
            ])
            .with_reuse(ReuseDirective::Always);
        if !spec.cmd.is_empty() {
            request = request.with_cmd(&spec.cmd);
        }
        let container = request.start().await.map_err(|e| {
            EngineError::failed(format!("start {} from {}", spec.name, spec.image), e)
        })?;
        // testcontainers has no PID accessor: ask the engine.
        let inspected = self
            .docker
            .inspect_container(container.id(), None)
            .await
            .map_err(|e| EngineError::failed(format!("inspect {}", spec.name), e))?;
        let state = inspected.state.unwrap_or_default();
        let pid = match state.pid {
            Some(pid) if pid > 0 && state.running == Some(true) => pid as u32,
            _ => {
                let logs = container
                    .stderr_to_vec()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
                    .unwrap_or_default();
                return Err(EngineError::failed(
                    format!("start {} from {}", spec.name, spec.image),
                    format!(
                        "the container exited at once (exit code {}){}{logs}",
                        state.exit_code.unwrap_or_default(),
                        if logs.is_empty() { "" } else { ": " }
                    ),
                ));
            }
        };
        lab_netlink::Netns::adopt(&spec.name, pid)
            .map_err(|e| EngineError::failed(format!("name the namespace of {}", spec.name), e))?;
        tracing::debug!(container = %spec.name, pid, elapsed = ?started.elapsed(), "container started");
        Ok(ContainerNode {
            netns: NetnsNode::new(&spec.node, &spec.name),
            container: spec.name.clone(),
            pid,
        })
    }

    /// Whether image `reference` (`repo[:tag]`) is in the engine's store.
    pub async fn has_image(&self, reference: &str) -> bool {
        self.docker.inspect_image(reference).await.is_ok()
    }

    /// Starts `spec`'s container in the network namespace of its node's container and returns
    /// the process id of its first process. testcontainers cannot do this (it would create a
    /// network named `container:…`), so the engine's API is used directly.
    pub async fn start_joined(&self, spec: &JoinedSpec) -> Result<u32, EngineError> {
        let action = || format!("start {} from {}", spec.name, spec.image);
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| EngineError::failed(action(), "no program to run"))?;
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec![program.clone()]),
            cmd: Some(args.to_vec()),
            env: Some(spec.env.clone()),
            labels: Some(HashMap::from([
                (LABEL_PREFIX.to_owned(), spec.prefix.clone()),
                (LABEL_LAB.to_owned(), spec.lab.clone()),
                (LABEL_NODE.to_owned(), spec.node.clone()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some(format!("container:{}", spec.join)),
                binds: Some(spec.binds.iter().map(|b| format!("{b}:{b}")).collect()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| EngineError::failed(action(), e))?;
        self.docker
            .start_container(&spec.name, None)
            .await
            .map_err(|e| EngineError::failed(action(), e))?;
        let state = self
            .docker
            .inspect_container(&spec.name, None)
            .await
            .map_err(|e| EngineError::failed(format!("inspect {}", spec.name), e))?
            .state
            .unwrap_or_default();
        match state.pid {
            Some(pid) if pid > 0 && state.running == Some(true) => Ok(pid as u32),
            _ => Err(EngineError::failed(
                action(),
                format!(
                    "the container exited at once (exit code {})",
                    state.exit_code.unwrap_or_default()
                ),
            )),
        }
    }

    /// Removes container `name` with its anonymous volumes (killing it first); one that does
    /// not exist is not an error.
    pub async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(EngineError::failed(format!("remove {name}"), e)),
        }
    }

    /// Names of the containers (running or not) of every lab of `prefix`, or only of `lab`.
    pub async fn containers_of(
        &self,
        prefix: &str,
        lab: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let mut labels = vec![format!("{LABEL_PREFIX}={prefix}")];
        if let Some(lab) = lab {
            labels.push(format!("{LABEL_LAB}={lab}"));
        }
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_owned(), labels)])),
            ..Default::default()
        };
        let listed = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| EngineError::failed("list containers", e))?;
        Ok(listed
            .into_iter()
            .filter_map(|c| c.names?.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect())
    }
}

/// `repo[:tag]` → (repo, tag); a `:` inside the registry's host:port is not a tag.
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// A running container node. Commands run in its network namespace with the host's file
/// system, so the host's tools (ping, ss, tcpdump) work even in `FROM scratch` images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerNode {
    netns: NetnsNode,
    container: String,
    pid: u32,
}

impl ContainerNode {
    /// The container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The process id of the container's first process.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Node for ContainerNode {
    fn name(&self) -> &str {
        self.netns.name()
    }

    fn netns(&self) -> &str {
        self.netns.netns()
    }

    fn run(&self, program: &str, args: &[String]) -> io::Result<Output> {
        self.netns.run(program, args)
    }

    fn exec(&self, program: &str, args: &[String]) -> io::Error {
        self.netns.exec(program, args)
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_references_split_into_repo_and_tag() {
        assert_eq!(
            split_image("disgrafs-lab/base"),
            ("disgrafs-lab/base", "latest")
        );
        assert_eq!(
            split_image("disgrafs-lab/base:abc"),
            ("disgrafs-lab/base", "abc")
        );
        assert_eq!(
            split_image("localhost:5000/base"),
            ("localhost:5000/base", "latest")
        );
        assert_eq!(
            split_image("localhost:5000/base:v1"),
            ("localhost:5000/base", "v1")
        );
    }
}
