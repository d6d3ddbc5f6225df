//! What runs for a container, by its image: `haproxy` runs the real `haproxy` with the container's command
//! and args as the official image runs them (by default on `/usr/local/etc/haproxy/haproxy.cfg`, the file
//! the Pod's volume mounted there holds, unchanged); an image of canary-controller runs our real binary with
//! the container's command and args and the Pod's ServiceAccount token where a kubelet puts it; both get
//! their volumes at their `mountPath`s; any other
//! image runs the built-in server (`workload-sim serve`, see `server`) on the container's ports. Environment
//! variables are the container's `env` (values and the downward API's `fieldRef`). As root each container
//! runs in the Pod's network namespace and mount and pid namespaces of its own (it is PID 1, so a `preStop`
//! hook's `kill -USR1 1` reaches it), as the Pod's `runAsUser`/`runAsGroup` (see `container`).

use crate::container::Bind;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

/// The official HAProxy image's CMD (its entrypoint script adds `-W -db`).
const HAPROXY_DEFAULT_CMD: &[&str] = &["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"];
/// canary-controller's image: its only program, and its default arguments (the Dockerfile's CMD).
const OWN_PROGRAM: &str = "/canary-controller";
const OWN_DEFAULT_ARGS: &[&str] = &["run"];
/// A container's process, ready to start.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    /// The program's name as the process sees it (its `argv[0]`).
    pub argv0: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// uid and gid to run as (root only).
    pub user: Option<(i64, i64)>,
    /// Volumes mounted in the container (root only).
    pub binds: Vec<Bind>,
    /// The directory it starts in (root only): the container's `workingDir`, default `/`.
    pub workdir: PathBuf,
}

/// What a Pod's containers run with.
pub struct PodContext<'a> {
    pub address: Ipv4Addr,
    pub node_address: Ipv4Addr,
    /// Each volume's directory, by name.
    pub volumes: &'a HashMap<String, PathBuf>,
    /// Where Pods reach the API server.
    pub api: Option<SocketAddrV4>,
    /// canary-controller's binary, which its image runs.
    pub own_binary: &'a Path,
}

/// Whether `image` is canary-controller's own (its containers run our binary).
pub fn is_own_image(image: &str) -> bool {
    repository(image).contains("canary-controller")
}

fn repository(image: &str) -> &str {
    image.rsplit('/').next().unwrap_or_default().split([':', '@']).next().unwrap_or_default()
}

/// The value of a downward API `fieldRef` of `pod`, as a kubelet resolves it for an environment variable.
fn field_ref(pod: &Pod, path: &str, context: &PodContext) -> anyhow::Result<String> {
    match path {
        "status.podIP" => Ok(context.address.to_string()),
        "status.hostIP" => Ok(context.node_address.to_string()),
        _ => pod_field(pod, path),
    }
}

/// The value of a downward API `fieldRef` of `pod` that its metadata and spec hold (what a volume may show).
pub fn pod_field(pod: &Pod, path: &str) -> anyhow::Result<String> {
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &std::collections::BTreeMap<String, String>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    let value = match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => {
            spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into())
        }
        _ => keyed("metadata.labels['", pod.labels())
            .or_else(|| keyed("metadata.annotations['", pod.annotations()))
            .ok_or_else(|| anyhow::anyhow!("fieldRef {path:?} is not supported by workload-sim"))?,
    };
    Ok(value)
}

