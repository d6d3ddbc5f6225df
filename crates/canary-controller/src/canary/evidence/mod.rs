//! All the IO that gathers a release's evidence, answering what the pure release machine asks for (a
//! [`Need`]): the proxy pods' counters (`measure`), the answers of the checks' PromQL queries (`prometheus`,
//! with the Secrets of their tokens), a webhook step's answer; each call over HTTP (`http`) within the
//! egress policy (`egress`). Everything runs off the reconcile (`gather`): a reconcile asks, and takes the
//! answer once it is there, so no slow or silent peer holds a reconcile slot.

pub mod egress;
pub mod gather;
pub mod http;
pub mod measure;
pub mod prometheus;

use crate::api::canary::{Canary, ReleaseStatus, SecretKeyRef};
use crate::canary::release::{self, Need};
use crate::names::{baseline_deployment_name, canary_deployment_name};
use futures::channel::mpsc;
use gather::Gathered;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Client, ResourceExt};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Where the evidence of one Canary's release is read.
pub struct Sources {
    /// The ready proxy pods, by name.
    pub proxy_pods: Vec<(String, IpAddr)>,
    /// The route Services, whose backends the proxy's counters are read of.
    pub stable_route: String,
    pub canary_route: String,
    /// The traffic is HTTP: the proxy agents' request metrics are read too.
    pub http: bool,
}

/// What a reconcile finds when it asks for a [`Need`].
pub enum Answer {
    /// Gathered: advance the release with it.
    Gathered(Gathered),
    /// Under way: look again in [`gather::POLL`].
    Pending,
    /// Cannot be gathered now, and why (the release says so and looks again).
    Unavailable(String),
}

/// The evidence tasks of every Canary, and the controller's defaults for them.
pub struct Evidence {
    tasks: gather::Gatherer,
    /// Prometheus's base URL for the PromQL checks that name none (`--prometheus-address`).
    prometheus: Option<String>,
    /// Where a task that has its answer says so (the namespace and name of its Canary), so that the
    /// Canary is reconciled at once; and the other end, until the controller takes it.
    gathered: mpsc::UnboundedSender<(String, String)>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<(String, String)>>>,
}

impl Evidence {
    pub fn new(prometheus: Option<String>) -> Evidence {
        let (gathered, woken) = mpsc::unbounded();
        Evidence { tasks: Default::default(), prometheus, gathered, woken: Mutex::new(Some(woken)) }
    }

    /// The Canaries (namespace, name) whose evidence was gathered, as it is: the controller reconciles them
    /// at once. Taken once.
    pub fn gathered(&self) -> Option<mpsc::UnboundedReceiver<(String, String)>> {
        self.woken.lock().expect("not poisoned").take()
    }

