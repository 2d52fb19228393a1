"""The CI skip check: ``pytest --strict-skips`` fails on a skip that allowed_skips.yaml does not list."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from skip_allowlist import ALLOW_LIST, load_allow_list

TESTS = Path(__file__).parent

SAMPLE = '''
import pytest

def test_runs():
    pass

def test_needs_a_unicorn():
    pytest.skip("no unicorn here")

@pytest.mark.skipif(True, reason="only on a tuesday")
def test_on_tuesdays():
    pass
'''


def _pytest(folder: Path, *args: str, ci: str | None = None) -> subprocess.CompletedProcess[str]:
    """A separate pytest run with only the skip plugin loaded (not this suite's conftest);
    ``CI`` in its environment is ``ci`` (unset by default), whatever this run has."""
    inherited = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    env = {**inherited, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "skip_allowlist", "-p", "no:cacheprovider", "-q", "--rootdir", str(folder), str(folder), *args],
        capture_output=True, text=True, env=env, cwd=folder, timeout=120,
    )  # fmt: skip


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    return tmp_path


def _allow(folder: Path, text: str) -> str:
    path = folder / "allowed.yaml"
    path.write_text(text)
    return str(path)


def test_an_unlisted_skip_fails_a_strict_run_and_names_the_test(sample: Path) -> None:
    listed = _allow(sample, '- reason: "only on a tuesday"\n  why: calendar\n')

    result = _pytest(sample, "--strict-skips", "--skip-allow-list", listed)

    assert result.returncode == 1, result.stdout
    assert "test_sample.py::test_needs_a_unicorn: no unicorn here" in result.stdout
    assert "test_on_tuesdays" not in result.stdout.split("skips that fail the run")[1]


def test_ci_true_makes_a_run_strict_without_the_option(sample: Path) -> None:
    listed = _allow(sample, '- reason: "only on a tuesday"\n  why: calendar\n')

    assert _pytest(sample, "--skip-allow-list", listed).returncode == 0
    assert _pytest(sample, "--skip-allow-list", listed, ci="true").returncode == 1


def test_a_run_whose_skips_are_all_listed_passes(sample: Path) -> None:
    listed = _allow(sample, '- reason: "only on a tuesday"\n  why: calendar\n- reason: "no unicorn*"\n  why: zoo\n')

    result = _pytest(sample, "--strict-skips", "--skip-allow-list", listed)

    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout


def test_an_entry_only_applies_where_its_marker_holds(sample: Path) -> None:
    elsewhere = _allow(sample, '- reason: "*"\n  when: "python_version < \'3\'"\n  why: never\n')

    assert _pytest(sample, "--strict-skips", "--skip-allow-list", elsewhere).returncode == 1
    assert _pytest(sample, "--skip-allow-list", elsewhere).returncode == 0  # without --strict-skips: listed only


def test_an_entry_without_a_reason_why_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entry 1: needs 'reason'"):
        load_allow_list(Path(_allow(tmp_path, '- reason: "x"\n')))


def test_the_shipped_allow_list_gives_a_reason_for_every_entry() -> None:
    entries = load_allow_list(ALLOW_LIST)

    assert entries and all(len(entry.why) > 20 for entry in entries)


def test_a_module_skipped_whole_fails_a_strict_run(tmp_path: Path) -> None:
    (tmp_path / "test_needs_a_module.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n\ndef test_x():\n    pass\n')

    result = _pytest(tmp_path, "--strict-skips", "--skip-allow-list", _allow(tmp_path, "[]\n"))

    assert result.returncode == 1, result.stdout
    assert "test_needs_a_module.py: could not import 'no_such_module_here'" in result.stdout