/// The process for `container` of `pod`, or why it cannot run here.
pub fn launch(container: &Container, pod: &Pod, context: &PodContext) -> anyhow::Result<Launch> {
    let image = container.image.clone().unwrap_or_default();
    let repository = repository(&image);
    let mut env = vec![];
    for var in container.env.iter().flatten() {
        let from_field = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
        match (&var.value, from_field) {
            (Some(value), _) => env.push((var.name.clone(), value.clone())),
            (None, Some(field)) => env.push((var.name.clone(), field_ref(pod, &field.field_path, context)?)),
            (None, None) if var.value_from.is_some() => {
                anyhow::bail!("env {}: only values and fieldRef are supported by workload-sim", var.name)
            }
            (None, None) => env.push((var.name.clone(), String::new())),
        }
    }
    if let Some(api) = context.api {
        env.push(("KUBERNETES_SERVICE_HOST".into(), api.ip().to_string()));
        env.push(("KUBERNETES_SERVICE_PORT".into(), api.port().to_string()));
    }
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let uid = own.and_then(|s| s.run_as_user).or(pod_context.and_then(|s| s.run_as_user));
    let gid = own.and_then(|s| s.run_as_group).or(pod_context.and_then(|s| s.run_as_group)).or(uid);
    let user = uid.zip(gid);
    if repository == "haproxy" {
        return haproxy_image(container, context, env, user);
    }
    if is_own_image(&image) {
        return own_image(container, context, env, user);
    }
    let ports = listen_ports(container, pod);
    let mut args = vec!["serve".into(), "--pod".into(), pod.name_any(), "--image".into(), image.clone()];
    for port in ports {
        args.push("--listen".into());
        args.push(format!("[::]:{port}"));
    }
    let program = std::env::current_exe()?;
    Ok(Launch { program, argv0: "workload-sim".into(), args, env, user, binds: vec![], workdir: workdir(container) })
}

/// The official HAProxy image: the real `haproxy` with the container's command, or its args (default: the
/// image's CMD) as the image's entrypoint script runs them (`haproxy -W -db ...`: master-worker, in the
/// foreground), and the container's volumes at their paths (its config at `/usr/local/etc/haproxy`).
fn haproxy_image(
    container: &Container,
    context: &PodContext,
    env: Vec<(String, String)>,
    user: Option<(i64, i64)>,
) -> anyhow::Result<Launch> {
    let image = container.image.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let argv: Vec<String> = match &container.command {
        Some(command) => command.iter().cloned().chain(args).collect(),
        None => {
            let args = if container.args.is_some() {
                args
            } else {
                HAPROXY_DEFAULT_CMD.iter().map(|a| a.to_string()).collect()
            };
            let options = match args.first().map(String::as_str) {
                Some("haproxy") => args[1..].to_vec(),
                Some(first) if first.starts_with('-') => args,
                _ => anyhow::bail!(
                    "image {image}: workload-sim runs only haproxy from it, not {args:?} (spec.containers[].args)"
                ),
            };
            ["haproxy", "-W", "-db"].iter().map(|a| a.to_string()).chain(options).collect()
        }
    };
    let program = argv.first().map(String::as_str).unwrap_or_default();
    if Path::new(program).file_name().and_then(|n| n.to_str()) != Some("haproxy") {
        anyhow::bail!(
            "image {image}: workload-sim runs only haproxy from it, not {program:?} (spec.containers[].command)"
        );
    }
    let binds = volume_binds(container, context.volumes)?;
    // `haproxy` on this machine's PATH, whatever path the image has it at
    let args = argv[1..].to_vec();
    Ok(Launch {
        program: "haproxy".into(),
        argv0: "haproxy".into(),
        args,
        env,
        user,
        binds,
        workdir: workdir(container),
    })
}

/// canary-controller's image: our binary with the container's command and args (as a container runtime
/// combines them with the image's entrypoint and CMD), the container's volumes at their paths and the Pod's
/// ServiceAccount token where a kubelet mounts it.
fn own_image(
    container: &Container,
    context: &PodContext,
    env: Vec<(String, String)>,
    user: Option<(i64, i64)>,
) -> anyhow::Result<Launch> {
    let image = container.image.clone().unwrap_or_default();
    if !context.own_binary.exists() {
        anyhow::bail!(
            "image {image}: canary-controller's binary {} is missing (cargo build -p canary-controller, or workload-sim run --controller-binary)",
            context.own_binary.display()
        );
    }
    let given_args = container.args.clone();
    let (argv0, args) = match container.command.as_deref() {
        Some([program, rest @ ..]) => {
            if program != OWN_PROGRAM {
                anyhow::bail!(
                    "image {image}: its only program is {OWN_PROGRAM}, not {program:?} (spec.containers[].command)"
                );
            }
            (program.clone(), rest.iter().cloned().chain(given_args.into_iter().flatten()).collect())
        }
        _ => (
            OWN_PROGRAM.to_string(),
            given_args.unwrap_or_else(|| OWN_DEFAULT_ARGS.iter().map(|a| a.to_string()).collect()),
        ),
    };
    // the ServiceAccount token, as every volume: the API server's admission adds the projected volume
    let binds = volume_binds(container, context.volumes)?;
    Ok(Launch { program: context.own_binary.into(), argv0, args, env, user, binds, workdir: workdir(container) })
}