    /// What a task of `canary` calls once it has its answer.
    fn done(&self, canary: &Canary) -> impl FnOnce() + Send + 'static {
        let (sender, at) = (self.gathered.clone(), (canary.namespace().unwrap_or_default(), canary.name_any()));
        move || {
            // the controller may be gone (shutting down): then no one waits
            let _ = sender.unbounded_send(at);
        }
    }

    /// The answer to `need` for `canary`'s release in state `release`, once gathered; starts gathering it
    /// otherwise.
    pub fn answer(
        &self,
        need: &Need,
        canary: &Canary,
        release: Option<&ReleaseStatus>,
        sources: Sources,
        client: &Client,
    ) -> Answer {
        let uid = canary.uid().unwrap_or_default();
        match need {
            Need::Counters | Need::CountersAndQueries | Need::Progress => {
                if sources.proxy_pods.is_empty() {
                    return Answer::Unavailable("waiting for a ready proxy pod to read the statistics from".into());
                }
                let queries = matches!(need, Need::CountersAndQueries);
                let key = match need {
                    // one read per tick of an open window's progress
                    Need::Progress => {
                        let measured = release.and_then(|r| r.window.as_ref()).and_then(|w| w.measured_at.as_ref());
                        gather::key(&format!("progress {:?}", measured.map(|t| t.0)), release)
                    }
                    _ => gather::key(if queries { "stats+queries" } else { "stats" }, release),
                };
                let done = self.done(canary);
                let gathered = self.tasks.poll_then(
                    &uid,
                    &key,
                    || {
                        let (canary, client, prometheus) = (canary.clone(), client.clone(), self.prometheus.clone());
                        let window_start = release.and_then(|r| r.window.as_ref()).map(|w| w.counters.clone());
                        async move {
                            let Sources { proxy_pods, stable_route, canary_route, http } = sources;
                            let (stable, canary_route) = (stable_route.as_str(), canary_route.as_str());
                            let stats = measure::read_counters(&proxy_pods, stable, canary_route, http).await;
                            let at = Time(k8s_openapi::jiff::Timestamp::now());
                            // a window ends (or shows its progress): its requests' latencies since the counts at
                            // its start
                            let latencies = match (&window_start, &stats) {
                                (Some(start), Ok(_)) if http => {
                                    match measure::read_latencies(&proxy_pods, stable, canary_route, start).await {
                                        Ok(latencies) => Some(latencies),
                                        Err(e) => {
                                            return Gathered { at, stats: Some(Err(e.to_string())), ..Gathered::now() };
                                        }
                                    }
                                }
                                _ => None,
                            };
                            let queried = match (queries, &stats) {
                                (true, Ok(_)) => Some(run_queries(&canary, prometheus.as_deref(), &client).await),
                                _ => None,
                            };
                            let stats = Some(stats.map_err(|e| e.to_string()));
                            Gathered { at, stats, queried, called: None, latencies }
                        }
                    },
                    done,
                );
                match gathered {
                    None => Answer::Pending,
                    Some(Gathered { stats: Some(Err(e)), .. }) => {
                        tracing::warn!(error = %e, "cannot read the proxy's statistics; trying again");
                        Answer::Unavailable(e)
                    }
                    Some(gathered) => Answer::Gathered(gathered),
                }
            }
            Need::Webhook(call) => {
                let key = gather::call_key(call, release);
                let call = call.clone();
                let work = || async move {
                    let answer = call_webhook(&call).await;
                    Gathered {
                        called: Some(release::Called { step: call.step, url: call.url, answer }),
                        ..Gathered::now()
                    }
                };
                let gathered = self.tasks.poll_then(&uid, &key, work, self.done(canary));
                gathered.map_or(Answer::Pending, Answer::Gathered)
            }
        }
    }

    /// Drops the task of Canary `uid` (its release is gone).
    pub fn forget(&self, uid: &str) {
        self.tasks.forget(uid)
    }

    /// Keeps the tasks of the Canaries `live` says exist.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.tasks.retain(live)
    }

    /// Tasks kept (under way or answered).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts a task for Canary `uid` that never ends (a test's stand-in for a silent peer).
    #[cfg(test)]
    pub fn start_for_test(&self, uid: &str) {
        self.tasks.poll(uid, "test", std::future::pending);
    }
}

/// The most bytes of a webhook's answer read (only its status and an excerpt of its body are used).
const WEBHOOK_ANSWER_BYTES: usize = 64 * 1024;

/// Calls a webhook step: `Ok("HTTP 200")` for a 2xx answer, else why it did not pass.
async fn call_webhook(call: &release::Call) -> Result<String, String> {
    let body = serde_json::to_vec(&call.body).unwrap_or_default();
    match http::post(&call.url, "application/json", body, None, call.timeout, WEBHOOK_ANSWER_BYTES).await {
        Ok((status, _)) if status.is_success() => Ok(format!("HTTP {}", status.as_u16())),
        Ok((status, body)) => {
            let text = egress::excerpt(String::from_utf8_lossy(&body).trim(), 200);
            Err(format!("HTTP {}: {text}", status.as_u16()))
        }
        Err(e) => Err(egress::excerpt(&e.to_string(), 400)),
    }
}

/// How long a PromQL query may take, unless its check says (`prometheus.timeout`).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Both queries of a `compare` check over the last `window`, a sample a second (fewer over a window longer
/// than [`statistics::MAX_SAMPLES`] seconds: at most that many).
async fn read_samples(
    asked: &prometheus::Query<'_>,
    baseline: &str,
    window: Duration,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let step = Duration::from_secs(1).max(window / crate::canary::statistics::MAX_SAMPLES as u32);
    let range = |promql| async move {
        let asked = prometheus::Query { promql, ..*asked };
        prometheus::run_range(&asked, window, step).await.map_err(|e| e.to_string())
    };
    Ok((range(asked.promql).await?, range(baseline).await?))
}

