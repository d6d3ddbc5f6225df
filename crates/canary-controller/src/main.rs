//! `canary-controller`: `run` the operator, run the `proxy-agent` beside HAProxy, print the `crd`s, or print
//! the `version`.

use canary_controller::runtime::{self, LogFormat};
use clap::{Parser, Subcommand};

/// jemalloc rather than glibc's allocator: the caches hold many small objects; measured by bench/scale at
/// 1,000 Canaries + 1,000 Kanaries, peak RSS 90 MiB instead of 100 and controller CPU 0.9 ms per object
/// instead of 1.2 (mimalloc: 153 MiB).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Canary Deployments and weighted L4 traffic splitting for plain Kubernetes.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster named by KUBECONFIG (or in-cluster).
    Run {
        /// Log format.
        #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
        log_format: LogFormat,
        /// Image of the HAProxy pods that Kanaries run (the official image, or one built like it).
        #[arg(long, default_value = "haproxy:2.8", env = "HAPROXY_IMAGE")]
        haproxy_image: String,
        /// Image of the proxy agent beside each HAProxy: this operator's own image (keep it the same as the
        /// operator's Deployment's).
        #[arg(long, default_value = canary_controller::IMAGE, env = "AGENT_IMAGE")]
        agent_image: String,
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(long, default_value = "0.0.0.0:8080", env = "METRICS_ADDRESS")]
        metrics_address: std::net::SocketAddr,
        /// Replicas of each Kanary's HAProxy Deployment.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
        haproxy_replicas: i32,
        /// Default of a Kanary's `spec.proxy.timeoutClient`: how long a client may stay silent on an
        /// established connection (long, for idle long-lived connections such as database pools).
        #[arg(long, default_value = "1h", env = "PROXY_TIMEOUT_CLIENT", value_parser = haproxy_duration)]
        proxy_timeout_client: String,
        /// Default of `spec.proxy.timeoutServer`: how long a backend may stay silent.
        #[arg(long, default_value = "1h", env = "PROXY_TIMEOUT_SERVER", value_parser = haproxy_duration)]
        proxy_timeout_server: String,
        /// Default of `spec.proxy.timeoutConnect`: how long a connection to a backend may take to open.
        #[arg(long, default_value = "5s", env = "PROXY_TIMEOUT_CONNECT", value_parser = haproxy_duration)]
        proxy_timeout_connect: String,
        /// Default of `spec.proxy.hardStopAfter`: how long the connections of a configuration replaced by a
        /// reload may go on.
        #[arg(long, default_value = "30m", env = "PROXY_HARD_STOP_AFTER", value_parser = haproxy_duration)]
        proxy_hard_stop_after: String,
        /// Default of `spec.proxy.maxconn`: most concurrent connections per proxy pod.
        #[arg(long, default_value_t = 4096, env = "PROXY_MAXCONN",
            value_parser = clap::value_parser!(u32).range(1..=canary_controller::api::kanary::MAX_MAXCONN))]
        proxy_maxconn: u32,
        /// Prometheus's base URL for the PromQL checks of releases that name no `address`
        /// (`http://prometheus.monitoring:9090`).
        #[arg(long, env = "PROMETHEUS_ADDRESS")]
        prometheus_address: Option<String>,
        /// Egress policy of webhook steps and Prometheus queries: also allow calls to this network
        /// (`10.0.0.0/8`), address or host name (`prometheus.monitoring.svc`; `.svc` for every name under
        /// it). Loopback, link-local and the API server's addresses are refused unless allowed here. Repeat it,
        /// or separate values with commas.
        #[arg(long, env = "EGRESS_ALLOW", value_delimiter = ',',
            value_parser = canary_controller::canary::evidence::egress::parse_allow)]
        egress_allow: Vec<canary_controller::canary::evidence::egress::Allowed>,
        /// Refuse every webhook and Prometheus call that `--egress-allow` does not allow.
        #[arg(long)]
        egress_deny_others: bool,
        /// Let a Prometheus bearer token (`prometheus.tokenSecretRef`) go over plain http (by default, https
        /// only).
        #[arg(long)]
        allow_insecure_token: bool,
        /// Watch Canaries, Kanaries and their children in this namespace only (default: every namespace).
        /// The roles may then be bound in that namespace alone (the CRD check still reads the
        /// CustomResourceDefinitions).
        #[arg(long, env = "WATCH_NAMESPACE", value_parser = namespace_name)]
        watch_namespace: Option<String>,
        #[command(flatten)]
        leader_election: LeaderElectionArgs,
    },
    /// Run beside HAProxy in a Kanary's proxy pod: apply every change of the Kanary's ConfigMap to the
    /// running HAProxy (Runtime API, or a seamless reload), without restarting it.
    ProxyAgent {
        /// Log format.
        #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
        log_format: LogFormat,
        /// Namespace of the ConfigMap.
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// The Kanary's ConfigMap (`<kanary>-config`), the only object the agent reads.
        #[arg(long)]
        config_map: String,
        /// Where HAProxy's config and weights map are written (shared with the HAProxy container).
        #[arg(long, default_value = canary_controller::dataplane::haproxy::RUNTIME_DIR)]
        dir: std::path::PathBuf,
        /// HAProxy's master CLI socket (`haproxy -W -S <socket>`).
        #[arg(long, default_value = "/var/run/kanary/master.sock")]
        master_socket: std::path::PathBuf,
        /// Where /metrics, /healthz, /readyz and /startupz are served.
        #[arg(long, default_value = "0.0.0.0:8405")]
        metrics_address: std::net::SocketAddr,
        /// The Kanary whose status gets the revision HAProxy serves (under the pod's name); without it,
        /// nothing is reported.
        #[arg(long, requires_all = ["kanary_api_version", "pod_name"])]
        kanary: Option<String>,
        /// The Kanary's `group/version` (kanary.k8s.io/v1 or kanary.pyxida.io/v1alpha1).
        #[arg(long)]
        kanary_api_version: Option<String>,
        /// The pod the agent runs in.
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
    },
    /// Print the CustomResourceDefinitions as YAML (`canary-controller crd | kubectl apply --server-side -f -`).
    Crd {
        /// Install Kanary in this API group only (repeatable; default: both). With one group installed,
        /// `kubectl get kanary` and `kubectl get ky` list its Kanaries with no ambiguity.
        #[arg(long = "kanary-group", value_name = "GROUP", value_parser = ["kanary.k8s.io", "kanary.pyxida.io"])]
        kanary_groups: Vec<String>,
    },
    /// Print the version.
    Version,
}

