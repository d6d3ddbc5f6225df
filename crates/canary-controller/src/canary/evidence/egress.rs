//! The egress policy of the calls a Canary can make the controller send (webhook steps, Prometheus queries):
//! whoever may create a Canary may name any URL, and the controller calls it from its own network position
//! with its own reach (a confused deputy). By default the controller refuses loopback, link-local (cloud
//! metadata at 169.254.169.254), unspecified and multicast addresses and the API server's own addresses, both
//! for addresses written in a URL and for what a host name resolves to when it is called (so a name cannot
//! point there either); `--egress-allow` (CIDRs or host names) allows more, and `--egress-deny-others`
//! refuses everything it does not allow. A bearer token goes only over https unless
//! `--allow-insecure-token` says otherwise. Set once at start ([`set`]); pure checks, no IO but the
//! resolution of names in [`Resolver`].

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// The flag that allows an address or host refused by the policy.
pub const ALLOW_FLAG: &str = "--egress-allow";
/// The flag that restricts calls to what `--egress-allow` names.
pub const DENY_OTHERS_FLAG: &str = "--egress-deny-others";
/// The flag that lets a bearer token go over plain http.
pub const INSECURE_TOKEN_FLAG: &str = "--allow-insecure-token";

/// What may be called.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// Networks allowed, even when refused by default.
    pub allow_networks: Vec<IpNet>,
    /// Host names allowed (`prometheus.monitoring.svc`; `.example.com` for every name under it), whatever
    /// they resolve to.
    pub allow_hosts: Vec<String>,
    /// Refuse everything not allowed above.
    pub deny_others: bool,
    /// The API server's own addresses (refused unless allowed).
    pub api_server: Vec<IpAddr>,
    /// A bearer token may go over plain http.
    pub insecure_token: bool,
}

/// One `--egress-allow` value: a network (`10.0.0.0/8`), an address (`10.1.2.3`, `::1`), or a host name.
pub fn parse_allow(value: &str) -> Result<Allowed, String> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Ok(Allowed::Network(net));
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(Allowed::Network(IpNet::from(ip)));
    }
    let host = value.to_ascii_lowercase();
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let labels = host.strip_prefix('.').unwrap_or(&host);
    if host.len() <= 253 && labels.split('.').all(label_ok) {
        Ok(Allowed::Host(host))
    } else {
        Err(format!("{value:?} is neither a CIDR, an address nor a host name"))
    }
}

/// A parsed `--egress-allow` value.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Network(IpNet),
    Host(String),
}

static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();

/// Sets the process's policy (once, at start; later calls are ignored).
pub fn set(policy: Policy) {
    let _ = POLICY.set(Arc::new(policy));
}

/// The process's policy (the default one when none was set).
pub fn policy() -> Arc<Policy> {
    POLICY.get_or_init(|| Arc::new(Policy::default())).clone()
}

/// Why an address is refused by default, if it is.
fn special(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address (cloud metadata)"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => Some("an unspecified address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("an unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

impl Policy {
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow_hosts.iter().any(|a| match a.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => *a == host,
        })
    }

    /// Whether `ip` (named by `host`) may be called; why not, with the flag that would allow it.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        if self.host_allowed(host) || self.allow_networks.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let why = if self.api_server.contains(&ip) {
            Some("the API server's address")
        } else {
            special(ip).or(self.deny_others.then_some("not allowed by the egress policy"))
        };
        match why {
            None => Ok(()),
            Some(why) => Err(format!(
                "refused by the controller's egress policy: {host} is {ip}, {why}; start the controller with \
                 {ALLOW_FLAG} {}{} to allow it",
                IpNet::from(ip),
                if host.parse::<IpAddr>().is_ok() { String::new() } else { format!(" (or {ALLOW_FLAG} {host})") }
            )),
        }
    }

    /// Whether `url` may be called before anything is resolved: its host, when it is an address; a host
    /// name when everything not allowed is refused.
    pub fn check_url(&self, url: &http::Uri) -> Result<(), String> {
        let host = url.host().ok_or_else(|| format!("{url}: no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => self.check_ip(host, ip),
            Err(_) if self.deny_others && !self.host_allowed(bare) => Err(format!(
                "refused by the controller's egress policy ({DENY_OTHERS_FLAG}): {bare} is not allowed; start the \
                 controller with {ALLOW_FLAG} {bare} to allow it"
            )),
            Err(_) => Ok(()),
        }
    }

    /// Whether a bearer token may be sent to `url`.
    pub fn check_token(&self, url: &http::Uri) -> Result<(), String> {
        match url.scheme_str() {
            Some("https") => Ok(()),
            _ if self.insecure_token => Ok(()),
            _ => Err(format!(
                "refusing to send the bearer token of prometheus.tokenSecretRef to {} over plain http: use \
                 https, or start the controller with {INSECURE_TOKEN_FLAG}",
                url.host().unwrap_or_default()
            )),
        }
    }
}

