//! Pod networking on one machine. Every Pod has a network namespace of its own and two addresses, one in
//! [`POD_NETWORK`] (10.244.c.d) and one in [`POD_NETWORK_V6`] (fd00:10:244::c:d), addresses a real API server
//! takes in an EndpointSlice, so it listens exactly as its manifest says (HAProxy's `bind :::8080` in two pods
//! at once). The pods' namespaces hang off one "node" namespace by veth pairs; the node routes between them,
//! holds the node's own addresses ([`NODE_ADDRESS`], [`NODE_ADDRESS_V6`]) and takes every address of the
//! service networks ([`SERVICE_NETWORK`], [`SERVICE_NETWORK_V6`]: the cluster IPs) as its own, where the
//! service proxy and the API server's endpoint for Pods listen. None of these addresses exists outside those
//! namespaces, and the host's own routing is not changed: the host reaches a Pod or a Service through its
//! *mirror* on loopback (see [`Mirror`]), where the simulator runs a forwarder. Nothing leaves the machine.
//! The simulator needs root for this.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::sync::mpsc;
use tokio::net::{TcpSocket, TcpStream};

/// The Pods' addresses: 10.244.c.d, c below 255.
pub const POD_NETWORK: [u8; 2] = [10, 244];
/// The cluster IPs of Services (the API server's `--service-cluster-ip-range`, a /16).
pub const SERVICE_NETWORK: [u8; 2] = [10, 96];
/// The node's own address (its InternalIP, the Pods' `hostIP`), in the node's namespace.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
/// The Pods' IPv6 addresses: Pod 10.244.c.d is also fd00:10:244::c:d.
pub const POD_NETWORK_V6: &str = "fd00:10:244::/64";
/// The IPv6 cluster IPs (the API server's second `--service-cluster-ip-range`).
pub const SERVICE_NETWORK_V6: &str = "fd00:10:96::/112";
/// The node's own IPv6 address.
pub const NODE_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x240, 0, 0, 0, 0, 1);
/// Where every Pod's IPv6 routes go: the node's end of its veth pair (a link-local address, the same on each).
const NODE_LINK_LOCAL: &str = "fe80::1";

/// The IPv6 address of the Pod whose IPv4 address is `address`.
pub fn pod_address_v6(address: Ipv4Addr) -> Ipv6Addr {
    let [_, _, c, d] = address.octets();
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, c.into(), d.into())
}

/// Where the host reaches Pods and Services: Pod 10.244.c.d at 127.`pods`.c.d and Service 10.96.c.d at
/// 127.`pods+1`.c.d (each simulator running at once takes a `pods` of its own).
#[derive(Clone, Copy, Debug)]
pub struct Mirror {
    pub pods: u8,
}

impl Mirror {
    /// The host's address for a Pod's or a Service's IPv4 address; `None` for any other (IPv6 addresses have
    /// no mirror: the host reaches a Pod, or a dual-stack Service, at its IPv4 address's).
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

/// Whether `address` is a cluster IP (of either service network).
pub fn is_cluster_ip(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.octets()[..2] == SERVICE_NETWORK,
        IpAddr::V6(v6) => v6.segments()[..7] == [0xfd00, 0x10, 0x96, 0, 0, 0, 0],
    }
}

/// A request for a TCP socket of the node's namespace, of an address family (IPv6 or not).
type SocketRequest = (bool, tokio::sync::oneshot::Sender<std::io::Result<socket2::Socket>>);

