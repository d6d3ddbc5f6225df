//! `workload-sim run`: the simulator against the cluster of the current kubeconfig (fake-apiserver);
//! `workload-sim serve`: the built-in server a simulated container runs.

use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use workload_sim::{api_endpoint, container, endpoint_slices, kubelet, network, server, service_proxy, workloads};

#[derive(Parser)]
#[command(
    version,
    about = "A workload simulator for fake-apiserver: Deployments really run on loopback (a test double)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Play the Deployment, ReplicaSet and EndpointSlice controllers, a kubelet and kube-proxy against the
    /// cluster of $KUBECONFIG.
    Run {
        /// The node Pods are bound to.
        #[arg(long, default_value = "workload-sim")]
        node_name: String,
        /// The /16 of 127/8 Pods get addresses from.
        #[arg(long, default_value = "127.244.0.0/16", value_parser = parse_network)]
        pod_network: u8,
        /// Where Pods' volumes are written.
        #[arg(long, default_value = ".local/workload-sim")]
        state_dir: PathBuf,
        /// At most this many Pods run at once; the others stay Pending.
        #[arg(long, default_value_t = 64)]
        pod_limit: usize,
        /// The binary that containers of canary-controller's image run (default: canary-controller beside
        /// workload-sim, where cargo builds it).
        #[arg(long)]
        controller_binary: Option<PathBuf>,
    },
    /// Inside a container's mount and pid namespaces (as root; the kubelet starts it): mount the volumes,
    /// become the container's user, run its program.
    #[command(hide = true)]
    Container {
        /// SOURCE:TARGET[:ro], a volume at its mount path.
        #[arg(long = "bind", value_parser = container::Bind::parse)]
        binds: Vec<container::Bind>,
        /// An empty directory for the overlays that mount points need.
        #[arg(long)]
        scratch: PathBuf,
        /// uid:gid to run as.
        #[arg(long, value_parser = parse_user)]
        user: Option<(u32, u32)>,
        /// The directory the program starts in (the container's `workingDir`).
        #[arg(long, default_value = "/")]
        workdir: PathBuf,
        /// The program's file (a path, or a name looked up on PATH).
        #[arg(long)]
        program: PathBuf,
        /// The program's argv, its name first.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// The built-in server: answer each connection with the pod's name and image.
    Serve {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        image: String,
        /// Where to listen (none: run, listening on nothing).
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
}

fn parse_user(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text.split_once(':').ok_or_else(|| format!("{text:?}: expected UID:GID"))?;
    Ok((
        uid.parse().map_err(|_| format!("{uid:?}: not a uid"))?,
        gid.parse().map_err(|_| format!("{gid:?}: not a gid"))?,
    ))
}

/// The second byte of a /16 of 127/8 (`127.P.0.0/16`).
fn parse_network(text: &str) -> Result<u8, String> {
    let expected = || format!("{text:?}: expected a /16 of 127/8 such as 127.244.0.0/16");
    let (address, bits) = text.split_once('/').ok_or_else(expected)?;
    let address: Ipv4Addr = address.parse().map_err(|_| expected())?;
    let [a, b, c, _] = address.octets();
    if a != 127 || bits != "16" || b == 255 || c != 0 {
        return Err(expected());
    }
    Ok(b)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve { pod, image, listen } => {
            let behaviour = server::Behaviour::from_env(&image, |k| std::env::var(k).ok())?;
            server::serve(listen, pod, image, behaviour).await
        }
        Command::Run { node_name, pod_network, state_dir, pod_limit, controller_binary } => {
            let controller_binary = match controller_binary {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("canary-controller"),
            };
            run(node_name, pod_network, state_dir, pod_limit, controller_binary).await
        }
        Command::Container { binds, scratch, user, workdir, program, argv } => {
            match container::enter(&binds, &scratch, user, &workdir, &program, &argv) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("workload-sim container: {e:#}");
                    std::process::exit(127)
                }
            }
        }
    }
}

fn log_errors<T, E: std::fmt::Debug>(kind: &'static str) -> impl Fn(Result<T, E>) -> futures::future::Ready<()> {
    move |result| {
        if let Err(e) = result {
            tracing::debug!(kind, error = ?e, "reconcile failed; retrying");
        }
        futures::future::ready(())
    }
}

fn retry<K, C>(_: Arc<K>, _: &kube::Error, _: Arc<C>) -> Action {
    Action::requeue(Duration::from_millis(500))
}

