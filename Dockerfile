# The operator's image: built with the Rust toolchain, run from a distroless image as a non-root user.
#   make image   (docker build -t canary-controller:latest .)
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# make: jemalloc (the allocator) is built from source
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates crates
RUN cargo build --release --locked -p canary-controller --bin canary-controller \
 && cp target/release/canary-controller /canary-controller

# glibc and libgcc, nothing else: no shell, no package manager
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /canary-controller /canary-controller
# the same ids as config/manager (runAsUser/runAsGroup)
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/canary-controller"]
CMD ["run"]
