#!/usr/bin/env bash
# Runs canary-controller against a local fake-apiserver (an in-memory Kubernetes API server, a test double)
# and workload-sim (which runs Deployments' pods as local processes on loopback, also a test double): starts
# the server on 127.0.0.1:6443 with Services on 127.96.0.0/16, the simulator (WORKLOAD_SIM=0 to leave it
# out), installs the CRDs, then runs the controller in the foreground.
# In another terminal: export KUBECONFIG=$(cd "$local_dir" && pwd)/kubeconfig and use kubectl.
# The controller serves /metrics, /healthz and /readyz on METRICS_ADDRESS (default: a free loopback port,
# printed at start), so that a port already taken on this machine does not stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
command -v kubectl >/dev/null || { echo "run-local: kubectl is required: run \`make setup\` (it installs kubectl into .venv)" >&2; exit 1; }
local_dir="${LOCAL_DIR:-.local}"   # kubeconfig and state of this local run
mkdir -p "$local_dir"
[ -n "${SKIP_BUILD:-}" ] || cargo build --workspace --quiet
listen="${FAKE_APISERVER_LISTEN:-127.0.0.1:6443}"
fake_apiserver="${FAKE_APISERVER_BIN:-./target/debug/fake-apiserver}"
controller="${CANARY_CONTROLLER_BIN:-./target/debug/canary-controller}"
simulator="${WORKLOAD_SIM_BIN:-./target/debug/workload-sim}"
rm -f "$local_dir/kubeconfig"
"$fake_apiserver" --listen "$listen" --kubeconfig-out "$local_dir/kubeconfig" --service-cluster-ip-range 127.96.0.0/16 &
server=$!
sim=
trap 'kill $server $sim 2>/dev/null; wait $sim 2>/dev/null' EXIT
export KUBECONFIG=$(cd "$local_dir" && pwd)/kubeconfig
for _ in $(seq 50); do [ -s "$local_dir/kubeconfig" ] && curl -sf "http://$listen/readyz" >/dev/null && break; sleep 0.1; done
kill -0 $server 2>/dev/null || { echo "run-local: fake-apiserver did not start on $listen (set FAKE_APISERVER_LISTEN to another address)" >&2; exit 1; }
"$controller" crd | kubectl apply --server-side -f -
if [ "${WORKLOAD_SIM:-1}" != 0 ]; then
  "$simulator" run --state-dir "$local_dir/workload-sim" &
  sim=$!
fi
metrics="${METRICS_ADDRESS:-127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
echo "run-local: fake-apiserver ready; in another terminal: export KUBECONFIG=$KUBECONFIG"
echo "run-local: the controller serves /metrics, /healthz and /readyz on http://$metrics"
METRICS_ADDRESS="$metrics" "$controller" run
