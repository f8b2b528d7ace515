"""Labelling with Ray Data (the optional ``ray`` extra; only ``npsam3 label --ray`` imports it).

The paths still to label become a dataset (``ray.data.from_items``); ``map_batches`` runs them
through a pool of actors (``RayLabeler``), each loading the bundle once and holding itself to its
``num_cpus`` threads; the rows stream back to the driver (``iter_rows``), whose job folder is the
only writer, exactly as with worker processes. Ray does the scheduling, queueing and transport.
"""

import json

from ..errors import Npsam3Error
from .labeler import Labeler
from .parallel import limit_threads


class RayLabeler:
    """A map_batches actor: one Labeler; a batch {"path": [...]} -> {"kind": [...], "value": [JSON
    text]} (JSON keeps the nested rows out of Arrow's schema inference)."""

    def __init__(self, settings, kernels, threads):
        limit_threads(threads)
        self.labeler = Labeler(settings, kernels)

    def __call__(self, batch):
        out = [self.labeler(str(path)) for path in batch["path"]]
        return {"kind": [kind for kind, _ in out],
                "value": [json.dumps(value, allow_nan=False) for _, value in out]}


def label_with_ray(settings, paths, address, actors=None, threads=1, kernels=None):
    """(kind, value) per path, labelled by ``actors`` Ray actors of ``threads`` CPUs each
    (default: as many as the cluster's CPUs allow). address: "" for the Ray instance this
    process initialised or a new local one, else a cluster address ("auto", "ray://host:10001")."""
    import ray

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
        except Exception as e:  # Ray raises ConnectionError, ValueError, RuntimeError, ...
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise Npsam3Error(f"cannot start or reach Ray at {address or 'a new local instance'}: "
                              f"{reason}") from None
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller reports
        actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        dataset = ray.data.from_items([{"path": p} for p in paths]).map_batches(
            RayLabeler, fn_constructor_kwargs={"settings": settings, "kernels": kernels,
                                               "threads": threads},
            batch_size=1, num_cpus=threads, compute=ray.data.ActorPoolStrategy(size=actors))
        for record in dataset.iter_rows():
            yield record["kind"], json.loads(record["value"])
    finally:
        if started:
            ray.shutdown()
