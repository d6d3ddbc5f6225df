//! What runs for a container, by its image: `haproxy*` runs the real `haproxy` on the file its manifest
//! mounts at the official image's config path (`/usr/local/etc/haproxy/haproxy.cfg`, from the Pod's volume,
//! unchanged); any other image runs the built-in server (`workload-sim serve`, see `server`) on the
//! container's ports. As root each container runs in the Pod's network namespace and a pid namespace of its
//! own (it is PID 1, so a `preStop` hook's `kill -USR1 1` reaches it), as the Pod's `runAsUser`/`runAsGroup`.

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The official HAProxy image's configuration directory.
const HAPROXY_CONFIG_DIR: &str = "/usr/local/etc/haproxy";

/// A container's process, ready to start.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// uid and gid to run as (root only).
    pub user: Option<(i64, i64)>,
}

/// The process for `container` of `pod` at `address`, or why it cannot run here.
pub fn launch(
    container: &Container,
    pod: &Pod,
    address: Ipv4Addr,
    own_namespace: bool,
    volumes: &HashMap<String, PathBuf>,
) -> anyhow::Result<Launch> {
    let image = container.image.clone().unwrap_or_default();
    let repository = image.rsplit('/').next().unwrap_or_default().split([':', '@']).next().unwrap_or_default();
    let env: Vec<(String, String)> =
        container.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect();
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let own = container.security_context.as_ref();
    let uid = own.and_then(|s| s.run_as_user).or(pod_context.and_then(|s| s.run_as_user));
    let gid = own.and_then(|s| s.run_as_group).or(pod_context.and_then(|s| s.run_as_group)).or(uid);
    let user = uid.zip(gid).filter(|_| own_namespace);
    if repository == "haproxy" {
        if !own_namespace {
            anyhow::bail!(
                "image {image}: HAProxy listens on every address of its pod and needs a network namespace of its own: run workload-sim as root"
            );
        }
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path.trim_end_matches('/') == HAPROXY_CONFIG_DIR)
            .ok_or_else(|| anyhow::anyhow!("image {image}: no volume mounted at {HAPROXY_CONFIG_DIR}"))?;
        let dir = volumes
            .get(&mount.name)
            .ok_or_else(|| anyhow::anyhow!("volume {} is not defined in the pod", mount.name))?;
        let config = dir.join("haproxy.cfg");
        let args = vec!["-W".into(), "-db".into(), "-f".into(), config.display().to_string()];
        return Ok(Launch { program: "haproxy".into(), args, env, user });
    }
    if repository.contains("canary-controller") {
        anyhow::bail!("image {image}: containers of canary-controller's own image are not simulated yet");
    }
    let ports = listen_ports(container, pod);
    let mut args = vec!["serve".into(), "--pod".into(), pod.name_any(), "--image".into(), image.clone()];
    for port in ports {
        args.push("--listen".into());
        args.push(if own_namespace { format!("[::]:{port}") } else { format!("{address}:{port}") });
    }
    let program = std::env::current_exe()?;
    Ok(Launch { program, args, env, user })
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

/// The command that starts `launch`, in network namespace `netns` if any.
pub fn command(launch: &Launch, netns: Option<&str>) -> tokio::process::Command {
    let mut command = match netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns, "unshare", "--pid", "--fork", "--kill-child", "--"]);
            if let Some((uid, gid)) = launch.user {
                c.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "--"]);
            }
            c.arg(&launch.program);
            c
        }
        None => tokio::process::Command::new(&launch.program),
    };
    command.args(&launch.args);
    command.env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()));
    command.envs(launch.env.iter().cloned());
    command.stdin(std::process::Stdio::null());
    command
}

/// The pid of the container's own process: the launcher's only child as root (the launcher made a pid
/// namespace), else the launcher itself.
pub async fn container_pid(launcher: u32, own_namespace: bool) -> Option<u32> {
    if !own_namespace {
        return Some(launcher);
    }
    for _ in 0..200 {
        let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok()?;
        if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Some(pid);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    None
}
