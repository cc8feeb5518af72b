"""Least privilege on a cluster, checked on what would be applied: the Helm chart as rendered, its wiring
around KFP as `make kfp-install` renders it, the cluster pipeline as compiled, the Makefile's recipes as run
against a stand-in kubectl (docs/cluster-security.md).

- no KFP task mounts the release keys or the publisher identity; promote only requests a release
  (EDGEOPS_RELEASE__SIGNED_BY=signer), and nothing in `kubeflow` names the keys Secret;
- the release signer and the heartbeat, in namespace edgeops-release, are the only workloads that mount
  the keys, and the API server refuses a root key in them and the Secret outside edgeops-release;
- every S3 credential a task or CronJob gets is a bucket-limited identity, never MinIO's root user;
- nothing grants KFP's pipeline-runner reads of our Secrets, and upstream's blanket `get secrets` is narrowed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler

from edgeops.errors import EdgeopsError
from edgeops.pipeline.cluster import TASK_S3_IDENTITY, task_secrets
from edgeops.settings import ClusterConfig
from tests.conftest import REPO
from tests.support.cluster import (
    WIRING,
    by_kind,
    created_secrets,
    helm_template,
    kustomize,
    pod_spec,
    read_secrets,
    run_recipe,
    secret_refs,
)

CLUSTER = ClusterConfig()
STAGES = ["ingest", "train", "export", "benchmark", "verify", "promote"]
KFP_ARTIFACT_SECRET = "mlpipeline-minio-artifact"  # the one Secret KFP's launcher reads through the API
# The chart's identities and the one bucket each may touch (values.yaml buckets).
IDENTITY_BUCKETS = {"pipeline": "raw", "publisher": "ota", "mlflow": "mlflow"}
ROOT_SECRET = "edgeops-minio"  # release `edgeops`: the chart's generated root credentials
KFP_NAMESPACE = CLUSTER.kfp_namespace
RELEASE_NAMESPACE = "edgeops-release"  # the release signer's namespace (helm/edgeops/templates/wiring)
# What only the release signer and the heartbeat may hold, never a KFP task.
SIGNING_SECRETS = {CLUSTER.release_keys_secret, CLUSTER.publisher_s3_secret}


# --- the pipeline tasks ---------------------------------------------------------------------------


def test_every_stage_has_wiring_and_no_task_gets_keys_or_the_publisher_identity() -> None:
    assert list(TASK_S3_IDENTITY) == STAGES
    wiring = {stage: task_secrets(stage, CLUSTER) for stage in STAGES}
    for stage, secrets in wiring.items():
        named = {value for value in dataclasses.asdict(secrets).values() if value}
        assert not named & SIGNING_SECRETS, f"{stage} gets {named & SIGNING_SECRETS}: only the release signer signs"
    assert wiring["ingest"].s3_secret == CLUSTER.s3_secret
    assert all(wiring[stage].s3_secret is None for stage in STAGES if stage != "ingest")
    assert CLUSTER.s3_secret not in SIGNING_SECRETS
    with pytest.raises(EdgeopsError, match="no cluster wiring"):
        task_secrets("deploy", CLUSTER)  # a new stage must be classified, not given a default


def check_least_privilege(executors: dict[str, dict[str, Any]]) -> None:
    """Assertions on the kubernetes platform spec of a compiled cluster pipeline, one executor per stage."""
    assert {name.removeprefix("exec-") for name in executors} == set(STAGES)
    for name, config in executors.items():
        stage = name.removeprefix("exec-")
        env_secrets = {secret["secretName"] for secret in config.get("secretAsEnv", [])}
        expected_s3 = {CLUSTER.s3_secret} if stage == "ingest" else set()
        assert env_secrets == expected_s3, f"{stage} gets S3 credentials {env_secrets}, expected {expected_s3}"
        assert not config.get("secretAsVolume"), f"{stage} mounts {config['secretAsVolume']}"
        named = set(re.findall(r"edgeops-[a-z0-9-]+", json.dumps(config)))
        assert not named & SIGNING_SECRETS, f"{stage} names {named & SIGNING_SECRETS}"
        for secret in config.get("secretAsEnv", []):
            assert {item["envVar"] for item in secret["keyToEnv"]} == {"EDGEOPS_S3_ACCESS_KEY", "EDGEOPS_S3_SECRET_KEY"}
        settings = {
            item["envVar"]
            for source in config.get("configMapAsEnv", [])
            if source["configMapName"] == CLUSTER.settings_config_map
            for item in source["keyToEnv"]
        }
        assert "EDGEOPS_RELEASE__SIGNED_BY" in settings, f"{stage} does not read who signs releases"
        assert "EDGEOPS_RELEASE__KEYS_DIR" not in settings, stage


def compiled_executors(pipeline: Any, tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Each executor of the compiled pipeline and its kubernetes platform config ({} when it has none)."""
    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(pipeline, str(package))
    spec, *platform = [document for document in yaml.safe_load_all(package.read_text()) if document]
    configs = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    return {name: configs.get(name, {}) for name in spec["deploymentSpec"]["executors"]}


