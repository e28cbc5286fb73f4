"""deploy/kubernetes/*.yaml: valid YAML, every field one the object's API
has (with the right type), and wired together: the Service and the
monitors select the Deployment's pods and name its port, the mounts are the
image's documented paths, the config in the ConfigMap passes `fcmon
validate` with the files the mounts put beside it, and the Secret holds the
credentials that config names.

The shapes below are the subset of the Kubernetes API (apps/v1 Deployment,
v1 Service, ConfigMap, Secret) and of the Prometheus operator's CRDs
(monitoring.coreos.com/v1 ServiceMonitor, PodMonitor) that an fcmon
deployment uses, transcribed from their API references: a field outside
them is a typo or needs adding here, deliberately.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

import fcmon
from support import PKI, ROOT, fcmon_command

import yaml  # noqa: E402 (pyyaml: the test extra)

DIR = ROOT / "deploy" / "kubernetes"
MAP = {"*": str}  # labels, annotations, data: string -> string
OBJECT_META = {"name": str, "namespace": str, "labels": MAP, "annotations": MAP}
SELECTOR = {"matchLabels": MAP}
PORT_REF = (int, str)  # an IntOrString: a number or a port's name
PROBE = {
    "httpGet": {"path": str, "port": PORT_REF, "scheme": str},
    "initialDelaySeconds": int, "periodSeconds": int, "timeoutSeconds": int,
    "failureThreshold": int, "successThreshold": int,
}
CONTAINER = {
    "name": str, "image": str, "imagePullPolicy": str, "command": [str], "args": [str],
    "ports": [{"name": str, "containerPort": int, "protocol": str}],
    "env": [{"name": str, "value": str}],
    "livenessProbe": PROBE, "readinessProbe": PROBE, "startupProbe": PROBE,
    "resources": {"requests": MAP, "limits": MAP},
    "securityContext": {
        "readOnlyRootFilesystem": bool, "allowPrivilegeEscalation": bool, "runAsNonRoot": bool,
        "runAsUser": int, "runAsGroup": int, "capabilities": {"drop": [str], "add": [str]},
    },
    "volumeMounts": [{"name": str, "mountPath": str, "readOnly": bool, "subPath": str}],
}
KEY_PATHS = [{"key": str, "path": str, "mode": int}]
POD_SPEC = {
    "automountServiceAccountToken": bool, "serviceAccountName": str,
    "securityContext": {
        "runAsNonRoot": bool, "runAsUser": int, "runAsGroup": int, "fsGroup": int,
        "seccompProfile": {"type": str},
    },
    "containers": [CONTAINER],
    "volumes": [{
        "name": str,
        "configMap": {"name": str, "items": KEY_PATHS, "defaultMode": int},
        "secret": {"secretName": str, "items": KEY_PATHS, "defaultMode": int},
        "emptyDir": {"medium": str, "sizeLimit": str},
    }],
}
ENDPOINT = {"port": str, "path": str, "interval": str, "scrapeTimeout": str, "scheme": str}
KINDS: Dict[str, Dict[str, Any]] = {
    "apps/v1 Deployment": {"spec": {
        "replicas": int, "strategy": {"type": str}, "selector": SELECTOR,
        "template": {"metadata": OBJECT_META, "spec": POD_SPEC},
    }},
    "v1 Service": {"spec": {
        "type": str, "selector": MAP,
        "ports": [{"name": str, "port": int, "targetPort": PORT_REF, "protocol": str}],
    }},
    "v1 ConfigMap": {"data": MAP},
    "v1 Secret": {"type": str, "stringData": MAP, "data": MAP},
    "monitoring.coreos.com/v1 ServiceMonitor": {"spec": {"selector": SELECTOR, "endpoints": [ENDPOINT]}},
    "monitoring.coreos.com/v1 PodMonitor": {"spec": {"selector": SELECTOR, "podMetricsEndpoints": [ENDPOINT]}},
}


def shape_problems(value: Any, shape: Any, where: str) -> List[str]:
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping, got {type(value).__name__}"]
        problems = []
        for key, item in value.items():
            if "*" in shape:
                problems += shape_problems(item, shape["*"], f"{where}.{key}")
            elif key not in shape:
                near = difflib.get_close_matches(str(key), list(shape), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"{where}: unknown field {key}{hint}")
            else:
                problems += shape_problems(item, shape[key], f"{where}.{key}")
        return problems
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in shape_problems(item, shape[0], f"{where}[{i}]")]
    types = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {value!r}"]
    return []


def object_problems(doc: Any, where: str) -> List[str]:
    if not isinstance(doc, dict):
        return [f"{where}: not a mapping"]
    kind = f"{doc.get('apiVersion')} {doc.get('kind')}"
    if kind not in KINDS:
        return [f"{where}: {kind} is none of {sorted(KINDS)}"]
    shape = {"apiVersion": str, "kind": str, "metadata": OBJECT_META, **KINDS[kind]}
    problems = shape_problems(doc, shape, f"{where} ({doc['kind']})")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append(f"{where}: metadata.name missing")
    return problems


@pytest.fixture(scope="module")
def objects() -> Dict[str, Dict[str, Any]]:
    found: Dict[str, Dict[str, Any]] = {}
    for path in sorted(DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert object_problems(doc, path.name) == []
            found[doc["kind"]] = doc
    return found


def test_every_manifest_has_only_fields_of_its_api(objects: Dict[str, Dict[str, Any]]) -> None:
    assert sorted(objects) == ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service", "ServiceMonitor"]


def test_the_shape_check_catches_a_misspelt_or_mistyped_field() -> None:
    deployment = yaml.safe_load((DIR / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    container["ports"][0]["containerPort"] = "9731"
    problems = object_problems(deployment, "deployment.yaml")
    assert any("unknown field readinesProbe (did you mean readinessProbe?)" in p for p in problems), problems
    assert any("containerPort: expected int, got '9731'" in p for p in problems), problems


def _pod(objects: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]


def test_service_and_monitors_select_the_pods_and_name_their_port(objects: Dict[str, Dict[str, Any]]) -> None:
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = _pod(objects)["metadata"]["labels"]
    matches = deployment["spec"]["selector"]["matchLabels"]
    assert matches.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = _pod(objects)["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": 9731}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http-metrics"]
    service_ports = [p["name"] for p in service["spec"]["ports"]]
    sm = objects["ServiceMonitor"]["spec"]
    assert sm["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in sm["endpoints"]] == service_ports
    pm = objects["PodMonitor"]["spec"]
    assert pm["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [e["port"] for e in pm["podMetricsEndpoints"]] == list(ports)
    for probe, path in (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http-metrics"}


def test_the_pod_runs_the_image_as_built(objects: Dict[str, Dict[str, Any]]) -> None:
    """The image's user, paths and version (Containerfile), read-only root."""
    spec = _pod(objects)["spec"]
    container = spec["containers"][0]
    containerfile = (ROOT / "Containerfile").read_text()
    uid = re.search(r"^USER (\d+):(\d+)$", containerfile, re.M)
    assert uid, "the Containerfile names no numeric USER"
    ctx = spec["securityContext"]
    assert (ctx["runAsNonRoot"], ctx["runAsUser"], ctx["runAsGroup"]) == (True, int(uid.group(1)), int(uid.group(2)))
    assert container["image"].endswith(f"/fcmon:{fcmon.__version__}")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {"/etc/fcmon", "/run/secrets/fcmon", "/tmp"} == set(mounts)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} == set(volumes)
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CREDENTIALS_DIRECTORY"] == "/run/secrets/fcmon"
    assert f"CREDENTIALS_DIRECTORY={env['CREDENTIALS_DIRECTORY']}" in containerfile
    assert volumes[mounts["/etc/fcmon"]["name"]]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert volumes[mounts["/run/secrets/fcmon"]["name"]]["secret"]["secretName"] == objects["Secret"]["metadata"]["name"]


