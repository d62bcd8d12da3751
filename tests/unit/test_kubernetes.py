"""The Kubernetes manifests (deploy/kubernetes): the base and the example overlay, rendered as
kustomize would (the subset they use: resources, components, namespace, labels, images,
generators, strategic-merge patches), each object validated offline against the Kubernetes
schemas (kubernetes-validate, strict), and the properties a production install relies on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from wardgate.envoy_proc import render_bootstrap

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
K8S_VERSION = "1.33"
CRDS = {"ServiceMonitor", "PodMonitor"}
CLUSTER_SCOPED = {"Namespace"}
Obj = dict[str, Any]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does for these objects: maps merge, lists of named maps
    merge by name, other values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            found = next((i for i, b in enumerate(out_list) if b["name"] == item["name"]), None)
            if found is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[found] = _merge(out_list[found], item)
        return out_list
    return copy.deepcopy(patch)


def _load_all(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render(directory: Path) -> list[Obj]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[Obj] = []
    for entry in kust.get("resources", []):
        target = (directory / entry).resolve()
        objects += render(target) if target.is_dir() else _load_all(target)
    for entry in kust.get("components", []):
        objects += render((directory / entry).resolve())
    for gen in kust.get("configMapGenerator", []):
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"]},
                "data": data,
            }
        )
    for gen in kust.get("secretGenerator", []):
        data = dict(item.split("=", 1) for item in gen.get("literals", []))
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": "Opaque",
                "stringData": data,
            }
        )
    for patch in kust.get("patches", []):
        for p in _load_all(directory / patch["path"]):
            target = [
                o
                for o in objects
                if o["kind"] == p["kind"] and o["metadata"]["name"] == p["metadata"]["name"]
            ]
            assert len(target) == 1, f"patch {patch['path']} matches {len(target)} objects"
            objects[objects.index(target[0])] = _merge(target[0], p)
    for label in kust.get("labels", []):
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kust.get("images", []):
        for container in _containers(objects):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in kust:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = kust["namespace"]
    return objects


def _containers(objects: list[Obj]) -> list[Obj]:
    return [c for o in objects if o["kind"] in ("Deployment", "StatefulSet")
            for c in o["spec"]["template"]["spec"]["containers"]]  # fmt: skip


TREES = {"base": ROOT / "base", "example": ROOT / "overlays" / "example"}


@pytest.fixture(scope="module", params=sorted(TREES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    return request.param, render(TREES[request.param])


def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[Obj]],
) -> None:
    _, objects = rendered
    kinds = set()
    for o in objects:
        if o["kind"] in CRDS:
            continue
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        kinds.add(o["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_components_validate_too() -> None:
    for component in (ROOT / "components").iterdir():
        for o in render(component):
            if o["kind"] in CRDS:
                assert o["apiVersion"] == "monitoring.coreos.com/v1"
                assert o["spec"]["selector"]["matchLabels"]
                continue
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)


def test_a_bad_manifest_is_refused_by_the_validation() -> None:
    """The check can fail: a misspelled field is refused in strict mode."""
    bad = copy.deepcopy(next(o for o in render(ROOT / "base") if o["kind"] == "Deployment"))
    bad["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _by(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_workloads_are_hardened_probed_and_budgeted(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    for name in ("wardgate", "envoy"):
        deployment = _by(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] >= 2
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["readinessProbe"] and c["livenessProbe"]
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        labels = pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = _by(objects, "PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        service = _by(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
    ready = _by(objects, "Deployment", "wardgate")["spec"]["template"]["spec"]["containers"][0]
    assert ready["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_envoy_takes_the_bootstrap_wardgate_renders(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    shipped = yaml.safe_load(_by(objects, "ConfigMap", "envoy-bootstrap")["data"]["bootstrap.yaml"])
    expected = yaml.safe_load(
        render_bootstrap(
            node_id="envoy",
            listen_port=10000,
            admin_port=9901,
            wardgate_port=18000,
            wardgate_host="wardgate",
            admin_address="0.0.0.0",
            compose_port=9902,
            compose_address="0.0.0.0",
        )
    )
    assert shipped == expected
    endpoint = shipped["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "wardgate", "port_value": 18000}  # the wardgate Service
    envoy = _by(objects, "Deployment", "envoy")["spec"]["template"]["spec"]
    assert envoy["volumes"][0]["configMap"]["name"] == "envoy-bootstrap"


def test_only_the_envoys_reach_wardgates_grpc_port(rendered: tuple[str, list[Obj]]) -> None:
    _, objects = rendered
    policy = _by(objects, "NetworkPolicy", "wardgate")["spec"]
    grpc_rules = [r for r in policy["ingress"] if {"port": 18000, "protocol": "TCP"} in r["ports"]]
    assert len(grpc_rules) == 1
    assert grpc_rules[0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "envoy"}}}
    ]


def test_envoys_compose_listener_is_reachable_by_wardgate_only(
    rendered: tuple[str, list[Obj]],
) -> None:
    """wardgate (another pod) sends composition parts to each Envoy's pod IP: the listener
    binds every address, and only wardgate's pods may reach that port."""
    _, objects = rendered
    shipped = yaml.safe_load(_by(objects, "ConfigMap", "envoy-bootstrap")["data"]["bootstrap.yaml"])
    meta = shipped["node"]["metadata"]
    assert meta["compose_port"] == 9902 and meta["compose_address"] == "0.0.0.0"
    envoy = _by(objects, "Deployment", "envoy")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "compose", "containerPort": 9902, "protocol": "TCP"} in envoy["ports"]
    policy = _by(objects, "NetworkPolicy", "envoy")["spec"]
    rules = [r for r in policy["ingress"] if {"port": 9902, "protocol": "TCP"} in r["ports"]]
    assert len(rules) == 1
    assert rules[0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "wardgate"}}}
    ]


def test_the_example_overlay_serves_tls_and_pins_images() -> None:
    objects = render(TREES["example"])
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "gateway"
    }
    wardgate = _by(objects, "Deployment", "wardgate")["spec"]["template"]["spec"]
    container = wardgate["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WARDGATE_TLS_CERT_FILE"] == "/etc/wardgate/tls/tls.crt"
    assert container["image"] == "registry.example.com/wardgate:0.1.0"
    assert {m["name"] for m in container["volumeMounts"]} == {"tmp", "gateway-tls"}
    assert all("subPath" not in m for m in container["volumeMounts"])  # updates must arrive
    assert _by(objects, "Secret", "wardgate-redis")["stringData"]["url"].startswith("redis://")
    redis = _by(objects, "StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--appendonly" in redis["args"] and "noeviction" in redis["args"]
