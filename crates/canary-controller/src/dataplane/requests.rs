//! Request metrics of a proxy in HTTP mode, as the proxy agent serves them (`GET /requests` on its port) and
//! the controller reads them: per route, cumulative counts of requests and errors since the agent started,
//! and the latencies of those requests as a histogram (`[microseconds, count]` pairs, each value the top of a
//! bucket of about 1 % width). A window's numbers are the difference of two readings ([`RouteRequests::since`]);
//! its percentiles come from that difference. What a request is: one line of HAProxy's request log
//! ([`RequestLine`]). The agent also keeps the latencies of each route's latest requests, numbered by the
//! route's request count, so that a window's own latencies can be read (`GET /latencies`, a
//! [`RecentLatencies`]) knowing only the count at its start. Pure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the agent answers on `GET /requests`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestsReport {
    /// By route (the Service a Kanary route names).
    pub routes: BTreeMap<String, RouteRequests>,
    /// Log lines that could not be read (none expected: they come from the proxy's own config).
    #[serde(default)]
    pub unreadable: u64,
}

/// One route's requests since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRequests {
    pub requests: u64,
    /// Requests that failed: a 5xx answer (the proxy's own 502, 503 and 504 among them), no answer for a
    /// reason other than the client's, or a gRPC status other than 0.
    pub errors: u64,
    /// `[microseconds, count]`, by increasing value.
    pub latency_micros: Vec<(u64, u64)>,
}

/// The latencies of a route's latest requests, as the agent answers `GET /latencies?route=R&after=N&limit=L`:
/// those of requests `N+1` to `requests` still kept (the agent keeps the latest [`KEPT_LATENCIES`] of each
/// route), at most `limit` of them, evenly spread when there are more.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentLatencies {
    /// The route's request count now.
    pub requests: u64,
    pub latencies_micros: Vec<u64>,
}

/// How many of each route's latest latencies the agent keeps.
pub const KEPT_LATENCIES: usize = 65_536;
/// The most latencies one answer of `GET /latencies` carries.
pub const MAX_LATENCIES: usize = 20_000;

/// At most `limit` of `values`, evenly spread (all of them when there are few).
pub fn spread<T: Copy>(values: &[T], limit: usize) -> Vec<T> {
    if values.len() <= limit {
        return values.to_vec();
    }
    (0..limit).map(|i| values[i * values.len() / limit]).collect()
}

/// Most routes a report may carry.
pub const MAX_ROUTES: usize = 64;

impl RouteRequests {
    /// The requests of the window from `before` to `self` (a reading of the same agent): counts and buckets
    /// subtracted. An agent that restarted in between (counts went down) gives `self` whole.
    pub fn since(&self, before: &RouteRequests) -> RouteRequests {
        if self.requests < before.requests || self.errors < before.errors {
            return self.clone();
        }
        let earlier: BTreeMap<u64, u64> = before.latency_micros.iter().copied().collect();
        let latency_micros = self
            .latency_micros
            .iter()
            .map(|(value, count)| (*value, count.saturating_sub(*earlier.get(value).unwrap_or(&0))))
            .filter(|(_, count)| *count > 0)
            .collect();
        RouteRequests { requests: self.requests - before.requests, errors: self.errors - before.errors, latency_micros }
    }

    /// `other`'s requests added (the same route on another proxy pod).
    pub fn add(&mut self, other: &RouteRequests) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        let mut merged: BTreeMap<u64, u64> = self.latency_micros.iter().copied().collect();
        for (value, count) in &other.latency_micros {
            let slot = merged.entry(*value).or_default();
            *slot = slot.saturating_add(*count);
        }
        self.latency_micros = merged.into_iter().collect();
    }

    /// The `q` quantile (0 to 1) of the latencies, in milliseconds; none without a latency.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency_micros.iter().map(|(_, c)| *c).fold(0, u64::saturating_add);
        if total == 0 || !q.is_finite() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (value, count) in &self.latency_micros {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                return Some(*value as f64 / 1000.0);
            }
        }
        self.latency_micros.last().map(|(v, _)| *v as f64 / 1000.0)
    }
}

