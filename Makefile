# Developer entry points; see README.md.
.PHONY: setup build run test fmt crd image deploy undeploy

setup:          ## install system packages and fetch crates
	bash scripts/setup.sh

build:
	cargo build --workspace

run:            ## run the controller against a local fake-apiserver
	bash scripts/run-local.sh

test:           ## everything CI checks
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo test --workspace

fmt:
	cargo fmt --all

crd:            ## regenerate config/crd from the Rust types
	cargo run --quiet -p canary-controller -- crd > config/crd/crds.yaml

image:          ## build the operator's image (needs docker)
	docker build -t canary-controller:latest .

deploy:         ## install the CRDs and the operator into canary-controller-system (current kubectl context)
	kubectl apply --server-side -f config/crd/crds.yaml
	kubectl apply -k config/default

undeploy:       ## remove the operator and the CRDs (and so every Canary)
	kubectl delete -k config/default --ignore-not-found
	kubectl delete -f config/crd/crds.yaml --ignore-not-found
