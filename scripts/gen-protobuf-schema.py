#!/usr/bin/env python3
"""Generates crates/fake-apiserver/src/protobuf/schema.rs: the protobuf messages of the built-in kinds that
fake-apiserver decodes (kubectl sends protobuf bodies for them), with each field's tag, wire type and JSON
name. Tags and types come from the k8s-pb crate (kube-rs' bindings generated from Kubernetes' .proto files);
JSON names come from the k8s-openapi crate (generated from Kubernetes' OpenAPI), matched by field name.

Run from the repository root after `cargo fetch` (both crates are in the cargo registry):
    python3 scripts/gen-protobuf-schema.py > crates/fake-apiserver/src/protobuf/schema.rs
"""
import glob
import os
import re
import sys

REGISTRY = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/"))
PB = next(d for r in REGISTRY for d in glob.glob(r + "k8s-pb-0.9.*/src"))
OPENAPI = next(d for r in REGISTRY for d in sorted(glob.glob(r + "k8s-openapi-0.29.*/src/v1_*"))[-1:])

# The kinds fake-apiserver decodes from protobuf: (message, apiVersion, kind).
ROOTS = [
    ("api.core.v1.Pod", "v1", "Pod"),
    ("api.core.v1.Service", "v1", "Service"),
    ("api.core.v1.ConfigMap", "v1", "ConfigMap"),
    ("api.core.v1.Secret", "v1", "Secret"),
    ("api.core.v1.Namespace", "v1", "Namespace"),
    ("api.core.v1.ServiceAccount", "v1", "ServiceAccount"),
    ("api.core.v1.Endpoints", "v1", "Endpoints"),
    ("api.apps.v1.Deployment", "apps/v1", "Deployment"),
    ("api.apps.v1.ReplicaSet", "apps/v1", "ReplicaSet"),
    ("api.discovery.v1.EndpointSlice", "discovery.k8s.io/v1", "EndpointSlice"),
    ("api.coordination.v1.Lease", "coordination.k8s.io/v1", "Lease"),
    ("api.rbac.v1.Role", "rbac.authorization.k8s.io/v1", "Role"),
    ("api.rbac.v1.RoleBinding", "rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("api.rbac.v1.ClusterRole", "rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("api.rbac.v1.ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
]
# Messages with a JSON form of their own (decoded by hand in protobuf/mod.rs).
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "apimachinery.pkg.runtime.RawExtension": "RawJson",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
}


def parse_pb():
    """message name -> list of (rust field, tag, scalar kind or None, message name or None, label)."""
    messages = {}
    for path in glob.glob(PB + "/**/mod.rs", recursive=True):
        module = os.path.relpath(os.path.dirname(path), PB).split(os.sep)
        text = open(path).read()
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            name, body = m.group(1), m.group(2)
            fields = []
            for f in re.finditer(r"#\[prost\((.*?)\)\]\s*(?:///[^\n]*\n\s*)*pub (?:r#)?(\w+):", body, re.S):
                attrs, field = f.group(1), f.group(2)
                depth, end = 0, f.end()
                while not (body[end] == "," and depth == 0):
                    depth += {"<": 1, ">": -1}.get(body[end], 0)
                    end += 1
                ty = " ".join(body[f.end():end].split())
                tag = int(re.search(r'tag = "(\d+)"', attrs).group(1))
                label = "repeated" if "repeated" in attrs else "optional"
                mapm = re.search(r'btree_map = "string, (\w+)"', attrs)
                kind = attrs.split(",")[0].strip().split(" ")[0]
                target = None
                if kind == "message" or (mapm and mapm.group(1) == "message"):
                    last = [t for t in re.split(r"[<>, ]+", ty) if t][-1]
                    parts = last.split("::")
                    base = list(module)
                    while parts and parts[0] == "super":
                        base.pop()
                        parts.pop(0)
                    target = ".".join(base + parts)
                if mapm:
                    label, kind = "map", mapm.group(1)
                fields.append((field, tag, kind, target, label))
            messages[".".join(module + [name])] = fields
    return messages


OPENAPI_STRUCTS = {}


def json_names(message):
    """rust field (normalised) -> JSON name, from the k8s-openapi struct of the same path (its name may differ
    in case: AWSElasticBlockStoreVolumeSource there, AwsElasticBlockStoreVolumeSource in k8s-pb)."""
    *module, name = message.split(".")
    key = (tuple(module), name.lower())
    if not OPENAPI_STRUCTS:
        for path in glob.glob(os.path.join(OPENAPI, "**", "*.rs"), recursive=True):
            mod = tuple(os.path.relpath(os.path.dirname(path), OPENAPI).split(os.sep))
            text = open(path).read()
            for struct in re.findall(r"pub struct (\w+)", text):
                OPENAPI_STRUCTS[(mod, struct.lower())] = text
    text = OPENAPI_STRUCTS.get(key)
    if text is None:  # a proto-only message (EphemeralContainerCommon): camelCase names
        print(f"warning: no k8s-openapi struct for {message}: JSON names are the camelCase field names", file=sys.stderr)
        return {}
    return {norm(k): j for j, k in re.findall(r'"([^"]+)" => Field::Key_(\w+),', text)}


def norm(field):
    """A field name as both crates spell it once underscores and case are gone (prost writes
    non_resource_ur_ls where k8s-openapi writes non_resource_urls)."""
    return field.replace("_", "").lower()


def camel(field):
    head, *rest = field.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def main():
    messages = parse_pb()
    wanted, queue = [], [r[0] for r in ROOTS]
    while queue:
        m = queue.pop()
        if m in wanted or m in SPECIAL:
            continue
        if m not in messages:
            sys.exit(f"unknown message {m}")
        wanted.append(m)
        queue.extend(t for (_, _, _, t, _) in messages[m] if t)
    names = {m: json_names(m) for m in wanted}
    inline = set()
    for m in wanted:
        for field, _, _, target, _ in messages[m]:
            if target in names and norm(field) not in names[m] and names[m]:
                members = {norm(f) for (f, _, _, _, _) in messages[target]}
                if members <= set(names[m]):
                    inline.add((m, field))
                    if not names[target]:  # a proto-only message: its JSON names are the parent's
                        names[target] = {k: v for k, v in names[m].items() if k in members}
    out = []
    w = out.append
    w("//! @generated by scripts/gen-protobuf-schema.py from the k8s-pb (tags, types) and k8s-openapi (JSON")
    w("//! names) crates: do not edit. The protobuf messages of the built-in kinds fake-apiserver decodes.")
    w("")
    w("use super::{Field, Kind, Label, Message};")
    w("")
    w("/// (apiVersion, kind, message) of each kind a protobuf body may carry.")
    w("pub const ROOTS: &[(&str, &str, &str)] = &[")
    for msg, api_version, kind in ROOTS:
        w(f'    ("{api_version}", "{kind}", "{msg}"),')
    w("];")
    w("")
    w("pub const MESSAGES: &[Message] = &[")
    for m in sorted(wanted):
        w(f'    Message {{ name: "{m}", fields: &[')
        for field, tag, kind, target, label in sorted(messages[m], key=lambda f: f[1]):
            json = names[m].get(norm(field))
            is_inline = (m, field) in inline
            if json is None:
                json = camel(field)
                if not is_inline:
                    print(f"warning: {m}.{field}: no JSON name in k8s-openapi, using {json}", file=sys.stderr)
            if target in SPECIAL:
                k = f"Kind::{SPECIAL[target]}"
            elif target:
                k = f'Kind::Message("{target}")'
            else:
                k = {"string": "Kind::String", "bool": "Kind::Bool", "int32": "Kind::Int", "int64": "Kind::Int",
                     "double": "Kind::Double", "float": "Kind::Float", "bytes": "Kind::Bytes"}[kind]
            lab = {"optional": "Label::Optional", "repeated": "Label::Repeated", "map": "Label::Map"}[label]
            w(f'        Field {{ tag: {tag}, json: "{json}", kind: {k}, label: {lab}, inline: {str(is_inline).lower()} }},')
        w("    ] },")
    w("];")
    print("\n".join(out))


main()
