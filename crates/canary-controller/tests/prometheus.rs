//! The Prometheus provider of analysis against a real Prometheus (Debian's package, `make setup`): it
//! scrapes an exporter on loopback that serves fixed counters (the test's own, so the expected values are
//! known), and the provider's instant queries give one value, no data for an empty result or NaN, an error
//! that says to aggregate several series, Prometheus's own message for bad PromQL, and an error naming the
//! address for an unreachable or silent Prometheus.

use canary_controller::canary::evidence::prometheus::{Outcome, Query, QueryError, run, run_range};
use e2e_support::prometheus::Prometheus;
use e2e_support::traffic::free_port;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXPOSITION: &str = "# TYPE app_requests_total counter\n\
app_requests_total{route=\"canary\"} 120\n\
app_requests_total{route=\"stable\"} 480\n\
# TYPE app_errors_total counter\n\
app_errors_total{route=\"canary\"} 12\n\
# TYPE app_ratio gauge\n\
app_ratio NaN\n";

/// Serves [`EXPOSITION`] to every HTTP request on 127.0.0.1:`port`.
async fn exporter(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{EXPOSITION}",
                    EXPOSITION.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
}

fn query<'a>(address: &'a str, promql: &'a str) -> Query<'a> {
    Query { address, promql, token: None, timeout: Duration::from_secs(5) }
}

#[tokio::test]
async fn instant_queries_give_one_value_no_data_or_an_error_that_names_the_fix() {
    // Prometheus runs on loopback, which the egress policy refuses by default
    canary_controller::canary::evidence::egress::set(canary_controller::canary::evidence::egress::Policy {
        allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let exporter_port = free_port("127.0.0.1");
    exporter(exporter_port).await;
    let scrape = format!("[{{job_name: app, static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]}}]");
    let Some(prometheus) = Prometheus::start(dir.path(), &scrape, None).await else { return };
    let address = prometheus.address.clone();
    let error_rate = r#"sum(app_errors_total{route="canary"}) / sum(app_requests_total{route="canary"})"#;
    let scraped = e2e_support::within(60, || async {
        run(&query(&address, error_rate)).await.is_ok_and(|o| o == Outcome::Value(0.1))
    })
    .await;
    let log = std::fs::read_to_string(&prometheus.log).unwrap_or_default();
    assert!(scraped, "Prometheus never answered 0.1: {:?}\n{log}", run(&query(&address, error_rate)).await);

    let none = run(&query(&address, r#"app_requests_total{route="none"}"#)).await;
    assert!(matches!(none, Ok(Outcome::NoData(ref why)) if why.contains("no sample")), "{none:?}");
    let nan = run(&query(&address, "app_ratio")).await;
    assert!(matches!(nan, Ok(Outcome::NoData(ref why)) if why.contains("NaN")), "{nan:?}");
    assert_eq!(run(&query(&address, "app_requests_total")).await, Err(QueryError::Series(2)));
    let bad = run(&query(&address, "sum(app_requests_total")).await;
    assert!(matches!(bad, Err(QueryError::Refused(ref kind, _)) if kind == "bad_data"), "{bad:?}");

    // range queries (a compare check's samples): a sample a second over the window
    let total = query(&address, "sum(app_requests_total)");
    let window = Duration::from_secs(4);
    let enough = e2e_support::within(30, || async {
        run_range(&total, window, Duration::from_secs(1)).await.is_ok_and(|samples| samples.len() >= 3)
    })
    .await;
    let samples = run_range(&total, window, Duration::from_secs(1)).await;
    assert!(enough && samples.as_ref().is_ok_and(|s| s.iter().all(|v| *v == 600.0)), "{samples:?}");
    assert_eq!(
        run_range(&query(&address, "app_requests_total"), window, Duration::from_secs(1)).await,
        Err(QueryError::Series(2))
    );
    assert_eq!(
        run_range(&query(&address, "app_ratio"), window, Duration::from_secs(1)).await,
        Ok(vec![]),
        "NaN left out"
    );

    // nothing listening, and a server that accepts but never answers
    let closed = format!("http://127.0.0.1:{}", free_port("127.0.0.1"));
    let unreachable = run(&query(&closed, "up")).await;
    assert!(matches!(unreachable, Err(QueryError::Unreachable(ref a, _)) if *a == closed), "{unreachable:?}");
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let silent_address = format!("http://{}", silent.local_addr().unwrap());
    let slow = Query { timeout: Duration::from_secs(1), ..query(&silent_address, "up") };
    assert_eq!(run(&slow).await, Err(QueryError::Timeout(silent_address.clone(), Duration::from_secs(1))));
    drop(silent);
}
