//! The external tools that end-to-end tests drive (kubectl, haproxy, kubernetes-validate) and what a test
//! does when one is missing: on a developer's machine it is skipped, with the reason printed and recorded
//! for the summary `make test` prints; when `CI` is set a missing tool fails the test, so that nothing
//! skips green in CI. `scripts/setup.sh` installs them all (kubectl and kubernetes-validate into `.venv`,
//! which `make test` puts first on PATH).

use std::io::Write;
use std::path::PathBuf;

/// The command that runs `tool`: `$KUBECTL` for kubectl when set, else the project's `.venv/bin/<tool>`
/// when setup installed it there, else the name, found on PATH.
pub fn command(tool: &str) -> PathBuf {
    if let ("kubectl", Some(path)) = (tool, std::env::var_os("KUBECTL")) {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin")).join(tool);
    if venv.is_file() { venv } else { PathBuf::from(tool) }
}

/// Whether `tool` can run. When it cannot: in CI, panics (the test fails); elsewhere, prints and records a
/// skip of the running test and returns false (the caller returns early).
pub fn available(tool: &str) -> bool {
    let bin = command(tool);
    let probe = match tool {
        "kubectl" => std::process::Command::new(&bin).args(["version", "--client"]).output(),
        "haproxy" => std::process::Command::new(&bin).arg("-v").output(),
        _ => std::process::Command::new(&bin).arg("--help").output(),
    };
    let error = match probe {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!("{} exited with {}", bin.display(), out.status),
        Err(e) => format!("{} cannot run: {e}", bin.display()),
    };
    skip(&format!("{tool} is not available ({error}); `make setup` installs it"));
    false
}

/// Skips the running test (named after its thread, as the test harness names it) for `reason`: fails in
/// CI, otherwise prints the reason and records it in `$SKIP_LOG` (`make test` sets it, then prints them).
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("{test}: {reason} (CI is set: a test that cannot run fails)");
    }
    record_skip(test, reason);
}

/// Skips the running test because this machine cannot run it at all (no IPv6 loopback, say): printed and
/// recorded like [`skip`], but not a failure in CI.
pub fn skip_unsupported(reason: &str) {
    let thread = std::thread::current();
    record_skip(thread.name().unwrap_or("a test"), reason);
}

fn record_skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

/// A plain HTTP/1.0 GET on loopback (the controller's `/metrics`, `/healthz`, a proxy's stats): the whole
/// response (status line, headers, body), or None if nothing answered.
pub async fn http_get(address: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}
