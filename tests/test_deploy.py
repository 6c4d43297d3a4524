"""The Kubernetes manifests in ``deploy/k8s`` agree with each other and with django-cio.

Structural checks on the parsed YAML always run. If ``kubeconform`` is on PATH, it validates
the manifests against the Kubernetes schemas too; if ``kubectl`` (or ``kustomize``) is, the
kustomization must build. Neither is required: without them the structural checks still run.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from django_cio.conf import DEFAULTS
from django_cio.delivery.retry import MAX_COUNTDOWN

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
QUEUE = DEFAULTS["QUEUE"]

# What the issue asks of both autoscalers.
MIN_PODS, MAX_PODS, CPU_PERCENT, MESSAGES_PER_POD = 2, 20, 70, 500
BEHAVIOR = {
    "scaleUp": {"policies": [{"type": "Pods", "value": 4, "periodSeconds": 60}]},
    "scaleDown": {"stabilizationWindowSeconds": 300,
                  "policies": [{"type": "Pods", "value": 2, "periodSeconds": 120}]},
}


def load(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s (the kustomization is not one)."""
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load(path.name)
            if doc.get("kind") != "Kustomization"]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind
                and (name is None or doc["metadata"]["name"] == name)]
    return found


def deployment(component: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == "Deployment"
                and doc["spec"]["template"]["metadata"]["labels"].get(
                    "app.kubernetes.io/component") == component]
    return found


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only


def option(command: list[str], *names: str) -> str | None:
    """The value of a command-line option given as ``-Q x``, ``--queues x`` or ``--queues=x``."""
    for index, word in enumerate(command):
        if word in names and index + 1 < len(command):
            return command[index + 1]
        for name in names:
            if name.startswith("--") and word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def worker_command() -> list[str]:
    return [str(word) for word in container(deployment("worker"))["command"]]


def test_every_file_holds_named_objects_with_unique_names():
    names = {path.name for path in K8S.glob("*.yaml")}
    assert {"configmap.yaml", "secret.example.yaml", "worker.yaml",
            "keda-scaledobject.yaml", "hpa.yaml", "kustomization.yaml"} <= names
    seen = [(doc["kind"], doc["metadata"]["name"]) for doc in manifests()]
    assert all(doc.get("apiVersion") for doc in manifests())
    assert len(seen) == len(set(seen)), seen


def test_every_deployment_selects_exactly_its_own_pods():
    deployments = [doc for doc in manifests() if doc["kind"] == "Deployment"]
    assert {doc["metadata"]["name"] for doc in deployments} == {"django-cio-worker"}
    for manifest in deployments:
        selector = manifest["spec"]["selector"]["matchLabels"]
        assert selector, manifest["metadata"]["name"]
        for other in deployments:  # its own pods match, the other Deployment's do not
            labels = other["spec"]["template"]["metadata"]["labels"]
            matches = selector.items() <= labels.items()
            assert matches == (other is manifest), (manifest["metadata"]["name"],
                                                    other["metadata"]["name"])


def test_worker_consumes_only_the_delivery_queue_one_message_at_a_time():
    command = worker_command()
    assert command[:4] == ["celery", "-A", "proj", "worker"]
    assert option(command, "-Q", "--queues") == QUEUE == "customerio"
    assert option(command, "--prefetch-multiplier") == "1"
    concurrency = int(option(command, "-c", "--concurrency") or 0)
    assert 1 <= concurrency <= 8  # sized for the 2 cores the pod may use


def test_worker_liveness_probe_pings_its_own_node():
    probe = container(deployment("worker"))["livenessProbe"]
    line = " ".join(probe["exec"]["command"])
    assert "inspect ping" in line
    assert "celery@$HOSTNAME" in line  # this pod's worker, not any worker
    ping_timeout = float(option(shlex.split(probe["exec"]["command"][-1]), "-t", "--timeout")
                         or 1.0)
    # The CLI starts Django before it pings: give it time, and do not ping constantly.
    assert ping_timeout < probe["timeoutSeconds"] <= probe["periodSeconds"]
    assert probe["failureThreshold"] >= 2 and probe["initialDelaySeconds"] >= 10


def test_worker_grace_period_outlasts_a_delivery():
    grace = deployment("worker")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > MAX_COUNTDOWN


