#!/usr/bin/env bash
# Runs canary-controller on a local Kubernetes cluster: the real kube-apiserver, etcd,
# kube-controller-manager and kube-scheduler that `make setup` built from Kubernetes' sources (started in a
# throwaway directory on a free loopback port), and workload-sim as its node (root: it runs each pod as local
# processes in network namespaces of its own). It installs the CRDs and deploys the operator as
# `make deploy` does (config/default: its Deployment, ServiceAccount and roles, in
# canary-controller-system), so the operator runs in its pods, under its ServiceAccount, with leader election,
# from the binary this checkout built; then follows the node's output (pods' logs included) until Ctrl-C.
# Without root there is no node: the operator runs in the foreground on this machine instead and pods stay
# Pending.
# In another terminal: export KUBECONFIG=<the path printed> and use kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
command -v kubectl >/dev/null || { echo "run-local: kubectl is required: run \`make setup\` (it installs kubectl into .venv)" >&2; exit 1; }
local_dir="${LOCAL_DIR:-.local}"   # kubeconfig and state of this local run
mkdir -p "$local_dir"
local_dir=$(cd "$local_dir" && pwd)
[ -n "${SKIP_BUILD:-}" ] || cargo build --workspace --quiet
controller=$(realpath "${CANARY_CONTROLLER_BIN:-./target/debug/canary-controller}")
simulator="${WORKLOAD_SIM_BIN:-./target/debug/workload-sim}"
rm -f "$local_dir/kubeconfig"
export KUBECONFIG="$local_dir/kubeconfig"
server= sim=
trap 'kill $server $sim 2>/dev/null; wait $server $sim 2>/dev/null' EXIT
root=false; [ "$(id -u)" = 0 ] && root=true

# the operator in the foreground on this machine, serving /metrics, /healthz and /readyz on METRICS_ADDRESS
# (default: a free loopback port, printed), so that a port already taken does not stop it
run_here() {
  local metrics="${METRICS_ADDRESS:-127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  echo "run-local: the controller runs here and serves /metrics, /healthz and /readyz on http://$metrics"
  METRICS_ADDRESS="$metrics" "$controller" run
}

"${CONTROL_PLANE_BIN:-./target/debug/control-plane}" --kubeconfig-out "$KUBECONFIG" &
server=$!
for _ in $(seq 600); do [ -s "$KUBECONFIG" ] && break; kill -0 $server 2>/dev/null || break; sleep 0.1; done
[ -s "$KUBECONFIG" ] || { echo "run-local: the control plane did not start (run \`make setup\` to build it)" >&2; exit 1; }
echo "run-local: Kubernetes' control plane ready"
"$controller" crd | kubectl apply --server-side -f -
echo "run-local: in another terminal: export KUBECONFIG=$KUBECONFIG"
if ! $root; then
  echo "run-local: not root: no node (workload-sim needs root for the pods' namespaces), so pods stay Pending"
  run_here
  exit
fi
# pods on 10.244.c.d, reached from this machine at 127.244.c.d; Services' cluster IPs 10.96.c.d at 127.245.c.d
"$simulator" run --state-dir "$local_dir/workload-sim" --controller-binary "$controller" \
  2> >(tee "$local_dir/workload-sim.log" >&2) &
sim=$!
kubectl apply -k config/default
echo "run-local: node workload-sim runs the pods; the operator is deploying in namespace canary-controller-system"
kubectl -n canary-controller-system rollout status deployment/canary-controller-controller-manager --timeout=180s
kubectl -n canary-controller-system get pods -o wide
echo "run-local: the operator runs in its pods (pod 10.244.c.d is at 127.244.c.d from this machine: its metrics at"
echo "run-local:   http://127.244.c.d:8080/metrics); Services' cluster IPs 10.96.c.d are at 127.245.c.d; Ctrl-C stops all"
wait $sim