/// One request as HAProxy logs it (the `log-format` of [`super::haproxy`]): the backend, the status (-1: no
/// answer), the time from the request to the end of the answer in microseconds, the termination state, and
/// the gRPC status of the answer's headers (`-`: none).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLine {
    /// The route's Service; none when no route took the request (the frontend answered).
    pub route: Option<String>,
    pub status: i32,
    pub micros: u64,
    pub error: bool,
}

impl RequestLine {
    /// Reads one log line; none when it is not one.
    pub fn parse(line: &str) -> Option<RequestLine> {
        let mut fields = line.trim_end().split(' ');
        let backend = fields.next()?;
        let status: i32 = fields.next()?.parse().ok()?;
        let micros: i64 = fields.next()?.parse().ok()?;
        let termination = fields.next()?;
        let grpc = fields.next()?;
        if fields.next().is_some() {
            return None;
        }
        let route = backend.strip_prefix(super::haproxy::BACKEND_PREFIX).map(str::to_string);
        // no answer because the client went away is not the server's failure
        let unanswered = status < 100 && !termination.starts_with('C');
        let grpc_failed = grpc != "-" && grpc != "0";
        let error = status >= 500 || unanswered || grpc_failed;
        Some(RequestLine { route, status, micros: micros.max(0) as u64, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(requests: u64, errors: u64, latency: &[(u64, u64)]) -> RouteRequests {
        RouteRequests { requests, errors, latency_micros: latency.to_vec() }
    }

    #[test]
    fn log_lines_are_read_and_errors_are_5xx_unanswered_or_grpc_failures() {
        let ok = RequestLine::parse("be_web-v1 200 1623 ---- -\n").unwrap();
        assert_eq!(ok, RequestLine { route: Some("web-v1".into()), status: 200, micros: 1623, error: false });
        assert!(RequestLine::parse("be_v2 500 10 ---- -").unwrap().error);
        assert!(RequestLine::parse("be_v2 503 10 SC-- -").unwrap().error);
        assert!(RequestLine::parse("be_v2 -1 10 SD-- -").unwrap().error, "the server closed without answering");
        assert!(!RequestLine::parse("be_v2 -1 10 CD-- -").unwrap().error, "the client went away");
        assert!(RequestLine::parse("be_v2 200 10 ---- 14").unwrap().error, "gRPC unavailable");
        assert!(!RequestLine::parse("be_v2 200 10 ---- 0").unwrap().error);
        assert_eq!(RequestLine::parse("kanary 503 1 SC-- -").unwrap().route, None, "no route took it");
        for bad in ["", "be_v1", "be_v1 x 1 ---- -", "be_v1 200 1 ---- - extra", "be_v1 200 NaN ---- -"] {
            assert_eq!(RequestLine::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let before = route(10, 1, &[(1000, 6), (2000, 4)]);
        let after = route(25, 2, &[(1000, 10), (2000, 4), (30000, 11)]);
        assert_eq!(after.since(&before), route(15, 1, &[(1000, 4), (30000, 11)]));
        // the agent restarted: its counts started again
        let restarted = route(3, 0, &[(1000, 3)]);
        assert_eq!(restarted.since(&before), restarted);
    }

    #[test]
    fn spread_keeps_all_or_evenly_spaced_values() {
        assert_eq!(spread(&[1, 2, 3], 5), vec![1, 2, 3]);
        assert_eq!(spread(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 5), vec![0, 2, 4, 6, 8]);
        assert!(spread(&[1, 2], 0).is_empty());
    }

    #[test]
    fn percentiles_and_merges() {
        let window = route(100, 2, &[(1000, 50), (2000, 40), (30000, 10)]);
        assert_eq!(window.percentile_ms(0.5), Some(1.0));
        assert_eq!(window.percentile_ms(0.9), Some(2.0));
        assert_eq!(window.percentile_ms(0.99), Some(30.0));
        assert_eq!(window.percentile_ms(f64::NAN), None);
        assert_eq!(route(0, 0, &[]).percentile_ms(0.5), None);
        let mut merged = route(1, 0, &[(1000, 1)]);
        merged.add(&route(2, 1, &[(1000, 1), (5000, 1)]));
        assert_eq!(merged, route(3, 1, &[(1000, 2), (5000, 1)]));
    }
}
