"""--engine ray: the audit's batches on Ray Data, an actor pool whose actors each hold the model once.

Each dataset item is one batch of the in-process engine (the same images in the same order),
so the actors run `audit_batch` on the same tensors and write the same rows. Ray Data streams
the batches through the pool (`map_batches` with an `ActorPoolStrategy`), one GPU per actor when
the cluster has GPUs; the driver receives each finished batch and writes it as a shard at once,
so a Ray run resumes as an in-process one does. An actor that dies is restarted and its batch
retried (Ray Data's defaults for actor pools); a batch that arrives twice is written twice and
counted once.

Ray itself: a local Ray started for the run (and stopped after it), or the cluster at
$RAY_ADDRESS. On a cluster every node needs this project's code and packages, and must see the
image folder and any model files at the same paths; the results come back to the driver, which
alone writes the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from explainers.services.audit_work import AuditSettings, Item, Row, audit_batch

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds explainers/ and models_zoo/


class BatchAuditor:
    """A Ray Data actor: loads the model once, then audits the batches it is given."""

    def __init__(self, settings: AuditSettings) -> None:
        import ray

        self.settings = settings
        self.zoo = settings.load()  # CUDA when the actor was given a GPU
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        payloads = []
        for text in batch["items"]:
            items = [Item(**{**d, "box": tuple(d["box"]) if d["box"] else None}) for d in json.loads(text)]
            for row, pictures in audit_batch(self.zoo, self.settings, items):
                payloads.append(pickle.dumps((row, pictures, self.node)))
        return {"payload": np.array(payloads, dtype=object)}


def run_on_ray(
    settings: AuditSettings,
    batches: Sequence[Sequence[Item]],
    finished: Callable[[list[tuple[Row, dict[str, bytes]]]], None],
    workers: int,
) -> dict[str, int]:
    """Audit the batches on Ray; ``finished`` gets each batch's results as it arrives.

    Args:
        settings: the model and what to compute (pickled to the actors).
        batches: the images, in the batches the in-process engine would use.
        finished: called in the driver with (row, pictures) of each finished batch.
        workers: actors in the pool.

    Returns:
        Images audited per Ray node (the node id's first 8 characters).
    """
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        address = os.environ.get("RAY_ADDRESS") or None  # None: a local Ray for this run
        ray.init(
            address=address,
            # A local Ray counts the machine's cores; this process may be held to fewer (taskset).
            num_cpus=None if address else len(os.sched_getaffinity(0)),
            runtime_env={"env_vars": {"PYTHONPATH": path}},  # the actors import this project
            include_dashboard=False,
            logging_level="error",
            log_to_driver=False,
        )
    try:
        for handler in logging.getLogger("ray.data").handlers:  # its notes: to its log file only
            if handler.get_name() == "console":
                handler.setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the audit prints its own
        context.print_on_execution_start = False
        # Start when every actor holds its model, so the first batches are spread over the pool
        # (and a pool the cluster cannot host fails with Ray's timeout rather than waiting).
        context.wait_for_min_actors_s = 600
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        # An actor that can never be placed would wait for ever: no more actors than slots.
        slots = int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1))
        if workers > slots >= 1:
            print(f"ray: {workers} workers asked, {slots} fit the cluster: using {slots}", file=sys.stderr)
            workers = slots
        items = [{"items": json.dumps([dataclasses.asdict(item) for item in batch])} for batch in batches]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        results = dataset.map_batches(
            BatchAuditor,
            fn_constructor_kwargs={"settings": settings},
            batch_size=1,  # one item = one audit batch
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=gpus,
            batch_format="numpy",
        )
        nodes: Counter[str] = Counter()
        for block in results.iter_batches(batch_size=None, batch_format="numpy"):
            outputs = [pickle.loads(payload) for payload in block["payload"]]
            nodes.update(node[:8] for _, _, node in outputs)
            finished([(row, pictures) for row, pictures, _ in outputs])
        return dict(nodes)
    finally:
        if started:
            ray.shutdown()
