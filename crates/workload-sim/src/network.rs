//! Pod networking on one machine. Every Pod has a network namespace of its own and an address in
//! [`POD_NETWORK`] (10.244.0.0/16, an address a real API server takes in an EndpointSlice), so it listens
//! exactly as its manifest says (HAProxy's `bind :::8080` in two pods at once). The pods' namespaces hang off
//! one "node" namespace by veth pairs; the node routes between them, holds the node's own address
//! ([`NODE_ADDRESS`]) and takes every address of [`SERVICE_NETWORK`] (the cluster IPs) as its own, where the
//! service proxy and the API server's endpoint for Pods listen. None of these addresses exists outside those
//! namespaces, and the host's own routing is not changed: the host reaches a Pod or a Service through its
//! *mirror* on loopback (see [`Mirror`]), where the simulator runs a forwarder. Nothing leaves the machine.
//! The simulator needs root for this.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::mpsc;
use tokio::net::{TcpSocket, TcpStream};

/// The Pods' addresses: 10.244.c.d, c below 255.
pub const POD_NETWORK: [u8; 2] = [10, 244];
/// The cluster IPs of Services (the API server's `--service-cluster-ip-range`, a /16).
pub const SERVICE_NETWORK: [u8; 2] = [10, 96];
/// The node's own address (its InternalIP, the Pods' `hostIP`), in the node's namespace.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);

/// Where the host reaches Pods and Services: Pod 10.244.c.d at 127.`pods`.c.d and Service 10.96.c.d at
/// 127.`pods+1`.c.d (each simulator running at once takes a `pods` of its own).
#[derive(Clone, Copy, Debug)]
pub struct Mirror {
    pub pods: u8,
}

impl Mirror {
    /// The host's address for a Pod's or a Service's address; `None` for any other.
    pub fn of(&self, address: IpAddr) -> Option<Ipv4Addr> {
        let IpAddr::V4(v4) = address else { return None };
        let [a, b, c, d] = v4.octets();
        match [a, b] {
            POD_NETWORK => Some(Ipv4Addr::new(127, self.pods, c, d)),
            SERVICE_NETWORK => Some(Ipv4Addr::new(127, self.pods + 1, c, d)),
            _ => None,
        }
    }
}

/// The network namespaces of one simulator: its node's, and one per Pod.
pub struct Network {
    /// Prefix of every namespace and link name this simulator creates.
    prefix: String,
    node: String,
    sockets: mpsc::Sender<tokio::sync::oneshot::Sender<std::io::Result<socket2::Socket>>>,
    pub mirror: Mirror,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| anyhow::anyhow!("running ip (iproute2): {e}"))?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    ip(&["netns", "exec", ns, "sysctl", "-qw", &format!("{key}={value}")])
}

