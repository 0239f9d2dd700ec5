"""The offline demo: the whole flow on a laptop, with no GPU, no keys and no downloads.

1. prepare a seeded multiple-choice task (kdist.data.synthetic);
2. train a tokenizer on it and build a teacher and a smaller student from configs;
3. train the teacher on labelled data through the same Ray Train + DeepSpeed path, until it
   reaches a target validation accuracy (or a time cap), and refuse to go on with a teacher
   that is not clearly above chance: distilling from it would teach nothing;
4. fine-tune a copy of the teacher into a pairwise judge on comparisons built from the same
   labelled split (kdist.demo_judge), served to evaluation as an `hf` endpoint;
5. run the real flow: the teacher answers the unlabelled pool, the rule judge and the filter
   keep parsable answers, the student is LoRA-tuned on them, and base student, teacher and
   distilled student are scored on a held-out split and compared by the judge in both orders.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import yaml

from kdist import pipeline, storage, templating
from kdist.config import ConfigError, RunConfig, apply_override, read_yaml, validate_config
from kdist.data.synthetic import vocabulary_text
from kdist.rows import PROMPT_SCHEMA, SFT_SCHEMA
from kdist.runtime import output_dir, ray_session
from kdist.stages import STAGE_NAMES

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/demo.yaml"
TEACHER_TRAIN_SPLIT = "teacher_train"
JUDGE_TEMPLATE = Path(__file__).parent / "templates" / "demo_pairwise.j2"


def run_demo(config_path: str | None, overrides: list[str], resume: bool = False) -> int:
    started = time.monotonic()
    config = load_demo_config(config_path, overrides)
    root = Path(output_dir(config))
    if resume and _finished_earlier(config):
        metrics = storage.read_json(str(root / "metrics.json"))
        if _refuses(metrics["teacher_val_accuracy"], config):
            return 1
        print("every step finished earlier with the same settings: nothing to redo", flush=True)
        _print_summary(metrics, root)
        return 0
    with ray_session(config):
        pipeline.run_stages(config, ["prepare"], resume=resume)
        accuracies = _prepare_models(config, resume)
        if _refuses(accuracies["teacher_val_accuracy"], config):
            return 1
        if accuracies.get("judge_val_accuracy") is not None:
            print(f"judge validation accuracy (pairs with one right answer): "
                  f"{accuracies['judge_val_accuracy']:.3f}", flush=True)
        pipeline.run_stages(config, STAGE_NAMES[1:], resume=resume)
    metrics = _write_metrics(config, root, accuracies, time.monotonic() - started)
    _print_summary(metrics, root)
    return 0


def _refuses(teacher_accuracy: float, config: RunConfig) -> bool:
    """Print the teacher's accuracy; True (and say why) when it is too weak to distil from."""
    print(f"teacher validation accuracy: {teacher_accuracy:.3f}", flush=True)
    if teacher_accuracy >= config.demo.min_teacher_accuracy:
        return False
    print(
        f"kdist demo: the teacher reached only {teacher_accuracy:.3f} validation accuracy "
        f"(demo.min_teacher_accuracy is {config.demo.min_teacher_accuracy}); distilling "
        "from it would teach nothing. Train it longer (demo.teacher_train.max_seconds).",
        flush=True,
    )
    return True


def _finished_earlier(config: RunConfig) -> bool:
    dirs, fingerprints = pipeline.stage_dirs(config), pipeline.stage_fingerprints(config)
    root = Path(output_dir(config))
    models = root / "models"
    return (
        storage.is_done(str(models), _teacher_fingerprint(config))
        and (config.demo.judge_train is None or storage.is_done(str(models / "judge"), _judge_fingerprint(config)))
        and all(storage.is_done(dirs[stage], fingerprints[stage]) for stage in STAGE_NAMES)
        and (root / "metrics.json").exists()
    )


def _teacher_fingerprint(config: RunConfig) -> str:
    """What the tokenizer, the teacher and the base student depend on. The judge's template is
    in it because the tokenizer is trained on judge prompts too; the judge's training is not,
    so that a change to it redoes the judge alone."""
    # min_teacher_accuracy is not in it either: it decides whether to go on, not what is built.
    demo = config.demo.model_dump(exclude={"judge_train", "min_teacher_accuracy"})
    return storage.fingerprint(*templating.by_content(
        [config.data.model_dump(), demo, config.student.model_dump(), config.run.seed, {"template": _judge_template(config)}]
    ))


