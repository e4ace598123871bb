"""Feature distillation: match chosen student hidden layers to teacher hidden layers on answer
tokens, through learned projections when the widths differ, on top of a logit objective.

Why: the teacher's intermediate representations carry more signal per token than its output
distribution alone (FitNets, TinyBERT, MiniLM). The projections are trained with the student
(the objective is an ``nn.Module``: ``train_model`` adds its parameters to the optimizer and
saves them in checkpoints as ``objective.safetensors``) and are not part of the exported student.

    kd = OnlineKD(teacher, make_loss(cfg))
    objective = FeatureKD(kd, student, layers=[(1, 2), (-1, -1)], loss="mse", weight=1.0)
    train_model(student, tok, train, val, out, train_cfg, seed=0, objective=objective)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reasondistill.data.dataset import IGNORE_INDEX
from reasondistill.train.kd import OnlineKD, model_forward


def _n_hidden_states(model) -> int:
    return model.config.num_hidden_layers + 1  # embeddings + every layer


def _check_layer(i: int, n: int, who: str) -> int:
    if not -n <= i < n:
        raise ValueError(f"features.layers: {who} layer {i} out of range; hidden_states has {n} entries "
                         f"(0 = embeddings, {n - 1} or -1 = last layer)")
    return i


class FeatureKD(nn.Module):
    """``base`` logit loss + ``weight`` · Σ over answer positions and layer pairs of
    MSE(proj(h_student), h_teacher) (mean over the hidden dimension) or 1 − cos(proj(h_s), h_t).

    ``layers``: (student, teacher) indices into ``output_hidden_states``. Positions are those whose
    logits predict an answer token, the same positions as the logit loss, so the sum fits the
    loop's division by the answer-token count. ``base`` (and its teacher) is not a submodule:
    only the projections are trained and saved.
    """

    def __init__(self, base: OnlineKD, student_model, layers: list[tuple[int, int]], loss: str = "mse",
                 weight: float = 1.0, seed: int = 0):
        super().__init__()
        if loss not in ("mse", "cosine"):
            raise ValueError(f"features.loss must be 'mse' or 'cosine', got {loss!r}")
        self.__dict__["base"] = base
        ns, nt = _n_hidden_states(student_model), _n_hidden_states(base.teacher)
        self.layers = [(_check_layer(int(s), ns, "student"), _check_layer(int(t), nt, "teacher")) for s, t in layers]
        ws, wt = student_model.config.hidden_size, base.teacher.config.hidden_size
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG untouched
            torch.manual_seed(seed)
            self.proj = nn.ModuleList([nn.Linear(ws, wt) if ws != wt else nn.Identity() for _ in self.layers])
        self.loss, self.weight = loss, float(weight)

    def feature_loss(self, student_hidden, teacher_hidden, batch: dict[str, Tensor]) -> Tensor:
        keep = batch["labels"][:, 1:] != IGNORE_INDEX
        total = torch.zeros((), dtype=torch.float32, device=keep.device)
        for (ls, lt), proj in zip(self.layers, self.proj):
            hs = proj(student_hidden[ls][:, :-1][keep])
            ht = teacher_hidden[lt][:, :-1][keep].detach()
            hs, ht = hs.float(), ht.float()
            per = (hs - ht).pow(2).mean(-1) if self.loss == "mse" else 1 - F.cosine_similarity(hs, ht, dim=-1)
            total = total + per.sum()
        return self.weight * total

    def forward(self, model, batch: dict[str, Tensor]) -> Tensor:
        proj = next(self.parameters(), None)
        if proj is not None and proj.device != batch["input_ids"].device:
            self.to(batch["input_ids"].device)
        t = self.base.teacher_forward(batch, hidden=True)
        s = model_forward(model, batch, hidden=True)
        return self.base.logit_loss(s.logits, t.logits, batch) + self.feature_loss(s.hidden_states, t.hidden_states,
                                                                                   batch)
