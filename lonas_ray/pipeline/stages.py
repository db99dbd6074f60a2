"""``stages.json``: which pipeline stages have finished, with what config, when, and how often they ran.

A finished stage is skipped on a re-run. Each entry keeps a fingerprint of the
config the stage depends on: training stages refuse to continue under a changed
config (mixing two trainings in one directory would be silent nonsense), while
the incremental stages (search, export, report) just run again and reuse what
is already there. A stage that runs invalidates the stages after it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from lonas_ray.atomic import write_json
from lonas_ray.config_io import ConfigError

# the baseline first: it can be the super-adapter's teacher (lonas_ray/pipeline/driver.py)
STAGES = ("baseline", "train", "zero_shot", "search", "export", "report")
STRICT = ("baseline", "train")  # a changed config here is an error, not a re-run
FILE = "stages.json"


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageLog:
    def __init__(self, out: Path):
        self.path = Path(out) / FILE
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{self.path} is not valid JSON ({exc}); it records the finished stages: "
                                  "fix it or remove it to run every stage again") from exc
        else:
            self.data = {}

    def _save(self) -> None:
        write_json(self.path, self.data)

    def entry(self, stage: str) -> dict:
        return self.data.get(stage, {})

    def is_done(self, stage: str, config_fingerprint: str) -> bool:
        """Whether ``stage`` finished under this config; a strict stage under another config is an error."""
        e = self.entry(stage)
        if "finished" not in e:
            return False
        if e.get("fingerprint") == config_fingerprint:
            return True
        if stage in STRICT:
            raise ConfigError(
                f"stage '{stage}' finished in {self.path.parent} under a different config; its result would not "
                f"match this one. Use a new output directory, or remove '{stage}' from {self.path} to redo it"
            )
        return False

    def start(self, stage: str, config_fingerprint: str) -> None:
        e = self.data.setdefault(stage, {})
        e.pop("finished", None)
        e.update(started=time.time(), fingerprint=config_fingerprint, runs=e.get("runs", 0) + 1)
        for later in STAGES[STAGES.index(stage) + 1:]:
            self.data.get(later, {}).pop("finished", None)
        self._save()

    def finish(self, stage: str, **info: Any) -> None:
        e = self.data.setdefault(stage, {})
        e.update(info, finished=time.time(), seconds=time.time() - e.get("started", time.time()))
        self._save()

    def finished_count(self) -> int:
        return sum("finished" in self.entry(s) for s in STAGES)