async fn run(
    node: String,
    b: u8,
    state_dir: PathBuf,
    pod_limit: usize,
    controller_binary: PathBuf,
) -> anyhow::Result<()> {
    let config = kube::Config::infer().await?;
    let api_server = config.cluster_url.clone();
    let client = kube::Client::try_from(config)?;
    let node_address = Ipv4Addr::new(127, b, 255, 254);
    let prefix = format!("wsim{b}");
    let network = Arc::new(network::Network::start(&prefix, node_address));
    std::fs::create_dir_all(&state_dir)?;
    let state_dir = std::fs::canonicalize(&state_dir)?;
    // Pods reach the API server (fake-apiserver, plain HTTP) on the node's address, through TLS
    let upstream = api_server.authority().and_then(|a| {
        let port = a.port_u16().unwrap_or(80);
        format!("{}:{port}", a.host()).parse::<SocketAddr>().ok()
    });
    let api = match (network.needs_forwarders(), api_server.scheme_str(), upstream) {
        (true, Some("http"), Some(upstream)) => {
            Some(api_endpoint::start(network.clone(), node_address, upstream).await?)
        }
        _ => {
            tracing::warn!(%api_server, "Pods cannot reach the API server (it must be fake-apiserver on plain HTTP, and the simulator root)");
            None
        }
    };
    let kubelet = Arc::new(kubelet::Kubelet::new(
        client.clone(),
        node.clone(),
        network.clone(),
        b,
        node_address,
        state_dir,
        pod_limit,
        api,
        controller_binary,
    ));
    let config = watcher::Config::default();

    let deployments = Controller::new(Api::<Deployment>::all(client.clone()), config.clone())
        .owns(Api::<ReplicaSet>::all(client.clone()), config.clone())
        .run(
            |d, c: Arc<kube::Client>| workloads::reconcile_deployment(d, (*c).clone()),
            retry,
            Arc::new(client.clone()),
        )
        .for_each(log_errors("Deployment"));
    let node_for_sets = Arc::new((client.clone(), node.clone()));
    let replica_sets = Controller::new(Api::<ReplicaSet>::all(client.clone()), config.clone())
        .owns(Api::<Pod>::all(client.clone()), config.clone())
        .run(
            |rs, c: Arc<(kube::Client, String)>| async move {
                workloads::reconcile_replica_set(rs, c.0.clone(), &c.1).await
            },
            retry,
            node_for_sets,
        )
        .for_each(log_errors("ReplicaSet"));
    let services_controller = Controller::new(Api::<Service>::all(client.clone()), config.clone());
    let services_store = services_controller.store();
    let services_for_pods = services_store.clone();
    let slices = services_controller
        .watches(Api::<Pod>::all(client.clone()), config.clone(), move |pod: Pod| {
            let ns = kube::ResourceExt::namespace(&pod);
            services_for_pods
                .state()
                .into_iter()
                .filter(|s| kube::ResourceExt::namespace(s.as_ref()) == ns)
                .filter(|s| {
                    endpoint_slices::selects(
                        &s.spec.as_ref().and_then(|sp| sp.selector.clone()).unwrap_or_default(),
                        &pod,
                    )
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(|s, c: Arc<kube::Client>| endpoint_slices::reconcile(s, (*c).clone()), retry, Arc::new(client.clone()))
        .for_each(log_errors("Service"));
    let pods_controller =
        Controller::new(Api::<Pod>::all(client.clone()), config.clone().fields(&format!("spec.nodeName={node}")));
    let pods_store = pods_controller.store();
    let kubelet_run = pods_controller
        .run(|pod, k: Arc<kubelet::Kubelet>| async move { k.reconcile(pod).await }, retry, kubelet.clone())
        .for_each(log_errors("Pod"));
    let (slices_reader, slices_writer) = reflector::store::<EndpointSlice>();
    let slices_watch = watcher(Api::<EndpointSlice>::all(client.clone()), config.clone())
        .default_backoff()
        .reflect(slices_writer)
        .for_each(|_| futures::future::ready(()));
    let (config_maps, config_maps_writer) = reflector::store::<ConfigMap>();
    let config_maps_watch = watcher(Api::<ConfigMap>::all(client.clone()), config.clone())
        .default_backoff()
        .reflect(config_maps_writer)
        .for_each(|_| futures::future::ready(()));
    let proxy = service_proxy::run(network.clone(), services_store, slices_reader);
    let sweeper_kubelet = kubelet.clone();
    // every 2 s: Pods deleted without grace are stopped, ConfigMap volumes follow their ConfigMaps
    let sweep = async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let present = pods_store.state().iter().filter_map(|p| kube::ResourceExt::uid(p.as_ref())).collect();
            sweeper_kubelet.forget_missing(&present);
            sweeper_kubelet.refresh_volumes(&config_maps);
        }
    };
    tracing::info!(%node, pods = %format!("127.{b}.0.0/16"), namespaces = matches!(*network, network::Network::Namespaces(_)), "workload-sim running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = futures::future::join5(deployments, replica_sets, slices, kubelet_run, slices_watch) => {}
        _ = config_maps_watch => {}
        _ = proxy => {}
        _ = sweep => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping every pod");
    kubelet.stop_all().await;
    network.stop();
    Ok(())
}
