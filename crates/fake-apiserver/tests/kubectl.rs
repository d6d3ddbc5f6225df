//! Real kubectl against the fake-apiserver binary (setup installs kubectl into .venv; set KUBECTL to use
//! another binary). Without kubectl the tests skip, except in CI, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

fn kubectl_binary() -> Option<PathBuf> {
    fake_apiserver::tools::available("kubectl").then(|| fake_apiserver::tools::command("kubectl"))
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Option<Server> {
        let kubectl = kubectl_binary()?;
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let kubeconfig = dir.path().join("kubeconfig");
        let child = Command::new(env!("CARGO_BIN_EXE_fake-apiserver"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--kubeconfig-out"])
            .arg(&kubeconfig)
            .spawn()
            .unwrap();
        let server = Server { child, dir, kubectl };
        for _ in 0..100 {
            if kubeconfig.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fake-apiserver did not start");
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl and returns stdout, failing the test with stderr when it fails.
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(!out.status.success(), "kubectl {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).to_string()
    }
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Colors, type: string, jsonPath: ".spec.parts[*].color"}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - {rule: "self.size <= 10", message: "size must be at most 10"}
            properties:
              size: {type: integer}
              parts:
                type: array
                items: {type: object, properties: {color: {type: string}}}
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1}
spec:
  size: 3
  parts: [{color: red}, {color: blue}]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().to_string()
}

#[test]
fn kubectl_server_side_apply_get_with_columns_and_delete() {
    let Some(s) = Server::start() else { return };
    let crd = write(s.dir.path(), "crd.yaml", CRD);
    let widget = write(s.dir.path(), "w.yaml", WIDGET);
    assert!(s.ok(&["apply", "--server-side", "-f", &crd], None).contains("serverside-applied"));
    assert!(
        s.ok(&["apply", "--server-side", "-f", &widget], None).contains("widget.example.com/w1 serverside-applied")
    );

    let table = s.ok(&["get", "widgets"], None);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "SIZE", "COLORS", "AGE"], "{table}");
    assert!(lines[1].starts_with("w1") && lines[1].contains(" 3 ") && lines[1].contains("red,blue"), "{table}");
    assert!(s.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"], None) == "3");

    let err = s.fails(&["apply", "--server-side", "-f", "-"], Some(&WIDGET.replace("size: 3", "size: 30")));
    assert!(err.contains("size must be at most 10"), "{err}");
    let err = s.fails(&["apply", "--server-side", "-f", "-"], Some(&WIDGET.replace("size: 3", "size: 3\n  typo: 1")));
    assert!(err.contains("unknown field \"spec.typo\""), "{err}");

    assert!(s.ok(&["delete", "-f", &widget], None).contains("deleted"));
    let after = s.kubectl(&["get", "widgets"], None);
    assert!(String::from_utf8_lossy(&after.stderr).contains("No resources found"));
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: foo
  labels: {app: nginx}
spec:
  replicas: 1
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
      - {name: nginx, image: "nginx:1.15.4"}
      - {name: redis, image: redis}
"#;

#[test]
fn kubectl_create_patch_describe_wait_and_client_side_apply() {
    let Some(s) = Server::start() else { return };
    let dep = write(s.dir.path(), "dep.yaml", DEPLOYMENT);
    s.ok(&["create", "-f", &dep], None);
    let table = s.ok(&["get", "deploy"], None);
    assert!(table.lines().next().unwrap().starts_with("NAME") && table.contains("foo"), "{table}");

    // strategic merge patch: containers merge by name
    s.ok(
        &[
            "patch",
            "deploy",
            "foo",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:latest"}]}}}}"#,
        ],
        None,
    );
    let images = s.ok(
        &["get", "deploy", "foo", "-o", "jsonpath={.spec.template.spec.containers[*].image} {.metadata.generation}"],
        None,
    );
    assert_eq!(images, "nginx:latest redis 2");
    // the selector of a Deployment is immutable, as on a real server
    let err = s.fails(
        &[
            "patch",
            "deploy",
            "foo",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"x":"y"}},"template":{"metadata":{"labels":{"x":"y"}}}}}"#,
        ],
        None,
    );
    assert!(err.contains("field is immutable"), "{err}");

    let described = s.ok(&["describe", "deploy", "foo"], None);
    assert!(described.contains("Selector:") && described.contains("app=nginx"), "{described}");

    // client-side apply (last-applied annotation + patch)
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1', b: '2'}\n";
    s.ok(&["apply", "-f", "-"], Some(cm));
    s.ok(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '3'}\n"));
    assert_eq!(s.ok(&["get", "cm", "c", "-o", "jsonpath={.data}"], None), r#"{"a":"3"}"#);

    s.ok(&["delete", "deploy", "foo", "--wait=false"], None);
    s.ok(&["wait", "--for=delete", "deploy/foo", "--timeout=10s"], None);
}

/// kubectl's generator commands send protobuf bodies: they create the objects a real server would.
#[test]
fn kubectl_generator_commands_send_protobuf_and_create_what_they_say() {
    let Some(s) = Server::start() else { return };
    let jsonpath = |args: &[&str], path: &str| s.ok(&[args, &["-o", &format!("jsonpath={path}")]].concat(), None);
    s.ok(&["create", "deployment", "web", "--image=nginx:1.27", "--replicas=3", "--port=8080"], None);
    assert_eq!(jsonpath(&["get", "deploy", "web"], "{.spec.replicas}"), "3");
    assert_eq!(jsonpath(&["get", "deploy", "web"], "{.spec.selector.matchLabels.app}"), "web");
    assert_eq!(jsonpath(&["get", "deploy", "web"], "{.spec.template.spec.containers[0].image}"), "nginx:1.27");
    assert_eq!(
        jsonpath(&["get", "deploy", "web"], "{.spec.template.spec.containers[0].ports[0].containerPort}"),
        "8080"
    );
    s.ok(&["create", "deployment", "none", "--image=x", "--replicas=0"], None);
    assert_eq!(jsonpath(&["get", "deploy", "none"], "{.spec.replicas}"), "0", "a pointer set to zero is kept");

    s.ok(&["create", "service", "clusterip", "web", "--tcp=80:http"], None);
    assert_eq!(jsonpath(&["get", "svc", "web"], "{.spec.ports[0].port} {.spec.ports[0].targetPort}"), "80 http");
    s.ok(&["create", "configmap", "cfg", "--from-literal=a=1", "--from-literal=empty="], None);
    assert_eq!(jsonpath(&["get", "cm", "cfg"], "{.data}"), r#"{"a":"1","empty":""}"#);
    s.ok(&["create", "secret", "generic", "pw", "--from-literal=password=hunter2"], None);
    assert_eq!(jsonpath(&["get", "secret", "pw"], "{.data.password}"), "aHVudGVyMg==");
    s.ok(
        &["run", "job", "--image=busybox", "--restart=Never", "--env=A=1", "--labels=app=x", "--", "sleep", "1"],
        None,
    );
    assert_eq!(jsonpath(&["get", "pod", "job"], "{.spec.containers[0].args}"), r#"["sleep","1"]"#);
    assert_eq!(jsonpath(&["get", "pod", "job"], "{.spec.restartPolicy} {.metadata.labels.app}"), "Never x");
    assert_eq!(jsonpath(&["get", "pod", "job"], "{.metadata.namespace}"), "default");
    s.ok(&["create", "role", "reader", "--verb=get,list", "--resource=pods"], None);
    assert_eq!(jsonpath(&["get", "role", "reader"], "{.rules[0].verbs}"), r#"["get","list"]"#);
}
