//! The operator's image, built without a daemon (`scripts/build-image.sh`, what `make image-oci` runs on the
//! release binary; here on the binary the tests use): an OCI layout whose config runs `/canary-controller run`
//! as user 65532, whose files are the binary, the libraries it links, CA certificates and a passwd (no shell,
//! nothing else), in which the binary really runs (chroot, as 65532: the image is self-contained), and whose
//! name is the one `config/manager` deploys and hands the proxy agent (which runs the image's entrypoint);
//! skopeo, the README's push tool, reads and copies it.

use e2e_support as support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every file of `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut found = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn the_image_runs_the_binary_as_nonroot_with_nothing_else_and_is_the_one_deployed() {
    use e2e_support::tools;
    if !tools::available("umoci") || !tools::available("chroot") {
        return;
    }
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n")) {
        tools::skip("umoci unpacks root-owned files and chroot needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let binary = support::controller_binary();
    run(Command::new("bash").arg(format!("{ROOT}/scripts/build-image.sh")).arg(&binary).arg(&layout));

    // the config: entrypoint, default command, user
    let index = json(&layout.join("index.json"));
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "latest");
    let manifest = json(&blob(&layout, index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!(config["config"]["User"], "65532:65532", "{config:#}");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/canary-controller"]), "{config:#}");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]), "{config:#}");
    assert_eq!((&config["os"], &config["architecture"]), (&"linux".into(), &"amd64".into()));
    let layers: Vec<u64> = manifest["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).collect();
    let size: u64 = layers.iter().sum();
    let binary_size = std::fs::metadata(&binary).unwrap().len();
    println!(
        "image: {} layer(s), {:.1} MiB compressed, binary {:.1} MiB",
        layers.len(),
        size as f64 / 1048576.0,
        binary_size as f64 / 1048576.0
    );
    assert!(size < binary_size, "compressed, the image is smaller than its binary alone: {size} bytes");

    // skopeo reads it as the README's push does (here to a docker-archive file, what `docker load` reads)
    if tools::available("skopeo") {
        let inspected =
            run(Command::new("skopeo").args(["inspect", "--config"]).arg(format!("oci:{}:latest", layout.display())));
        assert!(inspected.contains("\"User\": \"65532:65532\""), "{inspected}");
        let archive = format!("docker-archive:{}:canary-controller:latest", dir.path().join("image.tar").display());
        run(Command::new("skopeo").arg("copy").arg(format!("oci:{}:latest", layout.display())).arg(&archive));
        assert!(dir.path().join("image.tar").metadata().unwrap().len() > binary_size, "the archive holds the binary");
    }

    // the files: the binary, its libraries, CA certificates, passwd; no shell
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:latest", layout.display())).arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let listed = files(&rootfs);
    assert!(listed.contains(&"canary-controller".to_string()), "{listed:?}");
    assert!(listed.contains(&"etc/ssl/certs/ca-certificates.crt".to_string()), "{listed:?}");
    let others: Vec<&String> = listed
        .iter()
        .filter(|f| {
            !f.contains(".so")
                && !["canary-controller", "etc/passwd", "etc/group", "etc/ssl/certs/ca-certificates.crt"]
                    .contains(&f.as_str())
        })
        .collect();
    assert!(others.is_empty(), "nothing but the binary, its libraries, certificates and passwd: {others:?}");
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin").exists(), "no shell: {listed:?}");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532"), "{passwd}");

    // self-contained: the binary runs from the image's files alone, as the image's user
    let version = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args(["/canary-controller", "--version"]));
    assert!(version.starts_with("canary-controller "), "{version}");

    // config/manager deploys this image and hands it to the proxy agent, which runs its entrypoint
    let manager = std::fs::read_to_string(format!("{ROOT}/config/manager/manager.yaml")).unwrap();
    let image = canary_controller::IMAGE;
    assert!(manager.contains(&format!("image: {image}")), "config/manager deploys {image}:\n{manager}");
    assert!(manager.contains(&format!("\"--agent-image\", \"{image}\"")), "the agent runs {image} too:\n{manager}");
    let proxy = canary_controller::kanary::build::ProxyOptions {
        image: "haproxy:2.8".into(),
        agent_image: image.into(),
        replicas: 1,
        defaults: Default::default(),
    };
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference::default();
    let deployment = canary_controller::kanary::build::build_deployment("k", "ns", &owner, &proxy, None);
    let pod = serde_json::to_value(deployment.spec.unwrap().template.spec.unwrap()).unwrap();
    let all: Vec<&Value> =
        pod["containers"].as_array().into_iter().chain(pod["initContainers"].as_array()).flatten().collect();
    let agent =
        all.iter().find(|c| c["image"] == image).unwrap_or_else(|| panic!("no container runs {image}: {pod:#}"));
    assert!(agent.get("command").is_none() && agent["args"][0] == "proxy-agent", "runs the entrypoint: {agent:#}");
}
