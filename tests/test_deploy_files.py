"""The deployment files agree with the code: the Dockerfile and compose.yaml run the Procfile's
commands and pass only settings that exist and are documented; installs are pinned by
constraints.txt within pyproject's ranges; the container health check for workers and
reconcilers reads real heartbeats.

No container engine runs here, so the Dockerfile and compose file are checked as text and YAML.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from core import healthcheck, state
from core.settings import SOURCE_NAMES, Settings

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "reconciler")
#: Variables of the Python and pip tooling, not of vector-sync.
TOOLING_ENV = re.compile(r"PATH|PYTHON[A-Z_]*|PIP_[A-Z_]+")


# --- what the files say -----------------------------------------------------------------------


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (continuations joined), grouped by ``FROM`` stage."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def env_names(values: list[str]) -> list[str]:
    """Names set by ``ENV a=1 b=2`` lines."""
    return [pair.split("=", 1)[0] for value in values for pair in shlex.split(value)]


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def settings_read() -> set[str]:
    """Every variable ``Settings.from_environ`` looks up."""

    class Recorder(dict):
        def get(self, key, default=None):
            seen.add(key)
            return super().get(key, default)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

    seen: set[str] = set()
    Settings.from_environ(Recorder())
    return seen


def documented_settings() -> set[str]:
    """The variables docs/configuration.md lists in its tables (``{SOURCE}_…`` expanded)."""
    names: set[str] = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        for name in re.findall(r"`([A-Z{][A-Z0-9_{}]+)`", line.split("|")[1]):
            if "{SOURCE}" in name:
                names |= {name.replace("{SOURCE}", s.upper()) for s in SOURCE_NAMES}
            else:
                names.add(name)
    return names


def assert_real_settings(names: list[str], where: str) -> None:
    """Each name (or, for ``NAME_FILE``, its NAME) is read by Settings and documented."""
    read, documented = settings_read(), documented_settings()
    for name in names:
        setting = name.removesuffix("_FILE")
        assert setting in read, f"{where}: {name} is not a setting core/settings.py reads"
        assert setting in documented, f"{where}: {name} is not in docs/configuration.md"


def test_settings_read_and_documented_are_found():
    """The helpers above see what they must (else the checks below would pass vacuously)."""
    assert {"DATABASE_URL", "PORT", "GITHUB_TOKEN", "SLACK_POLL_INTERVAL"} <= settings_read()
    assert {"DATABASE_URL", "PORT", "GITHUB_TOKEN", "SLACK_POLL_INTERVAL"} <= documented_settings()
    assert "NOT_A_SETTING" not in settings_read() | documented_settings()


# --- Dockerfile -------------------------------------------------------------------------------


class TestDockerfile:
    def test_default_command_is_the_procfile_web(self):
        final = dockerfile_stages()[-1]
        (cmd,) = instructions(final, "CMD")
        assert json.loads(cmd) == ["sh", "-c", "exec " + procfile()["web"]]

    def test_exposes_the_procfile_port(self):
        final = dockerfile_stages()[-1]
        default_port = re.search(r"\$\{PORT:-(\d+)\}", procfile()["web"]).group(1)
        assert instructions(final, "EXPOSE") == [default_port]
        envs = dict(pair.split("=", 1) for value in instructions(final, "ENV") for pair in shlex.split(value))
        assert envs.get("PORT", default_port) == default_port

    def test_runs_as_a_user_it_creates_not_root(self):
        final = dockerfile_stages()[-1]
        users = instructions(final, "USER")
        assert users, "no USER: the processes would run as root"
        assert users[-1] not in ("root", "0", "0:0")
        assert any(f" {users[-1]}" in run and "useradd" in run for run in instructions(final, "RUN"))
        words = [w for w, _ in final]
        assert words.index("USER") < words.index("CMD")

    def test_installs_runtime_dependencies_pinned_and_not_the_test_extra(self):
        installs = [run for stage in dockerfile_stages() for run in instructions(stage, "RUN")
                    for run in run.split("&&") if "pip install" in run]
        assert installs
        for command in installs:
            assert "-c constraints.txt" in command, command
            assert "[" not in command, f"installs an extra: {command}"
        assert any(command.rstrip().endswith(" .") for command in installs)
        copied = " ".join(instructions(dockerfile_stages()[0], "COPY"))
        assert "constraints.txt" in copied

    def test_copies_every_package(self):
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
        copied = [rest.split()[0] for rest in instructions(dockerfile_stages()[0], "COPY")]
        for package in packages:
            assert package in copied, f"the image lacks the {package} package"
        ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        for path in copied:
            assert path not in ignored, f".dockerignore drops {path}, which the Dockerfile copies"
        assert {".git", ".venv", "tests"} <= set(ignored)

    def test_python_is_the_one_constraints_were_resolved_on(self):
        header = (ROOT / "constraints.txt").read_text()
        locked = re.search(r"on Python (\d+\.\d+)", header).group(1)
        for stage in dockerfile_stages():
            (base,) = instructions(stage, "FROM")
            assert base.startswith(f"python:{locked}-"), base

    def test_sets_only_real_settings(self):
        names = [n for stage in dockerfile_stages() for n in env_names(instructions(stage, "ENV"))]
        assert_real_settings([n for n in names if not TOOLING_ENV.fullmatch(n)], "Dockerfile")


# --- compose.yaml -----------------------------------------------------------------------------


class TestCompose:
    def test_services_are_the_three_processes_with_postgres_and_redis(self):
        services = compose()["services"]
        assert set(services) == {"postgres", "redis", *APP_SERVICES}
        assert services["postgres"]["image"].startswith("pgvector/pgvector:")
        assert services["redis"]["image"].startswith("redis:")
        assert "--appendonly" in services["redis"]["command"]  # acknowledged webhooks persist

    def test_commands_are_the_procfiles(self):
        services = compose()["services"]
        commands = procfile()
        assert "command" not in services["web"]  # the image's CMD, the Procfile's web (above)
        for kind in ("worker", "reconciler"):
            assert services[kind]["command"] == shlex.split(commands[kind])
        assert services["migrate"]["command"] == ["vector-sync", "migrate"]
        assert services["migrate"]["restart"] == "no"

    def test_app_services_share_one_image(self):
        services = compose()["services"]
        assert len({services[s]["image"] for s in APP_SERVICES}) == 1
        assert all(services[s]["build"] == "." for s in APP_SERVICES)

    def test_settings_passed_are_real_and_secrets_come_from_files(self):
        doc = compose()
        for name in APP_SERVICES:
            service = doc["services"][name]
            env = service["environment"]
            assert_real_settings(list(env), f"compose.yaml {name}")
            for var in ("DATABASE_URL", "ADMIN_API_KEY"):
                assert var not in env  # passwords are secrets, not plain environment
                path = env[f"{var}_FILE"]
                secret = path.removeprefix("/run/secrets/")
                assert path.startswith("/run/secrets/") and secret in service["secrets"]
                assert secret in doc["secrets"]
            host = env["REDIS_URL"].split("://", 1)[1].split(":", 1)[0]
            assert host in doc["services"]
        postgres = doc["services"]["postgres"]
        assert postgres["environment"]["POSTGRES_PASSWORD_FILE"].removeprefix("/run/secrets/") in postgres["secrets"]

    def test_example_env_file_names_only_real_settings(self):
        text = (ROOT / "deploy" / "vector-sync.env.example").read_text()
        names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.MULTILINE)
        assert len(names) > 10
        assert_real_settings(names, "deploy/vector-sync.env.example")
        env_file = compose()["services"]["worker"]["env_file"]
        assert env_file == [{"path": "./vector-sync.env", "required": False}]

    def test_health_checks(self):
        services = compose()["services"]
        web = " ".join(services["web"]["healthcheck"]["test"])
        assert "/readyz" in web
        for kind in ("worker", "reconciler"):
            test = services[kind]["healthcheck"]["test"]
            assert test == ["CMD", "python", "-m", "core.healthcheck", kind]
            assert kind in healthcheck.KINDS
        for name in ("postgres", "redis"):
            assert services[name]["healthcheck"]["test"]

    def test_workers_and_reconcilers_scale_and_wait_for_migrations(self):
        services = compose()["services"]
        for kind in ("worker", "reconciler"):
            assert services[kind]["deploy"]["replicas"] >= 2
        for name in ("web", "worker", "reconciler"):
            assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
            assert "ports" not in services[name] or name == "web"
        assert services["web"]["ports"] == ["127.0.0.1:8080:8080"]  # loopback: a TLS proxy fronts it


class TestComposeProcessesRun:
    """Each app service's command, environment and health check, run here as compose would run
    them in the container (secret files in a temporary folder, Redis and Postgres the test
    servers): the process starts from that environment and its health check turns healthy."""

    @pytest.mark.parametrize("kind", ["web", "worker", "reconciler"])
    def test_service_starts_and_its_health_check_passes(self, kind, infra, services, tmp_path):
        import os
        import signal

        from tests.conftest import free_port, wait_for

        service = compose()["services"][kind]
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HEARTBEAT_INTERVAL": "1",
               "EMBEDDING_DIMENSIONS": "256", "SANDBOX": "off", "PORT": str(free_port())}
        values = {"DATABASE_URL_FILE": infra["DATABASE_URL"], "ADMIN_API_KEY_FILE": "compose-test-key",
                  "STATUS_API_KEY_FILE": "compose-status-key"}
        for name, value in service["environment"].items():
            if name.endswith("_FILE"):
                path = tmp_path / Path(value).name
                path.write_text(values[name] + "\n")
                value = str(path)
            env[name] = str(value)
        env["REDIS_URL"] = infra["REDIS_URL"]  # compose's redis://redis:6379/0 is its own network
        env["VECTOR_SYNC_HOME"] = str(tmp_path / "home")

        def local(command: list[str]) -> list[str]:  # the container's python is this venv's
            return [sys.executable if word == "python" else word for word in command]

        if kind == "web":
            (cmd,) = instructions(dockerfile_stages()[-1], "CMD")
            command = local(json.loads(cmd))
            command[-1] = command[-1].replace("uvicorn ", f"{sys.executable} -m uvicorn ", 1)
        else:
            command = local(service["command"])
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        log = (tmp_path / "process.log").open("wb")
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            def healthy() -> bool:
                assert process.poll() is None, (tmp_path / "process.log").read_text()[-2000:]
                check = subprocess.run(local(test[1:]), env=env, cwd=ROOT, capture_output=True,
                                       timeout=60, check=False)
                return check.returncode == 0

            wait_for(healthy, timeout=120, interval=1)
            process.send_signal(signal.SIGTERM)
            # A clean stop; uvicorn re-raises the SIGTERM after its graceful shutdown.
            code = process.wait(60)
            assert code in (0, -signal.SIGTERM), (tmp_path / "process.log").read_text()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)
            log.close()


# --- deploy/kubernetes.yaml -------------------------------------------------------------------


def kubernetes() -> dict[tuple[str, str], dict]:
    docs = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


class TestKubernetes:
    def containers(self) -> dict[str, dict]:
        found = {}
        for (kind, name), doc in kubernetes().items():
            if kind == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                (container,) = pod["containers"]
                found[name.removeprefix("vector-sync-")] = {**container, "_pod": pod}
        return found

    def test_one_deployment_per_procfile_process_running_its_command(self):
        containers = self.containers()
        assert set(containers) == set(procfile())
        assert "command" not in containers["web"]  # the image's CMD, the Procfile's web
        for kind in ("worker", "reconciler"):
            assert containers[kind]["command"] == shlex.split(procfile()[kind])
        assert len({c["image"] for c in containers.values()}) == 1

    def test_settings_are_real_and_secrets_are_mounted_files(self):
        config = kubernetes()[("ConfigMap", "vector-sync")]["data"]
        assert_real_settings(list(config), "deploy/kubernetes.yaml")
        files = {name: path for name, path in config.items() if name.endswith("_FILE")}
        assert {"DATABASE_URL_FILE", "REDIS_URL_FILE", "ADMIN_API_KEY_FILE"} <= set(files)
        for kind, container in self.containers().items():
            assert container["envFrom"] == [{"configMapRef": {"name": "vector-sync"}}]
            (mount,) = container["volumeMounts"]
            (volume,) = [v for v in container["_pod"]["volumes"] if v["name"] == mount["name"]]
            assert volume["secret"]["secretName"] == "vector-sync"
            for path in files.values():
                assert path.rsplit("/", 1)[0] == mount["mountPath"], (kind, path)
        create = (ROOT / "deploy" / "kubernetes.yaml").read_text()
        for path in files.values():  # the secret's keys are the ones the example creates
            assert f"--from-literal={path.rsplit('/', 1)[1]}=" in create

    def test_runs_as_the_images_user_with_probes(self):
        uid = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1)
        port = int(re.search(r"\$\{PORT:-(\d+)\}", procfile()["web"]).group(1))
        containers = self.containers()
        for kind, container in containers.items():
            security = container["_pod"]["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["runAsUser"] == security["fsGroup"] == int(uid)  # fsGroup: secrets readable
        web = containers["web"]
        assert web["ports"] == [{"name": "http", "containerPort": port}]
        assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind in ("worker", "reconciler"):
            probe = containers[kind]["livenessProbe"]["exec"]["command"]
            assert probe == ["python", "-m", "core.healthcheck", kind]
        service = kubernetes()[("Service", "vector-sync-web")]["spec"]
        assert service["selector"] == {"app": "vector-sync", "process": "web"}
        assert service["ports"][0]["targetPort"] == "http"


# --- reproducible installs --------------------------------------------------------------------


def pins() -> dict[str, Version]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a pin"
            found[canonicalize_name(name)] = Version(version)
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


class TestConstraints:
    def test_every_runtime_dependency_is_pinned_within_its_range(self):
        locked = pins()
        for spec in pyproject()["project"]["dependencies"]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name in locked, f"{req.name} is not pinned in constraints.txt (run make lock)"
            assert req.specifier.contains(locked[name], prereleases=True), (
                f"constraints.txt pins {req.name}=={locked[name]}, outside pyproject's {req.specifier}")

    def test_every_third_party_import_is_a_declared_runtime_dependency(self):
        """What the product's packages import is declared in pyproject's dependencies (or an
        extra of one), not merely brought in by another package (psutil was, by pgserver)."""
        import ast

        own = {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
        imported: dict[str, str] = {}
        for package in own:
            for path in (ROOT / package).rglob("*.py"):
                for node in ast.walk(ast.parse(path.read_text(), str(path))):
                    if isinstance(node, ast.Import):
                        names = [alias.name for alias in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names = [node.module]
                    else:
                        continue
                    for name in names:
                        top = name.split(".", 1)[0]
                        if top not in sys.stdlib_module_names and top not in own:
                            imported.setdefault(top, str(path.relative_to(ROOT)))
        declared = set()
        for spec in pyproject()["project"]["dependencies"]:
            req = Requirement(spec)
            declared.add(canonicalize_name(req.name))
            for sub in importlib.metadata.requires(req.name) or []:  # what its extras add
                child = Requirement(sub)
                if child.marker and any(child.marker.evaluate({"extra": e}) for e in req.extras):
                    declared.add(canonicalize_name(child.name))
        providers = importlib.metadata.packages_distributions()
        assert {"psutil", "starlette", "pinecone"} <= set(imported)
        for module, where in sorted(imported.items()):
            dists = {canonicalize_name(d) for d in providers.get(module, [])}
            assert dists, f"{where} imports {module}, which no installed distribution provides"
            assert dists & declared, f"{where} imports {module} ({', '.join(dists)}), not declared in pyproject.toml"

    def test_every_runtime_dependency_has_an_upper_bound(self):
        for spec in pyproject()["project"]["dependencies"]:
            assert any(s.operator in ("<", "<=", "~=", "==") for s in Requirement(spec).specifier), spec

    def test_what_the_runtime_install_pulls_in_is_pinned(self):
        """The whole closure of the runtime dependencies (as installed here), not only the
        direct ones: otherwise a fresh install could still resolve a new transitive version."""
        locked = pins()
        todo = [Requirement(spec) for spec in pyproject()["project"]["dependencies"]]
        seen: set[str] = set()
        while todo:
            req = todo.pop()
            name = canonicalize_name(req.name)
            key = f"{name}[{','.join(sorted(req.extras))}]"
            if key in seen:
                continue
            seen.add(key)
            assert name in locked, f"{req.name} (pulled in by the runtime install) is not pinned"
            for sub in importlib.metadata.requires(req.name) or []:
                child = Requirement(sub)
                if child.marker and not any(child.marker.evaluate({"extra": e}) for e in [*req.extras, ""]):
                    continue
                todo.append(child)
        assert len(seen) > len(pyproject()["project"]["dependencies"])

    def test_pinned_test_dependencies_are_within_their_ranges(self):
        """Test dependencies added since the last ``make lock`` may be missing (constraints
        only constrain what they list); those pinned must fit."""
        locked = pins()
        for spec in pyproject()["project"]["optional-dependencies"]["test"]:
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            if name in locked:
                assert req.specifier.contains(locked[name], prereleases=True), (req.name, locked[name])

    def test_installed_versions_are_the_pinned_ones(self):
        """This venv (made by make) has what constraints.txt says, for every pinned package present."""
        mismatched = {}
        for name, version in pins().items():
            try:
                installed = Version(importlib.metadata.version(name))
            except importlib.metadata.PackageNotFoundError:
                continue
            if installed != version and name != "pip":
                mismatched[name] = (str(installed), str(version))
        assert not mismatched

    def test_makefile_installs_use_the_constraints_and_split_run_from_test(self):
        make = (ROOT / "Makefile").read_text()
        pip_var = re.search(r"^PIP\s*:=\s*(.+)$", make, re.MULTILINE).group(1)
        assert "-c constraints.txt" in pip_var
        recipes = [line.strip() for line in make.splitlines() if line.startswith("\t")]
        installs = [line for line in recipes if "-m pip install" in line or line.startswith("$(PIP)")]
        for line in installs:
            if "$$tmp" in line:  # make lock: resolves from scratch on purpose
                continue
            assert line.startswith(("$(PIP)", "$(BENCH_PIP)")), f"an install without the constraints: {line}"
        # The benchmarks' venv: constraints.txt's pins but pgvector's, then constraints-bench.txt.
        bench_pip = re.search(r"^BENCH_PIP\s*:=\s*(.+)$", make, re.MULTILINE).group(1)
        assert "-c $(BENCH_VENV)/constraints.txt -c constraints-bench.txt" in bench_pip
        assert "grep -v '^pgvector==' constraints.txt > $(BENCH_VENV)/constraints.txt" in make
        rule = lambda target: re.search(rf"^{re.escape(target)}:(.*)$", make, re.MULTILINE).group(1)
        assert rule("run").split() == ["$(STAMP)"]
        assert rule("test").split() == ["$(TEST_STAMP)"]
        stamp_recipe = make.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
        assert "$(PIP) -e ." in stamp_recipe and "[test]" not in stamp_recipe
        assert "constraints.txt" in rule("$(STAMP)")
        assert "$(PIP) -e '.[test]'" in make.split("$(TEST_STAMP):", 1)[1].split("\n\n", 1)[0]
        assert re.search(r"^lock:", make, re.MULTILINE)
        assert "make lock" in (ROOT / "constraints.txt").read_text().splitlines()[2]
        assert "make test" in (ROOT / ".ci" / "run").read_text()

    def test_bench_pins_add_to_the_product_pins_and_replace_only_pgvector(self):
        """constraints-bench.txt is installed beside constraints.txt (less its pgvector line): a
        package pinned in both would make the bench venv's install impossible or drift."""
        def pins(name):
            lines = (ROOT / name).read_text().splitlines()
            return {l.split("==")[0].lower().replace("_", "-"): l.split("==")[1]
                    for l in lines if l and not l.startswith("#")}
        product, bench = pins("constraints.txt"), pins("constraints-bench.txt")
        assert set(product) & set(bench) == {"pgvector"}
        assert bench["pgvector"].startswith("0.3.")  # what langchain-postgres allows (< 0.4)


