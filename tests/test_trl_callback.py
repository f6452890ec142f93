"""AuditCallback records real TRL training runs: a tiny randomly initialised Llama (config and tokenizer
made here, nothing downloaded) trained for a few CPU steps by DPOTrainer and RewardTrainer."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest

try:
    import trl  # noqa: F401 - the `train` extra
except ImportError:
    if os.environ.get("CI"):  # CI installs it (.ci/run): missing there is a failure
        raise
    pytest.skip("needs the train extra: pip install -e '.[train]'", allow_module_level=True)

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification,  # noqa: E402
                          PreTrainedTokenizerFast, TrainerControl, TrainerState, TrainingArguments)
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # noqa: E402

from rlhf_audit_kit import hash_artifact, open_store  # noqa: E402
from rlhf_audit_kit.integrations.transformers import (AuditCallback, _hash_files, _open_folder,  # noqa: E402
                                                      dataset_fingerprint)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SECRET = "hf_" + "s3cr3tT0kenValue" * 3
SUBJECTS = ["sky", "sea", "tree", "cat", "dog", "sun", "moon", "rain"]
PAIRS = [{"prompt": f"tell me about the {w}", "chosen": f" the {w} is lovely and calm",
          "rejected": f" no {w} go away"} for w in SUBJECTS]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([t for r in PAIRS for t in r.values()],
                            trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<eos>", "<bos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>", bos_token="<bos>")


def tiny_config(tokenizer, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id, **kw)


COMMON = dict(max_steps=4, per_device_train_batch_size=2, per_device_eval_batch_size=2, logging_steps=1,
              save_steps=2, eval_strategy="steps", eval_steps=2, report_to=[], seed=0, use_cpu=True, bf16=False,
              disable_tqdm=True, hub_token=SECRET)


def check_recorded(store, trainer, out: Path, run: str, algorithm: str) -> None:
    """What the acceptance criteria ask: one train_step per logged step with the logged values, eval
    metrics, one checkpoint per saved folder whose hashes match the files, the datasets, no secret."""
    history = trainer.state.log_history
    train_logs = [h for h in history if not any(k.startswith("eval_") for k in h) and "train_runtime" not in h]
    eval_logs = [h for h in history if any(k.startswith("eval_") for k in h)]
    steps = store.sql("SELECT step, algorithm, epoch, logged_at, map_entries(metrics) AS m FROM train_step "
                      "WHERE run_id = ? ORDER BY step", [run])
    assert steps["step"].to_list() == [h["step"] for h in train_logs] == [1, 2, 3, 4]
    assert set(steps["algorithm"]) == {algorithm} and steps["logged_at"].null_count() == 0
    for row, h in zip(steps.iter_rows(named=True), train_logs):
        assert {e["key"]: e["value"] for e in row["m"]} == {k: v for k, v in h.items() if k not in ("epoch", "step")}
        assert row["epoch"] == h["epoch"]
    evals = store.sql("SELECT step, map_entries(metrics) AS m FROM train_step WHERE run_id = ? ORDER BY step",
                      [f"{run}/eval"])
    assert evals["step"].to_list() == [h["step"] for h in eval_logs] == [2, 4]
    assert [{e["key"]: e["value"] for e in m} for m in evals["m"]] == [
        {k: v for k, v in h.items() if k not in ("epoch", "step")} for h in eval_logs]

    folders = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = store.sql("SELECT step, uri, content_hash, size_bytes, saved_at, parent FROM checkpoint "
                      "WHERE run_id = ? ORDER BY step", [run])
    assert ckpts["step"].to_list() == [int(f.name.split("-")[1]) for f in folders] == [2, 4]
    assert ckpts["uri"].to_list() == [f.resolve().as_uri() for f in folders]
    assert ckpts["content_hash"].to_list() == [hash_artifact(f)[0] for f in folders]
    assert ckpts["size_bytes"].to_list() == [hash_artifact(f)[1] for f in folders]
    assert ckpts["parent"].to_list() == [None, ckpts["content_hash"][0]]
    assert ckpts["saved_at"].null_count() == 0
    manifests = store.sql("SELECT payload FROM custom WHERE name = 'checkpoint_files' ORDER BY seq")["payload"]
    for folder, payload in zip(folders, manifests):
        files = json.loads(payload)["files"]
        assert files == {p.relative_to(folder).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in folder.rglob("*") if p.is_file()}
        assert any(name.endswith(".safetensors") for name in files)

    ds = store.sql("SELECT name, row_count, content_hash FROM dataset ORDER BY name")
    assert ds.rows() == [(f"{run}/eval", len(trainer.eval_dataset), dataset_fingerprint(trainer.eval_dataset)[1]),
                         (f"{run}/train", len(trainer.train_dataset), dataset_fingerprint(trainer.train_dataset)[1])]
    run_event = json.loads(store.sql("SELECT payload FROM custom WHERE name = 'training_run'")["payload"].item())
    assert run_event["trainer"].endswith(type(trainer).__name__) and run_event["algorithm"] == algorithm
    assert run_event["args"]["hub_token"] == "<redacted>" and run_event["args"]["max_steps"] == 4
    assert {"trl", "transformers", "torch"} <= set(run_event["versions"])
    end = json.loads(store.sql("SELECT payload FROM custom WHERE name = 'training_run_end'")["payload"].item())
    assert end["global_step"] == 4 and end["summary"]["train_loss"] == history[-1]["train_loss"]
    entries = b"".join(store.sql("SELECT entry FROM log")["entry"].to_list())
    assert SECRET.encode() not in entries and b"s3cr3t" not in entries


def test_dpo_trainer_run_is_recorded(tmp_path, keys_dir):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = LlamaForCausalLM(tiny_config(tokenizer))
    data = Dataset.from_list(PAIRS)
    out = tmp_path / "dpo"
    callback = AuditCallback(tmp_path / "audit.duckdb", keys=keys_dir, run_id="dpo-tiny", signer=keys_dir)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=DPOConfig(output_dir=str(out), **COMMON),
                         train_dataset=data, eval_dataset=data.select(range(4)), processing_class=tokenizer,
                         callbacks=[callback])
    trainer.train()
    assert callback.snapshot is not None
    with open_store(tmp_path / "audit.duckdb", keys=keys_dir) as store:
        check_recorded(store, trainer, out, "dpo-tiny", "dpo")
        assert "rewards/margins" in store.sql("SELECT map_keys(metrics) AS k FROM train_step LIMIT 1")["k"][0]
        store.verify(callback.snapshot.vkey).raise_for_status()


def test_reward_trainer_run_is_recorded_into_an_open_store(tmp_path, keys_dir):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = LlamaForSequenceClassification(tiny_config(tokenizer, num_labels=1))
    data = Dataset.from_list([{"chosen": p["prompt"] + p["chosen"], "rejected": p["prompt"] + p["rejected"]}
                              for p in PAIRS])
    out = tmp_path / "rm"
    store = open_store(tmp_path / "audit.duckdb", keys=keys_dir)
    trainer = RewardTrainer(model=model, args=RewardConfig(output_dir=str(out), **COMMON), train_dataset=data,
                            eval_dataset=data.select(range(4)), processing_class=tokenizer,
                            callbacks=[AuditCallback(store, run_id="rm-tiny")])
    trainer.train()
    assert store.sql("SELECT count(*) FROM train_step").item() == 6  # the store stays open: the caller's
    check_recorded(store, trainer, out, "rm-tiny", "reward_model")
    store.verify(store.snapshot(keys_dir).vkey).raise_for_status()
    store.close()


def test_only_the_main_process_writes(tmp_path):
    path = tmp_path / "never.duckdb"
    cb = AuditCallback(path, run_id="r")
    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to=[], use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    state.is_world_process_zero = False
    cb.on_train_begin(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 1.0})
    cb.on_save(args, state, control)
    cb.on_train_end(args, state, control)
    assert not path.exists() and cb.rec is None


def test_dataset_fingerprint_is_the_rows_not_their_layout():
    rows = {"prompt": ["a", "b", "c", "d"], "ids": [[1], [2, 3], None, []], "score": [0.5, None, 1.0, 2.0]}
    ds = Dataset.from_dict(rows)
    table = pa.table(rows)
    assert dataset_fingerprint(ds)[0] == 4
    # a shuffled-then-reordered HF dataset (an indices mapping), a chunked table and a slice of a bigger one
    reordered = ds.select([3, 2, 1, 0]).select([3, 2, 1, 0])
    chunked = pa.concat_tables([table.slice(0, 1), table.slice(1, 3)])
    bigger = pa.concat_tables([pa.table({k: v[:1] for k, v in rows.items()}), table]).slice(1)
    hashes = {dataset_fingerprint(x)[1] for x in (reordered, chunked, bigger)}
    assert len(hashes) == 1
    assert dataset_fingerprint(ds.select([1, 0, 2, 3]))[1] not in hashes  # order is content


def test_checkpoint_hash_matches_hash_artifact_even_after_the_folder_is_gone(tmp_path):
    folder = tmp_path / "checkpoint-7"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(5 << 20))
    (folder / "sub" / "é.json").write_text("{}")
    (folder / "trainer_state.json").write_text("{}")
    expected = hash_artifact(folder)
    opened = _open_folder(folder)
    for p in sorted(folder.rglob("*"), reverse=True):  # the trainer rotates the checkpoint away
        p.unlink() if p.is_file() else p.rmdir()
    folder.rmdir()
    content, size, files = _hash_files(opened)
    assert (content, size) == expected and len(files) == 3