def _judge_fingerprint(config: RunConfig) -> str:
    judge_train = config.demo.judge_train.model_dump() if config.demo.judge_train is not None else None
    return storage.fingerprint(_teacher_fingerprint(config), judge_train)


def load_demo_config(config_path: str | None, overrides: list[str]) -> RunConfig:
    path = Path(config_path or _default_config_path())
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    for override in overrides:
        apply_override(raw, override)
    raw.setdefault("demo", {})
    # The demo builds its own models under the run directory; name them there by default.
    root = Path(raw.get("run", {}).get("output_dir", "runs/demo"))
    raw.setdefault("teacher", {}).setdefault("model", str(root / "models/teacher/model"))
    raw.setdefault("student", {}).setdefault("model", str(root / "models/student_base"))
    judge = raw.get("evaluate", {}).get("judge")
    if isinstance(judge, dict) and raw["demo"].get("judge_train") is not None:
        judge.setdefault("model", str(root / "models/judge/model"))
        # A short pairwise prompt of the same variables: the rubric's instructions would make
        # the judge's rows four times longer, and its training as much slower, on 2 cores.
        judge.setdefault("template", str(JUDGE_TEMPLATE))
    return validate_config(raw)


def is_demo_config(config_path: str) -> bool:
    """A demo config names no models: the demo builds them (its `demo` section says how)."""
    try:
        raw = read_yaml(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # the normal loader reports it
    return isinstance(raw, dict) and "demo" in raw


def _default_config_path() -> Path:
    here = Path(DEFAULT_CONFIG)
    return here if here.exists() else Path(__file__).resolve().parents[1] / DEFAULT_CONFIG


def _prepare_models(config: RunConfig, resume: bool) -> dict[str, float | None]:
    """Tokenizer, teacher (trained), base student and judge (trained), each step skipped on
    --resume when done earlier with the same settings; the teacher's and the judge's
    validation accuracy."""
    models = Path(output_dir(config)) / "models"
    accuracies = {"teacher_val_accuracy": _teacher_step(config, models, resume), "judge_val_accuracy": None}
    if config.demo.judge_train is not None and accuracies["teacher_val_accuracy"] >= config.demo.min_teacher_accuracy:
        accuracies["judge_val_accuracy"] = _judge_step(config, models, resume)
    return accuracies


def _teacher_step(config: RunConfig, models: Path, resume: bool) -> float:
    return _resumable_step("demo models", models, _teacher_fingerprint(config), "teacher_val_accuracy",
                           lambda: _build_and_train_teacher(config, models), resume)


def _judge_step(config: RunConfig, models: Path, resume: bool) -> float:
    return _resumable_step("demo judge", models / "judge", _judge_fingerprint(config), "judge_val_accuracy",
                           lambda: _train_judge(config, models), resume)


def _resumable_step(name: str, directory: Path, fingerprint: str, key: str, run: Callable[[], float],
                    resume: bool) -> float:
    """`run`'s accuracy, recorded under `key` in the done-marker of `directory`; on --resume
    read back from a marker of the same fingerprint instead of running again."""
    done = storage.done_summary(str(directory), fingerprint) if resume else None
    if done is not None:
        log.info("%s: done earlier with the same settings, skipped (--resume)", name)
        return done[key]
    storage.clear_done(str(directory))
    accuracy = run()
    storage.mark_done(str(directory), fingerprint, {key: accuracy})
    return accuracy


def _build_and_train_teacher(config: RunConfig, models: Path) -> float:
    """The tokenizer, the teacher and the base student built from configs; the teacher's
    validation accuracy after its training."""
    from kdist import modelkit
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import run_training

    prompts = _prompts(config)
    tokenizer = modelkit.train_tokenizer(_tokenizer_corpus(prompts, _judge_template(config)),
                                         config.demo.tokenizer_vocab_size, models / "tokenizer")
    modelkit.build_llama(config.demo.teacher_build, tokenizer, models / "teacher_init", config.run.seed)
    if config.student.build is None:
        raise ConfigError("the demo builds its student: set student.build (hidden_size, ...)")
    modelkit.build_llama(config.student.build, tokenizer, Path(config.student.model), config.run.seed + 1)
    for split in (TEACHER_TRAIN_SPLIT, "validation"):
        storage.write_table(str(models / f"labelled_{split}.parquet"), _labelled_rows(prompts, split))
    spec = TrainSpec(
        model_dir=str(models / "teacher_init"),
        train_path=str(models / f"labelled_{TEACHER_TRAIN_SPLIT}.parquet"),
        eval_path=str(models / "labelled_validation.parquet"),
        out_dir=str(models / "teacher"),
        train=config.demo.teacher_train.model_dump(mode="json"),
        seed=config.run.seed,
        label="teacher",
    )
    return run_training(spec)["val_accuracy"]


def _prompts(config: RunConfig) -> list[dict[str, Any]]:
    # In id order: the tokenizer's merges (ties among equal counts) and the labelled rows must
    # not depend on the order the prompts were written in.
    table = storage.read_table(pipeline.stage_dirs(config)["prepare"], schema=PROMPT_SCHEMA)
    return table.sort_by("id").to_pylist()


def _train_judge(config: RunConfig, models: Path) -> float:
    """The teacher fine-tuned on pairwise verdicts (kdist.demo_judge); its accuracy on
    validation pairs with one right answer. Everything it needs is read back from disk, so a
    resumed run can redo the judge alone."""
    from transformers import AutoTokenizer

    from kdist import demo_judge
    from kdist.train.loop import TrainSpec
    from kdist.train.trainer import run_training

    prompts = _prompts(config)
    junk = demo_judge.junk_texts(AutoTokenizer.from_pretrained(str(models / "tokenizer")), seed=config.run.seed)
    for split in (TEACHER_TRAIN_SPLIT, "validation"):
        rows = demo_judge.pairwise_rows(prompts, split, junk, config.run.seed, _judge_template(config))
        storage.write_table(str(models / f"judge_{split}.parquet"), rows)
    spec = TrainSpec(
        model_dir=str(models / "teacher" / "model"),
        train_path=str(models / f"judge_{TEACHER_TRAIN_SPLIT}.parquet"),
        eval_path=str(models / "judge_validation.parquet"),
        out_dir=str(models / "judge"),
        train=config.demo.judge_train.model_dump(mode="json"),
        seed=config.run.seed,
        label="judge",
    )
    return run_training(spec)["val_accuracy"]


def _judge_template(config: RunConfig) -> str | None:
    return config.evaluate.judge.template if config.evaluate.judge is not None else None


def _tokenizer_corpus(prompts: list[dict[str, Any]], judge_template: str | None) -> list[str]:
    from kdist import demo_judge

    texts = [m["content"] for p in prompts for m in p["messages"]]
    return vocabulary_text() + texts + demo_judge.corpus(prompts, judge_template)


def _labelled_rows(prompts: list[dict[str, Any]], split: str) -> pa.Table:
    rows = [
        {"id": p["id"], "top_logprobs": None,
         "messages": [*p["messages"], {"role": "assistant", "content": p["reference"]}]}
        for p in prompts
        if p["split"] == split
    ]
    return pa.Table.from_pylist(rows, schema=SFT_SCHEMA)


def _write_metrics(config: RunConfig, root: Path, accuracies: dict[str, float | None], seconds: float) -> dict:
    evaluation = storage.read_json(storage.join(pipeline.stage_dirs(config)["evaluate"], "metrics.json"))
    metrics = {
        "accuracy": evaluation["accuracy"],
        "recovered": evaluation["recovered"].get("accuracy"),
        "comparisons": evaluation["comparisons"],
        "eval_split": evaluation["split"],
        "eval_rows": evaluation["rows"],
        **accuracies,
        "wall_seconds": round(seconds, 1),  # of this invocation (less when --resume skipped work)
        "stage_seconds": storage.read_json(str(root / "stage_seconds.json")),
    }
    storage.write_json(str(root / "metrics.json"), metrics)
    return metrics


def _print_summary(metrics: dict[str, Any], root: Path) -> None:
    accuracy = metrics["accuracy"]
    print(f"\naccuracy on {metrics['eval_rows']} held-out questions (chance is 0.2):")
    for model in ("base", "teacher", "student"):
        print(f"  {model:8s} {accuracy.get(model, float('nan')):.3f}")
    if metrics.get("recovered") is not None:
        print(f"recovered share of the teacher's gain: {metrics['recovered']:.3f}")
    for key, c in (metrics.get("comparisons") or {}).items():
        print(f"judge, {c['first']} vs {c['second']} ({c['n']} questions, both orders): win rate "
              f"{_rate(c['win_rate'])} of non-tied, tie {_rate(c['tie_rate'])}, flip "
              f"{_rate(c['flip_rate'])}; judge accuracy {_rate(c['judge_accuracy'])}")
    print(f"wall time {metrics['wall_seconds']:.0f}s; outputs in {root} "
          f"(metrics.json, eval/report.md)", flush=True)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
