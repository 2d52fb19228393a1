"""Pytest plugin: with ``--strict-skips`` or ``CI=true`` (as .ci/run sets), a skip not listed in allowed_skips.yaml fails the run.

Without either, unlisted skips are only listed at the end of the run.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker

ALLOW_LIST = Path(__file__).with_name("allowed_skips.yaml")


@dataclass(frozen=True)
class AllowedSkip:
    reason: str  # fnmatch pattern for the skip reason
    why: str
    when: str | None = None  # PEP 508 marker: where the entry applies

    def allows(self, reason: str) -> bool:
        applies = self.when is None or Marker(self.when).evaluate()
        return applies and fnmatch.fnmatchcase(reason, self.reason)


def load_allow_list(path: Path = ALLOW_LIST) -> list[AllowedSkip]:
    """The allow-list entries; ValueError for an entry without a pattern or a reason why."""
    entries = yaml.safe_load(path.read_text()) or []
    allowed = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not entry.get("reason") or not str(entry.get("why", "")).strip():
            raise ValueError(f"{path.name} entry {number}: needs 'reason' (a pattern) and 'why'")
        allowed.append(AllowedSkip(str(entry["reason"]), str(entry["why"]), entry.get("when")))
    return allowed


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason pytest prints for a skipped test or module."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (file, line, "Skipped: reason")
        return longrepr[2].removeprefix("Skipped: ")
    return str(longrepr)


class SkipCheck:
    def __init__(self, strict: bool, allow_list: Path) -> None:
        self.strict = strict
        self.allow_list = allow_list
        self.allowed = load_allow_list(allow_list)
        self.unlisted: list[tuple[str, str]] = []  # (test or module id, reason)

    def _seen(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            if not any(entry.allows(reason) for entry in self.allowed):
                self.unlisted.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._seen(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._seen(report)

    def pytest_terminal_summary(self, terminalreporter) -> None:  # noqa: ANN001
        if not self.unlisted:
            return
        verdict = "fail the run (--strict-skips)" if self.strict else "are not on the allow-list"
        terminalreporter.section(f"skips that {verdict}", red=self.strict, yellow=not self.strict)
        for nodeid, reason in self.unlisted:
            terminalreporter.line(f"{nodeid}: {reason}")
        terminalreporter.line(f"allow-list: {self.allow_list}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.strict and self.unlisted and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--strict-skips", action="store_true", help=f"fail on a skip not listed in {ALLOW_LIST.name}")
    parser.addoption("--skip-allow-list", type=Path, default=ALLOW_LIST, help="the allow-list file (default: %(default)s)")


def pytest_configure(config: pytest.Config) -> None:
    strict = config.getoption("--strict-skips") or os.environ.get("CI", "").lower() in ("1", "true", "yes")
    check = SkipCheck(strict, config.getoption("--skip-allow-list"))
    config.pluginmanager.register(check, "skip-allowlist-check")
