"""How many examples a property test tries: every one in make test, a fifth in the fast
loop (make test-fast sets PROCESSOR_TEST_FAST=1), where a quick answer matters more."""

from __future__ import annotations

import os


def examples(thorough: int) -> int:
    return max(25, thorough // 5) if os.environ.get("PROCESSOR_TEST_FAST") == "1" else thorough