fn namespace(ns: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

fn cidr(network: [u8; 2]) -> String {
    format!("{}.{}.0.0/16", network[0], network[1])
}

impl Network {
    /// The node's namespace (root only: `ip netns` needs it).
    pub fn start(prefix: &str, mirror: Mirror) -> anyhow::Result<Network> {
        if !nix::unistd::geteuid().is_root() {
            anyhow::bail!("workload-sim needs root: every Pod has network, mount and pid namespaces of its own");
        }
        let node = format!("{prefix}-node");
        // leftovers of an earlier run that did not stop cleanly
        remove_namespaces(prefix);
        namespace(&node)?;
        sysctl(&node, "net.ipv4.ip_forward", "1")?;
        ip(&["-n", &node, "addr", "add", &format!("{NODE_ADDRESS}/32"), "dev", "lo"])?;
        // every cluster IP is the node's own: the service proxy listens there
        ip(&["-n", &node, "route", "add", "local", &cidr(SERVICE_NETWORK), "dev", "lo", "table", "local"])?;
        let (sockets, requests) = mpsc::channel();
        let path = format!("/var/run/netns/{node}");
        let file = std::fs::File::open(&path)?;
        std::thread::Builder::new().name("node-netns".into()).spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                tracing::error!(error = %e, "cannot enter the node's network namespace");
                return;
            }
            for reply in requests.iter() {
                let reply: tokio::sync::oneshot::Sender<std::io::Result<socket2::Socket>> = reply;
                let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .and_then(|s| s.set_nonblocking(true).map(|_| s));
                let _ = reply.send(socket);
            }
        })?;
        Ok(Network { prefix: prefix.into(), node, sockets, mirror })
    }

    /// Gives Pod `id` (a short unique name) its namespace and `address`; returns the namespace's name.
    pub fn add_pod(&self, id: &str, address: Ipv4Addr) -> anyhow::Result<String> {
        let ns = self.pod_namespace(id);
        let _ = ip(&["netns", "del", &ns]);
        namespace(&ns)?;
        // the node's end of the pair; link names are at most 15 bytes
        let link = format!("v{}", &short_hash(&ns)[..12]);
        ip(&["-n", &self.node, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        sysctl(&self.node, &format!("net.ipv4.conf.{link}.proxy_arp"), "1")?;
        // answered at once: the kernel delays proxy ARP answers by up to 0.8 s by default, so a pod's first
        // connection to an address it had not reached yet (a new pod) took a second (a SYN retransmission)
        sysctl(&self.node, &format!("net.ipv4.neigh.{link}.proxy_delay"), "0")?;
        ip(&["-n", &self.node, "link", "set", &link, "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{address}/32"), "dev", "eth0"])?;
        // Pods, Services and the node: all through the node
        ip(&["-n", &ns, "route", "add", "10.0.0.0/8", "dev", "eth0", "src", &address.to_string()])?;
        let node_src = NODE_ADDRESS.to_string();
        ip(&["-n", &self.node, "route", "add", &format!("{address}/32"), "dev", &link, "src", &node_src])?;
        Ok(ns)
    }

    pub fn remove_pod(&self, id: &str) {
        let _ = ip(&["netns", "del", &self.pod_namespace(id)]);
    }

    fn pod_namespace(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }

    /// A connection to `address` (a Pod's or a Service's) as the node opens it.
    pub async fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        TcpSocket::from_std_stream(self.node_socket().await?.into()).connect(address).await
    }

    /// A listener in the node's namespace (where Pods reach it), e.g. a cluster IP's.
    pub async fn listen_in_node(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let socket = self.node_socket().await?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&address.into())
            .map_err(|e| std::io::Error::new(e.kind(), format!("listening on {address}: {e}")))?;
        socket.listen(1024)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// A new TCP socket of the node's namespace (made by the thread that lives in it).
    async fn node_socket(&self) -> std::io::Result<socket2::Socket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sockets.send(tx).map_err(|_| std::io::Error::other("node namespace thread stopped"))?;
        rx.await.map_err(|_| std::io::Error::other("node namespace thread stopped"))?
    }

    /// The node's namespace, for processes that run on the node (as a host-network Pod would).
    pub fn node_namespace(&self) -> &str {
        &self.node
    }

    /// Deletes every namespace this simulator created.
    pub fn stop(&self) {
        remove_namespaces(&self.prefix);
    }
}

/// Deletes the namespaces whose name starts with `prefix-`.
fn remove_namespaces(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&format!("{prefix}-")) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn short_hash(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Closes `stream` with a reset when it is dropped (how a refused or failed connection looks to its client).
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// A listener on `address`, with address reuse (a restarted process takes its port back at once); the
/// unspecified IPv6 address takes IPv4 too, as `:::PORT` does in a pod.
pub fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv6() { TcpSocket::new_v6()? } else { TcpSocket::new_v4()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address).map_err(|e| std::io::Error::new(e.kind(), format!("listening on {address}: {e}")))?;
    socket.listen(1024)
}

/// Forwards each connection `listener` accepts (on the host's loopback, or in the node's namespace) to the
/// address `target` picks for it, connected from the node, until the task is aborted. No target, or a target
/// that refuses: the client gets a reset.
pub async fn forward(
    network: std::sync::Arc<Network>,
    listener: tokio::net::TcpListener,
    target: impl Fn() -> Option<SocketAddr>,
) -> std::io::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        let Some(target) = target() else {
            reset(&client);
            continue;
        };
        let network = network.clone();
        tokio::spawn(async move {
            match network.connect(target).await {
                Ok(mut server) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(_) => reset(&client),
            }
        });
    }
}
