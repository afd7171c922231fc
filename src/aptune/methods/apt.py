"""APT: adaptive pruning and tuning with self-distillation (apt-method.md).

The method is a composition: adapters (lora.py) on q, v and the FFN up-projection; masks
(masks.py); salience (salience.py); the keep-set search (budget.py); the timeline (schedule.py);
rank growth (tuning.py); the teacher and losses (distill.py); compaction (surgery.py, export.py).
APTCallback wires them into the training loop's events in the order of §7.4.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..arch import ArchSpec
from ..budget import Counts, select_keep_set
from ..distill import (TeacherSnapshot, layer_loss, make_layer_transform, map_layers,
                       prediction_loss, sample_teacher_layers)
from ..errors import AptuneError
from ..export import compose, record_structure
from ..lora import inject_lora, lora_modules, merge_and_unload
from ..masks import Masks, apply_masks
from ..salience import SalienceCollector
from ..schedule import PruningSchedule, ScheduleSettings, SegmentedSchedule, build_schedule
from ..surgery import ParamRemap, compact, prune_linear_in, prune_linear_out
from ..train.events import Callback
from ..train.optim import pad_cols, pad_rows
from ..tuning import (AdapterImportance, AdapterSite, growth_factor, live_outputs,
                      plan_rank_growth, rank_table, tuning_count)
from .base import Method

PAPER_STEPS = 40_000  # below this many steps a run counts as short (§7.5): relative schedule


class APT(Method):
    name = "apt"
    description = "adaptive pruning and tuning with self-distillation"
    has_unused_parameters = True

    def prepare(self, model: nn.Module, spec: ArchSpec, cfg) -> nn.Module:
        targets = cfg.target_modules or list(spec.apt_target_modules)
        inject_lora(model, cfg.r, cfg.lora_alpha, targets, trainable_modules=spec.head_modules)
        self.callback = APTCallback(model, spec, cfg)
        return model

    def callbacks(self, model: nn.Module, spec: ArchSpec, cfg) -> list[Callback]:
        return [self.callback]

    def finalize(self, model: nn.Module, spec: ArchSpec, cfg) -> nn.Module:
        cb = self.callback
        cb.final_ranks = rank_table(cb.sites)
        cb.physically_prune(model)  # masks are binary once pruning is done
        cb.masks.remove_hooks()
        cb.salience.detach()
        merge_and_unload(model)
        record_structure(model, cb.structure)
        return model

    def describe(self, model: nn.Module, cfg) -> dict[str, Any]:
        cb = self.callback
        return {"schedule": cb.schedule.as_dict() if cb.schedule else None,
                "rank_history": cb.rank_history, "pruning_log": cb.pruning_log,
                "final_ranks": getattr(cb, "final_ranks", None), "structure": cb.structure,
                "optimizer_reset": cfg.optimizer_reset, "use_kurtosis": cfg.use_kurtosis,
                "process_consistency": cb.consistency}


class APTCallback(Callback):
    def __init__(self, model: nn.Module, spec: ArchSpec, cfg) -> None:
        self.spec, self.cfg = spec, cfg
        self.model = model
        self.sites = _adapter_sites(model, spec)
        self.head_dim = spec.head_dim(model)
        self.masks = apply_masks(model, spec, Masks.ones_like(model, spec))
        self.salience = SalienceCollector(model, spec, cfg.use_kurtosis, cfg.salience_beta)
        self.importance = AdapterImportance(cfg.salience_beta)
        self.dense_size = self.counts().size  # C(Θ_0)
        self.structure: dict | None = None  # kept indices in the original numbering
        self.schedule: PruningSchedule | None = None
        self.teacher: TeacherSnapshot | None = None
        self.best_teacher_metric = -math.inf
        self.transform: nn.Module | None = None  # Tr, alive during distillation
        self.rank_history: list[dict] = []
        self.pruning_log: list[dict] = []
        self.consistency: list[dict] = []
        self.collect_importance = False  # per-process mask fingerprints (multi-process runs)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.structure = self._identity_structure()

    # -- bookkeeping ---------------------------------------------------------------------------
    def counts(self) -> Counts:
        heads = sum(int((m > 0).sum()) for m in self.masks.head)
        neurons = sum(int((m > 0).sum()) for m in self.masks.neuron)
        return Counts(heads, neurons, int((self.masks.hidden > 0).sum()), self.head_dim,
                      layers=len(self.masks.head), mode=self.cfg.param_count_mode)

    def _identity_structure(self) -> dict:
        return {"hidden": list(range(self.masks.hidden.numel())),
                "heads": [list(range(m.numel())) for m in self.masks.head],
                "neurons": [list(range(m.numel())) for m in self.masks.neuron]}

    def _live_outputs(self) -> dict[str, int]:
        return live_outputs(self.sites, self.masks.head, self.masks.neuron, self.head_dim)

    def _delta(self) -> int:
        return tuning_count(self.sites, int((self.masks.hidden > 0).sum()), self._live_outputs())

    def alive_layers(self) -> list[bool]:
        return [bool((h > 0).any()) and bool((n > 0).any())
                for h, n in zip(self.masks.head, self.masks.neuron)]

    # -- events --------------------------------------------------------------------------------
    def on_train_begin(self, trainer) -> None:
        cfg = self.cfg
        mode = cfg.schedule_mode
        if mode == "auto":
            mode = "absolute" if trainer.total_steps >= PAPER_STEPS else "relative"
        settings = ScheduleSettings(
            total_steps=trainer.total_steps, steps_per_epoch=trainer.steps_per_epoch,
            target_kept=1 - cfg.sparsity, num_prunings=cfg.num_prunings, mode=mode,
            pruning_start_step=cfg.pruning_start_step, pruning_end_epoch=cfg.pruning_end_epoch,
            sparsity_warmup_epochs=cfg.sparsity_warmup_epochs, mask_decay_window=cfg.mask_decay_window,
            mask_decay_step=cfg.mask_decay_step, distill_epochs=cfg.distill_epochs,
            pruning_start_frac=cfg.pruning_start_frac, pruning_end_frac=cfg.pruning_end_frac,
            sparsity_warmup_frac=cfg.sparsity_warmup_frac, distill_end_frac=cfg.distill_end_frac,
            distill=cfg.distill, prune=cfg.prune, pruning_schedule=cfg.pruning_schedule)
        self.schedule = build_schedule(settings)
        self.schedule.set_tuning_budget(self._delta(), cfg.tuning_budget_ratio)
        trainer.schedule = SegmentedSchedule(cfg.lr, trainer.total_steps, cfg.warmup_ratio,
                                             self.schedule.distill_start, self.schedule.distill_end,
                                             cfg.post_distill_lr_factor)
        # Checkpoints are selected only once structure and ranks are final (after p_K).
        trainer.selection_open = False
        self.rank_history.append({"step": 0, "ranks": rank_table(self.sites), "delta": self._delta()})
        trainer.say(self.schedule.describe())

    def on_step_begin(self, trainer, batch) -> None:
        t, sched = trainer.step, self.schedule
        if sched.distill_start is not None and t == sched.distill_start:
            self._start_distillation(trainer)
        if t in sched.window_starts():
            self._maybe_refresh_teacher(trainer)
        in_window = sched.start <= t <= sched.end
        self.salience.active = self.cfg.prune and in_window
        self.collect_importance = self.cfg.grow_ranks and in_window

    def forward_kwargs(self, trainer) -> dict:
        return {"output_hidden_states": True} if self.schedule.in_distillation(trainer.step) else {}

    def extra_loss(self, trainer, batch, outputs) -> torch.Tensor | None:
        t, sched = trainer.step, self.schedule
        if not sched.in_distillation(t) or self.teacher is None:
            return None
        teacher = self.teacher.forward(trainer.unwrapped_model, batch, self.masks, self.salience)
        l_pred = prediction_loss(teacher.logits, outputs.logits, self.cfg.distill_temperature)
        t_hidden, s_hidden = teacher.hidden_states[1:], outputs.hidden_states[1:]
        picks = sample_teacher_layers(len(t_hidden), self.generator)
        phi = map_layers(t_hidden, s_hidden, picks, self.alive_layers(), self.transform)
        l_layer = layer_loss(t_hidden, s_hidden, phi, self.transform)
        mu = sched.mu(t)
        distill = self.cfg.lambda_pred * l_pred + self.cfg.lambda_layer * l_layer
        # The loop adds this to L_ft, giving μ·L_distill + (1 - μ)·L_ft.
        return mu * (distill - outputs.loss)

    def after_backward(self, trainer) -> None:
        if self.salience.active:
            reduce = (lambda x: trainer.accelerator.reduce(x, "sum")) \
                if trainer.accelerator.num_processes > 1 else None
            self.salience.update_ema(self.salience.step_scores(reduce))
        if self.collect_importance:  # DDP has averaged W_B's gradients: identical on every rank
            self.importance.update(self.sites)
        if self.transform is not None and trainer.accelerator.num_processes > 1:
            for p in self.transform.parameters():  # Tr lives outside DDP: average its gradients
                if p.grad is not None:
                    p.grad = trainer.accelerator.reduce(p.grad, "mean")

    def after_step(self, trainer) -> None:
        t, step, sched = trainer.step - 1, trainer.step, self.schedule
        k = sched.window_of(t)
        # Soft steps until p_k - 2, exact 0/1 there, then frozen until the next window (§6.2-6.3).
        if k is not None and self.cfg.prune and t <= sched.points[k] - 2:
            self._update_masks(k, binarise=(t == sched.points[k] - 2))
        point = sched.point_index(step)
        if point is not None:
            self._pruning_point(trainer, point)
        if sched.distill_end is not None and step == sched.distill_end and self.teacher is not None:
            self._end_distillation(trainer)

    def mask_fingerprint(self) -> torch.Tensor:
        """A number that differs when any mask or the kept structure differs."""
        values = torch.cat([m.flatten().double().cpu() for m in self.masks.all()])
        weights = torch.arange(1, values.numel() + 1, dtype=torch.float64)
        kept = float(sum(len(h) for h in self.structure["heads"]) * 1e6 + len(self.structure["hidden"]))
        return torch.tensor([float((values * weights).sum()) + kept, float(values.numel())])

    def _check_ranks_agree(self, trainer, k: int) -> None:
        """Pruning decisions must be identical on every process; stop loudly if they are not."""
        acc = trainer.accelerator
        if acc.num_processes == 1:
            return
        prints = acc.gather(self.mask_fingerprint().to(acc.device).unsqueeze(0)).cpu()  # (P, 2)
        self.consistency.append({"point": k + 1, "fingerprints": prints[:, 0].tolist()})
        if not torch.allclose(prints, prints[0].expand_as(prints)):
            raise RuntimeError(f"processes disagree on the masks at pruning point {k + 1}: "
                               f"{prints[:, 0].tolist()}")

    # -- masks ---------------------------------------------------------------------------------
    def _flat(self) -> tuple[dict, dict]:
        ema = self.salience.ema
        sal = {"head": torch.cat(ema["head"]), "neuron": torch.cat(ema["neuron"]), "hidden": ema["hidden"][0]}
        alive = {"head": torch.cat(self.masks.head) > 0, "neuron": torch.cat(self.masks.neuron) > 0,
                 "hidden": self.masks.hidden > 0}
        return sal, alive

    @torch.no_grad()
    def _update_masks(self, k: int, binarise: bool) -> None:
        if self.salience.ema is None:
            return
        sal, alive = self._flat()
        target = self.schedule.kept[k] * self.dense_size
        keep = select_keep_set(sal, alive, self.counts(), target)
        alpha = self.schedule.mask_steps[k]
        flat = {"head": torch.cat(self.masks.head), "neuron": torch.cat(self.masks.neuron),
                "hidden": self.masks.hidden.clone()}
        for t, vec in flat.items():
            up, down = keep.keep[t], keep.prune[t]
            if binarise:
                vec[up], vec[down] = 1.0, 0.0
            else:
                vec[up] = (vec[up] + alpha).clamp(max=1.0)
                vec[down] = (vec[down] - alpha).clamp(min=0.0)
        self._write_masks(flat)
        if binarise:
            self.pruning_log.append({"point": k + 1, "kept_target": self.schedule.kept[k],
                                     "size": keep.size, "kept_ratio": keep.size / self.dense_size,
                                     "heads": int(keep.keep["head"].numel()),
                                     "neurons": int(keep.keep["neuron"].numel()),
                                     "hidden": int(keep.keep["hidden"].numel()),
                                     "salience_components": dict(self.salience.last_components)})

    def _write_masks(self, flat: dict) -> None:
        for i, part in enumerate(torch.split(flat["head"], [m.numel() for m in self.masks.head])):
            self.masks.head[i].copy_(part)
        for i, part in enumerate(torch.split(flat["neuron"], [m.numel() for m in self.masks.neuron])):
            self.masks.neuron[i].copy_(part)
        self.masks.hidden.copy_(flat["hidden"])

    # -- pruning points ------------------------------------------------------------------------
    def _pruning_point(self, trainer, k: int) -> None:
        sched, cfg = self.schedule, self.cfg
        survivors = {}
        if cfg.grow_ranks:
            survivors.update(self._grow_ranks(k))
        self.importance.reset()
        if sched.distill_start is None and cfg.prune:
            survivors = self._compact_with_state(trainer.model, survivors)
        self._rebuild_optimizer(trainer, survivors)
        self.rank_history.append({"step": trainer.step, "ranks": rank_table(self.sites),
                                  "delta": self._delta(), "budget": sched.budgets[k],
                                  "kept_ratio": self.counts().size / self.dense_size})
        self._check_ranks_agree(trainer, k)
        if k == len(sched.points) - 1:
            self.salience.active = False
            trainer.selection_open = True
            trainer.say(f"pruning complete at step {trainer.step}: kept ratio "
                        f"{self.counts().size / self.dense_size:.4f} (target {1 - cfg.sparsity:.4f})")

    def _grow_ranks(self, k: int) -> dict:
        sched, cfg = self.schedule, self.cfg
        prev = sched.budgets[k - 1] if k > 0 else self.rank_history[0]["delta"]
        plan = plan_rank_growth(self.sites, self.importance.scores, prev, sched.budgets[k], self._delta(),
                                int((self.masks.hidden > 0).sum()), self._live_outputs(),
                                cfg.rank_selection, cfg.rank_growth_rule, cfg.max_rank)
        survivors = {}
        for site in self.sites:
            if site.name in plan:
                old_a, old_b = site.module.grow_rank(plan[site.name], cfg.new_rank_init, self.generator)
                survivors[site.module.lora_A] = (old_a, pad_rows(plan[site.name]))
                survivors[site.module.lora_B] = (old_b, pad_cols(plan[site.name]))
        if self.transform is not None:
            factor = growth_factor(prev, sched.budgets[k])
            new_r = math.floor(self.transform.r * factor)
            if self.transform.r < new_r < 2 * cfg.max_rank:
                old_a, old_b = self.transform.grow_rank(new_r, cfg.new_rank_init, self.generator)
                survivors[self.transform.lora_A] = (old_a, pad_rows(new_r))
                survivors[self.transform.lora_B] = (old_b, pad_cols(new_r))
        return survivors

    def _rebuild_optimizer(self, trainer, survivors: dict) -> None:
        if self.cfg.optimizer_reset == "reset":
            survivors = {}
        for p in trainer.unwrapped_model.parameters():  # unchanged parameters keep their state
            if p.requires_grad and p not in survivors:
                survivors[p] = (p, None)
        if self.transform is not None:
            for p in self.transform.parameters():
                if p.requires_grad and p not in survivors:
                    survivors[p] = (p, None)
        trainer.rebuild_optimizer(survivors, extra_params=self._extra_params())

    def _extra_params(self) -> list[nn.Parameter]:
        return [p for p in self.transform.parameters() if p.requires_grad] if self.transform else []

    # -- physical removal ----------------------------------------------------------------------
    def physically_prune(self, model: nn.Module) -> None:
        """Remove every block whose mask is 0; masks become all-ones on the new shapes."""
        if not self.masks.is_binary():
            raise AptuneError("masks are not binary at compaction", "this is a bug; please report it")
        if all(bool((m > 0).all()) for m in self.masks.all()):
            return
        self.masks.remove_hooks()
        self.salience.detach()
        kept = compact(model, self.spec, self.masks)
        self.structure = compose(self.structure, kept)
        if self.salience.ema is not None:
            ema = self.salience.ema
            ema["head"] = [e[torch.as_tensor(h, dtype=torch.long)] if e.numel() else e
                           for e, h in zip(ema["head"], kept["heads"])]
            ema["neuron"] = [e[torch.as_tensor(n, dtype=torch.long)] if e.numel() else e
                             for e, n in zip(ema["neuron"], kept["neurons"])]
            ema["hidden"] = [ema["hidden"][0][torch.as_tensor(kept["hidden"], dtype=torch.long)]]
        if self.transform is not None:
            dims = torch.as_tensor(kept["hidden"], dtype=torch.long)
            prune_linear_in(self.transform, dims)
            prune_linear_out(self.transform, dims)
        self.masks = apply_masks(model, self.spec, Masks.ones_like(model, self.spec))
        self.salience.attach()
        self.sites = _adapter_sites(model, self.spec)

    def _compact_with_state(self, model: nn.Module, survivors: dict) -> dict:
        with ParamRemap() as remap:
            self.physically_prune(model)
        merged = dict(survivors)
        for new, (old, select) in remap.links.items():
            if old in merged:  # grown then sliced: pad first, then cut
                root, first = merged.pop(old)
                merged[new] = (root, (lambda t, f=first, g=select: g(f(t))) if first else select)
            else:
                merged[new] = (old, select)
        return merged

    # -- distillation --------------------------------------------------------------------------
    def _maybe_refresh_teacher(self, trainer) -> None:
        if self.teacher is not None and self.cfg.teacher_refresh == "once":
            return
        metrics = trainer.evaluate_untimed()
        value = metrics[trainer.task.metric]
        if self.teacher is None or value > self.best_teacher_metric:
            survivors = self._compact_with_state(trainer.unwrapped_model, {})
            self.teacher = TeacherSnapshot(trainer.unwrapped_model)
            self.best_teacher_metric = value
            self._rebuild_optimizer(trainer, survivors)
            trainer.say(f"step {trainer.step}: teacher snapshot (dev {trainer.task.metric} {value:.4f})")

    def _start_distillation(self, trainer) -> None:
        d = int(self.masks.hidden.numel())
        w = next(trainer.unwrapped_model.parameters())
        self.transform = make_layer_transform(d, self.cfg.r, self.cfg.lora_alpha, w.device, w.dtype)
        self._rebuild_optimizer(trainer, {})
        trainer.say(f"step {trainer.step}: self-distillation starts (μ {self.schedule.mu(trainer.step):.2f})")

    def _end_distillation(self, trainer) -> None:
        trainer.restore_best()
        self.physically_prune(trainer.unwrapped_model)
        self.teacher, self.transform = None, None
        trainer.rebuild_optimizer({})  # §9.6: a fresh optimizer for phase 2
        trainer.reset_best_to_current()
        trainer.say(f"step {trainer.step}: distillation ends; fine-tuning the pruned model at "
                    f"{self.cfg.post_distill_lr_factor:g}x LR")


def _adapter_sites(model: nn.Module, spec: ArchSpec) -> list[AdapterSite]:
    """Adapters inside transformer layers, with the mask kind that bounds their outputs."""
    by_module = {id(m): n for n, m in lora_modules(model)}
    sites = []
    for i, layer in enumerate(spec.layers(model)):
        if spec.has_attention(layer):
            attn = spec.attention(layer)
            for proj in (attn.query, attn.key, attn.value):
                if id(proj) in by_module:
                    sites.append(AdapterSite(by_module[id(proj)], proj, i, "head"))
        if spec.has_ffn(layer) and id(spec.ffn(layer).up) in by_module:
            sites.append(AdapterSite(by_module[id(spec.ffn(layer).up)], spec.ffn(layer).up, i, "neuron"))
    return sites
