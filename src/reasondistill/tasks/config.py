"""The ``task:`` section of a run config: which problems, from where, and how to read them.

Why: a run can use the built-in arithmetic task, a real benchmark read from files (GSM8K, MATH,
multiple choice, code), any question/answer file, or a mixture of several sources. Each kind is
its own pydantic model, chosen by ``name`` (a discriminated union), so a typo is reported by
field before any work starts, e.g. ``task.fields.question: Input should be a valid string``.

    task: {name: gsm8k, train_path: data/gsm8k/train.jsonl, test_path: data/gsm8k/test.jsonl,
           n_train: 2000, strategy: "Reason step by step, then write '#### <number>'."}
    task: {name: mixture, n_train: 1000, sources: [{name: gsm8k, path: ..., ratio: 0.7},
                                                     {name: math, path: ..., ratio: 0.3, cap: 200}]}

``task_spec()`` turns a section into the keyword arguments of :func:`reasondistill.tasks.base.load_task`.
``strategy`` is a system prompt given to the teacher only (prompt erasure: the student never sees it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, model_serializer, model_validator)

TASK_NAMES = ("chained_arith", "gsm8k", "math", "choice", "code", "file", "mixture")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TaskBase(_Strict):
    name: str
    strategy: str | None = Field(None, description="system prompt for the TEACHER only (erased for the student)")

    @model_serializer(mode="wrap")
    def _drop_unset_strategy(self, handler):
        # a task without a strategy dumps (and so fingerprints) exactly as before strategies existed
        data = handler(self)
        if isinstance(data, dict) and data.get("strategy") is None:
            data.pop("strategy", None)
        return data

    def task_spec(self) -> dict[str, Any]:
        raise NotImplementedError


class ChainedArithConfig(_TaskBase):
    name: Literal["chained_arith"] = Field("chained_arith", description="generated chained modular arithmetic")
    min_ops: int = Field(3, ge=1, description="fewest operations per problem")
    max_ops: int = Field(5, ge=1, description="most operations per problem")
    n_train: int = Field(5000, gt=0, description="training problems given to the teacher")
    n_test: int = Field(400, gt=0, description="held-out problems for evaluation")

    def task_spec(self) -> dict[str, Any]:
        spec = {"name": self.name, "min_ops": self.min_ops, "max_ops": self.max_ops}
        return spec | ({"strategy": self.strategy} if self.strategy else {})


# -- field mappings: which field of a row holds what (defaults follow the public datasets) ----------
class FileFields(_Strict):
    question: str = Field("question", description="the field holding the question")
    answer: str = Field("answer", description="the field holding the reference answer")
    solution: str | None = Field(None, description="a worked solution (optional)")
    id: str | None = Field(None, description="a stable problem id (default: a hash of the question)")
    difficulty: str | None = Field(None, description="a number used to report accuracy by difficulty")


class GSM8KFields(_Strict):
    question: str = Field("question", description="the field holding the question")
    answer: str = Field("answer", description="the solution text ending in '#### <number>'")
    id: str | None = Field(None, description="a stable problem id (default: a hash of the question)")


class MathFields(_Strict):
    question: str = Field("problem", description="the field holding the problem")
    solution: str = Field("solution", description="worked solution with the answer in \\boxed{}")
    answer: str | None = Field("answer", description="the final answer; if a row lacks it, the last \\boxed{}")
    level: str | None = Field("level", description="'Level 3' or 3: the difficulty")
    subject: str | None = Field("subject", description="kept as metadata")
    id: str | None = Field("unique_id", description="a stable problem id")


class ChoiceFields(_Strict):
    question: str = Field("question", description="the field holding the question")
    choices: str | list[str] = Field("choices", description="a field holding the options (a list, or a JSON "
                                     "list in a string), or a list of fields, one option each")
    answer: str = Field("answer", description="the reference: a letter, a 0-based index or an option's text")
    subject: str | None = Field(None, description="kept as metadata")
    id: str | None = Field(None, description="a stable problem id (default: a hash of the question)")


class CodeFields(_Strict):
    prompt: str = Field("prompt", description="HumanEval: the signature and docstring; MBPP: 'text'")
    tests: str = Field("test", description="HumanEval 'test' (def check) or MBPP 'test_list' (asserts)")
    entry_point: str | None = Field("entry_point", description="the function the tests call")
    solution: str | None = Field("canonical_solution", description="a reference solution (optional)")
    setup: str | None = Field(None, description="MBPP 'test_setup_code'")
    id: str | None = Field("task_id", description="a stable problem id")


class _FileTask(_TaskBase):
    """Where the rows come from: one file (hash split) or separate train/test files; or a dataset."""

    path: str | None = Field(None, description="one file or datasets directory, split by a hash of the question")
    train_path: str | None = Field(None, description="a file of training problems (with test_path)")
    test_path: str | None = Field(None, description="a file of test problems (with train_path)")
    hf_id: str | None = Field(None, description="a Hugging Face hub dataset id (needs the network)")
    hf_config: str | None = Field(None, description="the dataset's config (subset) name, e.g. 'main'")
    train_split: str = Field("train", description="split name inside a datasets directory or hub dataset")
    test_split: str = Field("test", description="the test split's name inside a datasets directory or hub dataset")
    format: Literal["auto", "jsonl", "json", "csv", "parquet", "hf"] = Field(
        "auto", description="the files' format (auto: from the file name)")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of a single file that is the test split")
    template: str = Field("{question}", description="the prompt; {question} is the rendered question")
    skip_bad_rows: bool = Field(False, description="skip (and count) malformed rows instead of failing; counts and the "
                                "first reasons go to problems/composition.json")
    n_train: int | None = Field(None, gt=0, description="cap on training problems (None: all)")
    n_test: int | None = Field(None, gt=0, description="cap on test problems (None: all)")

    @model_validator(mode="after")
    def _one_source(self) -> "_FileTask":
        given = [k for k in ("path", "hf_id") if getattr(self, k)]
        split_files = self.train_path or self.test_path
        if len(given) + bool(split_files) != 1:
            raise ValueError("set exactly one of 'path' (one file or dataset directory), "
                             "'train_path'/'test_path' (separate files) or 'hf_id' (a hub dataset)")
        if "{question}" not in self.template:
            raise ValueError("template must contain '{question}'")
        return self

    def task_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"n_train", "n_test"}, exclude_none=True)


class FileTaskConfig(_FileTask):
    """Any question/answer file; answers are checked as math (``verify_math``) or exactly."""

    name: Literal["file"] = Field("file", description="any question/answer file")
    fields: FileFields = Field(FileFields(), description="which field of a row holds what")
    verifier: Literal["math", "exact"] = Field("math", description="math: equivalent answers are correct "
                                               "(math-verify); exact: the same text after trimming")


class GSM8KConfig(_FileTask):
    name: Literal["gsm8k"] = Field("gsm8k", description="grade-school math word problems, numeric answers")
    fields: GSM8KFields = Field(GSM8KFields(), description="which field of a row holds what")


class MathConfig(_FileTask):
    name: Literal["math"] = Field("math", description="competition math (MATH, MATH-500), \\boxed{} answers")
    fields: MathFields = Field(MathFields(), description="which field of a row holds what")


class ChoiceConfig(_FileTask):
    name: Literal["choice"] = Field("choice", description="multiple choice; the answer is an option's letter")
    fields: ChoiceFields = Field(ChoiceFields(), description="which field of a row holds what")


class CodeConfig(_FileTask):
    name: Literal["code"] = Field("code", description="Python functions checked by running tests in a sandbox")
    fields: CodeFields = Field(CodeFields(), description="which field of a row holds what")
    wall_seconds: float = Field(10.0, gt=0, description="sandbox wall-clock limit per check")
    memory_mb: int = Field(1024, gt=0, description="sandbox memory limit per check")


def _tag(value: Any) -> str | None:
    """The task kind of a section (a dict or a model); ``name`` defaults to chained_arith."""
    name = value.get("name", "chained_arith") if isinstance(value, dict) else getattr(value, "name", None)
    return name if name in TASK_NAMES else None


_SINGLE = (Annotated[ChainedArithConfig, Tag("chained_arith")], Annotated[GSM8KConfig, Tag("gsm8k")],
           Annotated[MathConfig, Tag("math")], Annotated[ChoiceConfig, Tag("choice")],
           Annotated[CodeConfig, Tag("code")], Annotated[FileTaskConfig, Tag("file")])
SourceTask = Annotated[Union[_SINGLE], Discriminator(_tag, custom_error_type="task_name",
                 custom_error_message=f"name: unknown task; expected one of {', '.join(TASK_NAMES)} "
                                      "(a mixture cannot contain a mixture)")]

_SOURCE_KEYS = ("label", "ratio", "cap")


class MixtureSource(_Strict):
    """One source of a mixture: a task section plus its share, cap and label (flat in YAML)."""

    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: the task name")
    ratio: float = Field(1.0, gt=0, description="share of the mixture (ratios are normalised)")
    cap: int | None = Field(None, gt=0, description="at most this many problems from this source per split")
    task: SourceTask = Field(description="the source's task section; in YAML its keys sit beside label, ratio "
                             "and cap")

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task" not in data:
            data = dict(data)
            data = {**{k: data.pop(k) for k in _SOURCE_KEYS if k in data}, "task": data}
        return data

    @model_serializer(mode="wrap")
    def _flat(self, handler):
        data = handler(self)
        task = data.pop("task")
        return {**task, **{k: v for k, v in data.items() if v is not None}}

    @model_validator(mode="after")
    def _no_own_size(self) -> "MixtureSource":
        # chained_arith's n_train/n_test have defaults that a saved config.yaml writes out: only a
        # value other than the default can have been meant (and would be ignored)
        fields = type(self.task).model_fields
        if any(getattr(self.task, k) != fields[k].default for k in ("n_train", "n_test")):
            raise ValueError("n_train/n_test: a mixture decides how many problems each source gives; "
                             "use 'cap' (and the mixture's n_train/n_test)")
        return self

    @property
    def source_name(self) -> str:
        return self.label or self.task.name


class MixtureConfig(_TaskBase):
    name: Literal["mixture"] = Field("mixture", description="several sources mixed by ratio")
    sources: list[MixtureSource] = Field(min_length=1, description="the sources: each a task section plus "
                                         "label, ratio and cap")
    n_train: int | None = Field(None, gt=0, description="problems in the training mixture (None: as many as "
                                "the ratios allow given each source's size and cap)")
    n_test: int | None = Field(None, gt=0, description="problems in the test mixture (None: as the ratios allow)")

    @model_validator(mode="after")
    def _unique(self) -> "MixtureConfig":
        names = [s.source_name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sources: labels must be unique, repeated: {dupes} (set 'label' on each)")
        if self.strategy is not None:
            raise ValueError("strategy: set a strategy on each source, not on the mixture")
        return self

    def task_spec(self) -> dict[str, Any]:
        return {"name": "mixture", "sources": [
            {"label": s.source_name, "ratio": s.ratio, "cap": s.cap, "spec": s.task.task_spec()}
            for s in self.sources]}


TaskConfig = Annotated[Union[(*_SINGLE, Annotated[MixtureConfig, Tag("mixture")])], Discriminator(
    _tag, custom_error_type="task_name",
    custom_error_message=f"name: unknown task; expected one of {', '.join(TASK_NAMES)}")]


def clean_loc(loc: tuple) -> tuple:
    """A validation error's location without the union's tags: ``task.gsm8k.fields.question`` →
    ``task.fields.question``; ``task.mixture.sources.0.task.math.path`` → ``task.sources.0.path``."""
    if not loc or loc[0] != "task":
        return loc
    out = []
    for i, part in enumerate(loc):
        prev = loc[i - 1] if i else None
        if part in TASK_NAMES and prev == "task":
            continue
        if part == "task" and isinstance(prev, int):
            continue
        out.append(part)
    return tuple(out)