def test_configmap_config_validates_with_what_the_mounts_provide(objects: Dict[str, Dict[str, Any]],
                                                                 test_pki: PKI, tmp_path: Path) -> None:
    """The ConfigMap's items and the Secret's keys laid out as the pod sees
    them (test certificates and key in place of the placeholders), then
    `fcmon validate`: every file the config names is one the mounts give."""
    spec = _pod(objects)["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_volume = next(v for v in volumes.values() if "configMap" in v)
    data = objects["ConfigMap"]["data"]
    real = {"ca.crt": test_pki.ca_file, "client.crt": test_pki.client.cert, "client.key": test_pki.client.key}
    etc, secrets = tmp_path / "etc", tmp_path / "secrets"
    for item in config_volume["configMap"]["items"]:
        dest = etc / item["path"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if item["key"] in real:
            shutil.copy(real[item["key"]], dest)
        else:
            dest.write_text(data[item["key"]])
    secrets.mkdir()
    for key, value in objects["Secret"]["stringData"].items():
        if key in real:
            shutil.copy(real[key], secrets / key)
        else:
            (secrets / key).write_text(value)
    config = (etc / "config.ini").read_text()
    assert re.search(r"^listen = (0\.0\.0\.0|\[::\]):9731$", config, re.M), "listen must reach beyond the pod"
    named = set(re.findall(r"\$CREDENTIALS_DIRECTORY/(\S+)", config))
    assert named == set(objects["Secret"]["stringData"]), "the Secret's keys are the credentials config.ini names"
    proc = subprocess.run(fcmon_command("validate", "-c", str(etc / "config.ini")), capture_output=True, text=True,
                          timeout=60, env={"CREDENTIALS_DIRECTORY": str(secrets), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
