//! The simulator's node, as the tests use it: what a test runs beside its Pods (the controller, Prometheus,
//! webhook receivers, a fault proxy) runs in the node's network namespace, as a `hostNetwork` Pod would on
//! a cluster, so that it reaches Pods and Services at their real addresses (10.244.c.d, 10.96.c.d) and the
//! API server at `https://10.96.0.1` (the simulator passes that on to the control plane). The test itself
//! stays on the host and reaches those processes through sockets made in the node's namespace here.

use std::net::SocketAddr;

/// The API server's URL from the node (the `kubernetes` Service).
pub const API_URL: &str = "https://10.96.0.1:443";

/// A TCP socket of network namespace `ns` (made by a thread that entered it; a socket keeps the namespace
/// it was made in).
pub fn socket_in(ns: &str, address: SocketAddr) -> std::io::Result<socket2::Socket> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                let domain = socket2::Domain::for_address(address);
                let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// A connection to `address` from inside `ns`.
pub async fn connect_in(ns: &str, address: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = socket_in(ns, address)?;
    tokio::net::TcpSocket::from_std_stream(socket.into()).connect(address).await
}

/// A listener on `address` inside `ns` (port 0: any free one).
pub fn listen_in(ns: &str, address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket_in(ns, address)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// A plain HTTP/1.0 GET from inside `ns` (as `http_get` on the host): the whole response, or None.
pub async fn http_get_in(ns: &str, address: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_in(ns, address).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

/// Where the test (on the host) reaches `target`, a listener inside `ns`: a forwarder on a free loopback
/// port of the host, for as long as the test runs.
pub fn expose_on_host(ns: &str, target: SocketAddr) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let ns = ns.to_string();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let ns = ns.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = connect_in(&ns, target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    address
}