def test_cluster_pipeline_mounts_no_keys_and_no_publisher_identity(tmp_path: Path) -> None:
    """The real cluster pipeline (pipelines/edgeops_pipeline.py), compiled afresh, and the committed package."""
    from pipelines.edgeops_pipeline import edgeops_pipeline_cluster

    check_least_privilege(compiled_executors(edgeops_pipeline_cluster, tmp_path))
    committed = (REPO / "pipelines" / "edgeops_cluster.yaml").read_text()
    for secret in SIGNING_SECRETS:
        assert secret not in committed, f"pipelines/edgeops_cluster.yaml names {secret}"


def test_kfp_install_copies_publisher_to_the_release_namespace_only(tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nkfp-install:", 1)[1].split("\n\n", 1)[0]
    assert "root-user" not in recipe and "root-password" not in recipe, (
        "make kfp-install copies MinIO's root credentials into the Secret pipeline tasks mount; "
        "copy the chart's per-workload identities (edgeops-minio-pipeline, edgeops-minio-publisher) instead"
    )
    calls = run_recipe("kfp-install", tmp_path).calls
    assert created_secrets(calls) == {
        (KFP_NAMESPACE, CLUSTER.s3_secret),
        (RELEASE_NAMESPACE, CLUSTER.publisher_s3_secret),
    }
    read = read_secrets(calls)
    assert read == {("edgeops", "edgeops-minio-pipeline"), ("edgeops", "edgeops-minio-publisher")}, (
        "only the per-workload identities"
    )


def test_release_keys_secret_goes_to_the_release_namespace_with_online_keys_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    online = ["root.json", "1.root.json", "targets-0123456789abcdef.pem", "snapshot.pem", "timestamp.pem"]
    for name in [*online, "root.pem", "root-0123456789abcdef.pem", "notes.txt"]:
        (keys / name).write_text("x")
    calls = run_recipe("release-keys-secret", tmp_path, f"KEYS_DIR={keys}").calls
    assert created_secrets(calls) == {(RELEASE_NAMESPACE, CLUSTER.release_keys_secret)}
    (create,) = [call for call in calls if "create" in call]
    files = {argument.split("=", 1)[1] for argument in create if argument.startswith("--from-file=")}
    assert {Path(file).name for file in files} == set(online)


# --- the wiring around KFP, as the chart renders it for `make kfp-install`: signer, heartbeat, RBAC ----------


@pytest.fixture(scope="module")
def wiring() -> list[dict[str, Any]]:
    return helm_template(sets=["wiring.enabled=true"], show_only=WIRING)


RELEASE_JOBS = {
    "edgeops-release-signer": ["edgeops", "release", "sign-requests"],
    "edgeops-release-heartbeat": ["edgeops", "release", "heartbeat", "--all"],
}


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


@pytest.mark.parametrize("name", RELEASE_JOBS)
def test_release_cronjobs_hold_the_keys_and_publisher_in_their_own_namespace(
    wiring: list[dict[str, Any]], name: str
) -> None:
    job = by_kind(wiring, "CronJob")[name]
    assert job["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["command"] == RELEASE_JOBS[name]
    secret_volumes = [volume for volume in spec["volumes"] if "secret" in volume]
    assert [volume["secret"]["secretName"] for volume in secret_volumes] == [CLUSTER.release_keys_secret]
    assert not any("projected" in volume for volume in spec["volumes"])
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    keys = mounts[secret_volumes[0]["name"]]
    assert keys["mountPath"] == CLUSTER.release_keys_mount and keys.get("readOnly") is True
    publisher = CLUSTER.publisher_s3_secret
    assert secret_refs(spec) == {(publisher, "access_key"), (publisher, "secret_key")}
    # Hardening: no API token, non-root, read-only root filesystem, no capabilities, bounded resources.
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("serviceAccountName") not in (None, "default", "pipeline-runner")
    assert spec["securityContext"]["runAsNonRoot"] is True
    hardening = container["securityContext"]
    assert hardening["readOnlyRootFilesystem"] is True and hardening["allowPrivilegeEscalation"] is False
    assert hardening["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    tmp = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
    assert env["HOME"] == "/tmp" and {mounts[name]["mountPath"] for name in tmp & mounts.keys()} == {"/tmp"}
    # Its settings come from a ConfigMap in its own namespace that points at the mounted keys.
    (source,) = container["envFrom"]
    settings = [
        obj
        for obj in wiring
        if obj["kind"] == "ConfigMap"
        and obj["metadata"]["name"] == source["configMapRef"]["name"]
        and obj["metadata"]["namespace"] == RELEASE_NAMESPACE
    ]
    assert settings, f"{name} reads ConfigMap {source['configMapRef']['name']}, not in {RELEASE_NAMESPACE}"
    assert settings[0]["data"]["EDGEOPS_RELEASE__KEYS_DIR"] == CLUSTER.release_keys_mount


def test_signer_runs_every_minute_with_room_for_torch_and_executorch(wiring: list[dict[str, Any]]) -> None:
    signer = by_kind(wiring, "CronJob")["edgeops-release-signer"]
    assert signer["spec"]["schedule"] == "* * * * *"
    (container,) = pod_spec(signer)["containers"]
    assert mebibytes(container["resources"]["requests"]["memory"]) >= 1024
    assert mebibytes(container["resources"]["limits"]["memory"]) >= 2048


def test_the_only_keys_holders_are_the_release_cronjobs(wiring: list[dict[str, Any]]) -> None:
    holders = {
        (obj["metadata"]["namespace"], obj["metadata"]["name"])
        for obj in wiring
        if obj["kind"] in ("CronJob", "Job", "Deployment", "StatefulSet", "DaemonSet", "Pod")
        and CLUSTER.release_keys_secret in json.dumps(pod_spec(obj))
    }
    assert holders == {(RELEASE_NAMESPACE, name) for name in RELEASE_JOBS}


def test_nothing_in_kubeflow_names_the_keys_or_the_publisher(wiring: list[dict[str, Any]]) -> None:
    in_kubeflow = [obj for obj in wiring if obj["metadata"].get("namespace") == KFP_NAMESPACE]
    assert in_kubeflow, "the wiring puts nothing in kubeflow: is the settings ConfigMap gone?"
    for obj in in_kubeflow:
        text = json.dumps(obj)
        for secret in SIGNING_SECRETS:
            assert secret not in text, f"{obj['kind']}/{obj['metadata']['name']} in {KFP_NAMESPACE} names {secret}"


def test_pipeline_settings_make_promote_request_releases(wiring: list[dict[str, Any]]) -> None:
    from pipelines.edgeops_pipeline import SETTINGS_KEYS

    (settings,) = [
        obj
        for obj in wiring
        if obj["kind"] == "ConfigMap"
        and obj["metadata"]["name"] == CLUSTER.settings_config_map
        and obj["metadata"]["namespace"] == KFP_NAMESPACE
    ]
    assert settings["data"]["EDGEOPS_RELEASE__SIGNED_BY"] == "signer"
    assert "EDGEOPS_RELEASE__KEYS_DIR" not in settings["data"]
    assert set(SETTINGS_KEYS) <= settings["data"].keys(), "a task would wait on a missing ConfigMap key"


def release_keys_policy(wiring: list[dict[str, Any]]) -> dict[str, Any]:
    """The admission policy's spec on the release-keys Secret, checked to deny and to match that Secret."""
    policies = by_kind(wiring, "ValidatingAdmissionPolicy")
    bindings = by_kind(wiring, "ValidatingAdmissionPolicyBinding")
    (name,) = policies
    spec = policies[name]["spec"]
    assert [binding["spec"] for binding in bindings.values()] == [{"policyName": name, "validationActions": ["Deny"]}]
    assert spec["failurePolicy"] == "Fail"
    # Every namespace: the Secret is refused outside edgeops-release (kubeflow above all).
    assert "namespaceSelector" not in spec["matchConstraints"] and "objectSelector" not in spec["matchConstraints"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["secrets"] and set(rule["operations"]) == {"CREATE", "UPDATE"}
    (condition,) = spec["matchConditions"]
    assert condition["expression"] == f"object.metadata.name == '{CLUSTER.release_keys_secret}'"
    return spec


def release_keys_rule(wiring: list[dict[str, Any]]) -> re.Pattern[str]:
    """The allow-list of key names the admission policy enforces on the release-keys Secret."""
    spec = release_keys_policy(wiring)
    assert "object.data" in spec["variables"][0]["expression"]
    assert "object.stringData" in spec["variables"][0]["expression"]
    (validation,) = [v for v in spec["validations"] if "variables.keys" in v["expression"]]
    expression = " ".join(validation["expression"].split())
    assert expression.startswith("variables.keys.all(k, k.matches(")
    (pattern,) = re.findall(r"k\.matches\('([^']+)'\)", expression)
    return re.compile(pattern)


def test_release_keys_secret_is_refused_outside_the_release_namespace(wiring: list[dict[str, Any]]) -> None:
    spec = release_keys_policy(wiring)
    expressions = [" ".join(v["expression"].split()) for v in spec["validations"]]
    assert f"request.namespace == '{RELEASE_NAMESPACE}'" in expressions
    assert len(expressions) == 2, expressions


def test_release_keys_secret_can_never_hold_the_root_key(wiring: list[dict[str, Any]]) -> None:
    allowed = release_keys_rule(wiring)
    online = ["targets.pem", "snapshot.pem", "timestamp.pem", "targets-0123456789abcdef.pem"]
    for key in [*online, "timestamp-fedcba9876543210.pem", "root.json", "1.root.json", "12.root.json"]:
        assert allowed.search(key), key
    for key in ["root.pem", "root-0123456789abcdef.pem", "root.json.pem", "id_ed25519", "targets.pem.bak", "x.pem"]:
        assert not allowed.search(key), key


@pytest.mark.parametrize("name", RELEASE_JOBS)
def test_release_service_accounts_have_no_token_and_no_binding(wiring: list[dict[str, Any]], name: str) -> None:
    spec = pod_spec(by_kind(wiring, "CronJob")[name])
    (account,) = [
        obj
        for obj in wiring
        if obj["kind"] == "ServiceAccount"
        and obj["metadata"]["name"] == spec["serviceAccountName"]
        and obj["metadata"]["namespace"] == RELEASE_NAMESPACE
    ]
    assert account.get("automountServiceAccountToken") is False
    rbac_bindings = [obj for obj in wiring if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bound = {subject["name"] for binding in rbac_bindings for subject in binding.get("subjects", [])}
    assert spec["serviceAccountName"] not in bound


def grants_secrets(rule: dict[str, Any]) -> bool:
    return bool({"secrets", "*"} & set(rule.get("resources", []))) and bool(set(rule.get("apiGroups", [])) & {"", "*"})


def test_wiring_grants_the_pipeline_runner_no_secret_reads(wiring: list[dict[str, Any]]) -> None:
    roles = {(obj["kind"], obj["metadata"]["name"]): obj for obj in wiring if obj["kind"] in ("Role", "ClusterRole")}
    for binding in (obj for obj in wiring if obj["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        role = roles.get((binding["roleRef"]["kind"], binding["roleRef"]["name"]), {})
        for rule in role.get("rules", []):
            assert not grants_secrets(rule), f"{binding['metadata']['name']} grants {rule}"
    for role in roles.values():
        assert not any(grants_secrets(rule) for rule in role.get("rules", [])), f"{role['metadata']['name']}"


# Upstream's Role as of KFP 2.17.0 (manifests/kustomize/base/pipeline/pipeline-runner-role.yaml), its
# first rules: the offline stand-in the platform kustomization's patches are applied to.
UPSTREAM_PIPELINE_RUNNER = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "pipeline-runner"},
    "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "watch", "list"]},
        {"apiGroups": [""], "resources": ["pods", "pods/exec", "pods/log", "services"], "verbs": ["*"]},
    ],
}


def test_upstream_pipeline_runner_may_read_only_kfps_artifact_secret(tmp_path: Path) -> None:
    platform = yaml.safe_load(
        (REPO / "manifests" / "kubeflow-pipelines" / "platform" / "kustomization.yaml").read_text()
    )
    assert platform.get("patches"), "upstream's pipeline-runner Role may `get` every Secret in the namespace"
    (tmp_path / "upstream.yaml").write_text(yaml.safe_dump(UPSTREAM_PIPELINE_RUNNER))
    local = {**platform, "resources": ["upstream.yaml"], "namespace": "kubeflow"}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(local))
    (role,) = [obj for obj in kustomize(tmp_path) if obj["kind"] == "Role"]
    secret_rules = [rule for rule in role["rules"] if grants_secrets(rule)]
    assert secret_rules, "the patch dropped KFP's own artifact Secret, which its launcher needs"
    for rule in secret_rules:
        assert rule.get("resourceNames") == [KFP_ARTIFACT_SECRET], rule
        assert set(rule["verbs"]) == {"get"}, rule


# --- the chart: S3 identities ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> list[dict[str, Any]]:
    return helm_template()


def test_only_minio_and_the_bucket_job_hold_the_root_user(chart: list[dict[str, Any]]) -> None:
    holders = {
        f"{obj['kind']}/{obj['metadata']['name']}"
        for obj in chart
        if obj["kind"] in ("StatefulSet", "Deployment", "Job", "Pod", "CronJob")
        and any(name == ROOT_SECRET for name, _ in secret_refs(pod_spec(obj)))
    }
    assert holders == {"StatefulSet/edgeops-minio", "Job/edgeops-minio-buckets"}


def test_mlflow_uses_its_own_identity(chart: list[dict[str, Any]]) -> None:
    mlflow = by_kind(chart, "Deployment")["edgeops-mlflow"]
    refs = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for container in pod_spec(mlflow)["containers"]
        for env in container.get("env", [])
        if env["name"].startswith("AWS_") and "valueFrom" in env
    }
    assert {ref["name"] for ref in refs.values()} == {"edgeops-minio-mlflow"}
    assert {ref["key"] for ref in refs.values()} == {"access-key", "secret-key"}


def test_each_identity_is_generated_and_limited_to_its_bucket(chart: list[dict[str, Any]]) -> None:
    secrets = by_kind(chart, "Secret")
    for identity in IDENTITY_BUCKETS:
        assert set(secrets[f"edgeops-minio-{identity}"]["data"]) == {"access-key", "secret-key"}
    policies = by_kind(chart, "ConfigMap")["edgeops-minio-policies"]["data"]
    assert set(policies) == {f"{identity}.json" for identity in IDENTITY_BUCKETS}
    for identity, bucket in IDENTITY_BUCKETS.items():
        policy = json.loads(policies[f"{identity}.json"])
        resources = {resource for statement in policy["Statement"] for resource in statement["Resource"]}
        actions = {action for statement in policy["Statement"] for action in statement["Action"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, identity
        assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
        assert all(action.startswith("s3:") and "*" not in action for action in actions), actions
        assert not {action for action in actions if "Bucket" in action and action.startswith(("s3:Put", "s3:Delete"))}
        assert ("s3:DeleteObject" in actions) == (identity == "mlflow"), identity


def test_bucket_job_creates_the_users_and_attaches_the_policies(chart: list[dict[str, Any]]) -> None:
    job = by_kind(chart, "Job")["edgeops-minio-buckets"]
    spec = pod_spec(job)
    script = spec["containers"][0]["command"][-1]
    for command in ("mc admin policy create", "mc admin user add", "mc admin policy attach"):
        assert command in script
    for identity in IDENTITY_BUCKETS:
        assert f"identity {identity} " in script
        assert (f"edgeops-minio-{identity}", "secret-key") in secret_refs(spec)
    assert {"name": "policies", "configMap": {"name": "edgeops-minio-policies"}} in spec["volumes"]


def test_production_values_bring_their_own_identities() -> None:
    objects = helm_template(REPO / "helm" / "values-production.yaml")
    assert not [name for name in by_kind(objects, "Secret") if name.startswith("edgeops-minio-")]
    mlflow = pod_spec(by_kind(objects, "Deployment")["edgeops-mlflow"])
    assert {name for name, _ in secret_refs(mlflow)} == {"edgeops-mysql-credentials", "edgeops-s3-mlflow-credentials"}
