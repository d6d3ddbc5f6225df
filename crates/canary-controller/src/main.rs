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
        Command::Run { log_format } => {
            runtime::init_logging(log_format);
            runtime::run().await
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
