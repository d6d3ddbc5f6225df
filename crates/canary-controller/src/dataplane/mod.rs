//! The data plane a Kanary asks for, as the controller writes it into the proxy's ConfigMap
//! (`dataplane.json`: settings, routes, weights and servers) and the proxy agent reads it; and how the agent
//! lays it out in HAProxy ([`Layout`]: which server sits in which slot) and which changes the running HAProxy
//! can take without a reload ([`Layout::follow`], [`server_commands`]). Pure. The Kanary controller writes it;
//! the proxy agent reads it: neither imports the other.

pub mod haproxy;
pub mod requests;

use haproxy::{
    PARKED, ProxySettings, RouteBackend, SlottedBackend, backend_name, render_slotted, slot_name, weights_map,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::net::IpAddr;

/// A backend server: a ready endpoint of a route's Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Server {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
}

impl Server {
    /// `10.1.0.5:8080` (`[fd00::1]:8080` for IPv6), as the original status showed them.
    pub fn endpoint(&self) -> String {
        std::net::SocketAddr::new(self.address, self.port).to_string()
    }
}

/// The ConfigMap key that carries the [`DataPlane`] as JSON.
pub const DATAPLANE_KEY: &str = "dataplane.json";

/// What the controller asks of a Kanary's proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPlane {
    /// `namespace/name` of the Kanary.
    pub owner: String,
    pub settings: ProxySettings,
    pub routes: Vec<RouteBackend>,
}

impl DataPlane {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a data plane serializes")
    }

    /// A short digest of the data plane: what the agent reports it serves.
    pub fn revision(&self) -> String {
        let digest = sha2::Sha256::digest(self.to_json().as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }
}

/// What HAProxy runs: the settings, and each route's weight and server slots. Its config file and weights
/// map are functions of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    pub owner: String,
    pub settings: ProxySettings,
    pub backends: Vec<SlottedBackend>,
}

impl Layout {
    /// Each route's servers in its first slots.
    pub fn fresh(desired: &DataPlane) -> Layout {
        Layout {
            owner: desired.owner.clone(),
            settings: desired.settings.clone(),
            backends: desired.routes.iter().map(SlottedBackend::fresh).collect(),
        }
    }

    pub fn config(&self) -> String {
        render_slotted(&self.owner, &self.backends, &self.settings)
    }

    pub fn weights_map(&self) -> String {
        weights_map(self.backends.iter().map(|b| &b.weight))
    }

    /// Whether HAProxy running `self` can go to `other` at run time: the same settings, routes (services, in
    /// order) and slot counts; only weights and slot contents differ.
    pub fn same_structure(&self, other: &Layout) -> bool {
        self.owner == other.owner
            && self.settings == other.settings
            && self.backends.len() == other.backends.len()
            && self.backends.iter().zip(&other.backends).all(|(a, b)| {
                a.service == b.service
                    && a.h2c == b.h2c
                    && a.header_value == b.header_value
                    && a.slots.len() == b.slots.len()
            })
    }

    /// The layout that serves `desired` changing as little as possible: a server that stays keeps its slot,
    /// a new one takes the first free slot; the same settings, routes and slots, so HAProxy goes there at
    /// run time. `None` when only a reload can serve it: the routes or settings changed, or a backend has
    /// more servers than slots.
    pub fn follow(&self, desired: &DataPlane) -> Option<Layout> {
        let same_routes = self.owner == desired.owner
            && self.settings == desired.settings
            && self.backends.len() == desired.routes.len()
            && self
                .backends
                .iter()
                .zip(&desired.routes)
                .all(|(b, r)| b.service == r.service && b.h2c == r.h2c && b.header_value == r.header_value);
        if !same_routes {
            return None;
        }
        let backends =
            self.backends.iter().zip(&desired.routes).map(|(b, r)| follow_backend(b, r)).collect::<Option<Vec<_>>>()?;
        Some(Layout { owner: self.owner.clone(), settings: self.settings.clone(), backends })
    }

