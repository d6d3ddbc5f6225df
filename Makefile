# Developer entry points; see README.md.
.PHONY: setup build run test fmt crd

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
