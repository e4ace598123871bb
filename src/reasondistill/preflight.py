"""Checks before the first stage: ``reasondistill check CONFIG [key=value ...]`` (also run by ``run``).

Why: a config can be valid field by field and still fail hours in: a soft-distillation student
whose tokenizer is not the teacher's is refused at its train stage, after generation, curation and
the other students; a student that is taught one end-of-sequence token and stopped on another
rambles to the length limit; a prompt that leaves no room in the model's context is cut off; a
quantize group size that does not fit a layer stops the run after training and evaluation. Each
check here reads only configs and tokenizers (no weights: layer shapes come from a model on the
meta device), and each problem is one line naming the config key, so all of them can be fixed at
once. Exit code 2 when there is a problem. ``check`` also asks an API teacher's server once for
its models (``GET {base_url}/models``): a dead port or a base_url without ``/v1`` is found in a
second, not after minutes of retries (``run`` does not ask: a finished run does not need its server).

    reasondistill check configs/demo.yaml
    problems = preflight(load_config("configs/demo.yaml"))   # [] when the run can start

Tests: tests/test_preflight.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

FILE_KEYS = ("path", "train_path", "test_path")  # task fields naming a local file or directory


def logit_teacher(cfg) -> tuple[str, str] | None:
    """(config key, model) of the teacher whose logits soft students learn from: ``logit_teacher``
    when the config has one, else a local (``kind: hf``) ``teacher``; None when there is none."""
    from reasondistill.teachers.logits import logit_teacher_config

    spec = logit_teacher_config(cfg)
    if spec is None:
        return None
    return ("logit_teacher" if cfg.logit_teacher is not None else "teacher"), spec.model


def weights_source(cfg, s):
    """The student section whose ``model`` / ``init`` gives ``s`` its architecture and tokenizer: ``s``
    itself, or for a policy student with ``policy.start_from`` the student it names (followed along a
    chain), or a copy of ``s`` whose ``model`` is the directory ``start_from`` names."""
    names = {x.name: x for x in cfg.students}
    while s.model is None and s.init is None and s.policy is not None and s.policy.start_from:
        start = s.policy.start_from  # an earlier student (config.py checks), so the chain ends
        if start not in names:  # a model directory
            return s.model_copy(update={"model": start})
        s = names[start]
    return s


def student_tokenizer(cfg, s) -> str:
    """The tokenizer a student is built and trained with: its model's, its ``tokenizer``, else the logit
    teacher's (``logit_teacher``) when the config has one, else the teacher's. A policy student with
    ``start_from``: that of the weights it starts from."""
    s = weights_source(cfg, s)
    lt = cfg.logit_teacher
    return s.model or s.tokenizer or (lt.model if lt is not None else cfg.teacher.model)


class _Models:
    """Tokenizers, configs and generation configs by name, each loaded once (no weights)."""

    def __init__(self):
        self.cache: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, name: str, load: Callable[[str], Any]):
        key = (kind, name)
        if key not in self.cache:
            try:
                self.cache[key] = load(name)
            except Exception as exc:  # noqa: BLE001 - reported as a problem line, never a crash
                self.cache[key] = exc
        return self.cache[key]

    def tokenizer(self, name: str):
        from reasondistill.models import load_tokenizer

        return self._get("tokenizer", name, load_tokenizer)

    def config(self, name: str):
        from transformers import AutoConfig

        from reasondistill.models import resolve

        return self._get("config", name, lambda n: AutoConfig.from_pretrained(resolve(n)))

    def generation_config(self, name: str):
        from transformers import GenerationConfig

        from reasondistill.models import resolve

        def load(n):
            path = Path(resolve(n))
            if path.is_dir() and not (path / "generation_config.json").exists():
                return None
            return GenerationConfig.from_pretrained(str(path))
        got = self._get("generation", name, load)
        return None if isinstance(got, Exception) else got


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _context(config) -> int | None:
    text = getattr(config, "get_text_config", lambda: config)()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def preflight(cfg, probe: bool = True) -> list[str]:
    """Every problem found in ``cfg`` (a RunConfig), one line each; [] when the run can start.
    ``probe``: also ask an API teacher's server for its models."""
    return _Checker(cfg, probe).run()


