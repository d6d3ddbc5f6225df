//! `canary-controller`: `run` the operator, print the `crd`s, or print the `version`.

use canary_controller::runtime::{self, LogFormat};
use clap::{Parser, Subcommand};

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
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(long, default_value = "0.0.0.0:8080", env = "METRICS_ADDRESS")]
        metrics_address: std::net::SocketAddr,
        /// Replicas of each Kanary's HAProxy Deployment.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..))]
        haproxy_replicas: i32,
    },
    /// Print the CustomResourceDefinitions as YAML (`canary-controller crd | kubectl apply --server-side -f -`).
    Crd,
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { log_format, haproxy_image, haproxy_replicas, metrics_address } => {
            runtime::init_logging(log_format);
            let proxy =
                canary_controller::kanary::build::ProxyOptions { image: haproxy_image, replicas: haproxy_replicas };
            runtime::run(runtime::RunOptions { proxy, metrics_address }).await
        }
        Command::Crd => canary_controller::api::crds_yaml().map(|yaml| print!("{yaml}")),
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