/// The bearer token a check names (`prometheus.tokenSecretRef`), read from its Secret in `ns`; why not, with
/// the fix.
async fn read_token(client: &Client, ns: &str, secret: &SecretKeyRef) -> Result<String, String> {
    let field = "prometheus.tokenSecretRef";
    let (name, key) = (&secret.name, &secret.key);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    match secrets.get_opt(name).await {
        Ok(Some(found)) => match found.data.as_ref().and_then(|d| d.get(key)) {
            Some(token) => Ok(String::from_utf8_lossy(&token.0).into_owned()),
            None => Err(format!("{field}: Secret {name:?} has no key {key:?}: fix the key")),
        },
        Ok(None) => Err(format!("{field}: Secret {name:?} not found in namespace {ns:?}: create it or fix the name")),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(format!(
            "{field}: the controller may not read Secret {name:?}: grant it `get` on that Secret (a Role with \
             resourceNames: [{name}] bound to its ServiceAccount)"
        )),
        Err(e) => Err(format!("{field}: reading Secret {name:?}: {e}")),
    }
}

/// Runs the PromQL queries of the Canary's checks (by index; `None` for the proxy's metrics), at the end of
/// a window; `default_address`: the controller's `--prometheus-address`.
async fn run_queries(canary: &Canary, default_address: Option<&str>, client: &Client) -> Vec<Option<release::Queried>> {
    let settings = release::Settings::of(&canary.spec);
    let ns = canary.namespace().unwrap_or_default();
    let target = &canary.spec.target_deployment_name;
    let canary_deployment = canary_deployment_name(target);
    let baseline = baseline_deployment_name(target);
    let interval = format!("{}s", settings.interval.as_secs().max(1));
    let mut variables = vec![
        ("namespace", ns.as_str()),
        ("target", target.as_str()),
        ("canary", canary_deployment.as_str()),
        ("interval", interval.as_str()),
    ];
    let with_baseline = canary.spec.traffic.as_ref().is_some_and(|t| t.baseline);
    if with_baseline {
        variables.push(("baseline", baseline.as_str()));
    }
    let render = |template: &str| {
        prometheus::render(template, &variables).map_err(|e| match with_baseline || !e.contains("\"baseline\"") {
            true => e,
            false => format!("{e} ({{{{ baseline }}}} needs spec.traffic.baseline: true)"),
        })
    };
    let mut answers = vec![];
    for check in &settings.checks {
        let Some(metric) = &check.prometheus else {
            answers.push(None);
            continue;
        };
        let no_data = |query: String, why: String| release::Queried { query, value: Err(why), samples: None };
        let query = match render(&metric.query) {
            Ok(query) => query,
            Err(e) => {
                answers.push(Some(no_data(metric.query.clone(), format!("prometheus.query: {e}"))));
                continue;
            }
        };
        let Some(address) = metric.address.as_deref().or(default_address) else {
            let why = "no Prometheus address: set prometheus.address, or the controller's --prometheus-address";
            answers.push(Some(no_data(query, why.into())));
            continue;
        };
        let token = match &metric.token_secret_ref {
            None => None,
            Some(secret) => match read_token(client, &ns, secret).await {
                Ok(token) => Some(token),
                Err(why) => {
                    answers.push(Some(no_data(query, why)));
                    continue;
                }
            },
        };
        let timeout = metric.timeout.as_deref().and_then(release::duration).unwrap_or(QUERY_TIMEOUT);
        let asked = prometheus::Query { address, promql: &query, token: token.as_deref(), timeout };
        let answer = match &metric.compare {
            None => {
                let value = match prometheus::run(&asked).await {
                    Ok(prometheus::Outcome::Value(v)) => Ok(v),
                    Ok(prometheus::Outcome::NoData(why)) => Err(why),
                    Err(e) => Err(e.to_string()),
                };
                release::Queried { query: query.clone(), value, samples: None }
            }
            Some(compare) => {
                let baseline = render(&compare.baseline_query);
                let samples = match &baseline {
                    Ok(baseline) => read_samples(&asked, baseline, settings.interval).await,
                    Err(e) => Err(format!("prometheus.compare.baselineQuery: {e}")),
                };
                let baseline = baseline.unwrap_or_else(|_| compare.baseline_query.clone());
                let samples = release::Samples { baseline_query: baseline, values: samples };
                release::Queried { query: query.clone(), value: Ok(0.0), samples: Some(samples) }
            }
        };
        answers.push(Some(answer));
    }
    answers
}
