#!/usr/bin/env bash
# Runs canary-controller against a local fake-apiserver (an in-memory Kubernetes API server, a test double):
# starts the server on 127.0.0.1:6443, installs the CRDs, then runs the controller in the foreground.
# In another terminal: export KUBECONFIG=$PWD/.local/kubeconfig and use kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || { echo "run-local: kubectl is required (https://kubernetes.io/docs/tasks/tools/)" >&2; exit 1; }
mkdir -p .local
cargo build --workspace --quiet
./target/debug/fake-apiserver --listen "${FAKE_APISERVER_LISTEN:-127.0.0.1:6443}" --kubeconfig-out .local/kubeconfig &
server=$!
trap 'kill $server 2>/dev/null' EXIT
export KUBECONFIG=$PWD/.local/kubeconfig
for _ in $(seq 50); do [ -s .local/kubeconfig ] && curl -sf "http://${FAKE_APISERVER_LISTEN:-127.0.0.1:6443}/readyz" >/dev/null && break; sleep 0.1; done
./target/debug/canary-controller crd | kubectl apply --server-side -f -
echo "run-local: fake-apiserver ready; in another terminal: export KUBECONFIG=$KUBECONFIG"
./target/debug/canary-controller run