/// The directory a container starts in: its `workingDir`, else `/` (the images' own default is not known).
fn workdir(container: &Container) -> PathBuf {
    container.working_dir.clone().unwrap_or_else(|| "/".into()).into()
}

/// The container's volumes, mounted at their `mountPath`s.
fn volume_binds(container: &Container, volumes: &HashMap<String, PathBuf>) -> anyhow::Result<Vec<Bind>> {
    let mounts = container.volume_mounts.iter().flatten();
    mounts
        .map(|mount| {
            Ok(Bind {
                source: volume_dir(volumes, &mount.name)?.clone(),
                target: mount.mount_path.clone().into(),
                read_only: mount.read_only == Some(true),
            })
        })
        .collect()
}

/// The directory of the Pod's volume `name`, which a container mounts.
fn volume_dir<'a>(volumes: &'a HashMap<String, PathBuf>, name: &str) -> anyhow::Result<&'a PathBuf> {
    volumes.get(name).ok_or_else(|| anyhow::anyhow!("volume {name} is not defined in the pod"))
}

/// The ports the built-in server listens on for `container`: its declared ports; a container that declares
/// none gets port 80 when it is the pod's first such container and no container declares 80 (as for
/// `kubectl create deployment --image=nginx`), else none (it runs, listening on nothing).
fn listen_ports(container: &Container, pod: &Pod) -> Vec<u16> {
    let declared = |c: &Container| -> Vec<u16> {
        c.ports.iter().flatten().filter_map(|p| u16::try_from(p.container_port).ok()).collect()
    };
    let own = declared(container);
    if !own.is_empty() {
        return own;
    }
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let first_portless = containers.iter().find(|c| declared(c).is_empty()).map(|c| c.name.as_str());
    let eighty_taken = containers.iter().any(|c| declared(c).contains(&80));
    if first_portless == Some(container.name.as_str()) && !eighty_taken { vec![80] } else { vec![] }
}

/// The command that starts `launch` in network namespace `netns` and mount and pid namespaces of its own,
/// through `workload-sim container` (which mounts its volumes in `scratch` and the container's paths, and
/// becomes its user).
pub fn command(launch: &Launch, netns: &str, scratch: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("ip");
    command.args(["netns", "exec", netns, "unshare", "--pid", "--mount", "--fork", "--kill-child", "--"]);
    command.arg(std::env::current_exe().unwrap_or_else(|_| "workload-sim".into()));
    command.arg("container").arg("--scratch").arg(scratch);
    if let Some((uid, gid)) = launch.user {
        command.arg("--user").arg(format!("{uid}:{gid}"));
    }
    for bind in &launch.binds {
        command.arg("--bind").arg(bind.to_arg());
    }
    command.arg("--workdir").arg(&launch.workdir);
    command.arg("--program").arg(&launch.program).arg("--").arg(&launch.argv0);
    command.args(&launch.args);
    command.env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()));
    command.envs(launch.env.iter().cloned());
    command.stdin(std::process::Stdio::null());
    command
}

/// The pid of the container's own process: the launcher's only child (the launcher made a pid namespace).
pub async fn container_pid(launcher: u32) -> Option<u32> {
    for _ in 0..200 {
        let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
        if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Some(pid);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    None
}