    /// The layout for `desired`, and whether HAProxy needs a reload to run it: [`Layout::follow`] where it
    /// can, else a fresh one.
    pub fn next(&self, desired: &DataPlane) -> (Layout, bool) {
        match self.follow(desired) {
            Some(layout) => (layout, false),
            None => (Layout::fresh(desired), true),
        }
    }
}

fn same_server(a: &Server, b: &Server) -> bool {
    a.address == b.address && a.port == b.port
}

/// `route`'s servers in `current`'s slots: kept ones where they are, new ones in free slots; `None` when
/// there are not enough slots.
fn follow_backend(current: &SlottedBackend, route: &RouteBackend) -> Option<SlottedBackend> {
    let mut slots: Vec<Option<Server>> = current
        .slots
        .iter()
        .map(|slot| {
            let kept = slot.as_ref().and_then(|s| route.servers.iter().find(|r| same_server(s, r)));
            kept.cloned()
        })
        .collect();
    for server in &route.servers {
        if slots.iter().flatten().any(|s| same_server(s, server)) {
            continue;
        }
        let free = slots.iter().position(Option::is_none)?;
        slots[free] = Some(server.clone());
    }
    Some(SlottedBackend {
        service: current.service.clone(),
        weight: route.weight,
        slots,
        h2c: route.h2c,
        header_value: route.header_value.clone(),
    })
}

/// The Runtime API commands that take HAProxy's servers from `from` to `to` (same structure), in two parts:
/// `fill`, for the slots that get a server (its address, made ready), and `park`, for the slots emptied (to
/// maintenance, so their connections go on and they get no new ones, then parked). The agent fills, checks
/// that every slot holds its server, changes the weights, and parks last: a route never has weight while a
/// slot it needs is still parked.
pub fn server_commands(from: &Layout, to: &Layout) -> ServerCommands {
    let mut commands = ServerCommands::default();
    for (a, b) in from.backends.iter().zip(&to.backends) {
        for (i, (before, after)) in a.slots.iter().zip(&b.slots).enumerate() {
            match (before, after) {
                (Some(x), Some(y)) if same_server(x, y) => {}
                (None, None) => {}
                (_, Some(_)) => commands.fill.extend(slot_commands(&b.service, i, after.as_ref())),
                (_, None) => commands.park.extend(slot_commands(&b.service, i, None)),
            }
        }
    }
    commands
}

/// See [`server_commands`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServerCommands {
    pub fill: Vec<String>,
    pub park: Vec<String>,
}

impl ServerCommands {
    pub fn is_empty(&self) -> bool {
        self.fill.is_empty() && self.park.is_empty()
    }
}

/// The Runtime API commands that make slot `index` of `service`'s backend hold `server` (made ready), or,
/// with none, empty (in maintenance, parked).
pub fn slot_commands(service: &str, index: usize, server: Option<&Server>) -> Vec<String> {
    let slot = format!("{}/{}", backend_name(service), slot_name(index));
    match server {
        Some(s) => {
            vec![
                format!("set server {slot} addr {} port {}", s.address, s.port),
                format!("set server {slot} state ready"),
            ]
        }
        None => {
            let (parked_ip, parked_port) = PARKED.split_once(':').expect("host:port");
            vec![
                format!("set server {slot} state maint"),
                format!("set server {slot} addr {parked_ip} port {parked_port}"),
            ]
        }
    }
}

