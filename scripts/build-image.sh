#!/usr/bin/env bash
# Builds the operator's image without a container daemon: an OCI image layout (umoci), tag `latest`.
#   scripts/build-image.sh [BINARY] [LAYOUT]    (make image-oci: the release binary into target/image/canary-controller)
# The image holds the binary as /canary-controller (the entrypoint; `run` by default), the shared libraries
# it links (glibc, libm, libgcc_s: what distroless/cc holds, taken from this machine), the CA certificates
# (for https:// Prometheus and webhooks) and a passwd naming the nonroot user 65532: no shell, no package
# manager. Push it with skopeo: skopeo copy oci:LAYOUT:latest docker://REGISTRY/canary-controller:TAG
# Needs root (umoci unpacks and repacks files owned by root).
set -euo pipefail
binary=${1:-target/release/canary-controller}
layout=${2:-target/image/canary-controller}
[ -x "$binary" ] || { echo "build-image: $binary: no such executable (cargo build --release first)" >&2; exit 1; }
command -v umoci >/dev/null || { echo "build-image: umoci is missing (make setup installs it)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/canary-controller"
# the libraries the binary links, at the paths the loader looks for them (symlinks resolved)
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"

rm -rf "$layout"
mkdir -p "$(dirname "$layout")"
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$layout:latest" "$work/bundle"
umoci config --image "$layout:latest" --author canary-controller \
  --config.user 65532:65532 --config.entrypoint /canary-controller --config.cmd run \
  --config.exposedports 8080/tcp --config.workingdir / \
  --config.label org.opencontainers.image.title=canary-controller
umoci gc --layout "$layout"
echo "build-image: $layout:latest ($(du -sh "$layout" | cut -f1))"
