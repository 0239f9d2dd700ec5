"""The driver's checks before any Ray Train worker starts: a student without a chat template,
and `--resume` onto checkpoints written under other settings. No Ray cluster is started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdist.errors import UsageError
from kdist.train.loop import TrainSpec
from kdist.train.trainer import (
    check_chat_template,
    check_resume_compatible,
    run_file,
    run_training,
    write_run_identity,
)

TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def base_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model saved again with a tokenizer that has no chat template (a base model)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("base-model")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, out / name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    return out


def make_spec(tmp_path: Path, model_dir: Path, **train) -> TrainSpec:
    train_path = tmp_path / "train.parquet"
    if not train_path.exists():  # check_enough_rows reads the row count only
        pq.write_table(pa.table({"id": [str(i) for i in range(64)]}), train_path)
    return TrainSpec(model_dir=str(model_dir), train_path=str(train_path), eval_path=None,
                     out_dir=str(tmp_path / "out"), train=train, label="student")


def test_a_base_model_without_template_is_refused_in_one_line(tmp_path, base_model_dir):
    with pytest.raises(UsageError, match="has no chat template.*student.chat_template") as err:
        check_chat_template(make_spec(tmp_path, base_model_dir))
    assert "\n" not in str(err.value)


def test_the_configs_template_makes_a_base_model_trainable(tmp_path, base_model_dir):
    spec = make_spec(tmp_path, base_model_dir)
    spec.chat_template = TEMPLATE
    check_chat_template(spec)


def test_a_broken_template_is_refused_in_one_line(tmp_path, base_model_dir):
    spec = make_spec(tmp_path, base_model_dir)
    spec.chat_template = "{% for m in messages %}{{ m['content'] }"
    with pytest.raises(UsageError, match="does not render") as err:
        check_chat_template(spec)
    assert "\n" not in str(err.value)


def test_the_workers_use_the_configs_template(tmp_path, base_model_dir):
    """What the worker loads: the config's template, which the saved model then carries."""
    from kdist.train.loop import _load_student

    spec = make_spec(tmp_path, base_model_dir, method="full")
    spec.chat_template = TEMPLATE
    tokenizer, _ = _load_student(spec, spec.section())
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                         tokenize=False) == "user: hi\n"


def test_run_training_refuses_before_any_worker(tmp_path, base_model_dir):
    with pytest.raises(UsageError, match="no chat template"):
        run_training(make_spec(tmp_path, base_model_dir))


# --- resume -----------------------------------------------------------------------------------


def written(tmp_path: Path, model_dir: Path, **train) -> Path:
    spec = make_spec(tmp_path, model_dir, **train)
    storage = Path(spec.out_dir) / "ray_train"
    write_run_identity(spec, storage)
    (storage / spec.label).mkdir()  # where Ray Train keeps the checkpoints
    return storage


def test_resume_with_the_same_settings_passes(tmp_path, tiny_model_dir):
    storage = written(tmp_path, tiny_model_dir, lora={"r": 8})
    # Settings a run may change on resume: more steps, another learning rate.
    check_resume_compatible(make_spec(tmp_path, tiny_model_dir, lora={"r": 8}, max_steps=900,
                                      learning_rate=1e-4), storage)


@pytest.mark.parametrize("changed, named", [
    ({"lora": {"r": 32}}, "train.lora.r (8 -> 32)"),
    ({"lora": {"r": 8, "target_modules": ["q_proj"]}}, "train.lora.target_modules"),
    ({"method": "full"}, "train.method ('lora' -> 'full')"),
    ({"lora": {"r": 8}, "max_seq_len": 128}, "train.max_seq_len (96 -> 128)"),
    ({"lora": {"r": 8}, "kd": {"mode": "logit"}}, "train.kd.mode ('sequence' -> 'logit')"),
])
def test_resume_under_other_settings_names_what_changed(tmp_path, tiny_model_dir, changed,
                                                        named):
    storage = written(tmp_path, tiny_model_dir, lora={"r": 8})
    with pytest.raises(UsageError) as err:
        check_resume_compatible(make_spec(tmp_path, tiny_model_dir, **changed), storage)
    assert named in str(err.value) and "without --resume" in str(err.value)
    assert "\n" not in str(err.value)


