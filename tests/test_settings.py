"""Settings: defaults, one-line errors naming the variable, and the CLI's handling of them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core import state
from core.errors import SettingsError
from core.settings import Secret, Settings, parse_duration, parse_rate
from tests.conftest import BASE_ENV


class TestFromEnviron:
    def test_defaults_run_everything_embedded(self):
        settings = Settings.from_environ({})
        assert settings.embedded_postgres and settings.embedded_redis
        assert settings.port == 8080
        assert settings.configured_sources() == []
        assert settings.wants_sandbox()
        assert settings.source("slack").poll_interval == 900
        assert settings.source("fireflies").rate.per_second == pytest.approx(1.0)

    def test_a_source_is_enabled_by_its_credentials(self):
        settings = Settings.from_environ({"GITHUB_TOKEN": "t"})
        assert settings.configured_sources() == ["github"]
        assert not settings.wants_sandbox()

    @pytest.mark.parametrize(
        ("env", "needle"),
        [
            ({"PORT": "eighty"}, "PORT must be a whole number"),
            ({"PORT": "70000"}, "PORT must be between"),
            ({"SLACK_POLL_INTERVAL": "soon"}, "SLACK_POLL_INTERVAL must be a duration"),
            ({"TEMPO_RATE_LIMIT": "fast"}, "TEMPO_RATE_LIMIT must be a rate"),
            ({"DATABASE_URL": "mysql://u:secretpw@h/db"}, "DATABASE_URL must start with"),
            ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of"),
            ({"SANDBOX": "maybe"}, "SANDBOX must be auto, on or off"),
        ],
    )
    def test_bad_values_give_one_line_naming_the_variable(self, env, needle):
        with pytest.raises(SettingsError) as info:
            Settings.from_environ(env)
        message = str(info.value)
        assert needle in message
        assert "\n" not in message
        assert "secretpw" not in message  # URLs carry passwords: never echoed

    def test_durations_and_rates(self):
        assert parse_duration("15m") == 900
        assert parse_duration("1d") == 86400
        assert parse_duration("90") == 90
        assert parse_rate("50/day").per_second == pytest.approx(50 / 86400)
        assert parse_rate("5/s").limit == 5

    def test_secrets_do_not_show_in_reprs(self):
        settings = Settings.from_environ({"ADMIN_API_KEY": "hunter2", "OPENAI_API_KEY": "sk-live"})
        assert "hunter2" not in repr(settings)
        assert "sk-live" not in repr(settings)
        assert repr(Secret("x")) == "Secret('**********')"

    def test_source_credentials_do_not_show_in_reprs(self):
        settings = Settings.from_environ({"GITHUB_TOKEN": "ghp_live", "SLACK_SIGNING_SECRET": "sss"})
        assert "ghp_live" not in repr(settings)
        assert "sss" not in repr(settings.source("slack"))
        assert repr(Secret("x")) == "Secret('**********')"


#: Every secret setting, each readable from ``NAME_FILE`` (docs/configuration.md marks them).
SECRET_SETTINGS = (
    "DATABASE_URL", "REDIS_URL", "ADMIN_API_KEY", "OPENAI_API_KEY", "PINECONE_API_KEY",
    "ALERT_SLACK_WEBHOOK_URL", "JIRA_API_TOKEN", "JIRA_WEBHOOK_SECRET", "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET", "GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "NOTION_TOKEN",
    "NOTION_WEBHOOK_TOKEN", "TEMPO_API_TOKEN", "FIREFLIES_API_KEY", "FIREFLIES_WEBHOOK_SECRET",
    "STATUS_API_KEY",
)
#: Secrets a command reads itself, not Settings (``vector-sync mcp``'s key), through the same
#: ``read_secret_files``: tested in TestCommandLine.
COMMAND_SECRETS = ("VECTOR_SYNC_API_KEY", "VECTOR_SYNC_KEY")  # VECTOR_SYNC_KEY: tests/test_cli.py

#: A value each secret setting accepts (the URLs are checked for their scheme).
SAMPLE_VALUES = {
    "DATABASE_URL": "postgresql://vs:pw-from-file@db:5432/vs",
    "REDIS_URL": "redis://:pw-from-file@redis:6379/0",
    "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T/B/pw-from-file",
}


def read_back(settings: Settings, name: str) -> str:
    """Where ``Settings`` keeps the value of the variable ``name``."""
    fields = {"DATABASE_URL": "database_url", "REDIS_URL": "redis_url",
              "ADMIN_API_KEY": "admin_api_key", "OPENAI_API_KEY": "openai_api_key",
              "PINECONE_API_KEY": "pinecone_api_key",
              "ALERT_SLACK_WEBHOOK_URL": "alert_slack_webhook_url", "STATUS_API_KEY": "status_api_key"}
    if name in fields:
        return str(getattr(settings, fields[name]))
    source = name.split("_", 1)[0].lower()
    return settings.source(source).get(name)


class TestSecretFiles:
    """``NAME_FILE`` names a file holding the secret (container secrets, Kubernetes volumes)."""

    @pytest.mark.parametrize("name", SECRET_SETTINGS)
    def test_every_secret_can_come_from_a_file(self, name, tmp_path):
        value = SAMPLE_VALUES.get(name, "s3cr3t-from-file")
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `echo value > file` writes it
        settings = Settings.from_environ({f"{name}_FILE": str(path)})
        assert read_back(settings, name) == value

    def test_only_the_trailing_newline_is_stripped(self, tmp_path):
        path = tmp_path / "key"
        path.write_text("key with inner spaces\r\n")
        settings = Settings.from_environ({"ADMIN_API_KEY_FILE": str(path)})
        assert str(settings.admin_api_key) == "key with inner spaces"
        assert isinstance(settings.admin_api_key, Secret)

    def test_a_file_credential_enables_its_source(self, tmp_path):
        path = tmp_path / "github"
        path.write_text("ghp_fromfile\n")
        settings = Settings.from_environ({"GITHUB_TOKEN_FILE": str(path)})
        assert settings.configured_sources() == ["github"]
        assert "ghp_fromfile" not in repr(settings)

    def test_both_set_is_a_one_line_error_naming_both(self, tmp_path):
        path = tmp_path / "key"
        path.write_text("from-file\n")
        with pytest.raises(SettingsError) as info:
            Settings.from_environ({"ADMIN_API_KEY": "from-env", "ADMIN_API_KEY_FILE": str(path)})
        message = str(info.value)
        assert "ADMIN_API_KEY" in message and "ADMIN_API_KEY_FILE" in message
        assert "\n" not in message
        assert "from-env" not in message and "from-file" not in message

    @pytest.mark.parametrize("kind", ["missing", "directory", "not text"])
    def test_an_unreadable_file_is_a_one_line_error_naming_the_setting(self, kind, tmp_path):
        path = tmp_path / "secret"
        if kind == "directory":
            path.mkdir()
        elif kind == "not text":
            path.write_bytes(b"\xff\xfe\x00secret")
        with pytest.raises(SettingsError) as info:
            Settings.from_environ({"REDIS_URL_FILE": str(path)})
        message = str(info.value)
        assert message.startswith("REDIS_URL_FILE")
        assert str(path) in message
        assert "\n" not in message

    def test_an_empty_file_variable_is_unset(self):
        settings = Settings.from_environ({"ADMIN_API_KEY_FILE": "", "ADMIN_API_KEY": "k"})
        assert str(settings.admin_api_key) == "k"

    def test_the_value_from_a_file_is_validated_like_any_other(self, tmp_path):
        path = tmp_path / "url"
        path.write_text("mysql://u:secretpw@h/db\n")
        with pytest.raises(SettingsError) as info:
            Settings.from_environ({"DATABASE_URL_FILE": str(path)})
        assert "DATABASE_URL must start with" in str(info.value)
        assert "secretpw" not in str(info.value)

    def test_other_file_variables_are_left_alone(self, tmp_path):
        """Only secrets are read from files: ``PORT_FILE`` is not a setting and reads nothing."""
        settings = Settings.from_environ({"PORT_FILE": str(tmp_path / "nothing-here")})
        assert settings.port == 8080

    def test_every_documented_secret_is_covered(self):
        """docs/configuration.md marks secrets *secret*: each of them is in SECRET_SETTINGS."""
        import re
        from pathlib import Path

        doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
        documented = set()
        for line in doc.splitlines():
            if line.startswith("|") and "*secret*" in line:
                names = re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])
                # The Jira row lists site, account and token: only the token is secret.
                documented |= {n for n in names if len(names) == 1 or n.endswith("_TOKEN")}
        assert documented  # the marker is still used
        known = {*SECRET_SETTINGS, *COMMAND_SECRETS}
        assert documented <= known, documented - known


class TestCommandLine:
    def run_cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args] if False else [sys.executable, "-c",
             "from cli.main import main; main()", *args],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )

    def test_bad_setting_stops_with_one_line_and_status_2(self):
        result = self.run_cli("status", PORT="abc")
        assert result.returncode == 2
        assert result.stderr.strip() == "vector-sync: PORT must be a whole number, not 'abc'"
        assert "Traceback" not in result.stderr

    def test_the_mcp_key_is_read_from_its_file_too(self, infra, tmp_path):
        key_file = tmp_path / "mcp-key"
        key_file.write_text("vsk_not-a-live-key\n")
        env = {**BASE_ENV, **infra}
        read = self.run_cli("mcp", **env, VECTOR_SYNC_API_KEY_FILE=str(key_file))
        assert read.returncode == 2 and "VECTOR_SYNC_API_KEY is not a live API key" in read.stderr, read.stderr
        both = self.run_cli("mcp", **env, VECTOR_SYNC_API_KEY="x", VECTOR_SYNC_API_KEY_FILE=str(key_file))
        assert both.returncode == 2 and "are both set" in both.stderr and "not-a-live" not in both.stderr
        missing = self.run_cli("mcp", **env, VECTOR_SYNC_API_KEY_FILE=str(tmp_path / "absent"))
        assert missing.returncode == 2 and "VECTOR_SYNC_API_KEY_FILE: cannot read" in missing.stderr
        assert "Traceback" not in read.stderr + both.stderr + missing.stderr

    def test_processes_refuse_to_start_without_urls_naming_them(self):
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        result = subprocess.run([sys.executable, "-m", "workers"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2
        assert "DATABASE_URL is not set" in result.stderr
        assert "Traceback" not in result.stderr


class TestMigrations:
    def test_running_migrations_twice_is_harmless(self, services):
        assert state.migrate(services.pool) == []
        assert state.migrate(services.pool) == []
        with services.pool.connection() as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [n for n, _, _ in state.migrations()]

    def test_concurrent_migrations_apply_each_file_once(self, infra, tmp_path):
        """Several processes starting at once on an empty database all succeed."""
        import threading

        import psycopg

        admin = psycopg.connect(infra["DATABASE_URL"], autocommit=True)
        admin.execute("DROP DATABASE IF EXISTS migrate_race")
        admin.execute("CREATE DATABASE migrate_race")
        url = infra["DATABASE_URL"].replace("/postgres?", "/migrate_race?")
        results: list[object] = []

        def go() -> None:
            pool = state.open_pool(url, max_size=1)
            try:
                results.append(state.migrate(pool))
            except Exception as exc:  # collected and asserted on below
                results.append(exc)
            finally:
                pool.close()

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        applied = [r for r in results if r]
        assert not [r for r in results if isinstance(r, Exception)]
        assert len(applied) == 1  # exactly one process applied the files
        admin.execute("DROP DATABASE migrate_race")
        admin.close()


class TestSecretFilesInProcesses:
    def test_up_passes_secrets_from_files_to_its_children(self, infra, tmp_path):
        """``vector-sync up`` hands its children the resolved URLs: they must not then also
        see the ``*_FILE`` variables (both set is a start-up error)."""
        import signal

        import httpx

        from tests.conftest import BASE_ENV, ADMIN_KEY, wait_for
        from tests.test_up import Up, fresh_home

        secrets = {"DATABASE_URL": infra["DATABASE_URL"], "REDIS_URL": infra["REDIS_URL"],
                   "ADMIN_API_KEY": ADMIN_KEY}
        files = {}
        for name, value in secrets.items():
            path = tmp_path / name.lower()
            path.write_text(value + "\n")
            files[f"{name}_FILE"] = str(path)
        with fresh_home() as home:
            up = Up(home, SANDBOX="off", **files)
            try:
                up.wait_serving()

                def all_alive() -> bool:
                    return all(up.get("/api/status").json()["processes_alive"].values())

                wait_for(all_alive, timeout=120, interval=0.5)
                search = httpx.get(f"{up.url}/api/search", params={"q": "anything"},
                                   headers={"X-Admin-Key": ADMIN_KEY}, timeout=10)
                assert search.status_code == 200, search.text
                assert not (home / "pg").exists()  # the URLs from the files were used
                code, _ = up.stop(signal.SIGTERM)
                assert code == 0, up.output()[-2000:]
            finally:
                up.finish()
