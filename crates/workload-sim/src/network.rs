//! Pod networking on one machine. Every Pod gets a loopback address (127.P.x.y) and, where the simulator
//! runs as root, a network namespace of its own, so that it listens exactly as its manifest says (HAProxy's
//! `bind :::8080` in two pods at once): the pods' namespaces hang off one "node" namespace by veth pairs, with
//! 127/8 routed between them (`route_localnet`). The host's own namespace keeps 127/8 local, so the host
//! reaches a Pod through a forwarder the simulator runs on the Pod's address and ports (see `forward`), and
//! reaches Services through the service proxy (`service_proxy`). Nothing leaves the machine.
//!
//! Without root there are no namespaces: every Pod process runs in the host's namespace and must listen on
//! its own address (the built-in server does); a Pod that would listen on every address (HAProxy) cannot run.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::mpsc;
use tokio::net::{TcpSocket, TcpStream};

/// How Pods are isolated.
pub enum Network {
    /// A namespace per Pod (root).
    Namespaces(Namespaces),
    /// The host's namespace for every Pod.
    Host,
}

pub struct Namespaces {
    /// Prefix of every namespace and link name this simulator creates.
    prefix: String,
    node: String,
    /// The node namespace's own address (the source of connections from the host side and of probes).
    node_address: Ipv4Addr,
    sockets: mpsc::Sender<tokio::sync::oneshot::Sender<std::io::Result<socket2::Socket>>>,
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

/// Makes namespace `ns` route all of 127/8 but 127.0.0.1 elsewhere (its own address and routes are added
/// apart).
fn localnet_namespace(ns: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    for key in ["net.ipv4.conf.all.route_localnet", "net.ipv4.conf.default.route_localnet"] {
        sysctl(ns, key, "1")?;
    }
    ip(&["-n", ns, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local"])?;
    ip(&["-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo"])?;
    ip(&["-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo"])?;
    Ok(())
}

impl Network {
    /// Namespaces when running as root and `ip` works, else the host's namespace.
    pub fn start(prefix: &str, node_address: Ipv4Addr) -> Network {
        if !nix::unistd::geteuid().is_root() {
            tracing::warn!("not root: pods share the host's network namespace (see the README)");
            return Network::Host;
        }
        match Namespaces::start(prefix, node_address) {
            Ok(n) => Network::Namespaces(n),
            Err(e) => {
                tracing::warn!(error = %e, "network namespaces unavailable: pods share the host's namespace");
                Network::Host
            }
        }
    }

    /// Gives Pod `id` (a short unique name) its address; returns the namespace its processes run in, if any.
    pub fn add_pod(&self, id: &str, address: Ipv4Addr) -> anyhow::Result<Option<String>> {
        match self {
            Network::Host => Ok(None),
            Network::Namespaces(n) => n.add_pod(id, address).map(Some),
        }
    }

    pub fn remove_pod(&self, id: &str) {
        if let Network::Namespaces(n) = self {
            let _ = ip(&["netns", "del", &n.pod_namespace(id)]);
        }
    }

    /// A connection to `address` (a Pod's) as another Pod would open it.
    pub async fn connect(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        match self {
            Network::Host => TcpStream::connect(address).await,
            Network::Namespaces(n) => TcpSocket::from_std_stream(n.node_socket().await?.into()).connect(address).await,
        }
    }

    /// A listener in the node's namespace (where Pods reach it; namespaces only), e.g. the API server's
    /// endpoint for Pods.
    pub async fn listen_in_node(&self, address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let Network::Namespaces(n) = self else {
            return Err(std::io::Error::other("no node namespace: the simulator does not run as root"));
        };
        let socket = n.node_socket().await?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(1024)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    /// Whether the host reaches Pod addresses only through forwarders.
    pub fn needs_forwarders(&self) -> bool {
        matches!(self, Network::Namespaces(_))
    }

    /// Deletes every namespace this simulator created.
    pub fn stop(&self) {
        if let Network::Namespaces(n) = self {
            n.stop();
        }
    }
}

impl Namespaces {
    fn start(prefix: &str, node_address: Ipv4Addr) -> anyhow::Result<Namespaces> {
        let node = format!("{prefix}-node");
        // leftovers of an earlier run that did not stop cleanly
        remove_namespaces(prefix);
        localnet_namespace(&node)?;
        sysctl(&node, "net.ipv4.ip_forward", "1")?;
        ip(&["-n", &node, "addr", "add", &format!("{node_address}/32"), "dev", "lo"])?;
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
        Ok(Namespaces { prefix: prefix.into(), node, node_address, sockets })
    }

    /// A new TCP socket of the node's namespace (made by the thread that lives in it).
    async fn node_socket(&self) -> std::io::Result<socket2::Socket> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sockets.send(tx).map_err(|_| std::io::Error::other("node namespace thread stopped"))?;
        rx.await.map_err(|_| std::io::Error::other("node namespace thread stopped"))?
    }

    fn pod_namespace(&self, id: &str) -> String {
        format!("{}-{id}", self.prefix)
    }

    fn add_pod(&self, id: &str, address: Ipv4Addr) -> anyhow::Result<String> {
        let ns = self.pod_namespace(id);
        let _ = ip(&["netns", "del", &ns]);
        localnet_namespace(&ns)?;
        // the node's end of the pair; link names are at most 15 bytes
        let link = format!("v{}", &short_hash(&ns)[..12]);
        ip(&["-n", &self.node, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
        sysctl(&self.node, &format!("net.ipv4.conf.{link}.route_localnet"), "1")?;
        sysctl(&self.node, &format!("net.ipv4.conf.{link}.proxy_arp"), "1")?;
        // answered at once: the kernel delays proxy ARP answers by up to 0.8 s by default, so a pod's first
        // connection to an address it had not reached yet (a new pod) took a second (a SYN retransmission)
        sysctl(&self.node, &format!("net.ipv4.neigh.{link}.proxy_delay"), "0")?;
        ip(&["-n", &self.node, "link", "set", &link, "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        sysctl(&ns, "net.ipv4.conf.eth0.route_localnet", "1")?;
        ip(&["-n", &ns, "addr", "add", &format!("{address}/32"), "dev", "eth0"])?;
        ip(&["-n", &ns, "route", "add", "127.0.0.0/8", "dev", "eth0", "src", &address.to_string()])?;
        let node_src = self.node_address.to_string();
        ip(&["-n", &self.node, "route", "add", &format!("{address}/32"), "dev", &link, "src", &node_src])?;
        Ok(ns)
    }

    fn stop(&self) {
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

/// Forwards each connection to `listen` (on the host) to the address `target` picks for it, through
/// `network`, until the task is aborted. No target, or a target that refuses: the client gets a reset.
pub async fn forward(
    network: std::sync::Arc<Network>,
    listen_on: SocketAddr,
    target: impl Fn() -> Option<SocketAddr>,
) -> std::io::Result<()> {
    let listener = listen(listen_on)?;
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
