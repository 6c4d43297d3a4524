"""The Kubernetes manifests in ``deploy/k8s`` agree with each other and with django-cio.

Every object is validated against the Kubernetes schemas (kubernetes-validate, strict: an
unknown field fails); KEDA's ScaledObject, a custom resource with no schema there, is checked
field by field below. The kustomization is built (``kustomize build``, or ``kubectl
kustomize``) to check what each workspace's overlay makes of the base.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
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


def files() -> list[str]:
    """The YAML files of deploy/k8s, as paths relative to it."""
    return sorted(str(path.relative_to(K8S)) for path in K8S.rglob("*.yaml"))


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s's files (kustomizations are not objects)."""
    return [doc for name in files() for doc in load(name) if doc.get("kind") != "Kustomization"]


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


def queue_of(manifest: dict[str, Any]) -> str | None:
    """The queue a worker Deployment consumes: its ``-Q``, with ``$(VAR)`` taken from its env
    as Kubernetes expands it."""
    spec = container(manifest)
    queue = option([str(word) for word in spec["command"]], "-Q", "--queues")
    env = {variable["name"]: variable.get("value") for variable in spec.get("env", [])}
    if queue and queue.startswith("$(") and queue.endswith(")"):
        return env.get(queue[2:-1])
    return queue


def test_every_file_holds_named_objects_with_unique_names():
    assert {"configmap.yaml", "secret.example.yaml", "kustomization.yaml",
            "worker/worker.yaml", "worker/keda-scaledobject.yaml", "worker/hpa.yaml",
            "worker/kustomization.yaml", "workspaces/eu/kustomization.yaml"} <= set(files())
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
    assert queue_of(deployment("worker")) == QUEUE == "customerio"
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
    assert redis["listName"] == QUEUE == queue_of(deployment("worker"))
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


def test_kustomizations_list_one_autoscaler_no_secret_and_the_workspaces():
    (top,) = load("kustomization.yaml")
    assert top["resources"][:2] == ["configmap.yaml", "worker"]
    assert all((K8S / name).exists() for name in top["resources"])
    (worker,) = load("worker/kustomization.yaml")
    assert len({"keda-scaledobject.yaml", "hpa.yaml"} & set(worker["resources"])) == 1
    assert not any("secret" in name for name in top["resources"] + worker["resources"])
    (eu,) = load("workspaces/eu/kustomization.yaml")
    assert eu["resources"] == ["../../worker"] and eu["nameSuffix"] == "-eu"


@pytest.mark.parametrize("name", [name for name in files() if "kustomization" not in name])
def test_every_object_is_valid_against_the_kubernetes_schemas(name):
    for doc in load(name):
        if doc["kind"] == "ScaledObject":  # a custom resource: checked field by field here
            continue
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def build() -> list[dict[str, Any]]:
    """The objects ``kubectl apply -k deploy/k8s`` would apply."""
    kustomize = ([shutil.which("kustomize"), "build"] if shutil.which("kustomize") else
                 [shutil.which("kubectl"), "kustomize"] if shutil.which("kubectl") else None)
    assert kustomize, "kustomize or kubectl must be on PATH to build deploy/k8s"
    result = subprocess.run([*kustomize, str(K8S)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_each_workspace_gets_workers_on_its_own_queue_scaled_on_its_length():
    built = build()
    workers = {doc["metadata"]["name"]: doc for doc in built if doc["kind"] == "Deployment"}
    scalers = [doc for doc in built if doc["kind"] == "ScaledObject"]
    assert {name: queue_of(doc) for name, doc in workers.items()} == {
        "django-cio-worker": QUEUE, "django-cio-worker-eu": f"{QUEUE}.eu"}
    for scaler in scalers:  # each scales its own workspace's workers on its own queue
        target = workers[scaler["spec"]["scaleTargetRef"]["name"]]
        (redis,) = [t["metadata"] for t in scaler["spec"]["triggers"] if t["type"] == "redis"]
        assert redis["listName"] == queue_of(target)
    assert len(scalers) == len(workers)
    for manifest in workers.values():  # no Deployment selects another's pods
        selector = manifest["spec"]["selector"]["matchLabels"]
        for other in workers.values():
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert (selector.items() <= labels.items()) == (other is manifest)
    for doc in built:
        if doc["kind"] != "ScaledObject":
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("name", ["configmap.yaml", "secret.example.yaml", "worker/worker.yaml",
                                  "worker/keda-scaledobject.yaml", "worker/hpa.yaml"])
def test_each_object_carries_the_app_label(name):
    for doc in load(name):
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "django-cio"