# --- the worker and reconciler health check ---------------------------------------------------


class TestHealthcheck:
    def test_healthy_only_with_a_recent_heartbeat_of_that_kind_on_this_host(self, services, infra, monkeypatch):
        monkeypatch.setenv("DATABASE_URL", infra["DATABASE_URL"])
        monkeypatch.setenv("HEARTBEAT_TIMEOUT", "60")
        assert healthcheck.main(["worker"]) == 1  # nothing has beaten yet
        state.beat(services.pool, "worker")
        with services.pool.connection() as conn:  # another host's reconciler does not count
            conn.execute("INSERT INTO heartbeats (process, kind, pid, host) VALUES ('r@elsewhere:1', 'reconciler', 1, 'elsewhere')")
        assert healthcheck.main(["worker"]) == 0
        assert healthcheck.main(["reconciler"]) == 1
        with services.pool.connection() as conn:
            conn.execute("UPDATE heartbeats SET beat_at = now() - interval '2 minutes' WHERE kind = 'worker'")
        assert healthcheck.main(["worker"]) == 1

    def test_runs_as_compose_runs_it(self, services, infra):
        state.beat(services.pool, "reconciler")
        env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": infra["DATABASE_URL"]}
        ok = subprocess.run([sys.executable, "-m", "core.healthcheck", "reconciler"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        dead = subprocess.run([sys.executable, "-m", "core.healthcheck", "worker"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert dead.returncode == 1
        assert "no worker heartbeat" in dead.stderr

    @pytest.mark.parametrize("argv", [[], ["cook"], ["worker", "extra"]])
    def test_bad_arguments_exit_2(self, argv):
        assert healthcheck.main(argv) == 2