/// The network namespaces of one simulator: its node's, and one per Pod.
pub struct Network {
    /// Prefix of every namespace and link name this simulator creates.
    prefix: String,
    node: String,
    sockets: mpsc::Sender<SocketRequest>,
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

/// A new namespace, its loopback up, its links made from now on without duplicate address detection (every
/// address here is the simulator's to give: an address is usable at once, not a second later).
fn namespace(ns: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
        sysctl(ns, key, "0")?;
    }
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
        sysctl(&node, "net.ipv6.conf.all.forwarding", "1")?;
        ip(&["-n", &node, "addr", "add", &format!("{NODE_ADDRESS}/32"), "dev", "lo"])?;
        ip(&["-n", &node, "addr", "add", &format!("{NODE_ADDRESS_V6}/128"), "dev", "lo", "nodad"])?;
        // every cluster IP is the node's own: the service proxy listens there
        ip(&["-n", &node, "route", "add", "local", &cidr(SERVICE_NETWORK), "dev", "lo", "table", "local"])?;
        ip(&["-n", &node, "-6", "route", "add", "local", SERVICE_NETWORK_V6, "dev", "lo", "table", "local"])?;
        // an IPv6 socket binds only an address the interface has, whatever the routes say: let it bind these
        sysctl(&node, "net.ipv6.ip_nonlocal_bind", "1")?;
        let (sockets, requests) = mpsc::channel::<SocketRequest>();
        let path = format!("/var/run/netns/{node}");
        let file = std::fs::File::open(&path)?;
        std::thread::Builder::new().name("node-netns".into()).spawn(move || {
            if let Err(e) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
                tracing::error!(error = %e, "cannot enter the node's network namespace");
                return;
            }
            for (v6, reply) in requests.iter() {
                let domain = if v6 { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
                let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
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
        // and the same in IPv6, through the node's link-local address on the pair
        let v6 = pod_address_v6(address).to_string();
        ip(&["-n", &self.node, "addr", "add", &format!("{NODE_LINK_LOCAL}/64"), "dev", &link, "nodad"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"])?;
        ip(&["-n", &ns, "-6", "route", "add", "fd00:10::/32", "via", NODE_LINK_LOCAL, "dev", "eth0", "src", &v6])?;
        let node_src = NODE_ADDRESS_V6.to_string();
        ip(&["-n", &self.node, "-6", "route", "add", &format!("{v6}/128"), "dev", &link, "src", &node_src])?;
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
        TcpSocket::from_std_stream(self.node_socket(address.is_ipv6()).await?.into()).connect(address).await
    }

    /// A listener in the node's namespace (where Pods reach it), e.g. a cluster IP's.
    pub async fn listen_in_node(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let socket = self.node_socket(address.is_ipv6()).await?;
        socket.set_reuse_address(true)?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket
            .bind(&address.into())
            .map_err(|e| std::io::Error::new(e.kind(), format!("listening on {address}: {e}")))?;
        socket.listen(1024)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// A new TCP socket of the node's namespace (made by the thread that lives in it).
    async fn node_socket(&self, v6: bool) -> std::io::Result<socket2::Socket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sockets.send((v6, tx)).map_err(|_| std::io::Error::other("node namespace thread stopped"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_cluster_ips_have_their_mirrors_and_ipv6_addresses() {
        let mirror = Mirror { pods: 240 };
        let pod = Ipv4Addr::new(10, 244, 3, 7);
        assert_eq!(mirror.of(pod.into()), Some(Ipv4Addr::new(127, 240, 3, 7)));
        assert_eq!(mirror.of(Ipv4Addr::new(10, 96, 0, 12).into()), Some(Ipv4Addr::new(127, 241, 0, 12)));
        assert_eq!(mirror.of(Ipv4Addr::new(10, 240, 0, 1).into()), None, "the node's own address");
        assert_eq!(mirror.of(pod_address_v6(pod).into()), None, "IPv6 addresses have none");
        assert_eq!(pod_address_v6(pod).to_string(), "fd00:10:244::3:7");
        assert!(is_cluster_ip("10.96.200.1".parse().unwrap()) && is_cluster_ip("fd00:10:96::babd".parse().unwrap()));
        assert!(!is_cluster_ip("10.244.0.1".parse().unwrap()) && !is_cluster_ip("fd00:10:97::1".parse().unwrap()));
    }
}
