"""Settings: defaults, one-line errors naming the variable, and the CLI's handling of them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core import state
from core.errors import SettingsError
from core.settings import Secret, Settings, parse_duration, parse_rate


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


class TestCommandLine:
    def run_cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core.cli", *args] if False else [sys.executable, "-c",
             "from core.cli import main; main()", *args],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        )

    def test_bad_setting_stops_with_one_line_and_status_2(self):
        result = self.run_cli("status", PORT="abc")
        assert result.returncode == 2
        assert result.stderr.strip() == "vector-sync: PORT must be a whole number, not 'abc'"
        assert "Traceback" not in result.stderr

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
