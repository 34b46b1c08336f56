"""The deployment files stay consistent with the code: compose file, Kubernetes manifests,
Dockerfile, CI script. Ports, environment variables and service names agree with Sluice's."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.app import build_app
from proxy.policy.loader import load_policy
from proxy.policy.model import Policy
from proxy.policy.store import PolicyStore
from proxy.settings import Settings
from tests.conftest import REPO


def test_compose_file_runs_sluice_with_the_policies() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    sluice = compose["services"]["sluice"]
    assert sluice["build"] == "."
    assert "8080:8080" in sluice["ports"]
    mounts = [volume.split(":") for volume in sluice["volumes"]]
    assert ["./policies", "/etc/sluice/policies", "ro"] in mounts
    # Every variable the default policies read is passed through to the container.
    wanted = set()
    for policy in (REPO / "policies").glob("*.yaml"):
        lines = [
            line for line in policy.read_text().splitlines() if not line.lstrip().startswith("#")
        ]
        wanted |= set(re.findall(r"\$\{([A-Z_]+)", "\n".join(lines)))
    assert wanted <= set(sluice["environment"])


def test_dockerfile_copies_what_exists_and_serves_the_mounted_policies() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, _target = line.split()[1:]
            assert all((REPO / source).exists() for source in sources), line
    assert '"--policies", "/etc/sluice/policies"' in dockerfile


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose on this machine; the file is checked by parsing it above",
)
def test_docker_compose_config_accepts_the_file() -> None:
    subprocess.run(["docker", "compose", "config", "-q"], cwd=REPO, check=True)
    subprocess.run(["docker", "compose", "--profile", "gpu", "config", "-q"], cwd=REPO, check=True)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme, flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command.strip() in ci.splitlines()
    # A fresh machine gets Debian's chromium for the browser tests (never a downloaded one).
    assert "apt-get install -y chromium" in test_command


def test_license_is_apache() -> None:
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_code_is_lint_and_type_clean() -> None:
    venv_bin = Path(sys.executable).parent
    ruff = subprocess.run(
        [str(venv_bin / "ruff"), "check", "proxy", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ruff.returncode == 0, ruff.stdout
    mypy = subprocess.run(
        [str(venv_bin / "mypy"), "--strict", "proxy"], cwd=REPO, capture_output=True, text=True
    )
    assert mypy.returncode == 0, mypy.stdout


# --- The self-hosted model and the deployments around it --------------------------------------

K8S = REPO / "deploy" / "kubernetes"
SERVED_MODEL = "meta-llama/Llama-3.3-70B-Instruct"


def _flag(command: list[str], name: str) -> str:
    """The value after `name` in an argument list (`--flag value`)."""
    return command[command.index(name) + 1]


def _shell_flags(script: str) -> list[str]:
    return script.split()


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return compose


def _default_policy() -> Policy:
    return load_policy(REPO / "policies", environ={}).policy


def _manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _sluice_routes() -> set[str]:
    app = build_app(PolicyStore.open(REPO / "policies"), Settings(redis_url=None))
    return {resource.canonical for resource in app.router.resources()}


def test_compose_runs_redis_and_sluice_uses_it() -> None:
    services = _compose()["services"]
    redis_url = urlsplit(services["sluice"]["environment"]["REDIS_URL"])
    assert redis_url.scheme == "redis" and redis_url.hostname == "redis"
    assert redis_url.port == 6379
    assert "redis" in services and services["redis"]["image"].startswith("redis:")
    assert "redis" in services["sluice"]["depends_on"]


def test_compose_gpu_profile_serves_the_sensitive_route_model_on_4_gpus() -> None:
    services = _compose()["services"]
    vllm = services["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    command = vllm["command"]
    policy = _default_policy()
    route = policy.classification.sensitive_route
    assert route is not None
    assert _flag(command, "--model") == policy.models[route].upstream_model == SERVED_MODEL
    assert _flag(command, "--tensor-parallel-size") == "4"
    assert "--enable-force-include-usage" in command
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["count"] == 4
    assert "gpu" in devices[0]["capabilities"]
    assert vllm["ipc"] == "host"
    assert "HF_TOKEN" in vllm["environment"]
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])
    port = _flag(command, "--port")
    assert f"localhost:{port}/health" in " ".join(vllm["healthcheck"]["test"])
    # Sluice's default pool address is this service on this port, with the OpenAI prefix.
    default = services["sluice"]["environment"]["VLLM_BASE_URLS"]
    assert default == f"${{VLLM_BASE_URLS:-http://vllm:{port}/v1}}"


def test_kubernetes_manifests_parse_and_kustomization_lists_them_all() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _manifests()}
    assert {
        ("Deployment", "sluice"),
        ("Service", "sluice"),
        ("HorizontalPodAutoscaler", "sluice"),
        ("PodDisruptionBudget", "sluice"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("LeaderWorkerSet", "vllm"),
    } <= kinds


def test_kubernetes_sluice_listens_where_its_service_and_probes_point() -> None:
    deployment = _find("Deployment", "sluice")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert _flag(container["args"], "--port") == "8080"
    policies = _flag(container["args"], "--policies")
    assert policies in {m["mountPath"] for m in container["volumeMounts"]}
    service = _find("Service", "sluice")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["ports"][0]["targetPort"] in ("http", 8080)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    routes = _sluice_routes()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] in ("http", 8080)
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    hpa = _find("HorizontalPodAutoscaler", "sluice")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sluice",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _find("PodDisruptionBudget", "sluice")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_kubernetes_sluice_env_names_redis_and_every_vllm_leader() -> None:
    container = _find("Deployment", "sluice")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert {"REDIS_URL", "VLLM_BASE_URLS", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(env)
    redis_url = urlsplit(env["REDIS_URL"]["value"])
    redis_service = _find("Service", "redis")
    assert redis_url.hostname == "redis" == redis_service["metadata"]["name"]
    assert redis_url.port == redis_service["spec"]["ports"][0]["port"] == 6379
    lws = _find("LeaderWorkerSet", "vllm")
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    port = int(_flag(_shell_flags(leader["command"][-1]), "--port"))
    wanted = [f"http://vllm-{i}.vllm:{port}/v1" for i in range(lws["spec"]["replicas"])]
    assert env["VLLM_BASE_URLS"]["value"].split(",") == wanted


def test_kubernetes_vllm_groups_are_tensor_by_pipeline_parallel_with_health_readiness() -> None:
    lws = _find("LeaderWorkerSet", "vllm")
    template = lws["spec"]["leaderWorkerTemplate"]
    size = template["size"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    flags = _shell_flags(leader["command"][-1])
    assert flags[flags.index("serve") + 1] == SERVED_MODEL
    tensor = int(_flag(flags, "--tensor-parallel-size"))
    pipeline = int(_flag(flags, "--pipeline-parallel-size"))
    # Tensor parallel inside a node, one pipeline stage per node of the group.
    assert pipeline == size
    for container in (leader, worker):
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == tensor
    assert "--enable-force-include-usage" in flags
    assert "$(LWS_GROUP_SIZE)" in leader["command"][-1]
    assert "$(LWS_LEADER_ADDRESS)" in worker["command"][-1]
    ports = {p["name"]: p["containerPort"] for p in leader["ports"]}
    assert ports["http"] == int(_flag(flags, "--port"))
    assert leader["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env_names = {e["name"] for c in (leader, worker) for e in c["env"]}
    assert env_names == {"HF_TOKEN"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
def test_kustomize_builds_the_manifests() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    )
    kinds = [d["kind"] for d in yaml.safe_load_all(built.stdout) if d]
    assert "LeaderWorkerSet" in kinds and "HorizontalPodAutoscaler" in kinds


def test_deploy_readme_sizes_the_model_and_explains_vllm_base_urls() -> None:
    readme = (REPO / "deploy" / "README.md").read_text()
    for needle in (
        "BF16",
        "FP8",
        "AWQ",
        "--max-model-len",
        "--gpu-memory-utilization",
        "--enable-prefix-caching",
        "--enable-force-include-usage",
        "VLLM_BASE_URLS",
        "LeaderWorkerSet",
    ):
        assert needle in readme, needle
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in readme.splitlines()
        if line.startswith("| ")
    ]
    # (setup, --tensor-parallel-size) of the sizing table.
    rows = {(row[0].split()[0], row[3].split()[0]) for row in cells if len(row) >= 6}
    assert {("BF16", "4"), ("FP8", "2"), ("FP8", "4"), ("AWQ", "2")} <= rows
    for path in K8S.glob("*.yaml"):
        assert f"kubernetes/{path.name}" in readme


def test_vllm_is_an_optional_extra_that_sluice_never_imports() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert any(requirement.startswith("vllm") for requirement in extras["vllm"])
    assert not any(r.startswith("vllm") for r in pyproject["project"]["dependencies"])
    for source in (REPO / "proxy").rglob("*.py"):
        text = source.read_text()
        assert not re.search(r"^\s*(import vllm|from vllm)", text, flags=re.M), source
