//! HAProxy's master CLI (`haproxy -W -S <socket>`), as the proxy agent uses it: Runtime API commands to
//! the current worker (`@1 <command>`), map transactions, `reload`, and what the running worker serves
//! (`show proc`, `show servers state`, `show map`), parsed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Commands sent on one connection at most (the CLI reads a line into a buffer of limited size).
const BATCH: usize = 40;

/// Admin-state bits of a server in maintenance (forced, inherited, from resolution, from a hostname):
/// `show servers state`'s `srv_admin_state`. Not 0x04: it only records that the config said `disabled`, and
/// stays set once the server is made ready at run time.
const MAINTENANCE: u32 = 0x01 | 0x02 | 0x20 | 0x40;

pub struct MasterCli {
    socket: PathBuf,
}

/// The master's reload counters (`show proc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloads {
    pub count: u64,
    /// Reloads that failed since the last one that succeeded.
    pub failed: u64,
}

/// One server as the running worker has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub address: Option<IpAddr>,
    pub port: u16,
    pub in_maintenance: bool,
}

impl MasterCli {
    pub fn new(socket: &Path) -> MasterCli {
        MasterCli { socket: socket.to_path_buf() }
    }

    /// Sends `line` (commands separated by `;`) and returns the whole answer.
    async fn send(&self, line: &str) -> std::io::Result<String> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.shutdown().await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok(answer)
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the master CLI did not answer")))
    }

    /// Runs Runtime API commands on the current worker, in batches; their answers.
    pub async fn worker(&self, commands: &[String]) -> std::io::Result<String> {
        let mut answers = String::new();
        for batch in commands.chunks(BATCH) {
            let line: Vec<String> = batch.iter().map(|c| format!("@1 {c}")).collect();
            answers.push_str(&self.send(&line.join("; ")).await?);
        }
        Ok(answers)
    }

    /// The master's reload counters; an error when HAProxy does not run (yet).
    pub async fn reloads(&self) -> std::io::Result<Reloads> {
        let answer = self.send("show proc").await?;
        parse_reloads(&answer)
            .ok_or_else(|| std::io::Error::other(format!("unexpected `show proc` answer: {answer:?}")))
    }

    /// Asks the master to reload (it re-reads the config files) and waits until it did: whether the new
    /// configuration was accepted (a refused one leaves the old worker serving).
    pub async fn reload(&self) -> std::io::Result<bool> {
        let before = self.reloads().await?;
        self.send("reload").await?;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(now) = self.reloads().await
                && now.count > before.count
            {
                return Ok(now.failed == 0);
            }
        }
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "HAProxy did not reload within 30 s"))
    }

    /// Every server of the running worker, by (backend, server).
    pub async fn servers(&self) -> std::io::Result<HashMap<(String, String), ServerState>> {
        Ok(parse_servers_state(&self.worker(&["show servers state".to_string()]).await?))
    }

    /// The entries of a map file as the running worker has them.
    pub async fn map(&self, path: &str) -> std::io::Result<HashMap<String, String>> {
        Ok(parse_map(&self.worker(&[format!("show map {path}")]).await?))
    }

    /// Replaces the whole content of the map `path` with `entries` (`key value` lines) at once.
    pub async fn replace_map(&self, path: &str, entries: &str) -> std::io::Result<()> {
        let answer = self.worker(&[format!("prepare map {path}")]).await?;
        let version = answer
            .split("New version created:")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| std::io::Error::other(format!("prepare map failed: {}", answer.trim())))?
            .to_string();
        let mut commands: Vec<String> = entries
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| format!("add map @{version} {path} {k} {v}"))
            .collect();
        commands.push(format!("commit map @{version} {path}"));
        self.worker(&commands).await?;
        Ok(())
    }
}

/// `show proc`: the master's line `<pid> master <reloads> [failed: <n>] ...`.
fn parse_reloads(answer: &str) -> Option<Reloads> {
    let line = answer.lines().find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = words.get(2)?.parse().ok()?;
    let failed = match words.get(3) {
        Some(&"[failed:") => words.get(4)?.trim_end_matches(']').parse().ok()?,
        _ => 0,
    };
    Some(Reloads { count, failed })
}

/// `show servers state`: `be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ... srv_port
/// ...` (the port is the 19th field).
fn parse_servers_state(answer: &str) -> HashMap<(String, String), ServerState> {
    answer
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 19 {
                return None;
            }
            let admin: u32 = f[6].parse().ok()?;
            let state = ServerState {
                address: f[4].parse().ok(),
                port: f[18].parse().ok()?,
                in_maintenance: admin & MAINTENANCE != 0,
            };
            Some(((f[1].to_string(), f[3].to_string()), state))
        })
        .collect()
}

/// `show map`: `<ref> <key> <value>` lines.
fn parse_map(answer: &str) -> HashMap<String, String> {
    answer
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, key, value) = (f.next()?, f.next()?, f.next()?);
            Some((key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_haproxy_2_6_parse() {
        let proc = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
                    2831            master          1 [failed: 1]   0d00h10m26s     2.6.12-1+deb12u4\n\
                    # workers\n2834            worker          1               0d00h10m26s     2.6.12\n";
        assert_eq!(parse_reloads(proc), Some(Reloads { count: 1, failed: 1 }));
        let servers = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
                       3 be_a 1 s1 127.0.0.1 2 4 1 1 11 6 3 2 6 0 0 0 - 9001 - 0 0 - - 0\n\
                       3 be_a 2 s2 127.0.0.1 0 5 1 1 2 1 0 0 14 0 0 0 - 1 - 0 0 - - 0\n";
        let parsed = parse_servers_state(servers);
        let s1 = &parsed[&("be_a".to_string(), "s1".to_string())];
        assert_eq!((s1.port, s1.in_maintenance), (9001, false));
        assert!(parsed[&("be_a".to_string(), "s2".to_string())].in_maintenance);
        let map = parse_map("0x556ff9273630 t0 50\n0x556ff9273710 w0 50\n\n");
        assert_eq!(map.get("w0").map(String::as_str), Some("50"));
    }
}