/// Leader election: with several replicas, the holder of a Lease runs the controllers.
#[derive(clap::Args)]
struct LeaderElectionArgs {
    /// Compete for a Lease and run the controllers only while holding it (`--leader-election=false` for one
    /// replica without a Lease).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "canary-controller-leader")]
    leader_election_lease: String,
    /// Namespace of the Lease [default: the pod's namespace, or the kubeconfig context's].
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// This replica's identity in the Lease [default: HOSTNAME and process id].
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Seconds a leader's Lease stays valid without renewal: how long a standby waits after the leader dies.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    lease_duration: u64,
}

impl LeaderElectionArgs {
    fn settings(self) -> Option<runtime::leader::LeaderElection> {
        self.leader_election.then(|| runtime::leader::LeaderElection {
            lease_name: self.leader_election_lease,
            namespace: self.leader_election_namespace,
            identity: self.leader_election_identity.unwrap_or_else(runtime::leader::LeaderElection::default_identity),
            lease_duration_seconds: self.lease_duration,
        })
    }
}

/// A namespace's name (DNS-1123 label), for `--watch-namespace`.
fn namespace_name(value: &str) -> Result<String, String> {
    let edges = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let inner = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if value.len() <= 63 && inner && edges(value.chars().next()) && edges(value.chars().last()) {
        Ok(value.to_string())
    } else {
        Err("a namespace name: lower-case letters, digits and '-', at most 63 characters".into())
    }
}

/// A duration HAProxy reads (`30s`, `1h`), for the `--proxy-*` flags.
fn haproxy_duration(value: &str) -> Result<String, String> {
    canary_controller::kanary::validate::check_duration("the value", value).map(|()| value.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            log_format,
            haproxy_image,
            agent_image,
            haproxy_replicas,
            proxy_timeout_client,
            proxy_timeout_server,
            proxy_timeout_connect,
            proxy_hard_stop_after,
            proxy_maxconn,
            metrics_address,
            prometheus_address,
            egress_allow,
            egress_deny_others,
            allow_insecure_token,
            watch_namespace,
            leader_election,
        } => {
            runtime::init_logging(log_format);
            let defaults = canary_controller::dataplane::haproxy::ProxySettings {
                timeout_client: proxy_timeout_client,
                timeout_server: proxy_timeout_server,
                timeout_connect: proxy_timeout_connect,
                hard_stop_after: proxy_hard_stop_after,
                maxconn: proxy_maxconn,
                ..Default::default()
            };
            let proxy = canary_controller::kanary::build::ProxyOptions {
                image: haproxy_image,
                agent_image,
                replicas: haproxy_replicas,
                defaults,
            };
            let leader_election = leader_election.settings();
            let mut egress = canary_controller::canary::evidence::egress::Policy {
                deny_others: egress_deny_others,
                insecure_token: allow_insecure_token,
                ..Default::default()
            };
            for allowed in egress_allow {
                match allowed {
                    canary_controller::canary::evidence::egress::Allowed::Network(n) => egress.allow_networks.push(n),
                    canary_controller::canary::evidence::egress::Allowed::Host(h) => egress.allow_hosts.push(h),
                }
            }
            let options = canary_controller::operator::RunOptions {
                proxy,
                metrics_address,
                prometheus_address,
                egress,
                watch_namespace,
                leader_election,
            };
            canary_controller::operator::run(options).await
        }
        Command::ProxyAgent {
            log_format,
            namespace,
            config_map,
            dir,
            master_socket,
            metrics_address,
            kanary,
            kanary_api_version,
            pod_name,
        } => {
            runtime::init_logging(log_format);
            let report_to = match (kanary, kanary_api_version, pod_name) {
                (Some(kanary), Some(api_version), Some(pod)) => {
                    Some(canary_controller::agent::ReportTo { kanary, api_version, pod })
                }
                _ => None,
            };
            let options = canary_controller::agent::AgentOptions {
                namespace,
                report_to,
                config_map,
                dir,
                master_socket,
                metrics_address,
            };
            canary_controller::agent::run(options).await
        }
        Command::Crd { kanary_groups } => {
            canary_controller::api::crds_yaml(&kanary_groups).map(|yaml| print!("{yaml}"))
        }
        Command::Version => {
            println!("canary-controller {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