/// Resolves host names for the outgoing client and keeps only the addresses the policy allows (an error
/// when none is left), so that a name cannot lead the controller to a refused address.
#[derive(Clone)]
pub struct Resolver;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let policy = policy();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check_ip(&host, a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host}: no address"));
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, why));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// A text from outside for status and events: control characters escaped, at most `max` characters (and
/// `…` when cut).
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in text.chars() {
        let escaped: Vec<char> = if c.is_control() { c.escape_default().collect() } else { vec![c] };
        if count + escaped.len() > max {
            out.push('…');
            break;
        }
        count += escaped.len();
        out.extend(escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_link_local_and_the_api_server_are_refused_unless_allowed() {
        let api: IpAddr = "10.96.0.1".parse().unwrap();
        let policy = Policy { api_server: vec![api], ..Default::default() };
        for refused in ["http://127.0.0.1:9090/", "http://169.254.169.254/latest", "http://[::1]/", "http://10.96.0.1/"]
        {
            let why = policy.check_url(&uri(refused)).unwrap_err();
            assert!(why.contains(ALLOW_FLAG), "{why}");
        }
        assert!(policy.check_ip("x", "::ffff:127.0.0.1".parse().unwrap()).is_err(), "v4-mapped loopback");
        assert_eq!(policy.check_url(&uri("http://10.1.2.3:9090/")), Ok(()));
        assert_eq!(policy.check_url(&uri("http://prometheus.monitoring:9090/")), Ok(()), "names: at resolution");
        assert!(policy.check_ip("metadata.internal", "169.254.169.254".parse().unwrap()).is_err());

        let allowed = Policy {
            allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
            allow_hosts: vec!["localhost".into(), ".svc.cluster.local".into()],
            ..policy.clone()
        };
        assert_eq!(allowed.check_url(&uri("http://127.0.0.1:9090/")), Ok(()));
        assert_eq!(allowed.check_ip("localhost", "::1".parse().unwrap()), Ok(()));
        assert_eq!(allowed.check_ip("p.monitoring.svc.cluster.local", "169.254.1.1".parse().unwrap()), Ok(()));
        assert!(allowed.check_url(&uri("http://169.254.169.254/")).is_err());

        let only = Policy { deny_others: true, ..allowed };
        assert!(only.check_url(&uri("http://10.1.2.3/")).unwrap_err().contains("--egress-allow 10.1.2.3/32"));
        assert!(only.check_url(&uri("http://prometheus.example/")).unwrap_err().contains(DENY_OTHERS_FLAG));
        assert_eq!(only.check_url(&uri("http://p.svc.cluster.local/")), Ok(()));
    }

    #[test]
    fn a_token_goes_over_https_only_unless_allowed() {
        let policy = Policy::default();
        assert_eq!(policy.check_token(&uri("https://p/")), Ok(()));
        assert!(policy.check_token(&uri("http://p/")).unwrap_err().contains(INSECURE_TOKEN_FLAG));
        assert_eq!(Policy { insecure_token: true, ..policy }.check_token(&uri("http://p/")), Ok(()));
    }

    #[test]
    fn allow_values_are_networks_addresses_or_host_names() {
        assert_eq!(parse_allow("127.0.0.0/8"), Ok(Allowed::Network("127.0.0.0/8".parse().unwrap())));
        assert_eq!(parse_allow("::1"), Ok(Allowed::Network("::1/128".parse().unwrap())));
        assert_eq!(parse_allow("Prometheus.Monitoring"), Ok(Allowed::Host("prometheus.monitoring".into())));
        assert!(parse_allow("http://x/").is_err());
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("a\u{1b}[2Jb\nc", 100), "a\\u{1b}[2Jb\\nc");
        assert_eq!(excerpt(&"x".repeat(10), 4), "xxxx…");
    }
}
