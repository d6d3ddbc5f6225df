//! Reads a metric's value from Prometheus, for analysis beyond the proxy: one instant query
//! (`POST /api/v1/query`) at the end of an analysis window, its PromQL written by the user with template
//! variables ([`render`]). The answer must be one finite number: an empty result, NaN, `+Inf` or `-Inf` is
//! *no data* (the caller decides whether that is inconclusive or a failure, never a pass), several series
//! are an error that says to aggregate, and an unreachable, slow or refusing Prometheus is an error naming
//! what happened (texts from Prometheus only as short, escaped excerpts). Answers are read up to
//! [`MAX_ANSWER_BYTES`]; an address with a query or a fragment is refused (the API path is appended to it).

use super::http::CallError;
use std::time::Duration;

/// What a query answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Value(f64),
    /// No sample, or NaN (for example a rate over no request): why, for the evidence.
    NoData(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("Prometheus at {0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("Prometheus at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    #[error("Prometheus refused the query ({0}): {1}")]
    Refused(String, String),
    #[error("the query returns {0} series: aggregate it to one (`sum(...)`, `max(...)`)")]
    Series(usize),
    #[error("unexpected answer from Prometheus: {0}")]
    Answer(String),
    #[error("prometheus.address {0:?}: {1}")]
    Address(String, String),
}

/// The most bytes of a Prometheus answer read (a range of [`crate::canary::statistics::MAX_SAMPLES`] samples is
/// about 100 KiB).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// The longest text of Prometheus's kept in an error (status and events).
const EXCERPT: usize = 200;

/// One query: Prometheus's base URL (`http://prometheus.monitoring:9090`), the PromQL, the bearer token (if
/// Prometheus wants one), and how long to wait.
pub struct Query<'a> {
    pub address: &'a str,
    pub promql: &'a str,
    pub token: Option<&'a str>,
    pub timeout: Duration,
}

/// Runs `query` as an instant query at the current time.
pub async fn run(query: &Query<'_>) -> Result<Outcome, QueryError> {
    let body = ask(query, "query", &[]).await?;
    parse(&body)
}

/// Runs `query` over the last `window`, a sample every `step`: the one series' values, NaN left out (none:
/// no data).
pub async fn run_range(query: &Query<'_>, window: Duration, step: Duration) -> Result<Vec<f64>, QueryError> {
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let range = [
        ("start", format!("{:.3}", end - window.as_secs_f64())),
        ("end", format!("{end:.3}")),
        ("step", format!("{:.3}", step.as_secs_f64())),
    ];
    let body = ask(query, "query_range", &range).await?;
    parse_range(&body)
}

/// POSTs the query (and `extra` parameters) to `/api/v1/<api>`; the answer's body, or the error it reports.
async fn ask(query: &Query<'_>, api: &str, extra: &[(&str, String)]) -> Result<Vec<u8>, QueryError> {
    let address = query.address.trim_end_matches('/');
    if address.contains(['?', '#']) {
        let why = "has a query or a fragment: the controller appends /api/v1/query to it; remove them";
        return Err(QueryError::Address(super::egress::excerpt(address, EXCERPT), why.into()));
    }
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("query", query.promql);
        for (name, value) in extra {
            form.append_pair(name, value);
        }
        form.finish().into_bytes()
    };
    let url = format!("{address}/api/v1/{api}");
    let called = super::http::post(&url, FORM, body, query.token, query.timeout, MAX_ANSWER_BYTES).await;
    let (status, body) = called.map_err(|e| match e {
        CallError::Unreachable(_, why) => QueryError::Unreachable(address.to_string(), why),
        CallError::Timeout(_, timeout) => QueryError::Timeout(address.to_string(), timeout),
        CallError::Refused(_, why) => QueryError::Address(address.to_string(), why),
        CallError::TooLarge(_, max) => QueryError::Answer(format!("more than {max} bytes: not read")),
    })?;
    // Prometheus answers errors with a JSON body too (400, 422, 503): the parsers say what it reports
    if !status.is_success() && serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        let text = super::egress::excerpt(String::from_utf8_lossy(&body).trim(), EXCERPT);
        return Err(QueryError::Answer(format!("HTTP {status}: {text}")));
    }
    Ok(body.to_vec())
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The values of the one series of an answer of `/api/v1/query_range`, those that are not finite (NaN,
/// `+Inf`, `-Inf`: no measurement) left out.
pub fn parse_range(body: &[u8]) -> Result<Vec<f64>, QueryError> {
    let data = success(body)?;
    if data["resultType"] != "matrix" {
        return Err(QueryError::Answer(format!("result type {}: expected a range (matrix)", data["resultType"])));
    }
    let series = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
    let values = match series {
        [] => return Ok(vec![]),
        [one] => one["values"].as_array().cloned().unwrap_or_default(),
        many => return Err(QueryError::Series(many.len())),
    };
    Ok(values.iter().filter_map(|v| v[1].as_str()?.parse::<f64>().ok()).filter(|v| v.is_finite()).collect())
}

/// The `data` of a successful answer, or the error Prometheus reports.
fn success(body: &[u8]) -> Result<serde_json::Value, QueryError> {
    let mut answer: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| QueryError::Answer(format!("not JSON: {e}")))?;
    if answer["status"] != "success" {
        let kind = super::egress::excerpt(answer["errorType"].as_str().unwrap_or("error"), 40);
        let message = super::egress::excerpt(answer["error"].as_str().unwrap_or("no message"), EXCERPT);
        return Err(QueryError::Refused(kind, message));
    }
    Ok(answer["data"].take())
}

