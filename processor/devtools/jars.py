"""The Apache Kafka broker jars, fetched from Maven Central once per version.

`deploy/kafka/pom.xml` names the broker and the log4j2 binding its tarball would
ship; Maven copies them into a cache outside the checkout, so only the first start
on a machine downloads anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from processor.errors import BrokerError

__all__ = ["KAFKA_VERSION", "cache_dir", "kafka_libs", "require_tool"]

# Newest Apache Kafka release tested with aiokafka 0.14 (README: "The local broker").
KAFKA_VERSION = "4.4.0"
# The log4j2 version Kafka was built with; the tarball ships this SLF4J binding.
LOG4J_VERSION = "2.25.3"

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
# Fetching ~45 jars (~40 MiB) from Maven Central; a stalled network fails, not hangs.
FETCH_TIMEOUT_S = 600.0


def cache_dir() -> Path:
    """Where jars live: `$PROCESSOR_CACHE_DIR`, else `$XDG_CACHE_HOME/processor`."""
    if configured := os.environ.get("PROCESSOR_CACHE_DIR"):
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "processor"


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder of broker jars for `version`, fetched with Maven on first use."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if (libs / f"kafka_2.13-{version}.jar").exists():
        return libs
    require_tool("java", "install OpenJDK 17 or newer (apt-get install openjdk-17-jre-headless)")
    mvn = require_tool("mvn", "install Apache Maven (apt-get install maven)")
    if not POM.exists():
        raise BrokerError(f"{POM} is missing: run the broker from a checkout of the repository")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs.", dir=libs.parent))
    command = [
        mvn, "-B", "-q", "-f", str(POM),
        f"-Dkafka.version={version}", f"-Dlog4j.version={LOG4J_VERSION}",
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=FETCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven did not fetch the Apache Kafka {version} jars within {FETCH_TIMEOUT_S:.0f} s: "
            "check that Maven Central is reachable (mvn's proxy settings in ~/.m2/settings.xml), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster instead."
        ) from None
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {version} jars (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n"
            "Check that Maven Central is reachable, or set KAFKA_BOOTSTRAP_SERVERS "
            "to use an existing cluster instead."
        )
    try:
        staging.rename(libs)
    except OSError:  # another process finished first: its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def require_tool(name: str, fix: str) -> str:
    """The path of `name` on PATH (java, mvn), or an error saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise BrokerError(
            f"`{name}` is not on PATH; the local Kafka broker needs it: {fix}. "
            "Or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster."
        )
    return path
