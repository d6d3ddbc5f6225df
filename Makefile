# Developer entry points; see README.md.
.PHONY: setup build run demo test fmt crd image image-oci deploy undeploy

setup:          ## install system packages and fetch crates
	bash scripts/setup.sh

build:
	cargo build --workspace

run:            ## a local cluster (Kubernetes' control plane, workload-sim as its node) with the operator deployed in it
	bash scripts/run-local.sh

demo:           ## a complete release on a local cluster: a good canary promoted, a bad one rolled back (root)
	cargo build --workspace --bins --examples --quiet
	PATH="$(CURDIR)/.venv/bin:$$PATH" ./target/debug/examples/demo

SKIP_LOG := $(CURDIR)/target/skipped-tests.log
WHERE_LOG := $(CURDIR)/target/e2e-where.log

test:           ## everything CI checks (with CI set, a test whose tool is missing fails instead of skipping)
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cd control-plane && go vet ./...
	@mkdir -p target && rm -f $(SKIP_LOG) $(WHERE_LOG)
	PATH="$(CURDIR)/.venv/bin:$$PATH" SKIP_LOG=$(SKIP_LOG) E2E_WHERE_LOG=$(WHERE_LOG) cargo test --workspace; \
	  status=$$?; bash scripts/test-summary.sh $(SKIP_LOG) $(WHERE_LOG); exit $$status

fmt:
	cargo fmt --all

crd:            ## regenerate config/crd from the Rust types
	cargo run --quiet -p canary-controller -- crd > config/crd/crds.yaml

image:          ## build the operator's image (needs docker)
	docker build -t canary-controller:latest .

# IMAGE_PROFILE=dev builds the image from the debug binary, SKIP_BUILD=1 from the one already built (the
# install test does both, to save a release build)
IMAGE_PROFILE ?= release
IMAGE_BINARY := target/$(if $(filter dev,$(IMAGE_PROFILE)),debug,$(IMAGE_PROFILE))/canary-controller
image-oci:      ## build the operator's image without a daemon: an OCI layout in target/image/canary-controller (root)
	$(if $(SKIP_BUILD),,cargo build --profile $(IMAGE_PROFILE) --locked -p canary-controller --bin canary-controller)
	bash scripts/build-image.sh $(IMAGE_BINARY) target/image/canary-controller

# KANARY_GROUP=kanary.k8s.io (or kanary.pyxida.io) installs Kanary in that group only, so that
# `kubectl get kanary` / `kubectl get ky` name it unambiguously; default: both groups (config/crd/crds.yaml).
# CONFIG: the manifests' directory (default config; the install test deploys an edited copy)
CONFIG ?= config
deploy:         ## install the CRDs and the operator into canary-controller-system (current kubectl context)
	$(if $(KANARY_GROUP),cargo run --quiet -p canary-controller -- crd --kanary-group $(KANARY_GROUP),cat $(CONFIG)/crd/crds.yaml) \
	  | kubectl apply --server-side -f -
	kubectl apply -k $(CONFIG)/default

undeploy:       ## remove the operator and the CRDs (and so every Canary)
	kubectl delete -k $(CONFIG)/default --ignore-not-found
	kubectl delete -f $(CONFIG)/crd/crds.yaml --ignore-not-found
