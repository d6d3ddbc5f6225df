//! `kubectl-canary`: the kubectl plugin of Canary releases (`kubectl canary ...` once on PATH). Reads and
//! writes only what a person would with kubectl: Canaries (their spec and the request annotation), their
//! Kanaries and events. Requests go through the annotation the controller acts on once per value, so they
//! work the same under GitOps; `pause` is `spec.paused` (declarative).
//!
//! Exit codes: 0 done; 1 an error (not found, refused, unreachable); 2 a usage error; with
//! `get --wait-for`: 3 the release ended otherwise (rolled back while waiting for success, ...), 4 timeout.

mod explain;
mod view;

use anyhow::Context as _;
use canary_controller::api::canary::{Canary, Phase};
use canary_controller::canary::release::HELD_BY_SPEC;
use canary_controller::names::REQUEST_ANNOTATION;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kubectl-canary", version, about = "Canary releases: progress, control and explanations")]
struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Canaries of the namespace (or of all namespaces) and where their releases stand.
    List {
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// One Canary's release: phase, steps, routes and the last judged window.
    Get {
        name: String,
        /// Keep showing it as it changes (redrawn in place on a terminal, a new block otherwise).
        #[arg(short, long)]
        watch: bool,
        /// Wait until the release succeeds or is rolled back (exit 0), or ends otherwise (exit 3).
        #[arg(long, value_enum)]
        wait_for: Option<Outcome>,
        /// How long `--wait-for` waits (`30s`, `5m`); exit 4 when it runs out.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Skips the remaining steps: promotion next.
    Promote { name: String },
    /// Rolls the release back now: no traffic to the canary, scaled to 0.
    Abort { name: String },
    /// Holds the release where it is (sets spec.paused).
    Pause { name: String },
    /// Lets a held or paused release go on (unsets spec.paused; asks to resume a pause step or an inconclusive
    /// window).
    Resume { name: String },
    /// Runs a rolled back or aborted release again.
    Retry { name: String },
    /// Sets canary images (`container=image` ...): a new release starts.
    Set {
        #[command(subcommand)]
        what: SetCommand,
    },
    /// Why the release is where it is, in plain sentences.
    Explain { name: String },
    /// A completion script for the shell (`source <(kubectl-canary completion bash)`).
    Completion { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum SetCommand {
    Image {
        name: String,
        /// `container=image`, one or more.
        #[arg(required = true)]
        images: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Debug)]
enum Outcome {
    Succeeded,
    Rolledback,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    canary_controller::canary::release::duration(text).ok_or_else(|| format!("{text:?}: write 30s, 5m or 1h"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "kubectl-canary",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", view::safe(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = kube::Config::infer().await.context("reading the kubeconfig")?;
    let ns = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)?;
    let canaries: Api<Canary> = Api::namespaced(client.clone(), &ns);
    match cli.command {
        Command::List { all_namespaces } => {
            let api = if all_namespaces { Api::all(client) } else { canaries };
            let listed = api.list(&ListParams::default()).await.context("listing Canaries")?;
            let rows: Vec<[String; 5]> = listed.items.iter().map(view::list_line).collect();
            if rows.is_empty() {
                println!("No Canaries found in namespace {ns}.");
            } else {
                print!("{}", view::safe(&view::table(["NAME", "TARGET", "PHASE", "WEIGHT", "STEP"], &rows)));
            }
        }
        Command::Get { name, watch, wait_for, timeout } => {
            return get(&client, &canaries, &name, watch, wait_for, timeout).await;
        }
        Command::Promote { name } => request(&canaries, &name, "promote").await?,
        Command::Abort { name } => request(&canaries, &name, "abort").await?,
        Command::Retry { name } => request(&canaries, &name, "retry").await?,
        Command::Pause { name } => {
            merge(&canaries, &name, serde_json::json!({"spec": {"paused": true}}), "pausing").await?;
            println!("Canary {name}: paused (spec.paused: true)");
        }
        Command::Resume { name } => {
            let canary = read(&canaries, &name).await?;
            let release = canary.status.as_ref().and_then(|s| s.release.as_ref());
            // a release held only by spec.paused goes on once it is unset: a resume request on top would also
            // end the pause step it may be at
            let held_by_spec = release.is_some_and(|r| r.message.starts_with(HELD_BY_SPEC));
            if canary.spec.paused {
                merge(&canaries, &name, serde_json::json!({"spec": {"paused": false}}), "unpausing").await?;
                println!("Canary {name}: spec.paused unset");
            }
            if !(canary.spec.paused && held_by_spec) {
                request(&canaries, &name, "resume").await?;
            }
        }
        Command::Set { what: SetCommand::Image { name, images } } => set_images(&canaries, &name, &images).await?,
        Command::Explain { name } => {
            let canary = read(&canaries, &name).await?;
            let events: Api<Event> = Api::namespaced(client, &ns);
            let selector = format!("involvedObject.kind=Canary,involvedObject.name={name}");
            let mut listed = match events.list(&ListParams::default().fields(&selector)).await {
                Ok(listed) => listed.items,
                Err(e) => {
                    let e = view::safe(&e.to_string());
                    eprintln!("(the Canary's events cannot be read: {e}; explaining from its status alone)");
                    vec![]
                }
            };
            listed.retain(|e| e.involved_object.uid == canary.uid());
            listed.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0).or(e.event_time.clone().map(|t| t.0)));
            let happened: Vec<explain::Happened> = listed
                .into_iter()
                .map(|e| explain::Happened {
                    warning: e.type_.as_deref() == Some("Warning"),
                    reason: e.reason.unwrap_or_default(),
                    message: e.message.unwrap_or_default(),
                })
                .collect();
            for sentence in explain::explain(&canary, &happened) {
                println!("{}", view::safe(&sentence));
            }
        }
        Command::Completion { .. } => unreachable!("handled before connecting"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads Canary `name`.
async fn read(canaries: &Api<Canary>, name: &str) -> anyhow::Result<Canary> {
    canaries.get(name).await.context(format!("reading Canary {name}"))
}

/// Merge-patches Canary `name`; `doing` says what, in an error (`pausing`).
async fn merge(canaries: &Api<Canary>, name: &str, patch: serde_json::Value, doing: &str) -> anyhow::Result<()> {
    canaries
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .context(format!("{doing} Canary {name}"))?;
    Ok(())
}

/// Asks for `action` through the request annotation, with a value of its own (the controller acts once per
/// value: `promote:1733130000123`). One request at a time: a request not acted on yet is waited for (up to 10 s), never overwritten.
async fn request(canaries: &Api<Canary>, name: &str, action: &str) -> anyhow::Result<()> {
    let mut waited = Duration::ZERO;
    loop {
        let canary = read(canaries, name).await?;
        if canary.spec.traffic.is_none() {
            anyhow::bail!("Canary {name} has no spec.traffic: it runs no release to {action}");
        }
        let pending = canary.annotations().get(REQUEST_ANNOTATION).cloned();
        let handled = canary.status.as_ref().and_then(|s| s.release.as_ref()).and_then(|r| r.handled_request.clone());
        match pending {
            Some(pending) if Some(&pending) != handled.as_ref() => {
                if waited >= Duration::from_secs(10) {
                    anyhow::bail!(
                        "Canary {name}: the request {pending:?} has not been acted on for 10 s (is the controller running?)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                waited += Duration::from_millis(200);
            }
            _ => break,
        }
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let patch = serde_json::json!({"metadata": {"annotations": {REQUEST_ANNOTATION: format!("{action}:{stamp}")}}});
    merge(canaries, name, patch, &format!("asking to {action}")).await?;
    println!("Canary {name}: {action} requested");
    Ok(())
}

/// Sets the images of the named containers in `targetContainers` (adding those not there yet).
async fn set_images(canaries: &Api<Canary>, name: &str, images: &[String]) -> anyhow::Result<()> {
    let canary = read(canaries, name).await?;
    let mut containers = canary.spec.target_containers.clone();
    for pair in images {
        let Some((container, image)) = pair.split_once('=').filter(|(c, i)| !c.is_empty() && !i.is_empty()) else {
            anyhow::bail!("{pair:?}: write container=image");
        };
        match containers.iter_mut().find(|c| c.name == container) {
            Some(c) => c.image = image.to_string(),
            None => containers
                .push(canary_controller::api::canary::TargetContainer { name: container.into(), image: image.into() }),
        }
    }
    let patch = serde_json::json!({"spec": {"targetContainers": containers}});
    merge(canaries, name, patch, "setting the images of").await?;
    println!("Canary {name}: images set; a new release starts");
    Ok(())
}

/// The release's Kanary (same name, group kanary.k8s.io), when it has one.
async fn kanary_of(client: &Client, ns: &str, name: &str) -> Option<serde_json::Value> {
    let resource = canary_controller::api::kanary::api_resource("kanary.k8s.io", "v1");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    api.get_opt(name).await.ok().flatten().map(|k| k.data)
}

async fn get(
    client: &Client,
    canaries: &Api<Canary>,
    name: &str,
    watch: bool,
    wait_for: Option<Outcome>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let canary = read(canaries, name).await?;
    let ns = canary.namespace().unwrap_or_default();
    if !watch && wait_for.is_none() {
        print!("{}", view::safe(&view::render(&canary, kanary_of(client, &ns, name).await.as_ref())));
        return Ok(ExitCode::SUCCESS);
    }
    let terminal = std::io::stdout().is_terminal();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(canaries.clone(), config).default_backoff().applied_objects().boxed();
    // without --wait-for, a watch runs until interrupted
    let wait = if wait_for.is_some() { timeout } else { Duration::from_secs(100 * 365 * 24 * 3600) };
    let deadline = tokio::time::Instant::now() + wait;
    let mut shown = String::new();
    loop {
        let next = tokio::time::timeout_at(deadline, changes.next());
        let canary = match next.await {
            Err(_) => {
                eprintln!("timed out after {timeout:?} waiting for Canary {name}");
                return Ok(ExitCode::from(4));
            }
            Ok(None) => anyhow::bail!("the watch of Canary {name} ended"),
            Ok(Some(Err(e))) => {
                eprintln!("watching Canary {name}: {e} (retrying)");
                continue;
            }
            Ok(Some(Ok(canary))) => canary,
        };
        if watch {
            let text = view::safe(&view::render(&canary, kanary_of(client, &ns, name).await.as_ref()));
            if text != shown {
                let mut out = std::io::stdout().lock();
                match terminal {
                    // home, clear: the view redrawn in place
                    true => write!(out, "\x1b[H\x1b[2J{text}")?,
                    false => write!(out, "---\n{text}")?,
                }
                out.flush()?;
                shown = text;
            }
        }
        if let Some(wanted) = wait_for {
            // the release of the images the spec names now (not one that ended before them)
            let current = canary_controller::canary::release::revision(&canary.spec);
            let release = canary.status.as_ref().and_then(|s| s.release.as_ref()).filter(|r| r.revision == current);
            let phase = release.map(|r| r.phase);
            let reached = match wanted {
                Outcome::Succeeded => phase == Some(Phase::Succeeded),
                Outcome::Rolledback => matches!(phase, Some(Phase::RolledBack | Phase::Aborted)),
            };
            if reached {
                println!("Canary {name}: {:?}", phase.expect("reached a phase"));
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(phase) = phase.filter(|p| p.is_final()) {
                println!("Canary {name}: {phase:?}, not {wanted:?}");
                return Ok(ExitCode::from(3));
            }
        }
    }
}
