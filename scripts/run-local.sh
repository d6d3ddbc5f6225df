#!/usr/bin/env bash
# Runs canary-controller against a local Kubernetes control plane: the real kube-apiserver, etcd,
# kube-controller-manager and kube-scheduler that `make setup` built from Kubernetes' sources, started in a
# throwaway directory on a free loopback port; installs the CRDs, then runs the controller in the foreground.
# The cluster has no nodes yet: Deployments get ReplicaSets and Pods, which stay Pending.
# LOCAL_API=fake runs the former set-up instead: fake-apiserver (an in-memory imitation) on 127.0.0.1:6443
# with workload-sim running pods as local processes (WORKLOAD_SIM=0 to leave it out), until workload-sim
# becomes the control plane's nodes.
# In another terminal: export KUBECONFIG=<the path printed> and use kubectl.
# The controller serves /metrics, /healthz and /readyz on METRICS_ADDRESS (default: a free loopback port,
# printed at start), so that a port already taken on this machine does not stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
command -v kubectl >/dev/null || { echo "run-local: kubectl is required: run \`make setup\` (it installs kubectl into .venv)" >&2; exit 1; }
local_dir="${LOCAL_DIR:-.local}"   # kubeconfig and state of this local run
mkdir -p "$local_dir"
[ -n "${SKIP_BUILD:-}" ] || cargo build --workspace --quiet
controller="${CANARY_CONTROLLER_BIN:-./target/debug/canary-controller}"
rm -f "$local_dir/kubeconfig"
export KUBECONFIG=$(cd "$local_dir" && pwd)/kubeconfig
server= sim=
trap 'kill $server $sim 2>/dev/null; wait $server $sim 2>/dev/null' EXIT
if [ "${LOCAL_API:-real}" = fake ]; then
  listen="${FAKE_APISERVER_LISTEN:-127.0.0.1:6443}"
  "${FAKE_APISERVER_BIN:-./target/debug/fake-apiserver}" --listen "$listen" --kubeconfig-out "$KUBECONFIG" \
    --service-cluster-ip-range 127.96.0.0/16 &
  server=$!
  for _ in $(seq 50); do [ -s "$KUBECONFIG" ] && curl -sf "http://$listen/readyz" >/dev/null && break; sleep 0.1; done
  kill -0 $server 2>/dev/null || { echo "run-local: fake-apiserver did not start on $listen (set FAKE_APISERVER_LISTEN to another address)" >&2; exit 1; }
  if [ "${WORKLOAD_SIM:-1}" != 0 ]; then
    "${WORKLOAD_SIM_BIN:-./target/debug/workload-sim}" run --state-dir "$local_dir/workload-sim" &
    sim=$!
  fi
  echo "run-local: fake-apiserver ready"
else
  "${CONTROL_PLANE_BIN:-./target/debug/control-plane}" --kubeconfig-out "$KUBECONFIG" &
  server=$!
  for _ in $(seq 600); do [ -s "$KUBECONFIG" ] && break; kill -0 $server 2>/dev/null || break; sleep 0.1; done
  [ -s "$KUBECONFIG" ] || { echo "run-local: the control plane did not start (run \`make setup\` to build it)" >&2; exit 1; }
  echo "run-local: Kubernetes' control plane ready; it has no nodes yet: pods stay Pending (LOCAL_API=fake runs them)"
fi
"$controller" crd | kubectl apply --server-side -f -
metrics="${METRICS_ADDRESS:-127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
echo "run-local: in another terminal: export KUBECONFIG=$KUBECONFIG"
echo "run-local: the controller serves /metrics, /healthz and /readyz on http://$metrics"
METRICS_ADDRESS="$metrics" "$controller" run
