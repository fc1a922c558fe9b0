"""The `processor` command line: every command takes --config, before or after it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from processor.cli import build_parser, main
from processor.config import load_config
from processor.contract.schema import contract_json
from processor.devtools.ports import free_port

CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "a.yaml", "worker"], "a.yaml"),
        (["worker", "--config", "b.yaml"], "b.yaml"),
        (["ingress", "--config", "c.yaml"], "c.yaml"),
        (["topics", "create", "--config", "d.yaml"], "d.yaml"),
        (["dev", "--config", "e.yaml", "--workers", "3"], "e.yaml"),
        (["broker", "status", "--config", "f.yaml"], "f.yaml"),
        (["schema", "--config", "g.yaml"], "g.yaml"),
        (["tail", "webhooks.dlq", "--config", "h.yaml"], "h.yaml"),
    ],
)
def test_every_command_takes_config_before_or_after_it(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(argv).config == Path(expected)


def test_without_config_the_command_looks_for_config_yaml_itself() -> None:
    assert build_parser().parse_args(["worker"]).config is None


def test_a_missing_config_file_is_a_clear_error_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml not found: check the path" in capsys.readouterr().err


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


def test_schema_prints_the_contract_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--config", str(CONFIG)]) == 0

    out = capsys.readouterr().out
    assert out == contract_json(load_config(CONFIG))
    assert "webhooks.dlq" in json.loads(out)["topics"]


def test_schema_asyncapi_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--asyncapi", "--config", str(CONFIG)]) == 0

    assert yaml.safe_load(capsys.readouterr().out)["asyncapi"] == "3.0.0"


def test_schema_check_passes_an_unchanged_contract_and_exits_1_on_a_break(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    promised = json.loads(contract_json(load_config(CONFIG)))
    same = tmp_path / "same.json"
    same.write_text(json.dumps(promised))
    promised["topics"]["webhooks.dlq"]["headers"]["properties"]["x-trace"] = {"type": "string"}
    more = tmp_path / "more.json"
    more.write_text(json.dumps(promised))

    assert main(["schema", "--check", str(same), "--config", str(CONFIG)]) == 0
    assert "compatible with" in capsys.readouterr().out
    assert main(["schema", "--check", str(more), "--config", str(CONFIG)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "webhooks.dlq headers: $.x-trace: removed\n"
    assert "break subscribers" in captured.err


def test_schema_check_of_a_file_that_is_no_contract_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")

    assert main(["schema", "--check", str(junk), "--config", str(CONFIG)]) == 2
    assert "pass a file `processor schema` wrote" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["tail", "t", "--last", "-1"], ["tail", "t", "--last", "3", "--from-beginning"], ["tail"]],
)
def test_tail_refuses_options_that_do_not_fit(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2


@pytest.mark.slow  # a Python process of its own
def test_the_worker_and_ingress_do_not_import_the_subscriber_tools() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import sys, processor.cli; print(' '.join(sorted(m for m in sys.modules "
         "if m.startswith('processor.'))))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip

    assert "processor.worker.loop" in loaded
    for lazy in (
        "processor.ops.tail",
        "processor.contract.asyncapi",
        "processor.contract.schema",
        "processor.contract.compat",
    ):
        assert lazy not in loaded


@pytest.mark.slow  # a Python process of its own
def test_the_ingress_imports_nothing_of_the_worker_or_the_router() -> None:
    loaded = subprocess.run(
        [sys.executable, "-c",
         "import sys, processor.ingress.app; print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip

    worker_side = ("processor.worker", "processor.dedup", "processor.routing", "processor.ops")
    assert [name for name in loaded if name.startswith(worker_side)] == []


def test_help_says_what_the_pipeline_is_with_examples_and_no_developer_notes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Webhook deliveries in, Kafka topics out" in text
    assert "examples:\n  processor dev" in text
    assert "frozen" not in text, "a developer's note"


@pytest.mark.parametrize(
    "command", ["worker", "ingress", "replay", "tail", "find", "dev", "schema"]
)
def test_each_commands_help_says_what_it_does_and_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n")[1]
    assert len(description) > 80, text  # more than the one-line summary
    assert "example:\n  " in text
    assert f"processor {command}" in text.split("example:")[1]


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert re.fullmatch(r"processor \d+\.\d+\.\d+\n", capsys.readouterr().out)


def test_without_config_yaml_here_every_command_takes_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("PROCESSOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)

    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["topics"]["webhooks.raw"]


def test_an_explicit_config_that_does_not_exist_is_still_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "nowhere.yaml"), "schema"]) == 2
    assert "nowhere.yaml not found" in capsys.readouterr().err


@pytest.mark.slow  # a Python process of its own
@pytest.mark.parametrize("command", [["topics", "create"], ["dev"]])
def test_an_unreachable_kafka_is_waited_for_then_named_with_what_to_do(
    command: list[str], tmp_path: Path
) -> None:
    if command == ["dev"]:
        command += ["--dir", str(tmp_path), "--port", str(free_port())]
        command += ["--metrics-port", str(free_port())]
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "PROCESSOR_KAFKA__CONNECT_TIMEOUT_S": "2",
    }
    started = time.monotonic()
    exited = subprocess.run(
        [sys.executable, "-m", "processor.cli", *command],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert time.monotonic() - started >= 2, "it gave up before kafka.connect_timeout_s"
    assert exited.returncode == 2
    error = exited.stderr.splitlines()[-1]
    assert error.startswith(f"processor: cannot reach Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']}")
    assert "processor broker start" in error
    assert "replication" not in exited.stderr
    assert "Unable connect" not in exited.stderr + exited.stdout, "aiokafka's own line leaked"
    assert exited.stderr.count("kafka.waiting") == 1, "the wait is said once"
