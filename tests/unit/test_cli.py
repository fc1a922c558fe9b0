"""The `processor` command line: every command takes --config, before or after it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from processor.cli import build_parser, main

CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["worker"], "config.yaml"),
        (["--config", "a.yaml", "worker"], "a.yaml"),
        (["worker", "--config", "b.yaml"], "b.yaml"),
        (["ingress", "--config", "c.yaml"], "c.yaml"),
        (["topics", "create", "--config", "d.yaml"], "d.yaml"),
        (["dev", "--config", "e.yaml", "--workers", "3"], "e.yaml"),
        (["broker", "status", "--config", "f.yaml"], "f.yaml"),
    ],
)
def test_every_command_takes_config_before_or_after_it(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(argv).config == Path(expected)


def test_a_missing_config_file_is_a_clear_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "not found: pass --config PATH" in capsys.readouterr().err


def test_a_bad_setting_is_a_clear_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("worker:\n  max_batch_records: -1\n")
    assert main(["topics", "create", "--config", str(config)]) == 2
    assert "worker.max_batch_records: Expected `int` >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["broker", "start"], ["broker", "stop"], ["broker", "status"], ["dev", "--workers", "1"]],
)
def test_dev_commands_without_the_dev_tooling_say_to_run_from_a_checkout_and_exit_2(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The production image has no processor/devtools: importing it fails as it would there.
    for name in [name for name in sys.modules if name.startswith("processor.devtools.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "processor.devtools", None)

    code = main([*argv, "--config", str(CONFIG), "--dir", str(tmp_path / "kafka")])

    assert code == 2
    err = capsys.readouterr().err
    assert "development commands" in err
    assert "source checkout" in err
    assert "Traceback" not in err
    assert not (tmp_path / "kafka").exists(), "nothing was started"