/// The outcome of an answer of `/api/v1/query`.
pub fn parse(body: &[u8]) -> Result<Outcome, QueryError> {
    let data = &success(body)?;
    let sample = match data["resultType"].as_str() {
        Some("scalar") => data["result"].clone(),
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            match series {
                [] => return Ok(Outcome::NoData("the query returned no sample".into())),
                [one] => one["value"].clone(),
                many => return Err(QueryError::Series(many.len())),
            }
        }
        other => return Err(QueryError::Answer(format!("result type {other:?}: write an instant query"))),
    };
    // a sample is [time, "value"]: the value is a string ("NaN", "+Inf" included)
    let excerpt = |text: &str| super::egress::excerpt(text, 40);
    let text =
        sample[1].as_str().ok_or_else(|| QueryError::Answer(format!("sample {}", excerpt(&sample.to_string()))))?;
    let value: f64 = text.parse().map_err(|_| QueryError::Answer(format!("value {:?}", excerpt(text))))?;
    Ok(match value {
        v if v.is_finite() => Outcome::Value(v),
        v => Outcome::NoData(format!("the query returned {v}: not a measurement")),
    })
}

/// `template` with `{{ name }}` replaced by the value of `name` in `variables`; an unknown name is an error
/// that lists the known ones.
pub fn render(template: &str, variables: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            return Err(format!("unclosed `{{{{` at {:?}", &rest[start..]));
        };
        let name = rest[start + 2..start + end].trim();
        let Some((_, value)) = variables.iter().find(|(n, _)| *n == name) else {
            let known: Vec<String> = variables.iter().map(|(n, _)| format!("{{{{ {n} }}}}")).collect();
            return Err(format!("unknown variable {name:?}: use {}", known.join(", ")));
        };
        out.push_str(value);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"status": "success", "data": data})).unwrap()
    }

    #[test]
    fn one_sample_is_a_value_none_or_nan_is_no_data_several_are_an_error() {
        let one = answer(json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "0.25"]}]}));
        assert_eq!(parse(&one), Ok(Outcome::Value(0.25)));
        let scalar = answer(json!({"resultType": "scalar", "result": [1.7e9, "3"]}));
        assert_eq!(parse(&scalar), Ok(Outcome::Value(3.0)));
        let none = answer(json!({"resultType": "vector", "result": []}));
        assert!(matches!(parse(&none), Ok(Outcome::NoData(_))));
        let nan = answer(json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "NaN"]}]}));
        assert!(matches!(parse(&nan), Ok(Outcome::NoData(_))));
        // +Inf, -Inf are no measurement either: never a value that could pass a bound (issue: +Inf passed)
        for infinite in ["+Inf", "-Inf", "Inf"] {
            let inf = answer(json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, infinite]}]}));
            assert!(matches!(parse(&inf), Ok(Outcome::NoData(ref why)) if why.contains("inf")), "{infinite}");
        }
        let huge = answer(json!({"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "1e308"]}]}));
        assert_eq!(parse(&huge), Ok(Outcome::Value(1e308)));
        let two = answer(json!({"resultType": "vector", "result": [
            {"metric": {"a": "1"}, "value": [1.7e9, "1"]}, {"metric": {"a": "2"}, "value": [1.7e9, "2"]}]}));
        assert_eq!(parse(&two), Err(QueryError::Series(2)));
        let range = answer(json!({"resultType": "matrix", "result": []}));
        assert!(matches!(parse(&range), Err(QueryError::Answer(m)) if m.contains("instant query")));
        let refused = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(parse(refused), Err(QueryError::Refused("bad_data".into(), "parse error".into())));
    }

    #[test]
    fn a_range_gives_the_values_of_its_one_series_without_nan() {
        let one = answer(json!({"resultType": "matrix", "result": [{"metric": {},
            "values": [[1.0, "0.5"], [2.0, "NaN"], [3.0, "0.25"], [4.0, "+Inf"], [5.0, "-Inf"]]}]}));
        assert_eq!(parse_range(&one), Ok(vec![0.5, 0.25]));
        assert_eq!(parse_range(&answer(json!({"resultType": "matrix", "result": []}))), Ok(vec![]));
        let two = answer(json!({"resultType": "matrix", "result": [{"values": []}, {"values": []}]}));
        assert_eq!(parse_range(&two), Err(QueryError::Series(2)));
    }

    #[test]
    fn texts_from_prometheus_are_short_and_escaped() {
        let long = format!(
            "{{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"\\u001b[31m{}\"}}",
            "y".repeat(5000)
        );
        let Err(QueryError::Refused(_, message)) = parse(long.as_bytes()) else { panic!("refused") };
        assert!(message.chars().count() <= EXCERPT + 1 && message.starts_with("\\u{1b}[31m"), "{message}");
    }

    #[tokio::test]
    async fn an_address_with_a_query_or_fragment_is_refused_before_any_call() {
        for address in ["http://prometheus:9090/-/quit?", "http://prometheus:9090/x#"] {
            let query = Query { address, promql: "up", token: None, timeout: Duration::from_secs(1) };
            let refused = run(&query).await.unwrap_err();
            assert!(
                matches!(&refused, QueryError::Address(_, why) if why.contains("query or a fragment")),
                "{refused}"
            );
        }
    }

    #[test]
    fn templates_name_what_they_do_not_know() {
        let vars = [("namespace", "shop"), ("canary", "web-canary")];
        assert_eq!(
            render(r#"sum(rate(errors{namespace="{{ namespace }}",service="{{canary}}"}[1m]))"#, &vars).as_deref(),
            Ok(r#"sum(rate(errors{namespace="shop",service="web-canary"}[1m]))"#)
        );
        let unknown = render("{{ stabel }}", &vars).unwrap_err();
        assert!(unknown.contains("\"stabel\"") && unknown.contains("{{ canary }}"), "{unknown}");
        assert!(render("x {{ canary", &vars).unwrap_err().contains("unclosed"));
    }
}
