"""``OUT/cohort.json``: where a cohort stands, rewritten (atomically) as slides finish.

Built from the done and failure records on disk (so jobs sharing OUT all write the same
totals) plus this run's own counts: ``done`` (slide ids), ``failed`` (slide id -> path and
reason), ``skipped`` (slides this run found done), ``patches`` (over the done slides),
``seconds`` (this run), ``pending`` (slides of this run neither done nor failed).
Records are re-read only when their file changed, so a rewrite costs a directory listing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_json
from .records import DONE, FAILED, record_problem


class CohortSummary:
    def __init__(self, out: str | Path, step: str, slide_ids: list[str], patches_key: str = "num_patches") -> None:
        self.out, self.step, self.slide_ids, self.patches_key = Path(out), step, list(slide_ids), patches_key
        self.start = time.time()
        self.skipped = 0
        self.engine = ""
        self.rejected: set[str] = set()  # done records found not to match their outputs (records.done_records)
        self._cache: dict[Path, tuple[int, dict[str, Any]]] = {}

    def _records(self, kind: str) -> dict[str, dict[str, Any]]:
        folder = self.out / kind
        found: dict[str, dict[str, Any]] = {}
        if not folder.is_dir():
            return found
        for path in folder.glob("*.json"):
            try:
                stamp = path.stat().st_mtime_ns
                cached = self._cache.get(path)
                if cached is None or cached[0] != stamp:
                    cached = (stamp, json.loads(path.read_text()))
                    self._cache[path] = cached
            except (OSError, ValueError):
                continue  # vanished or being replaced: counted at the next rewrite
            if record_problem(cached[1]):
                continue  # malformed: not a done (or failed) slide; named where the slide is planned
            found[str(cached[1].get("slide_id", path.stem))] = cached[1]
        return found

    def totals(self) -> dict[str, Any]:
        done, failed = self._records(DONE), self._records(FAILED)
        done = {k: v for k, v in done.items() if k not in self.rejected}
        failed = {k: v for k, v in failed.items() if k not in done}

        def patches(record: dict[str, Any]) -> int:
            result = record.get("result")
            return int(result.get(self.patches_key, 0)) if isinstance(result, dict) else 0

        def off_slide(record: dict[str, Any]) -> int:  # patches left out as lying off their slide (extract)
            result = record.get("result")
            return int(result.get("num_off_slide", 0)) if isinstance(result, dict) else 0

        return {
            "step": self.step,
            "engine": self.engine,
            "done": sorted(done),
            "num_done": len(done),
            "failed": {
                k: {"path": v.get("path", ""), "reason": v.get("reason", "")} for k, v in sorted(failed.items())
            },
            "num_failed": len(failed),
            "skipped": self.skipped,
            "pending": sorted(set(self.slide_ids) - set(done) - set(failed)),
            "patches": sum(patches(r) for r in done.values()),
            "off_slide_patches": {k: n for k, r in sorted(done.items()) if (n := off_slide(r))},
            "seconds": round(time.time() - self.start, 3),
            "updated": time.time(),
        }

    def write(self) -> dict[str, Any]:
        totals = self.totals()
        atomic_write_json(self.out / "cohort.json", totals, durable=False)  # a view of the records: no fsync
        return totals
