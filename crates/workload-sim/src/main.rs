//! `workload-sim run`: the simulator as a node of the cluster of the current kubeconfig;
//! `workload-sim serve`: the built-in server a simulated container runs.

use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use workload_sim::{api_endpoint, container, kubelet, network, node, server, service_proxy};

#[derive(Parser)]
#[command(
    version,
    about = "A workload simulator: a node of a Kubernetes cluster whose Pods run as local processes (a test double)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Be a node (a kubelet and kube-proxy) of the cluster of $KUBECONFIG.
    Run {
        /// The node's name: it registers as that Node and runs the Pods bound to it.
        #[arg(long, default_value = "workload-sim")]
        node_name: String,
        /// Where the host reaches Pods (this /16 of 127/8: Pod 10.244.c.d at 127.P.c.d) and Services (the next
        /// /16: cluster IP 10.96.c.d at 127.P+1.c.d).
        #[arg(long, default_value = "127.244.0.0/16", value_parser = parse_network)]
        host_mirror: u8,
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
    if a != 127 || bits != "16" || b >= 254 || b == 0 || c != 0 {
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
        Command::Run { node_name, host_mirror, state_dir, pod_limit, controller_binary } => {
            let controller_binary = match controller_binary {
                Some(path) => path,
                None => std::env::current_exe()?.with_file_name("canary-controller"),
            };
            let settings = Settings { node: node_name, mirror: host_mirror, state_dir, pod_limit };
            run(settings, controller_binary).await
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

/// What `workload-sim run` was told.
struct Settings {
    node: String,
    mirror: u8,
    state_dir: PathBuf,
    pod_limit: usize,
}

async fn run(settings: Settings, controller_binary: PathBuf) -> anyhow::Result<()> {
    let Settings { node, mirror, state_dir, pod_limit } = settings;
    let config = kube::Config::infer().await?;
    let api_server = config.cluster_url.clone();
    let client = kube::Client::try_from(config)?;
    let prefix = format!("wsim{mirror}");
    let network = Arc::new(network::Network::start(&prefix, network::Mirror { pods: mirror })?);
    std::fs::create_dir_all(&state_dir)?;
    let state_dir = std::fs::canonicalize(&state_dir)?;
    let api = api_endpoint::start(network.clone(), &api_server).await?;
    let kubelet = Arc::new(kubelet::Kubelet::new(
        client.clone(),
        node.clone(),
        network.clone(),
        state_dir,
        pod_limit,
        Some(api),
        controller_binary,
    ));
    let config = watcher::Config::default();
    // the Node and its Lease
    let registration = node::run(client.clone(), node.clone(), pod_limit);
    let (services_store, services_writer) = reflector::store::<Service>();
    let services_watch = watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .reflect(services_writer)
        .for_each(|_| futures::future::ready(()));
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
    tracing::info!(%node, pods = %format!("127.{mirror}.0.0/16"), services = %format!("127.{}.0.0/16", mirror + 1), "workload-sim running (host mirrors of the pod and service networks)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = futures::future::join5(registration, services_watch, kubelet_run, slices_watch, config_maps_watch) => {}
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
