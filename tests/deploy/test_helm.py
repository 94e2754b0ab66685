"""Lint and render the Helm chart, validate the manifests offline, check them.

Needs helm 3 at .tools/bin/helm (scripts/install.sh --test puts it there) or
on PATH. The manifests are validated against the Kubernetes 1.30 schemas that
kubernetes-validate ships; the Prometheus Operator kinds have no schema there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from libs.config import Settings
from tests.harness import ROOT

CHART = ROOT / "helm" / "alert-history"
PRODUCTION = CHART / "values-production.yaml"
RELEASE = "ah"
NAMESPACE = "alerts"
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("gateway", "history", "classifier", "publisher", "recommender")
GRPC_SERVICES = ("history", "classifier", "publisher", "recommender")
CRD_API_VERSION = "monitoring.coreos.com/v1"
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")
SETTING_NAMES = frozenset(name.upper() for name in Settings.model_fields)
SQLITE_MESSAGE = (
    "the embedded SQLite database (no DATABASE_URL) works on one machine only"
)
# Metric names the product exports or plans to export; the alerts use no other.
KNOWN_METRICS = frozenset(
    {
        "alert_history_webhooks_total",
        "alert_history_pipeline_work_items_total",
        "alert_history_pipeline_queue_delay_seconds",
        "alert_history_publisher_errors_total",
        "alert_history_publisher_success_total",
        "alert_history_publisher_dead_letters_total",
        "alert_history_llm_requests_total",
        "alert_history_target_discovery_errors_total",
        "alert_history_grpc_server_handled_total",
    }
)
SECRET_VALUES = {
    "DATABASE_URL": "postgresql://ah:pw-db-5f1e@db.example:5432/ah",
    "REDIS_URL": "redis://:pw-redis-77aa@redis.example:6379/0",
    "LLM_API_KEY": "sk-test-llm-9c2d",
    "WEBHOOK_BEARER_TOKEN": "bearer-test-41b0",
    "WEBHOOK_BASIC_AUTH_USERNAME": "basic-user-c3d4",
    "WEBHOOK_BASIC_AUTH_PASSWORD": "basic-pw-e5f6",
    "API_TOKENS": "api-token-a1b2",
}
TARGET_URL = "https://hooks.example/services/T000/B000/target-secret-0d9e"


def helm_binary() -> str | None:
    local = ROOT / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


HELM = helm_binary()
pytestmark = pytest.mark.skipif(
    HELM is None, reason="helm not found; scripts/install.sh --test installs it"
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run(
        [HELM, *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(*args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    result = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*args: str) -> str:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, "rendering was expected to fail"
    return result.stderr


def with_secrets() -> list[str]:
    args = ["--set", "database.external=true"]
    for key, value in SECRET_VALUES.items():
        args += ["--set-string", f"secrets.{key}={value}"]
    return args


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def component(name: str) -> str:
    return f"{RELEASE}-alert-history-{name}"


def production_component(name: str) -> str:
    return f"alert-history-{name}"


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry for entry in container(doc).get("env", [])}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def production_docs() -> list[dict[str, Any]]:
    return render("-f", str(PRODUCTION))


@pytest.fixture(scope="module")
def secret_docs() -> list[dict[str, Any]]:
    targets = json.dumps([{"name": "chat", "format": "webhook", "url": TARGET_URL}])
    return render(*with_secrets(), "--set-json", f"targets.list={targets}")


@pytest.fixture(params=["default", "production", "secrets"])
def any_docs(request, default_docs, production_docs, secret_docs):
    return {
        "default": default_docs,
        "production": production_docs,
        "secrets": secret_docs,
    }[request.param]


def test_lint_default_values():
    result = helm("lint", "--strict", str(CHART))

    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_production_values():
    result = helm("lint", "--strict", str(CHART), "-f", str(PRODUCTION))

    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_match_kubernetes_schemas(any_docs):
    for doc in any_docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_crd_objects_parse(production_docs):
    kinds = {doc["kind"] for doc in production_docs if doc["kind"] in CRD_KINDS}

    assert kinds == set(CRD_KINDS)
    for doc in production_docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == CRD_API_VERSION
            assert doc["spec"]


@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
@pytest.mark.parametrize("service", SERVICES)
def test_production_service_objects(production_docs, service, kind):
    assert find(production_docs, kind, production_component(service)) is not None


@pytest.mark.parametrize("service", SERVICES)
def test_production_service_pdb(production_docs, service):
    pdb = find(production_docs, "PodDisruptionBudget", production_component(service))

    assert pdb is not None
    assert pdb["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("kind", ["Deployment", "Service", "PodDisruptionBudget"])
@pytest.mark.parametrize("service", SERVICES)
def test_default_service_objects(default_docs, service, kind):
    assert find(default_docs, kind, component(service)) is not None


def test_default_has_no_hpa(default_docs):
    assert of_kind(default_docs, "HorizontalPodAutoscaler") == []


def test_recommender_enabled_by_default(default_docs):
    assert find(default_docs, "Deployment", component("recommender")) is not None


def test_recommender_disabled_renders_none():
    docs = render("--set", "recommender.enabled=false")
    names = [doc["metadata"]["name"] for doc in docs]

    assert component("recommender") not in names


def test_hpa_cpu_and_memory_targets(production_docs):
    for hpa in of_kind(production_docs, "HorizontalPodAutoscaler"):
        resources = {
            metric["resource"]["name"]
            for metric in hpa["spec"]["metrics"]
            if metric["type"] == "Resource"
        }
        assert resources == {"cpu", "memory"}, hpa["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] >= 2


def test_hpa_custom_metric():
    docs = render(
        "--set", "gateway.autoscaling.enabled=true",
        "--set", "gateway.autoscaling.customMetric.name=webhooks_per_second",
        "--set", "gateway.autoscaling.customMetric.averageValue=20",
    )  # fmt: skip
    hpa = find(docs, "HorizontalPodAutoscaler", component("gateway"))
    assert hpa is not None

    pods = [metric for metric in hpa["spec"]["metrics"] if metric["type"] == "Pods"]

    assert pods == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "webhooks_per_second"},
                "target": {"type": "AverageValue", "averageValue": "20"},
            },
        }
    ]


def test_deployment_without_replicas_under_hpa(production_docs):
    deployment = find(production_docs, "Deployment", production_component("history"))
    assert deployment is not None

    assert "replicas" not in deployment["spec"]


def test_role_reads_secrets_only(production_docs):
    roles = of_kind(production_docs, "Role")

    assert sorted(role["metadata"]["namespace"] for role in roles) == [
        "monitoring",
        "platform-alerting",
    ]
    for role in roles:
        assert role["rules"] == [
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "list", "watch"],
            }
        ]


def test_no_cluster_wide_rbac(production_docs):
    kinds = {doc["kind"] for doc in production_docs}

    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_role_binding_names_service_account(production_docs):
    for binding in of_kind(production_docs, "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "alert-history", "namespace": NAMESPACE}
        ]


def test_no_rbac_without_discovery(default_docs):
    kinds = {doc["kind"] for doc in default_docs}

    assert not kinds & {"Role", "RoleBinding"}


def test_discovery_config_is_publisher_env(production_docs):
    name = production_component("target-discovery")
    config = find(production_docs, "ConfigMap", name)
    publisher = find(production_docs, "Deployment", production_component("publisher"))
    assert config is not None
    assert publisher is not None
    sources = container(publisher).get("envFrom", [])

    assert set(config["data"]) <= SETTING_NAMES
    assert config["data"]["TARGET_DISCOVERY_NAMESPACES"] == (
        "monitoring,platform-alerting"
    )
    assert sources == [{"configMapRef": {"name": name}}]


def test_only_publisher_mounts_token(production_docs):
    mounting = [
        name
        for name, spec in pod_specs(production_docs)
        if spec.get("automountServiceAccountToken") is not False
    ]

    assert mounting == [production_component("publisher")]


def test_image_user_id_matches_chart(default_docs):
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.M)

    assert user == [("10001", "10001")]
    for name, spec in pod_specs(default_docs):
        assert spec["securityContext"]["runAsUser"] == 10001, name


def test_pods_run_as_non_root(any_docs):
    for name, spec in pod_specs(any_docs):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name


def test_containers_locked_down(any_docs):
    for name, spec in pod_specs(any_docs):
        for box in spec["containers"]:
            context = box["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["runAsNonRoot"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name


def test_tmp_is_empty_dir(any_docs):
    for name, spec in pod_specs(any_docs):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {
            mount["mountPath"]: mount["name"]
            for mount in spec["containers"][0]["volumeMounts"]
        }
        assert "emptyDir" in volumes[mounts["/tmp"]], name


@pytest.mark.parametrize("service", ("history", "publisher"))
def test_sqlite_data_dir_is_empty_dir(default_docs, service):
    deployment = find(default_docs, "Deployment", component(service))
    assert deployment is not None
    data_dir = env_of(deployment)["DATA_DIR"]["value"]
    spec = deployment["spec"]["template"]["spec"]
    mounts = {
        mount["mountPath"]: mount["name"]
        for mount in spec["containers"][0]["volumeMounts"]
    }
    volumes = {volume["name"]: volume for volume in spec["volumes"]}

    assert "emptyDir" in volumes[mounts[data_dir]]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_resources_set(any_docs):
    for name, spec in pod_specs(any_docs):
        resources = spec["containers"][0]["resources"]
        for part in ("requests", "limits"):
            assert set(resources[part]) == {"cpu", "memory"}, f"{name} {part}"


def test_gateway_http_probes(default_docs):
    gateway = container(find(default_docs, "Deployment", component("gateway")) or {})

    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_gateway_https_probes_with_tls(production_docs):
    gateway = container(
        find(production_docs, "Deployment", production_component("gateway")) or {}
    )

    assert gateway["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_grpc_native_probes(default_docs, service):
    box = container(find(default_docs, "Deployment", component(service)) or {})
    grpc_port = {port["name"]: port["containerPort"] for port in box["ports"]}["grpc"]

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert box[probe]["grpc"] == {"port": grpc_port}, probe


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_grpc_tls_probes_run_health_check(production_docs, service):
    box = container(
        find(production_docs, "Deployment", production_component(service)) or {}
    )
    command = box["readinessProbe"]["exec"]["command"]
    mounts = {mount["mountPath"] for mount in box["volumeMounts"]}

    assert command[1] == "/etc/alert-history/probe/grpc_health_check.py"
    assert f"--server-name={production_component(service)}.{NAMESPACE}.svc" in command
    assert "/etc/alert-history/probe" in mounts


def test_probe_script_in_config_map(production_docs):
    config = find(production_docs, "ConfigMap", "alert-history-probe")
    assert config is not None
    script = (CHART / "files" / "grpc_health_check.py").read_text()

    assert config["data"]["grpc_health_check.py"].strip() == script.strip()


def test_migration_job_is_hook(secret_docs):
    job = find(secret_docs, "Job", f"{RELEASE}-alert-history-migrate")
    assert job is not None
    annotations = job["metadata"]["annotations"]

    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert container(job)["args"] == ["migrate"]


def test_migration_secret_ordered_first(secret_docs):
    job = find(secret_docs, "Job", f"{RELEASE}-alert-history-migrate")
    assert job is not None
    reference = env_of(job)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    secret = find(secret_docs, "Secret", reference["name"])
    assert secret is not None
    secret_annotations = secret["metadata"]["annotations"]
    job_annotations = job["metadata"]["annotations"]

    assert secret_annotations["helm.sh/hook"] == job_annotations["helm.sh/hook"]
    assert int(secret_annotations["helm.sh/hook-weight"]) < int(
        job_annotations["helm.sh/hook-weight"]
    )
    assert "DATABASE_URL" in secret["data"]


def test_migration_job_uses_existing_secret(production_docs):
    job = find(production_docs, "Job", "alert-history-migrate")
    assert job is not None
    reference = env_of(job)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]

    assert reference["name"] == "alert-history-credentials"
    assert of_kind(production_docs, "Secret") == []


def test_no_migration_job_with_sqlite(default_docs):
    assert of_kind(default_docs, "Job") == []


def test_services_skip_migrations_under_job(secret_docs):
    history = find(secret_docs, "Deployment", component("history"))
    assert history is not None

    assert env_of(history)["MIGRATE_ON_START"]["value"] == "false"


@pytest.mark.parametrize(
    "setting",
    [
        "history.replicas=2",
        "publisher.replicas=3",
        "history.autoscaling.enabled=true",
        "publisher.autoscaling.enabled=true",
    ],
)
def test_sqlite_rejects_replicas(setting):
    assert SQLITE_MESSAGE in render_error("--set", setting)


def test_postgresql_allows_replicas():
    docs = render(*with_secrets(), "--set", "history.replicas=3")
    history = find(docs, "Deployment", component("history"))
    assert history is not None

    assert history["spec"]["replicas"] == 3


def test_external_database_needs_url():
    message = render_error("--set", "database.external=true")

    assert "database.external=true needs" in message


def test_tls_needs_secret_name():
    message = render_error("--set", "tls.grpc.enabled=true")

    assert "tls.grpc.secretName" in message


def test_config_maps_hold_no_secret_values(secret_docs):
    for config in of_kind(secret_docs, "ConfigMap"):
        text = json.dumps(config)
        for key, value in SECRET_VALUES.items():
            assert value not in text, f"{key} in ConfigMap {config['metadata']['name']}"
        assert TARGET_URL not in text


def test_secret_values_in_secrets(secret_docs):
    secret = find(secret_docs, "Secret", f"{RELEASE}-alert-history")
    assert secret is not None

    assert set(secret["data"]) == set(SECRET_VALUES)


def test_targets_file_in_secret(secret_docs):
    secret = find(secret_docs, "Secret", f"{RELEASE}-alert-history-targets")
    assert secret is not None
    publisher = find(secret_docs, "Deployment", component("publisher"))
    assert publisher is not None

    assert "targets.yaml" in secret["data"]
    assert env_of(publisher)["PUBLISHING_TARGETS_FILE"]["value"] == (
        "/etc/alert-history/targets/targets.yaml"
    )


def test_env_names_are_settings(any_docs):
    for name, spec in pod_specs(any_docs):
        for entry in spec["containers"][0]["env"]:
            env_name = entry["name"]
            assert env_name in SETTING_NAMES or env_name.startswith("OTEL_"), (
                f"{name} sets {env_name}, which no setting reads"
            )


def test_model_config_keys_are_settings(any_docs):
    for config in of_kind(any_docs, "ConfigMap"):
        if config["metadata"]["name"].endswith("-model"):
            assert set(config["data"]) <= SETTING_NAMES


def test_extra_env_from_values():
    docs = render("--set", "env.LOG_LEVEL=DEBUG", "--set", "classifier.env.LLM_MODEL=m")
    classifier = find(docs, "Deployment", component("classifier"))
    assert classifier is not None

    assert env_of(classifier)["LOG_LEVEL"]["value"] == "DEBUG"
    assert env_of(classifier)["LLM_MODEL"]["value"] == "m"


def test_tls_files_are_mounted(production_docs):
    for name, spec in pod_specs(production_docs):
        box = spec["containers"][0]
        mounts = [mount["mountPath"] for mount in box["volumeMounts"]]
        for entry in box["env"]:
            if entry["name"].endswith("_FILE"):
                path = entry["value"]
                assert any(path.startswith(mount + "/") for mount in mounts), (
                    f"{name}: {entry['name']}={path} is not under a mount"
                )


def test_tls_env_by_role(production_docs):
    gateway = env_of(
        find(production_docs, "Deployment", production_component("gateway")) or {}
    )
    history = env_of(
        find(production_docs, "Deployment", production_component("history")) or {}
    )

    assert {"HTTP_TLS_CERT_FILE", "HTTP_TLS_KEY_FILE", "GRPC_TLS_CA_FILE"} <= set(
        gateway
    )
    assert "GRPC_TLS_CERT_FILE" not in gateway
    assert {"GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CA_FILE"} <= set(
        history
    )


def test_addresses_point_at_services(default_docs):
    gateway = env_of(find(default_docs, "Deployment", component("gateway")) or {})
    for service in GRPC_SERVICES:
        host, _, port = gateway[f"{service.upper()}_ADDR"]["value"].rpartition(":")
        target = find(default_docs, "Service", component(service))
        assert target is not None
        ports = {entry["name"]: entry["port"] for entry in target["spec"]["ports"]}
        assert host == f"{component(service)}.{NAMESPACE}.svc"
        assert int(port) == ports["grpc"]


@pytest.mark.parametrize("service", SERVICES)
def test_otel_env(production_docs, service):
    env = env_of(
        find(production_docs, "Deployment", production_component(service)) or {}
    )

    assert env["OTEL_SERVICE_NAME"]["value"] == f"alert-history-{service}"
    assert env["OTEL_TRACES_SAMPLER"]["value"] == "parentbased_traceidratio"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.05"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"].startswith("http://")


def test_listen_on_all_interfaces(default_docs):
    for deployment in of_kind(default_docs, "Deployment"):
        assert env_of(deployment)["LISTEN_HOST"]["value"] == "0.0.0.0"


def test_grace_period_covers_shutdown(default_docs):
    for deployment in of_kind(default_docs, "Deployment"):
        env = env_of(deployment)
        shutdown = float(env["SHUTDOWN_DELAY_SECONDS"]["value"]) + float(
            env["SHUTDOWN_GRACE_SECONDS"]["value"]
        )
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] > shutdown


def test_service_monitor_per_service(production_docs):
    monitors = {
        doc["metadata"]["name"]: doc
        for doc in of_kind(production_docs, "ServiceMonitor")
    }

    assert set(monitors) == {production_component(name) for name in SERVICES}
    assert monitors["alert-history-gateway"]["spec"]["endpoints"][0]["port"] == "http"
    assert (
        monitors["alert-history-history"]["spec"]["endpoints"][0]["port"] == "metrics"
    )


def test_alert_rules_use_known_metrics(production_docs):
    (rule,) = of_kind(production_docs, "PrometheusRule")
    rules = [entry for group in rule["spec"]["groups"] for entry in group["rules"]]
    for entry in rules:
        for metric in re.findall(r"alert_history_[a-z_]+", entry["expr"]):
            assert metric.removesuffix("_bucket") in KNOWN_METRICS, entry["alert"]


def test_alert_rules_cover_each_service(production_docs):
    (rule,) = of_kind(production_docs, "PrometheusRule")
    rules = [entry for group in rule["spec"]["groups"] for entry in group["rules"]]
    down = {
        entry["labels"].get("service")
        for entry in rules
        if entry["alert"] == "AlertHistoryServiceDown"
    }

    assert down == set(SERVICES)


def test_dashboard_config_map(production_docs):
    config = find(production_docs, "ConfigMap", "alert-history-dashboard")
    assert config is not None
    dashboard = json.loads(config["data"]["alert-history.json"])

    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["panels"]


def test_prompt_template_mounted(default_docs):
    prompts = find(default_docs, "ConfigMap", f"{RELEASE}-alert-history-prompts")
    assert prompts is not None
    classifier = container(
        find(default_docs, "Deployment", component("classifier")) or {}
    )
    mounts = {mount["mountPath"] for mount in classifier["volumeMounts"]}

    assert "{alert_data}" in prompts["data"]["classify.txt"]
    assert "{historical_context}" in prompts["data"]["classify.txt"]
    assert "/etc/alert-history/prompts" in mounts


def test_notes_warn_about_sqlite(tmp_path):
    chart = tmp_path / "alert-history"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    indented = "".join(f"  {line}\n" for line in notes.splitlines())
    (chart / "templates" / "notes.yaml").write_text(f"notes: |\n{indented}")

    docs = render("--show-only", "templates/notes.yaml", chart=chart)

    assert "SQLite is for one" in docs[0]["notes"]
