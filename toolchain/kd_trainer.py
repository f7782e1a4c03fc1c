"""The distillation training step: the objective, the student wrapper, and `Trainer` with `compute_loss` replaced.

Imported by distill.py only when training starts (it pulls in torch and transformers). The
objective is a plain callable so tests can compare the online and cached teacher paths on one
batch without a Trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from . import kd_losses
from .modeling import model_inputs


@dataclass
class TeacherOut:
    logits: torch.Tensor  # [batch, classes] or [batch, seq, vocab]; top-k values when `index` is set
    index: torch.Tensor | None  # vocabulary ids of the top-k values
    hidden: tuple | None = None  # hidden_states: embeddings, then one per layer
    attentions: tuple | None = None


def projection(d_student: int, d_teacher: int) -> nn.Module:
    """Student width -> teacher width; starts as the identity on the leading dimensions (how narrow students are cut)."""
    if d_student == d_teacher:
        return nn.Identity()
    layer = nn.Linear(d_student, d_teacher, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d_teacher, d_student))
    return layer


class StudentWithProjections(nn.Module):
    """The trained module: the student plus the learned hidden-state projections (dropped after training).

    Both live in one module so DDP synchronizes the projections' gradients with the student's.
    """

    accepts_loss_kwargs = False  # Trainer then divides our mean loss by the accumulation steps

    def __init__(self, student, teacher_width: int | None = None, attentions: bool = False):
        super().__init__()
        self.student = student
        self.attentions = attentions
        n = student.config.num_hidden_layers
        d = student.config.hidden_size
        self.projections = nn.ModuleList([projection(d, teacher_width) for _ in range(n)]) if teacher_width else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in model_inputs(self.student, batch).items() if v is not None}
        out = self.student(**inputs, output_hidden_states=self.projections is not None,
                           output_attentions=self.attentions)
        projected = None
        if self.projections is not None:
            projected = [p(h) for p, h in zip(self.projections, out.hidden_states[1:])]
        return out, projected


def use_eager_attention(model) -> None:
    """Attention maps are only returned by the eager implementation (BERT falls back to it by itself)."""
    if getattr(model, "_supports_attention_backend", False):
        model.set_attn_implementation("eager")


class KDObjective:
    """loss(model, batch) -> (total, {part: value}, student logits); see distill.py for the formula."""

    def __init__(self, cfg, task: str, teacher=None, layer_map: tuple[int, ...] | None = None):
        self.cfg, self.task, self.teacher, self.layer_map = cfg, task, teacher, layer_map

    def __call__(self, model, batch: dict):
        batch = dict(batch)
        t_values, t_index = batch.pop("teacher_logits", None), batch.pop("teacher_index", None)
        labels = batch.pop("labels")
        out, projected = model(**batch)
        if not model.training or not self.cfg.needs_teacher:
            s_rows, y_rows, _ = self.rows(out.logits, labels)
            ce = kd_losses.hard_ce(s_rows, y_rows).mean()
            return ce, {"ce": ce.detach()}, out.logits
        t = self.teacher_outputs(batch, t_values, t_index)
        total, parts = self.logit_loss(out.logits, labels, t)
        if self.cfg.hidden_weight > 0:
            parts["hidden"] = self.hidden(projected, t, batch["attention_mask"])
            total = total + self.cfg.hidden_weight * parts["hidden"]
        if self.cfg.attention_weight > 0:
            parts["attention"] = self.attention(out.attentions, t, batch["attention_mask"])
            total = total + self.cfg.attention_weight * parts["attention"]
        return total, {k: v.detach() for k, v in parts.items()} | {"total": total.detach()}, out.logits

    def teacher_outputs(self, batch: dict, values, index) -> TeacherOut:
        if values is not None:
            return TeacherOut(values, index)
        if self.teacher is None:
            raise RuntimeError("no teacher: the batch carries no cached logits and no teacher runs online")
        with torch.no_grad():
            out = self.teacher(**model_inputs(self.teacher, batch), output_hidden_states=self.cfg.hidden_weight > 0,
                               output_attentions=self.cfg.attention_weight > 0)
        logits, idx = out.logits.float(), None
        if self.cfg.cache_top_k:
            logits, idx = logits.topk(min(self.cfg.cache_top_k, logits.shape[-1]), dim=-1)
        return TeacherOut(logits, idx, out.hidden_states, out.attentions)

    def rows(self, logits, labels, *teacher):
        """Classifier: one row per example. Causal LM: one per predicted token (position t predicts t+1)."""
        if self.task == "text-classification":
            return logits, labels, teacher
        valid = labels[:, 1:] != -100
        pick = lambda x: x[:, :-1][valid] if x is not None else None  # noqa: E731
        return pick(logits), labels[:, 1:][valid], tuple(pick(x) for x in teacher)

    def logit_loss(self, logits, labels, t: TeacherOut):
        cfg = self.cfg
        s, y, (tv, ti) = self.rows(logits, labels, t.logits, t.index)
        ce = kd_losses.hard_ce(s, y)
        if cfg.logit_loss == "kl":
            soft = kd_losses.soft_kl(s, tv, cfg.temperature, ti)
        else:
            soft = kd_losses.logit_mse(s, tv, ti)
        per_row = cfg.alpha * ce + (1.0 - cfg.alpha) * soft
        if cfg.boundary_weight > 0:
            per_row = per_row * kd_losses.boundary_weights(tv, cfg.boundary_weight)
        return per_row.mean(), {"ce": ce.mean(), "kd": soft.mean()}

    def hidden(self, projected, t: TeacherOut, mask):
        losses = [kd_losses.hidden_loss(h, t.hidden[j + 1], mask, self.cfg.hidden_loss)
                  for h, j in zip(projected, self.layer_map)]
        return torch.stack(losses).mean()

    def attention(self, attentions, t: TeacherOut, mask):
        losses = [kd_losses.attention_kl(a, t.attentions[j], mask) for a, j in zip(attentions, self.layer_map)]
        return torch.stack(losses).mean()


class DistillTrainer(Trainer):
    """Trainer whose loss is the distillation objective; logs each loss part, and keeps per-epoch means."""

    def __init__(self, *args, objective: KDObjective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self._since_log: dict[str, list] = {}
        self._epoch: dict[str, list] = {}
        self.epoch_losses: list[dict[str, float]] = []
        self.add_callback(_EpochLosses(self))
        # No per-step log dicts on stdout: console.epoch_lines prints one line an epoch and logs the losses.
        self.remove_callback(PrinterCallback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, parts, logits = self.objective(model, inputs)
        if model.training:
            for k, v in parts.items():
                self._since_log.setdefault(k, []).append(v)
                self._epoch.setdefault(k, []).append(v)
        return (loss, {"logits": logits}) if return_outputs else loss

    def log(self, logs, start_time=None):
        if self._since_log and "loss" in logs:
            logs = logs | {f"loss_{k}": round(torch.stack(v).mean().item(), 4) for k, v in self._since_log.items()}
            self._since_log = {}
        super().log(logs, start_time)

    def close_epoch(self) -> None:
        if self._epoch:
            self.epoch_losses.append({k: round(torch.stack(v).mean().item(), 5) for k, v in self._epoch.items()})
        self._epoch = {}


class _EpochLosses(TrainerCallback):
    def __init__(self, trainer: DistillTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.close_epoch()