class _Checker:
    def __init__(self, cfg, probe: bool = True):
        self.cfg, self.models, self.problems, self.reported, self.probe = cfg, _Models(), [], set(), probe
        self._prompts: dict[str, list[str]] | None = None

    def add(self, line: str) -> None:
        self.problems.append(line)

    def run(self) -> list[str]:
        self.paths()
        teacher = self.teacher()
        for i, s in enumerate(self.cfg.students):
            self.student(f"students.{i} ({s.name})", s, teacher)
        self.generation_lengths()
        return self.problems

    # -- files and models --------------------------------------------------------------------------
    def paths(self) -> None:
        for where, value in _task_files(self.cfg.task.model_dump(), "task"):
            if not Path(value).expanduser().exists():
                self.add(f"{where}: {value}: no such file or directory")

    def tokenizer(self, where: str, name: str):
        tok = self.models.tokenizer(name)
        if isinstance(tok, Exception):
            self.missing(where, name, f"cannot load the tokenizer of {name!r}: {_first_line(tok)}")
            return None
        return tok

    def config(self, where: str, name: str):
        conf = self.models.config(name)
        if isinstance(conf, Exception):
            self.missing(where, name, f"cannot load the model config of {name!r}: {_first_line(conf)}")
            return None
        return conf

    def missing(self, where: str, name: str, why: str) -> None:
        """One line per model that cannot be loaded, however many keys name it."""
        if name not in self.reported:
            self.reported.add(name)
            self.add(f"{where}: {why}")

    def teacher(self) -> dict[str, Any] | None:
        """Load what the checks need of the generating teacher and of the logit teacher."""
        t = self.cfg.teacher
        if t.kind in ("hf", "vllm") and self.config("teacher.model", t.model) is not None:
            self.tokenizer("teacher.model", t.model)
        if t.kind == "openai" and self.probe:
            self.server()
        found = logit_teacher(self.cfg)
        if found is None:
            return None
        key, name = found
        if key != "teacher" and self.config(f"{key}.model", name) is not None:
            self.tokenizer(f"{key}.model", name)
        conf, tok = self.models.config(name), self.models.tokenizer(name)
        if isinstance(conf, Exception) or isinstance(tok, Exception):
            return None  # already reported
        return {"key": key, "name": name, "config": conf, "tokenizer": tok}

    def server(self) -> None:
        """The API teacher's server answers, takes the key and has the model (one GET /models)."""
        from reasondistill.teachers.factory import make_teacher

        try:
            teacher = make_teacher(self.cfg.teacher)
        except ValueError as exc:  # e.g. the api_key_env variable is not set
            self.add(_first_line(exc))
            return
        for line in teacher.probe():
            self.add(line)

    # -- one student ----------------------------------------------------------------------------------
    def student(self, where: str, s, teacher: dict[str, Any] | None) -> None:
        from reasondistill.train.lora import quantize_problem, target_problem

        problem = quantize_problem(s.lora)
        if problem:
            self.add(f"{where}: {problem}")
        policy = s.policy
        src = weights_source(self.cfg, s)
        field = "policy.start_from" if src.name == s.name and s.model is None and src.model else "model"
        s = src.model_copy(update={"lora": s.lora, "distill": s.distill, "quantize": s.quantize})
        if field == "policy.start_from" and self.unknown_start(f"{where}.{field}", s.model):
            return
        conf = self.config(f"{where}.{field}", s.model) if s.model else None
        if s.model and conf is None:
            return
        problem = target_problem(conf, s.lora) if s.lora is not None and conf is not None else None
        if problem:
            self.add(f"{where}: {problem}")
        key = "model" if s.model else "tokenizer" if s.tokenizer else "tokenizer (the teacher's, by default)"
        tok = self.tokenizer(f"{where}.{key}", student_tokenizer(self.cfg, s))
        if tok is None:
            return
        context = _context(conf) if conf is not None else s.init.max_position_embeddings
        self.stopping(where, s, tok)
        if policy is None:
            self.lengths(where, tok, context)
        else:  # a policy student reads no built data: its lengths are its rollouts'
            self.rollout_lengths(where, policy, tok, context)
        if s.distill is not None:
            self.soft(where, s, tok, conf, teacher)
        if policy is not None and policy.teacher_section() is not None and teacher is not None:
            self.same_vocabulary(where, tok, teacher, f"{policy.teacher_section()} (the teacher scores the "
                                 "student's own tokens, id by id)", "give the student the teacher's tokenizer "
                                 f"(start from a model trained with it), or drop {policy.teacher_section()}")
        if s.quantize:
            self.quantize(where, s, tok, conf)

    def unknown_start(self, where: str, start: str) -> bool:
        """True (and a problem line) when ``policy.start_from`` reads like a student's name, is none, and
        no model by that name loads: most likely a misspelt student name (the closest is suggested)."""
        import difflib
        import re

        if Path(start).expanduser().exists() or not re.fullmatch(r"[A-Za-z0-9_.-]+", start):
            return False  # a path: the loading error says what is wrong with it
        if not isinstance(self.models.config(start), Exception):
            return False
        names = [x.name for x in self.cfg.students]
        close = difflib.get_close_matches(start, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.missing(where, start, f"no student or model directory named {start!r} (students: {', '.join(names)})"
                                   f"{hint}")
        return True

    def quantize(self, where: str, s, tok, conf) -> None:
        """Each quantize variant fits the student's layers (group size, keep), on a meta-device model:
        the same check the quantize stage makes after training and evaluation."""
        import torch

        from reasondistill.quantize.scheme import quantized_layers

        with torch.device("meta"):
            if conf is not None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_config(conf)
            else:
                from reasondistill.models import init_model

                model = init_model(s.init.spec(), tok, seed=0)
        for q in s.quantize:
            try:
                quantized_layers(model, q, f"quantize.{q.label}")
            except ValueError as exc:
                self.add(f"{where}: {exc}")

    def stopping(self, where: str, s, tok) -> None:
        """The chat template renders, and the token every answer is trained to end with is one the
        student stops on (its tokenizer's EOS; a pretrained model's generation_config.json too)."""
        try:
            tok.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                                    tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001
            self.add(f"{where}: the tokenizer cannot render a prompt with its chat template ({_first_line(exc)}); "
                     "use a tokenizer with a chat_template (every prompt is rendered with it)")
        eos = tok.eos_token_id
        if eos is None:
            self.add(f"{where}: the tokenizer has no eos_token: training ends every answer with it and generation "
                     "stops on it; set eos_token in tokenizer_config.json")
            return
        gen = self.models.generation_config(s.model) if s.model else None
        stops = getattr(gen, "eos_token_id", None) if gen is not None else None
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        if stops and eos not in stops:
            names = ", ".join(f"{tok.convert_ids_to_tokens(i)!r} ({i})" for i in stops)
            self.add(f"{where}: training ends every answer with the tokenizer's eos_token "
                     f"{tok.eos_token!r} ({eos}), but the model's generation_config.json stops on {names}: served "
                     f"as saved (vLLM, transformers) it never stops and writes to the length limit; make eos_token "
                     f"one of those tokens, or add {eos} to generation_config.json's eos_token_id")

    def lengths(self, where: str, tok, context: int | None) -> None:
        cfg = self.cfg
        if context is not None and cfg.build.max_length > context:
            self.add(f"{where}: build.max_length={cfg.build.max_length} exceeds the student's context "
                     f"({context} tokens, max_position_embeddings); lower build.max_length")
        prompts = self.prompts()
        if not prompts:
            return
        lengths = _prompt_lengths(tok, prompts["train"])
        if lengths and min(lengths) >= cfg.build.max_length:
            self.add(f"{where}: every training prompt is at least {min(lengths)} tokens, which leaves no room for "
                     f"an answer within build.max_length={cfg.build.max_length}; raise build.max_length")
        self.evaluation_room(where, tok, context)

    def evaluation_room(self, where: str, tok, context: int | None) -> None:
        """The longest test prompt + evaluate.max_new_tokens within the student's context."""
        test = _prompt_lengths(tok, self.prompts().get("test", []))
        new = self.cfg.evaluate.max_new_tokens
        if context is not None and test and max(test) + new > context:
            self.add(f"{where}: the longest test prompt ({max(test)} tokens) + evaluate.max_new_tokens={new} "
                     f"exceeds the student's context ({context} tokens); lower evaluate.max_new_tokens")

    def rollout_lengths(self, where: str, policy, tok, context: int | None) -> None:
        """A policy student samples ``policy.max_new_tokens`` after each training prompt (and is evaluated
        like any student): both must fit its context."""
        prompts = self.prompts()
        if context is None or not prompts:
            return
        train = _prompt_lengths(tok, prompts["train"])
        if train and max(train) + policy.max_new_tokens > context:
            self.add(f"{where}: the longest training prompt ({max(train)} tokens) + policy.max_new_tokens="
                     f"{policy.max_new_tokens} exceeds the student's context ({context} tokens); lower "
                     f"policy.max_new_tokens to at most {max(context - max(train), 0)}")
        self.evaluation_room(where, tok, context)

    def same_vocabulary(self, where: str, tok, teacher: dict[str, Any], needs: str, fix: str) -> bool:
        """The student's tokenizer maps every string to the teacher's ids (one problem line if not)."""
        from reasondistill.train.kd import vocabulary_difference

        diff = vocabulary_difference(tok, teacher["tokenizer"])
        if diff is not None:
            n_s, n_t, counts = diff
            self.add(f"{where}: its tokenizer ({n_s} tokens) differs from the tokenizer of {teacher['key']} "
                     f"{teacher['name']!r} ({n_t} tokens): {counts}; {needs}: {fix}")
        return diff is None

    def soft(self, where: str, s, tok, conf, teacher: dict[str, Any] | None) -> None:
        """A soft student needs a logit teacher with the same tokenizer (up to padding rows)."""
        if teacher is None:
            if logit_teacher(self.cfg) is None:
                self.add(f"{where}: distill needs a local teacher's logits, but teacher.kind is "
                         f"{self.cfg.teacher.kind!r}: set a logit_teacher (a local model) or teacher.kind: hf; "
                         "hard distillation (no distill section) works with any teacher")
            return
        label = f"{teacher['key']} {teacher['name']!r}"
        ttok, tconf = teacher["tokenizer"], teacher["config"]
        if getattr(s.distill, "cross_tokenizer", None):
            return  # cross-tokenizer distillation aligns the two vocabularies itself
        if not self.same_vocabulary(where, tok, teacher, "soft distillation compares the two distributions token "
                                    "by token", "give the student the teacher's tokenizer, use cross-tokenizer "
                                    "distillation (distill.cross_tokenizer), or remove distill (hard distillation "
                                    "works with any tokenizer)"):
            return
        rows_s = int(conf.vocab_size) if conf is not None else len(tok)
        rows_t = int(getattr(tconf.get_text_config(), "vocab_size", 0) or 0)
        for who, rows in (("student", rows_s), (label, rows_t)):
            if rows and rows < len(tok):
                self.add(f"{where}: the {who} has {rows} output rows for a tokenizer of {len(tok)} tokens")
        # rows beyond the tokenizer on either side are padding (Qwen: 151,936 vs 152,064): sliced in training
        top_k = getattr(s.distill, "top_k", None)
        if top_k is not None and top_k > len(tok):
            self.add(f"{where}: distill.top_k={top_k} exceeds the vocabulary ({len(tok)} tokens); lower it to at "
                     f"most {len(tok)}")
        features = getattr(s.distill, "features", None)
        if features is not None:
            student_layers = getattr(conf, "num_hidden_layers", None) if conf is not None else \
                s.init.num_hidden_layers
            sides = (("student", student_layers), ("teacher", getattr(tconf, "num_hidden_layers", None)))
            for side, (who, n) in enumerate(sides):  # a (student, teacher) pair's index per side
                bad = [] if n is None else [pair[side] for pair in features.layers if not -(n + 1) <= pair[side] <= n]
                if bad:
                    self.add(f"{where}: distill.features.layers: {who} layer(s) {bad} out of range; the {who} "
                             f"has {n + 1} hidden states (0 = embeddings, {n} or -1 = the last layer)")
        tcontext = _context(tconf)
        if tcontext is not None and self.cfg.build.max_length > tcontext:
            self.add(f"{where}: build.max_length={self.cfg.build.max_length} exceeds the context of {label} "
                     f"({tcontext} tokens), which scores every training sequence; lower build.max_length")

    # -- the generating teacher ---------------------------------------------------------------------------
    def generation_lengths(self) -> None:
        t = self.cfg.teacher
        if t.kind not in ("hf", "vllm"):
            return
        conf, tok = self.models.config(t.model), self.models.tokenizer(t.model)
        prompts = self.prompts()
        if isinstance(conf, Exception) or isinstance(tok, Exception) or not prompts:
            return
        context = _context(conf)
        if context is None:
            return
        self._room(_prompt_lengths(tok, prompts["train"], t.system_prompt), "training", "generate", context)
        if self.cfg.evaluate.teacher:
            self._room(_prompt_lengths(tok, prompts["test"], t.system_prompt), "test", "evaluate", context)

    def _room(self, lengths: list[int], split: str, section: str, context: int) -> None:
        """Prompts longer than the teacher's context on their own (no max_new_tokens helps them), and
        the longest of the others against ``{section}.max_new_tokens``."""
        new = getattr(self.cfg, section).max_new_tokens
        alone = [n for n in lengths if n >= context]
        if alone:
            self.add(f"teacher.model: {len(alone)} of {len(lengths)} {split} prompts are longer than the teacher's "
                     f"context ({context} tokens) on their own (the longest {max(alone)} tokens): they would only be "
                     "recorded as truncated at 0 tokens; use a teacher with a longer context, or problems with shorter prompts")
        fit = [n for n in lengths if n < context]
        if fit and max(fit) + new > context:
            self.add(f"teacher.model: the longest {split} prompt that fits ({max(fit)} tokens) + {section}."
                     f"max_new_tokens={new} exceeds the teacher's context ({context} tokens), and so do "
                     f"{sum(n + new > context for n in fit)} of {len(lengths)} {split} prompts; lower "
                     f"{section}.max_new_tokens to at most {context - max(fit)}, or use a teacher with a longer "
                     "context")

    def prompts(self) -> dict[str, list[str]]:
        """The run's training and test prompts ({} when the task cannot give them: reported once)."""
        if self._prompts is None:
            self._prompts = {}
            if self.cfg.teacher.kind == "ingested":
                return self._prompts  # the problems arrive with `reasondistill ingest`
            try:
                from reasondistill.tasks.base import load_task
                from reasondistill.tasks.mixture import select_problems

                task = load_task(self.cfg.task.task_spec())
                n = {"train": self.cfg.task.n_train, "test": self.cfg.task.n_test}
                self._prompts = {split: [p.prompt for p in select_problems(task, split, n[split], self.cfg.seed)[0]]
                                 for split in ("train", "test")}
            except Exception as exc:  # noqa: BLE001
                if not self.problems:  # a missing file is already reported by paths()
                    self.add(f"task: cannot read the problems: {_first_line(exc)}")
        return self._prompts


def _prompt_lengths(tok, prompts: list[str], system: str | None = None) -> list[int]:
    from reasondistill.prompts import render_prompts

    try:
        texts = render_prompts(tok, prompts, system)
    except Exception:  # noqa: BLE001 - reported by the chat-template check
        return []
    return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _task_files(node: Any, where: str):
    """(config key, value) of every local file a task section names (mixtures included)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in FILE_KEYS and isinstance(v, str) and v:
                yield f"{where}.{k}", v
            else:
                yield from _task_files(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _task_files(v, f"{where}.{i}")


def require_ok(cfg) -> None:
    """Raise a user error listing every problem :func:`preflight` finds (``run`` calls this first)."""
    from reasondistill.errors import UserError

    problems = preflight(cfg, probe=False)
    if problems:
        raise UserError(f"the config has {len(problems)} problem(s); nothing was run "
                        "(`reasondistill check CONFIG` lists them again):\n" + "\n".join(f"  {p}" for p in problems))


def main(argv: list[str] | None = None) -> int:
    from reasondistill.hints import HintingParser

    ap = HintingParser(prog="reasondistill check", description="Check a config before running it: files and "
                       "models exist, soft students share the logit teacher's tokenizer, the end-of-sequence token "
                       "training teaches is the one the student stops on, prompts fit the models' context. One "
                       "line per problem; exit code 2 when there is one.")
    ap.add_argument("target", help="a config YAML or a run directory (uses its config.yaml)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. build.max_length=1024")
    ap.add_argument("--quiet", action="store_true", help="accepted like the stage verbs (check draws no progress bars)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from reasondistill.errors import run_verb

    def body() -> int:
        from transformers.utils import logging as hf_logging

        from reasondistill.config import load_run_config

        hf_logging.disable_progress_bar()
        cfg = load_run_config(args.target, args.overrides)
        problems = preflight(cfg)
        for line in problems:
            print(line)
        if problems:
            print(f"{len(problems)} problem(s) in {args.target}", file=sys.stderr)
            return 2
        n = len(cfg.students)
        print(f"ok: {args.target} ({n} student{'' if n == 1 else 's'}) passed every check")
        return 0
    return run_verb("check", body)


if __name__ == "__main__":
    sys.exit(main())