/// Whether the weights differ between two layouts of the same structure.
pub fn weights_changed(from: &Layout, to: &Layout) -> bool {
    from.backends.iter().zip(&to.backends).any(|(a, b)| a.weight != b.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, ip: &str) -> Server {
        Server { name: name.into(), address: ip.parse().unwrap(), port: 8080 }
    }

    fn plane(weights: [i64; 2], a: &[&str], b: &[&str]) -> DataPlane {
        let route = |service: &str, weight, ips: &[&str]| RouteBackend {
            service: service.into(),
            weight,
            servers: ips.iter().map(|ip| server(&format!("pod-{ip}"), ip)).collect(),
            h2c: false,
            header_value: None,
        };
        DataPlane {
            owner: "ns/k".into(),
            settings: ProxySettings::default(),
            routes: vec![route("a", weights[0], a), route("b", weights[1], b)],
        }
    }

    fn ips(b: &SlottedBackend) -> Vec<String> {
        b.slots.iter().map(|s| s.as_ref().map(|s| s.address.to_string()).unwrap_or("-".into())).collect()
    }

    #[test]
    fn servers_that_stay_keep_their_slots_and_new_ones_fill_free_slots() {
        let start = Layout::fresh(&plane([80, 20], &["10.0.0.1", "10.0.0.2"], &["10.0.1.1"]));
        assert_eq!(ips(&start.backends[0]), ["10.0.0.1", "10.0.0.2", "-", "-", "-", "-", "-", "-"]);
        let next = start.follow(&plane([80, 20], &["10.0.0.2", "10.0.0.3"], &["10.0.1.1"])).unwrap();
        assert_eq!(ips(&next.backends[0]), ["10.0.0.3", "10.0.0.2", "-", "-", "-", "-", "-", "-"]);
        assert!(start.same_structure(&next));
        assert_eq!(
            server_commands(&start, &next).fill,
            ["set server be_a/s1 addr 10.0.0.3 port 8080", "set server be_a/s1 state ready"]
        );
        assert!(server_commands(&start, &next).park.is_empty());
        let emptied = next.follow(&plane([80, 20], &["10.0.0.3"], &["10.0.1.1"])).unwrap();
        assert_eq!(
            server_commands(&next, &emptied),
            ServerCommands {
                fill: vec![],
                park: vec!["set server be_a/s2 state maint".into(), "set server be_a/s2 addr 127.0.0.1 port 1".into()],
            },
            "an emptied slot is parked, after the weights changed"
        );
        assert!(!weights_changed(&next, &emptied));
    }

    #[test]
    fn weights_change_at_run_time_and_routes_settings_or_full_slots_need_a_reload() {
        let start = Layout::fresh(&plane([80, 20], &["10.0.0.1"], &["10.0.1.1"]));
        let reweighted = start.follow(&plane([50, 50], &["10.0.0.1"], &["10.0.1.1"])).unwrap();
        assert!(weights_changed(&start, &reweighted));
        assert!(server_commands(&start, &reweighted).is_empty());
        assert_eq!(reweighted.weights_map(), "t0 50\nw0 50\nt1 100\nw1 50\n");
        assert_eq!(start.config(), reweighted.config(), "the config file does not change with weights");

        let nine: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(start.follow(&plane([80, 20], &nine, &["10.0.1.1"])).is_none(), "8 slots for 9 servers");
        let (grown, reload) = start.next(&plane([80, 20], &nine, &["10.0.1.1"]));
        assert!(reload);
        assert_eq!(grown.backends[0].slots.len(), 32);

        let mut other_settings = plane([80, 20], &["10.0.0.1"], &["10.0.1.1"]);
        other_settings.settings.timeout_client = "2h".into();
        assert!(start.follow(&other_settings).is_none());
        let mut other_routes = plane([80, 20], &["10.0.0.1"], &["10.0.1.1"]);
        other_routes.routes.swap(0, 1);
        assert!(start.follow(&other_routes).is_none());
    }

    #[test]
    fn the_data_plane_round_trips_through_json_and_its_revision_follows_its_content() {
        let a = plane([80, 20], &["10.0.0.1", "fd00::1"], &[]);
        let back: DataPlane = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(back, a);
        assert_eq!(a.revision(), back.revision());
        assert_ne!(a.revision(), plane([79, 21], &["10.0.0.1", "fd00::1"], &[]).revision());
        assert_eq!(a.revision().len(), 12);
    }
}
