"""Record a transformers / TRL training run while it trains: :class:`AuditCallback`.

A ``transformers.TrainerCallback``, so it works with every TRL trainer (DPO, GRPO, RLOO, PPO, Reward,
SFT, KTO, ...) and the plain ``Trainer``::

    from rlhf_audit_kit.integrations.transformers import AuditCallback
    trainer = DPOTrainer(model=..., args=..., train_dataset=..., callbacks=[
        AuditCallback("audit.duckdb", keys="keys/", run_id="dpo-7", signer="keys/")])
    trainer.train()

What it records (only the main process, ``state.is_world_process_zero``, writes; the events go
through a :class:`~rlhf_audit_kit.recorder.Recorder` and files are hashed on a background thread, so
the training loop never waits for the disk; ``on_train_end`` flushes):

* ``on_train_begin``: a ``custom`` event ``training_run``: trainer class, algorithm, library
  versions, the training arguments (secrets and tokens replaced by ``"<redacted>"``), their content
  hash (``args_hash``) and the model's class, parameter count and config hash; the trainer's train
  and eval datasets as ``dataset`` events (``<run_id>/train``, ``<run_id>/eval``) with their row
  count and content hash (:func:`dataset_fingerprint`).
* ``on_log``: one ``train_step`` per log call, TRL's metric keys as they come (``rewards/margins``,
  ``objective/kl``, ...), the step, the epoch and ``logged_at``.
* ``on_evaluate``: the eval metrics, as ``train_step`` events of the run ``<run_id>/eval``.
* ``on_save``: a ``checkpoint`` event whose ``content_hash`` is the folder hash of
  :func:`rlhf_audit_kit.hash_artifact` over every file the trainer saved (streamed SHA-256), and a
  ``custom`` event ``checkpoint_files`` with each file's SHA-256.
* ``on_train_end``: a ``custom`` event ``training_run_end`` (the trainer's final summary: runtime,
  ``train_loss``, ...); flush; a signed snapshot when ``signer`` is given.

Metrics must be finite numbers in the store: a NaN or infinite value is left out of the
``train_step`` and recorded by name in a ``custom`` event ``non_finite_metrics``. A second log at a
step already recorded (a resumed run repeating steps) becomes a ``custom`` event ``train_log``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..encoding import canonical_json
from ..errors import AuditKitError
from ..schema import MAX_SAFE_INT

__all__ = ["AuditCallback", "dataset_fingerprint", "public_config"]

ALGORITHMS = {"DPOTrainer": "dpo", "GRPOTrainer": "grpo", "RLOOTrainer": "rloo", "PPOTrainer": "ppo",
              "RewardTrainer": "reward_model", "SFTTrainer": "sft", "KTOTrainer": "kto", "ORPOTrainer": "orpo",
              "CPOTrainer": "cpo", "BCOTrainer": "bco", "OnlineDPOTrainer": "online_dpo", "XPOTrainer": "xpo",
              "NashMDTrainer": "nash_md", "GKDTrainer": "gkd", "PRMTrainer": "prm"}
# Argument names that hold secrets (transformers itself masks *_token), and secrets pasted into values.
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passphrase|api_?key|credentials?|private_key)s?$", re.I)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})")
_ROWS = 65_536  # rows per Arrow batch of the dataset hash (part of its definition)
_BLOCK = 4 << 20
_SKIP = {"epoch", "step"}  # logged beside the metrics, recorded in their own fields


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def public_config(value: Any, key: str = "") -> Any:
    """A JSON-ready copy of a config with every secret replaced by ``"<redacted>"``.

    >>> public_config({"hub_token": "hf_abcdefghijklmnopqrstuvwxyz", "lr": 1e-6, "nan": float("nan"),
    ...                "note": "see hf_abcdefghijklmnopqrstuvwxyz", "wandb_api_key": None})
    {'hub_token': '<redacted>', 'lr': 1e-06, 'nan': 'nan', 'note': 'see <redacted>', 'wandb_api_key': None}
    """
    if key and _SECRET_KEY.search(key) and value not in (None, False, "", [], {}):
        return "<redacted>"
    if isinstance(value, dict):
        return {str(k): public_config(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [public_config(v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return _SECRET_VALUE.sub("<redacted>", str(value))  # strings, enums, dtypes, paths


def _content_hash(obj: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


class _HashSink:
    """A write-only file that hashes what is written (pyarrow's IPC writer streams into it)."""

    closed = False

    def __init__(self):
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return len(data)

    def flush(self) -> None:
        pass


def dataset_fingerprint(data: Any) -> tuple[int, str] | None:
    """``(row count, "sha256:<hex>")`` of a dataset's rows, or None for a stream without a length.

    The hash is SHA-256 of the rows as an Arrow IPC stream (schema without metadata, batches of
    65,536 rows, compact buffers), so equal rows and types give equal hashes however the data is
    chunked, sliced or shuffled into place. Takes a ``datasets.Dataset``, an Arrow table, a polars
    or pandas DataFrame.

    >>> import pyarrow as pa
    >>> t = pa.table({"prompt": ["a", "b", "c"], "score": [1, 2, 3]})
    >>> dataset_fingerprint(t) == dataset_fingerprint(pa.concat_tables([t.slice(0, 1), t.slice(1)]))
    True
    """
    import pyarrow as pa

    if hasattr(data, "with_format") and hasattr(data, "num_rows"):  # datasets.Dataset: rows in index order
        parts = (t for t in data.with_format("arrow").iter(batch_size=_ROWS))
    else:
        mod = type(data).__module__
        if mod.startswith("polars"):
            table = data.to_arrow()
        elif mod.startswith("pandas"):
            table = pa.Table.from_pandas(data, preserve_index=False)
        elif isinstance(data, pa.Table):
            table = data
        else:
            return None  # an IterableDataset or torch dataset: no rows to hash up front
        parts = (table.slice(off, _ROWS) for off in range(0, table.num_rows, _ROWS))
    sink, writer, rows = _HashSink(), None, 0
    for part in parts:
        part = part.take(pa.array(range(part.num_rows), pa.int64())).combine_chunks()  # compact buffers
        for batch in part.to_batches():
            if writer is None:
                writer = pa.ipc.new_stream(sink, batch.schema.remove_metadata())
            writer.write_batch(batch)
            rows += batch.num_rows
    if writer is not None:
        writer.close()
    return rows, "sha256:" + sink.sha.hexdigest()


def _open_folder(folder: Path) -> list[tuple[str, IO[bytes]]]:
    """Every regular file of a checkpoint folder, opened now: an open file stays readable even if
    the trainer rotates the folder away before the background hash reaches it."""
    if not folder.is_dir():
        raise AuditKitError(f"the trainer reported a checkpoint, but {folder} is not a folder")
    files = sorted((f for f in folder.rglob("*") if f.is_file() and not f.is_symlink()),
                   key=lambda f: f.relative_to(folder).as_posix().encode("utf-8"))
    opened = []
    try:
        for f in files:
            opened.append((f.relative_to(folder).as_posix(), open(f, "rb")))  # noqa: SIM115 - closed by _hash_files
    except BaseException:
        for _, fh in opened:
            fh.close()
        raise
    return opened


def _hash_files(opened: list[tuple[str, IO[bytes]]]) -> tuple[str, int, dict[str, str]]:
    """Folder hash as :func:`rlhf_audit_kit.hash_artifact` defines it, total size, and each file's hash."""
    manifest, total, each = hashlib.sha256(), 0, {}
    try:
        for rel, fh in opened:
            h = hashlib.sha256()
            while block := fh.read(_BLOCK):
                h.update(block)
                total += len(block)
            each[rel] = "sha256:" + h.hexdigest()
            manifest.update(f"{h.hexdigest()}  {rel}\n".encode("utf-8"))
    finally:
        for _, fh in opened:
            fh.close()
    return "sha256:" + manifest.hexdigest(), total, each


def _numbers(logs: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The finite numeric metrics of a log call, and the non-finite ones as text."""
    good, bad = {}, {}
    for k, v in logs.items():
        if k in _SKIP:
            continue
        if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):  # numpy scalars, 0-d tensors
            v = v.item()
        if isinstance(v, (int, float)):
            if math.isfinite(v):
                good[str(k)] = float(v)
            else:
                bad[str(k)] = str(v)
    return good, bad


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("rlhf-audit-kit", "trl", "transformers", "torch", "accelerate", "datasets", "peft"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _find_trainer():
    """The Trainer running this callback: the ``self`` of a caller a few frames up (the training
    loop calls ``callback_handler.on_train_begin``, which calls us)."""
    from transformers import Trainer
    frame = sys._getframe(2)
    for _ in range(10):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
    return None


class AuditCallback(TrainerCallback):
    """Record a training run into an audit store while it trains (see the module doc).

    Parameters
    ----------
    store
        An open :class:`~rlhf_audit_kit.AuditStore`, or the path of one: a path is opened (and closed
        at the end) by the main process only, which is what a multi-process run needs.
    run_id
        The run's id (default: ``args.run_name``, else the trainer class and the start time).
    algorithm
        Overrides the algorithm named from the trainer class (``DPOTrainer`` -> ``dpo``, ...).
    keys
        Keys folder for a store given by path.
    signer, passphrase
        When given, ``on_train_end`` signs a snapshot (a Signer or a keys folder); it is then
        ``callback.snapshot``.
    trainer
        The trainer, if the callback should not find it from the training loop.
    datasets
        Register the trainer's train/eval datasets (default True).
    recorder
        Options of the :class:`~rlhf_audit_kit.recorder.Recorder` (``batch_size``, ``interval``, ...).
    """

    def __init__(self, store: Any, *, run_id: str | None = None, algorithm: str | None = None,
                 keys: Any = None, signer: Any = None, passphrase: str | None = None, trainer: Any = None,
                 datasets: bool = True, recorder: dict[str, Any] | None = None):
        self._target, self._keys = store, keys
        self._run_id, self._algorithm = run_id, algorithm
        self._signer, self._passphrase = signer, passphrase
        self._trainer, self._datasets = trainer, datasets
        self._rec_options = dict(recorder or {})
        self.store = self.rec = None
        self.run_id: str | None = None
        self.algorithm: str | None = None
        self.snapshot = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: list[Future] = []
        self._steps: dict[tuple[str, str], set[int]] = {}  # (kind, run) -> steps recorded (this run, resumed)
        self._summary: dict[str, float] = {}
        self._last_checkpoint: str | None = None
        self._base_model: str | None = None

    # ------------------------------------------------------------------ callback events
    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, eval_dataloader=None, **kw):
        if not state.is_world_process_zero:
            return
        trainer = self._trainer or _find_trainer()
        if isinstance(self._target, (str, Path)):
            from ..store import open_store
            self.store = open_store(self._target, keys=self._keys)
        else:
            self.store = self._target
        self.rec = self.store.recorder(**self._rec_options)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlhf-audit-hash")
        self._summary, self._last_checkpoint, self.snapshot = {}, None, None  # a second train() starts afresh
        cls = type(trainer) if trainer is not None else None
        name = cls.__name__ if cls else "unknown"
        self.run_id = self._run_id or args.run_name or f"{name}-{_now():%Y%m%dT%H%M%SZ}"
        self.algorithm = self._algorithm or ALGORITHMS.get(name) or name.lower().removesuffix("trainer") or "unknown"
        public = public_config(args.to_dict())
        model_info = None
        if model is not None:
            config = public_config(model.config.to_dict()) if getattr(model, "config", None) is not None else {}
            self._base_model = getattr(getattr(model, "config", None), "_name_or_path", None) or None
            model_info = {"class": type(model).__name__, "name_or_path": self._base_model,
                          "parameters": int(sum(p.numel() for p in model.parameters())),
                          "config_hash": _content_hash(config)}
        if state.global_step:  # a resumed run: steps recorded before the interruption are in the store
            for kind in ("train_step", "checkpoint"):
                for run in (self.run_id, f"{self.run_id}/eval"):
                    self._steps[(kind, run)] = set(self.store.sql(
                        f"SELECT step FROM {kind} WHERE run_id = ?", [run])["step"].to_list())
        self.rec.log({"kind": "custom", "name": "training_run", "payload": {
            "run_id": self.run_id, "algorithm": self.algorithm,
            "trainer": f"{cls.__module__}.{name}" if cls else name, "versions": _versions(),
            "args": public, "args_hash": _content_hash(public), "model": model_info,
            "world_size": int(getattr(args, "world_size", 1)), "start_step": int(state.global_step)}})
        if self._datasets:
            for role, data in (("train", getattr(trainer, "train_dataset", None) or getattr(
                    train_dataloader, "dataset", None)), ("eval", getattr(trainer, "eval_dataset", None))):
                for sub, ds in (data.items() if isinstance(data, dict) else [("", data)]):
                    if ds is not None:
                        self._submit(self._register_dataset, f"{self.run_id}/{role}" + (f"/{sub}" if sub else ""),
                                     ds, f"{name}.{role}_dataset")

    def on_log(self, args, state, control, logs=None, **kw):
        if self.rec is None or not logs:
            return
        self._raise_task_errors()
        if any(str(k).startswith("eval_") for k in logs):
            return  # on_evaluate records the eval metrics
        if "train_runtime" in logs:  # the trainer's final summary
            self._summary = _numbers(logs)[0]
            return
        self._log_metrics(self.run_id, state.global_step, logs, state.epoch)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if self.rec is None or not metrics:
            return
        self._raise_task_errors()
        self._log_metrics(f"{self.run_id}/eval", state.global_step, metrics, state.epoch)

    def on_save(self, args, state, control, **kw):
        if self.rec is None:
            return
        self._raise_task_errors()
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        self._submit(self._record_checkpoint, folder.resolve(), int(state.global_step), _open_folder(folder), _now())

    def on_train_end(self, args, state, control, **kw):
        if self.rec is None:
            return
        rec = self.rec
        try:
            try:
                self._pool.shutdown(wait=True)  # the dataset and checkpoint hashes log their events
                self.rec = None
                self._raise_task_errors()
                rec.log({"kind": "custom", "name": "training_run_end", "payload": {
                    "run_id": self.run_id, "global_step": int(state.global_step), "summary": self._summary,
                    "last_checkpoint": self._last_checkpoint}})
            finally:
                self.rec = None
                rec.close()  # flush: every event logged is committed (or its error raised here)
            if self._signer is not None:
                self.snapshot = self.store.snapshot(self._signer, passphrase=self._passphrase)
        finally:
            if self.store is not self._target:
                self.store.close()

    # ------------------------------------------------------------------ recording
    def _log_metrics(self, run: str, step: int, logs: dict[str, Any], epoch: float | None) -> None:
        metrics, bad = _numbers(logs)
        at = _now()
        if bad:
            self.rec.log({"kind": "custom", "name": "non_finite_metrics",
                          "payload": {"run_id": run, "step": int(step), "values": bad}})
        if not metrics:
            return
        epoch = logs.get("epoch", epoch)
        seen = self._steps.setdefault(("train_step", run), set())
        if step in seen:  # the same step logged again: kept, but it cannot be a second train_step
            self.rec.log({"kind": "custom", "name": "train_log", "payload": {
                "run_id": run, "step": int(step), "epoch": epoch, "metrics": metrics, "logged_at": at.isoformat()}})
            return
        self.rec.log({"kind": "train_step", "run_id": run, "algorithm": self.algorithm, "step": int(step),
                      "metrics": metrics, "epoch": epoch, "logged_at": at})
        seen.add(step)

    def _register_dataset(self, name: str, data: Any, source: str) -> None:
        fp = dataset_fingerprint(data)
        rows, content = fp if fp else (None, None)
        version = content[7:19] if content else "unhashed"
        if self.store.sql("SELECT 1 FROM dataset WHERE name = ? AND version = ?", [name, version]).height:
            return  # the same rows are registered under this name already (a resumed run)
        self.rec.log({"kind": "dataset", "name": name, "version": version, "row_count": rows, "content_hash": content,
                      "source": source,
                      "description": "rows as the trainer received them; content_hash: SHA-256 of their "
                                     "Arrow IPC stream (rlhf_audit_kit.integrations.transformers.dataset_fingerprint)"})

    def _record_checkpoint(self, folder: Path, step: int, opened: list, saved_at: dt.datetime) -> None:
        content, size, files = _hash_files(opened)
        uri = folder.as_uri()
        self.rec.log({"kind": "custom", "name": "checkpoint_files",
                      "payload": {"run_id": self.run_id, "step": step, "uri": uri, "files": files}})
        seen = self._steps.setdefault(("checkpoint", self.run_id), set())
        if step not in seen:
            self.rec.log({"kind": "checkpoint", "run_id": self.run_id, "step": step, "uri": uri,
                          "content_hash": content, "size_bytes": size, "base_model": self._base_model,
                          "parent": self._last_checkpoint, "saved_at": saved_at})
            seen.add(step)
        self._last_checkpoint = content

    def _submit(self, fn, *args) -> None:
        self._tasks.append(self._pool.submit(fn, *args))

    def _raise_task_errors(self) -> None:
        """A failed background task (dataset or checkpoint hash) fails the next callback."""
        done = [t for t in self._tasks if t.done()]
        self._tasks = [t for t in self._tasks if not t.done()]
        for t in done:
            t.result()
