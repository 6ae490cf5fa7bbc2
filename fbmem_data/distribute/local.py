"""`local`: the shard protocol in this process, one shard after the other, the model loaded once."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fbmem_data.distribute.protocol import Distributor, ExtractorJob, JobSummary
from fbmem_data.distribute.shards import ShardFailure, iter_pending, raise_failed_shards, run_shard_reporting

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace


class LocalDistributor(Distributor):
    """Runs every unfinished shard in-process (the reference engine: no extra dependency)."""

    name = "local"
    in_process = True

    def run(self, ws: Workspace, job: ExtractorJob) -> JobSummary:
        started = time.perf_counter()
        summary = JobSummary(engine=self.name, extractor=job.extractor, rows_in=job.inputs.num_rows)
        batch_fn = None
        failed: dict[str, ShardFailure] = {}
        for shard, done in iter_pending(ws.root, job):
            summary.shards += 1
            if done:
                summary.shards_skipped += 1
                continue
            if batch_fn is None:  # load the model only when there is work
                batch_fn = job.model(ws)
            written, error = run_shard_reporting(ws, job, batch_fn, shard)
            if error:
                failed[shard.shard_id] = error
            for table, n in written.items():
                summary.rows_written[table] = summary.rows_written.get(table, 0) + n
            summary.shards_run += 1
        raise_failed_shards(job, failed, summary.shards_run)
        summary.seconds = time.perf_counter() - started
        return summary