def test_worker_has_resources_for_cpu_autoscaling():
    resources = container(deployment("worker"))["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_worker_replicas_are_left_to_the_autoscaler():
    assert "replicas" not in deployment("worker")["spec"]


def test_configmaps_and_secrets_referenced_by_pods_exist():
    data = {(doc["kind"], doc["metadata"]["name"]): {**doc.get("data", {}),
                                                      **doc.get("stringData", {})}
            for doc in manifests() if doc["kind"] in ("ConfigMap", "Secret")}
    for component in ("worker",):
        spec = container(deployment(component))
        env = set()
        for source in spec.get("envFrom", []):
            ((ref, target),) = [(key, value) for key, value in source.items()
                                if key in ("configMapRef", "secretRef")]
            kind = "ConfigMap" if ref == "configMapRef" else "Secret"
            assert (kind, target["name"]) in data, (component, kind, target["name"])
            env |= data[kind, target["name"]].keys()
        for variable in spec.get("env", []):
            for ref, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                target = variable.get("valueFrom", {}).get(ref)
                if target:
                    assert target["key"] in data[kind, target["name"]], (component, target)
            env.add(variable["name"])
        # What settings.py needs in every process that loads it.
        assert {"DJANGO_SETTINGS_MODULE", "CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY",
                "CELERY_BROKER_URL", "DATABASE_URL"} <= env, component


def test_the_example_secret_holds_no_real_credentials():
    secret = find("Secret")
    assert secret["metadata"]["name"] == "django-cio-secrets"
    values = secret["stringData"]
    assert values["CUSTOMERIO_SITE_ID"].startswith("replace-")
    assert values["CUSTOMERIO_API_KEY"].startswith("replace-")


def test_rate_limit_workers_covers_every_process_at_full_scale():
    config = find("ConfigMap", "django-cio-config")["data"]
    concurrency = int(option(worker_command(), "-c", "--concurrency") or 0)
    assert int(config["CUSTOMERIO_RATE_LIMIT_WORKERS"]) >= MAX_PODS * concurrency


def test_both_autoscalers_target_the_worker_deployment():
    worker = deployment("worker")["metadata"]["name"]
    for target in (find("ScaledObject")["spec"]["scaleTargetRef"],
                   find("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]):
        assert target["name"] == worker
        assert target.get("kind", "Deployment") == "Deployment"


def test_keda_scales_on_the_delivery_queue_list():
    spec = find("ScaledObject")["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (MIN_PODS, MAX_PODS)
    triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
    redis = triggers["redis"]["metadata"]
    assert redis["listName"] == QUEUE == option(worker_command(), "-Q", "--queues")
    assert int(redis["listLength"]) == MESSAGES_PER_POD
    assert triggers["cpu"]["metricType"] == "Utilization"
    assert int(triggers["cpu"]["metadata"]["value"]) == CPU_PERCENT


def behavior_of(block: dict[str, Any]) -> dict[str, Any]:
    """``block`` without a scale-up stabilisation of 0 (Kubernetes' default, same thing)."""
    result = {key: dict(value) for key, value in block.items()}
    if result.get("scaleUp", {}).get("stabilizationWindowSeconds") == 0:
        del result["scaleUp"]["stabilizationWindowSeconds"]
    return result


def test_hpa_numbers_are_the_ones_the_issue_asks_for():
    spec = find("HorizontalPodAutoscaler")["spec"]
    assert find("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (MIN_PODS, MAX_PODS)
    metrics = {metric["type"]: metric for metric in spec["metrics"]}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu"
    assert cpu["target"] == {"type": "Utilization", "averageUtilization": CPU_PERCENT}
    depth = metrics["External"]["external"]
    assert depth["target"]["type"] == "AverageValue"
    assert int(depth["target"]["averageValue"]) == MESSAGES_PER_POD
    assert QUEUE in depth["metric"]["selector"]["matchLabels"].values()
    assert behavior_of(spec["behavior"]) == BEHAVIOR


def test_keda_behaviour_is_the_hpa_behaviour():
    keda = find("ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert keda == find("HorizontalPodAutoscaler")["spec"]["behavior"]
    assert behavior_of(keda) == BEHAVIOR


def test_kustomization_lists_one_autoscaler_and_no_secret():
    (kustomization,) = load("kustomization.yaml")
    resources = kustomization["resources"]
    assert all((K8S / name).is_file() for name in resources)
    assert {"configmap.yaml", "worker.yaml"} <= set(resources)
    assert len({"keda-scaledobject.yaml", "hpa.yaml"} & set(resources)) == 1
    assert not any("secret" in name for name in resources)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_external_validators_when_installed():
    """kubeconform and kustomize when present; the structural check below always runs."""
    files = sorted(str(path) for path in K8S.glob("*.yaml") if path.name != "kustomization.yaml")
    kubeconform = shutil.which("kubeconform")
    if kubeconform:  # the KEDA CRD has no schema in kubeconform's default set
        result = run([kubeconform, "-strict", "-summary", "-ignore-missing-schemas", *files])
        assert result.returncode == 0, result.stdout + result.stderr
    kustomize = ([shutil.which("kustomize"), "build"] if shutil.which("kustomize") else
                 [shutil.which("kubectl"), "kustomize"] if shutil.which("kubectl") else None)
    (kustomization,) = load("kustomization.yaml")
    expected = sorted((doc["kind"], doc["metadata"]["name"])
                      for name in kustomization["resources"] for doc in load(name))
    if kustomize:
        result = run([*kustomize, str(K8S)])
        assert result.returncode == 0, result.stderr
        built = sorted((doc["kind"], doc["metadata"]["name"])
                       for doc in yaml.safe_load_all(result.stdout) if doc)
        assert built == expected
    assert ("Deployment", "django-cio-worker") in expected


@pytest.mark.parametrize("name", ["configmap.yaml", "secret.example.yaml", "worker.yaml",
                                  "keda-scaledobject.yaml", "hpa.yaml"])
def test_each_object_carries_the_app_label(name):
    for doc in load(name):
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "django-cio"