def test_resume_with_another_student_is_refused(tmp_path, tiny_model_dir, base_model_dir):
    storage = written(tmp_path, tiny_model_dir)
    with pytest.raises(UsageError, match=r"student\.model \(.*tiny-model.* -> .*base-model"):
        check_resume_compatible(make_spec(tmp_path, base_model_dir), storage)


def test_a_student_rebuilt_at_the_same_path_is_another_student(tmp_path, tiny_model_dir):
    model = tmp_path / "student"
    shutil.copytree(tiny_model_dir, model)
    storage = written(tmp_path, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(UsageError, match=r"student\.config \("):
        check_resume_compatible(make_spec(tmp_path, model), storage)


def test_run_training_resume_refuses_before_any_worker(tmp_path, tiny_model_dir):
    storage = written(tmp_path, tiny_model_dir, lora={"r": 8})
    spec = make_spec(tmp_path, tiny_model_dir, lora={"r": 4})
    spec.resume = True
    with pytest.raises(UsageError, match=r"train\.lora\.r \(8 -> 4\)"):
        run_training(spec)
    assert json.loads(run_file(spec, storage).read_text())["train.lora.r"] == 8  # untouched


def test_offline_topk_without_a_teacher_tokenizer_is_refused_before_training(tmp_path):
    from kdist.errors import UsageError
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import check_vocabularies

    spec = TrainSpec(model_dir=str(tmp_path), train_path="x", eval_path=None,
                     out_dir=str(tmp_path / "out"),
                     train={"kd": {"mode": "logit", "teacher_logits": "offline"}},
                     teacher_model_dir="no-such-org/no-such-teacher")  # the hub is offline here
    with pytest.raises(UsageError, match="train.kd.cross_tokenizer uld or align") as err:
        check_vocabularies(spec)
    assert "\n" not in str(err.value)


def stored_rows(path: Path, entries: list, schema=None) -> str:
    from kdist.rows import SFT_SCHEMA

    rows = [{"id": str(i), "messages": [{"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "B"}],
             "top_logprobs": entries} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema or SFT_SCHEMA), path)
    return str(path)


def test_offline_topk_across_tokenizers_needs_stored_strings_before_training(tmp_path):
    """Ids only (kind vllm, or a server asked for token ids; also stores written before the
    strings were stored) are refused in one line naming what to do; strings pass."""
    from kdist.train.trainer import check_vocabularies

    def spec(train_path: str) -> TrainSpec:
        return TrainSpec(model_dir=str(tmp_path), train_path=train_path, eval_path=None,
                         out_dir=str(tmp_path / "out"), teacher_model_dir="remote-teacher",
                         train={"kd": {"mode": "logit", "teacher_logits": "offline",
                                       "cross_tokenizer": "align"}})

    ids_only = stored_rows(tmp_path / "ids.parquet", [{"token_ids": [7, 9], "logprobs": [-0.2, -1.9]}])
    old_schema = pa.schema([("id", pa.string()), ("messages", pa.list_(pa.struct(
        [("role", pa.string()), ("content", pa.string())]))), ("top_logprobs", pa.list_(pa.struct(
            [("token_ids", pa.list_(pa.int64())), ("logprobs", pa.list_(pa.float32()))])))])
    old = stored_rows(tmp_path / "old.parquet", [{"token_ids": [7], "logprobs": [-0.2]}], old_schema)
    for path in (ids_only, old):
        with pytest.raises(UsageError, match="no row's top-k has token strings with offsets.*"
                                             "teacher kind hf.*kind vllm stores ids only") as err:
            check_vocabularies(spec(path))
        assert "\n" not in str(err.value) and path in str(err.value)
    strings = stored_rows(tmp_path / "strings.parquet", [
        {"token_ids": [], "logprobs": [-0.2, -1.9], "tokens": ["B", "A"], "token": "B", "offset": 0}])
    check_vocabularies(spec(strings))  # passes: the workers lay the strings on the student
