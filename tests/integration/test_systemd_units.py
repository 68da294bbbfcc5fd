"""The systemd units in systemd/: accepted by systemd-analyze without a word, complete, and
printed by `riskd systemd` from the package (no checkout needed to install them).

``systemd-analyze verify`` exits 0 on most warnings (an unknown key, a value it cannot parse
and ignores), so the test fails on any line it prints about our units, not only on its exit
status. It needs no running systemd: as root in a container without one (this project's dev
machine, systemd 252) it prints nothing at all for these units.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from riskd.cli import main
from riskd.config import DaemonSettings, mask_dsn

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ("riskd.service", "riskd-sweep.service", "riskd-sweep.timer")
INSTALLED_RISKD = "/usr/local/bin/riskd"  # the path the units document; pip's default prefix
CONFIG = "/etc/riskd/riskd.toml"
ENV_FILE = "/etc/riskd/riskd.env"

# [Service] keys that only the daemon has; every other one (user, environment, hardening) must
# be the same in riskd-sweep.service.
DAEMON_ONLY = {
    "Type",
    "NotifyAccess",
    "ExecStart",
    "SyslogIdentifier",
    "WatchdogSec",
    "TimeoutStartSec",
    "Restart",
    "RestartSec",
    "KillSignal",
    "TimeoutStopSec",
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists, in order, keeping repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), "continuation lines make the units hard to diff"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def directives(unit: str, section: str) -> dict[str, str]:
    """The last value of each key in one section (systemd's rule for single-valued keys)."""
    return dict(parse_unit((SYSTEMD_DIR / unit).read_text())[section])


def seconds(span: str) -> float:
    """A systemd time span with one unit ("15s", "5min", "90s") in seconds."""
    m = re.fullmatch(r"(\d+)(s|min)", span)
    assert m, f"unexpected time span {span!r}"
    return int(m[1]) * (60 if m[2] == "min" else 1)


# --- systemd-analyze verify -------------------------------------------------------------


def _installable_copies(tmp_path: Path) -> list[Path]:
    """The units as they are, except ExecStart runs this interpreter's riskd.

    verify checks that the ExecStart binary exists and is executable; /usr/local/bin/riskd
    does not exist on a test machine. ``python -m riskd`` runs the same code as the script.
    """
    assert not re.search(r"\s", sys.executable), "ExecStart would need quoting"
    copies = []
    for unit in UNITS:
        text = (SYSTEMD_DIR / unit).read_text()
        text, n = re.subn(
            rf"^ExecStart={re.escape(INSTALLED_RISKD)} ",
            f"ExecStart={sys.executable} -m riskd ",
            text,
            flags=re.MULTILINE,
        )
        assert n == (1 if unit.endswith(".service") else 0), f"{unit}: ExecStart not rewritten"
        (tmp_path / unit).write_text(text)
        copies.append(tmp_path / unit)
    return copies


# A message about another unit file on this machine: "/lib/systemd/system/x.service:12: …"
# (what verify prints for a warning in a unit ours pull in, e.g. network-online.target, or
# postgresql.service through After=), or "x.service: …" for another unit's runtime check.
_OTHER_UNIT = re.compile(r"^(?:(?P<path>/\S+?):\d+: |(?P<unit>[\w@.\\-]+\.[a-z]+): )")


def about_our_units(output: str, tmp_path: Path) -> list[str]:
    """The lines of verify's output that may concern our units: every line but those that
    provably concern another unit of this machine.

    Those are dropped because they are facts about the host (installed packages, its own
    units), not about the files under test, and differ from machine to machine. A line is only
    dropped when it names another unit file or unit as its subject and mentions none of ours
    anywhere (an ordering cycle through riskd.service may be reported against another unit).
    Anything else, including a format not recognised here, counts as ours.
    """
    ours = []
    for line in output.splitlines():
        if not line.strip():
            continue
        m = _OTHER_UNIT.match(line)
        mentions_ours = str(tmp_path) in line or any(unit in line for unit in UNITS)
        if m and not mentions_ours:
            subject = m["path"] or m["unit"]
            if subject and Path(subject).name not in UNITS:
                continue
        ours.append(line)
    return ours


def verify(paths: list[Path], tmp_path: Path) -> tuple[int, list[str]]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    result = subprocess.run(
        [exe, "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return result.returncode, about_our_units(result.stdout + result.stderr, tmp_path)


def test_systemd_analyze_verify_says_nothing_about_our_units(tmp_path: Path) -> None:
    returncode, messages = verify(_installable_copies(tmp_path), tmp_path)
    assert messages == []
    assert returncode == 0


def test_the_timer_alone_finds_its_service(tmp_path: Path) -> None:
    copies = _installable_copies(tmp_path)
    returncode, messages = verify([p for p in copies if p.suffix == ".timer"], tmp_path)
    assert messages == []
    assert returncode == 0


@pytest.mark.parametrize(
    ("unit", "old", "new"),
    [
        ("riskd.service", "NoNewPrivileges=yes", "NoNewPrivilege=yes"),
        ("riskd.service", "RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_BOGUS"),
        ("riskd-sweep.service", f"ExecStart={sys.executable} ", "ExecStart=/nonexistent/riskd "),
        ("riskd-sweep.timer", "OnCalendar=minutely", "OnCalendar=every minute"),
    ],
    ids=["unknown-key", "bad-value", "missing-exec", "timer-calendar"],
)
def test_verify_check_catches_a_broken_unit(tmp_path: Path, unit: str, old: str, new: str) -> None:
    """The filter above must not swallow what verify says about our own units."""
    copies = _installable_copies(tmp_path)
    path = tmp_path / unit
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    _, messages = verify(copies, tmp_path)
    assert messages, f"verify said nothing about a broken {unit}"


def test_other_units_messages_are_the_only_ones_dropped(tmp_path: Path) -> None:
    output = "\n".join(
        [
            "/lib/systemd/system/postgresql@.service:20: Unknown key 'X' in section [Service]",
            "systemd-networkd-wait-online.service: Command /x is not executable",
            f"{tmp_path}/riskd.service:5: Unknown key 'Y' in section [Service], ignoring.",
            "riskd-sweep.timer: Refusing to start, unit riskd-sweep.service to trigger not loaded.",
            "network-online.target: Found ordering cycle on riskd.service/start",
            "Failed to initialize manager: something new",
            "",
        ]
    )
    assert about_our_units(output, tmp_path) == [
        f"{tmp_path}/riskd.service:5: Unknown key 'Y' in section [Service], ignoring.",
        "riskd-sweep.timer: Refusing to start, unit riskd-sweep.service to trigger not loaded.",
        "network-online.target: Found ordering cycle on riskd.service/start",
        "Failed to initialize manager: something new",
    ]


# --- what the units must keep ----------------------------------------------------------


def test_daemon_unit_keeps_its_key_directives() -> None:
    service = directives("riskd.service", "Service")
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == f"{INSTALLED_RISKD} --config {CONFIG} run"
    assert seconds(service["WatchdogSec"]) == 30
    assert service["Restart"] == "on-failure"
    assert seconds(service["RestartSec"]) == 5
    assert service["KillSignal"] == "SIGTERM"
    # systemd must give riskd its whole shutdown_timeout before SIGKILL, and a little more
    stop = seconds(service["TimeoutStopSec"])
    assert DaemonSettings().shutdown_timeout < stop <= DaemonSettings().shutdown_timeout + 10
    assert service["EnvironmentFile"] == ENV_FILE
    assert directives("riskd.service", "Install")["WantedBy"] == "multi-user.target"


def test_daemon_unit_keeps_its_hardening() -> None:
    service = directives("riskd.service", "Service")
    assert service.get("DynamicUser") == "yes" or service.get("User") not in (None, "root")
    assert service["User"] == "riskd"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictRealtime",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert service.get(key) == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert service["CapabilityBoundingSet"] == ""
    assert service["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert service["SystemCallArchitectures"] == "native"


def test_sweep_unit_runs_the_sweep_with_the_daemons_user_environment_and_hardening() -> None:
    sweep = parse_unit((SYSTEMD_DIR / "riskd-sweep.service").read_text())["Service"]
    daemon = parse_unit((SYSTEMD_DIR / "riskd.service").read_text())["Service"]
    sweep_settings = dict(sweep)
    assert sweep_settings["Type"] == "oneshot"
    assert sweep_settings["ExecStart"] == f"{INSTALLED_RISKD} --config {CONFIG} sweep"
    assert seconds(sweep_settings["TimeoutStartSec"]) > 0
    shared = [kv for kv in daemon if kv[0] not in DAEMON_ONLY]
    assert [kv for kv in sweep if kv[0] not in DAEMON_ONLY] == shared
    assert ("EnvironmentFile", ENV_FILE) in shared
    assert ("NoNewPrivileges", "yes") in shared
    assert ("ProtectSystem", "strict") in shared
    assert "Install" not in parse_unit((SYSTEMD_DIR / "riskd-sweep.service").read_text())


def test_sweep_timer_fires_every_minute_and_catches_up() -> None:
    timer = directives("riskd-sweep.timer", "Timer")
    assert timer["OnCalendar"] == "minutely"
    assert timer["Persistent"] == "true"
    assert timer["Unit"] == "riskd-sweep.service"
    assert 0 < seconds(timer["RandomizedDelaySec"]) < 60
    assert 0 < seconds(timer["AccuracySec"]) < 60
    assert directives("riskd-sweep.timer", "Install")["WantedBy"] == "timers.target"


def test_env_example_holds_no_secret() -> None:
    text = (SYSTEMD_DIR / "riskd.env.example").read_text()
    assert "0600" in text
    assignments = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
            assignments[name] = value
    assert set(assignments) == {"RISKD_DSN"}
    dsn = assignments["RISKD_DSN"]
    assert dsn.startswith("postgresql://")
    assert mask_dsn(dsn) == dsn, "the example DSN carries a password"
    assert "PGPASSFILE" in text


# --- the package carries them: `riskd systemd` (issue 10, point 5) ---------------------------


def riskd_systemd(*args: str, **env: str) -> Result:
    base = {"RISKD_CONFIG": "", "RISKD_DSN": "", "DATABASE_URL": ""}
    return CliRunner().invoke(main, ["systemd", *args], env=base | env)


@pytest.mark.parametrize("unit", UNITS)
def test_riskd_systemd_prints_each_unit_as_shipped(unit: str) -> None:
    result = riskd_systemd(unit)
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert result.stdout == (SYSTEMD_DIR / unit).read_text()


def test_riskd_systemd_lists_what_it_prints_and_where_it_goes() -> None:
    result = riskd_systemd()
    assert result.exit_code == 0, result.output
    listed = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert listed == {
        "riskd.service": "/etc/systemd/system/riskd.service",
        "riskd-sweep.service": "/etc/systemd/system/riskd-sweep.service",
        "riskd-sweep.timer": "/etc/systemd/system/riskd-sweep.timer",
        "riskd.env": ENV_FILE,
    }


def active(text: str) -> dict[str, str]:
    """The assignments of an environment file (no comment lines)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_riskd_env_is_printed_with_the_configured_dsn_and_nothing_to_edit() -> None:
    dsn = "postgresql://riskd@db.internal:5432/trading?sslmode=verify-full"
    result = riskd_systemd("riskd.env", RISKD_DSN=dsn)
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert active(result.stdout) == {"RISKD_DSN": dsn}
    with_pgpass = riskd_systemd("riskd.env", "--pgpassfile", "/etc/riskd/pgpass", RISKD_DSN=dsn)
    assert active(with_pgpass.stdout) == {"RISKD_DSN": dsn, "PGPASSFILE": "/etc/riskd/pgpass"}
    example = active((SYSTEMD_DIR / "riskd.env.example").read_text())
    assert (
        result.stdout.replace(dsn, example["RISKD_DSN"])
        == (SYSTEMD_DIR / "riskd.env.example").read_text()
    )


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgresql://riskd:S3CRET@db/trading", "password"),
        ("host=db user=riskd password=S3CRET", "password"),
        ("host=db user=riskd application_name='a b'", "quote"),
        ("", "no database given"),
    ],
    ids=["url-password", "keyword-password", "quote", "none"],
)
def test_riskd_env_refuses_what_it_must_not_print_or_would_be_changed(dsn: str, says: str) -> None:
    result = riskd_systemd("riskd.env", RISKD_DSN=dsn)
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr, result.stderr
    assert "S3CRET" not in result.output
