"""The training loop behind ``icm train``: epochs of (loss terms -> schedule -> step), validation,
atomic per-epoch checkpoints with automatic resume, DDP under torchrun, and the final Pareto-front
re-evaluation with real bitstreams. Layout of the output folder: docs/training.md."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from icm.bitstream import atomic_write_bytes
from icm.datasets import load_dataset
from icm.distributed import default_device, dist_setup, gather, leave_together
from icm.errors import IcmError, RunFault, UserError
from icm.evaluation.predicting import build_adapters
from icm.faults import remove_stale_temporaries
from icm.jsonio import jsonable, write_json
from icm.tasks import Batch
from icm.training import codec as C
from icm.training.config import CodecConfig, TrainConfig
from icm.training.data import augment, epoch_batches, load_batch, load_crops, pad, sampled_batches
from icm.training.losses import Context, all_likelihoods, build_loss
from icm.training.pareto import candidates, reevaluate, select_front
from icm.training.plot import plot_history
from icm.training.schedules import build_schedule
from icm.training.validate import validate

STATE = "state.pt"


class TrainingDiverged(IcmError):
    """The loss was not finite for a whole epoch, or the weights are no longer finite: nothing is saved."""


def plain(obj):
    """JSON-able python only (numpy scalars become floats): safe for weights_only checkpoint loading."""
    return json.loads(json.dumps(obj, default=jsonable))


def save_torch(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def seed_everything(seed: int) -> None:
    """torch's, numpy's and Python's global RNGs, as OpenMMLab's set_random_seed does."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def frozen_adapters(cfg: TrainConfig, device) -> dict:
    adapters = build_adapters(cfg.tasks, str(device))
    for adapter in adapters.values():
        try:
            adapter.model.eval().requires_grad_(False)  # the task networks stay frozen (Le §3.3)
        except NotImplementedError:
            pass
    return adapters


def _barrier(world):
    if world > 1:
        torch.distributed.barrier()


def _allreduce_grads(params, world):
    if world > 1:
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def _allreduce_sums(sums: dict[str, float], world) -> dict[str, float]:
    if world == 1:
        return sums
    keys = sorted(sums)
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, t.tolist()))


class Run:
    """One training run; ``run()`` trains the remaining epochs and does the final selection."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, progress: bool = True, on_epoch_end=None):
        self.cfg, self.progress, self.on_epoch_end = cfg, progress, on_epoch_end
        self.rank, self.world = dist_setup()
        self.device = default_device(cfg.device)
        self.out = Path(cfg.out)
        self.ckdir = self.out / "checkpoints"
        if not resume and self.rank == 0:
            for name in ("checkpoints", "pareto"):
                shutil.rmtree(self.out / name, ignore_errors=True)
            for name in ("log.json", "plot.png", "pareto.json"):
                (self.out / name).unlink(missing_ok=True)
        if self.rank == 0:  # the half-written files of a run killed during a write
            remove_stale_temporaries(self.out)
            if cfg.export:
                remove_stale_temporaries(Path(cfg.export).parent, f".{Path(cfg.export).name}.*.tmp", recursive=False)
        _barrier(self.world)
        self.train_ds, self.val_ds = load_dataset(cfg.dataset, cfg.train_split), load_dataset(cfg.dataset, cfg.val_split)
        self.train_images = self.train_ds.images[: cfg.train_limit] if cfg.train_limit else self.train_ds.images
        self.val_images = self.val_ds.images[: cfg.val_limit] if cfg.val_limit else self.val_ds.images
        self.adapters = frozen_adapters(cfg, self.device)
        for a in self.adapters.values():
            a.bind(self.train_ds)
        self.losses = {t: build_loss(t, spec.options) for t, spec in cfg.losses.items()}
        # seeded here, after the task models are built: their first build in a process draws from the global
        # RNGs (a later one does not), so a chain link's random init, sampled rates and crops used to depend
        # on what ran before it in the same `icm train` command
        seed_everything(cfg.seed * 7919 + self.rank)
        if cfg.backend:  # the codec is frozen; the task's back end trains (its init is the reader's checkpoint)
            self.trainable = C.open_backend_for_training(cfg, self.device, self.adapters)
            self.adapters[cfg.backend].bind(self.train_ds)
            self.init = {"init": cfg.init} if cfg.init else None
        else:
            self.trainable = C.open_for_training(cfg.codec, self.device)
            self.init = C.load_init(self.trainable, cfg.init, cfg.seed) if cfg.init else None
        self.schedule = build_schedule(cfg.schedule, list(self.losses), cfg.schedule_options)
        self.rates = C.val_rates(cfg.codec, self.trainable.continuous)
        self.history: list[dict] = []
        self.start = 1
        self.steps_per_epoch = cfg.steps_per_epoch or len(
            epoch_batches(self.train_images, cfg.batch_size, cfg.seed, 1, self.rank, self.world))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.stop_after is not None:
            self.total_steps = min(self.total_steps, cfg.stop_after)
        state = self._load_state() if resume else None
        main, self.aux = self.trainable.main_and_aux_parameters()
        self.main = main
        groups = [{"params": main}] + ([{"params": self.schedule.parameters()}] if self.schedule.parameters() else [])
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        self.aux_opt = torch.optim.Adam(self.aux, lr=cfg.aux_lr) if self.aux else None
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
            if self.aux_opt is not None and state.get("aux_optimizer"):
                self.aux_opt.load_state_dict(state["aux_optimizer"])
            rng = state.get("rng") or []
            if len(rng) == self.world:
                torch.set_rng_state(rng[self.rank])
        for q in self.aux:  # trained by the auxiliary step only, so DDP leaves them alone
            q.requires_grad_(False)
        self.model = self.trainable
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.trainable, find_unused_parameters=True)

    def _load_state(self):
        path = self.ckdir / STATE
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
                raise ValueError("not a training state")
        except Exception as exc:  # written atomically, so damaged from outside: never half of a save
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:120]
            raise RunFault(f"{path} is damaged ({why}); the epoch checkpoints beside it are intact, but the "
                           f"optimiser state is lost: use --no-resume to start again, or another --out") from None
        changed = _changed_keys(state.get("config", {}), plain(self.cfg.to_dict()))
        if changed:
            raise UserError(f"{path} was trained with another config ({', '.join(changed)} differ): "
                            f"use --no-resume to start again, or another --out")
        was, now = (state.get("init") or {}).get("weights_hash"), (self.init or {}).get("weights_hash")
        if was and now and was != now:  # same config, but the init file's weights changed since
            raise UserError(f"{path} was trained from other weights in {self.cfg.init} (weights hash {was}, now {now}): "
                            f"use --no-resume to start again from the new weights, or another --out")
        C.load_module_state(self.trainable.net, state["model"])
        self.schedule.load_state_dict(state.get("schedule", {}))
        for t, loss_state in (state.get("losses") or {}).items():
            if t in self.losses:
                self.losses[t].load_state_dict(loss_state)
        self.history = state.get("history", [])
        self.start = int(state["epoch"]) + 1
        return state

    # -- one epoch ---------------------------------------------------------------------------------
    def lr_at(self, step: int, epoch: int) -> float:
        """The learning rate of global step ``step`` (from 0): the per-epoch exponential decay or a
        per-step cosine over ``lr_steps``, times a linear warm-up over ``warmup_steps``."""
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            length = cfg.lr_steps or self.total_steps
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, length) / length))
        else:
            lr = cfg.lr * cfg.lr_decay ** (epoch - 1)
        if cfg.warmup_steps and step < cfg.warmup_steps:
            lr *= (step + 1) / cfg.warmup_steps
        return lr

    def term_values(self, ctx: Context, active: list[str], rate) -> dict[str, torch.Tensor]:
        """Each active term, weighted: mean over samples of (value × its rate factor), × the configured
        weight × the task's scale (the schedule's factor comes after, in ``combine``)."""
        cfg, out = self.cfg, {}
        for t in active:
            value = self.losses[t](ctx) * C.term_factor(cfg.codec, t, rate)
            task = t.partition(":")[2]
            out[t] = value.mean() * cfg.losses[t].weight * float(cfg.task_scales.get(task, 1.0))
        return out

    def train_epoch(self, epoch: int) -> dict:
        cfg, t0 = self.cfg, time.time()
        self.schedule.set_epoch(epoch)
        self.model.train()
        if cfg.steps_per_epoch:
            batches = sampled_batches(self.train_images, cfg.batch_size, cfg.steps_per_epoch, cfg.seed, epoch, self.rank,
                                      any_size=cfg.crop_each)
        else:
            batches = epoch_batches(self.train_images, cfg.batch_size, cfg.seed, epoch, self.rank, self.world)
        if not batches:
            raise UserError(f"not enough training images for {self.world} rank(s) at batch size {cfg.batch_size}")
        first = (epoch - 1) * self.steps_per_epoch
        batches = batches[: max(0, self.total_steps - first)]
        active = self.schedule.active()
        sums, steps, skipped, total_sum = {t: 0.0 for t in active}, 0, 0, 0.0
        lr = self.lr_at(first, epoch)
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not self.progress or self.rank != 0)
        for i, samples in enumerate(bar):
            lr = self.lr_at(first + i, epoch)
            for g in self.opt.param_groups:
                g["lr"] = lr
            if cfg.crop_each:
                x = augment(load_crops(samples, cfg.crop, self.device), None, cfg.hflip)
            else:
                x = augment(load_batch(samples, self.device), cfg.crop, cfg.hflip)
            h, w = x.shape[-2:]
            rate = C.sample_rate(cfg.codec, self.trainable.continuous, n=x.shape[0], device=self.device)
            out = self.model(pad(x, cfg.codec.pad_to), rate)
            ctx = Context(x, out["x_hat"][..., :h, :w], all_likelihoods(out), Batch(x, samples), self.adapters,
                          rate=rate, clamp=cfg.clamp_for_tasks, out=out, module=self.trainable)
            values = self.term_values(ctx, active, rate)
            total = self.schedule.combine(values)
            self.opt.zero_grad(set_to_none=True)
            ok = self._all_ranks(bool(torch.isfinite(total.detach())))
            if ok and total.requires_grad:
                total.backward()
                _allreduce_grads(self.schedule.parameters(), self.world)
                norm = torch.nn.utils.clip_grad_norm_(self.main, cfg.clip_grad or float("inf"))
                ok = self._all_ranks(bool(torch.isfinite(norm)))
                if ok or not cfg.skip_nonfinite:
                    self.opt.step()
            elif not ok and not cfg.skip_nonfinite and total.requires_grad:
                total.backward()
                self.opt.step()
            self._aux_step()
            if not ok:
                skipped += 1
                self.opt.zero_grad(set_to_none=True)
                continue
            for t, v in values.items():
                sums[t] += float(v.detach())
            total_sum += float(total.detach())
            steps += 1
            bar.set_postfix(loss=f"{total_sum / steps:.4g}", skipped=skipped)
        sums = _allreduce_sums({**sums, "_total": total_sum, "_steps": float(steps), "_skipped": float(skipped)},
                               self.world)
        n, skipped = sums.pop("_steps"), int(sums.pop("_skipped"))
        if n == 0:
            raise TrainingDiverged(f"epoch {epoch}: the loss was not finite at any of its {skipped} step(s); "
                                   f"nothing saved (lower lr, check the start weights)")
        means = {t: v / n for t, v in sums.items()}
        factors = self.schedule.factors()
        self.schedule.end_epoch(epoch, {t: means[t] for t in active})
        return {"epoch": epoch, "lr": lr, "batches": int(n) + skipped, "steps": int(n), "skipped_steps": skipped,
                "total": means.pop("_total"), "losses": means,
                "weights": {t: cfg.losses[t].weight * factors[t] for t in self.losses}, "train_seconds": time.time() - t0}

    def _all_ranks(self, flag: bool) -> bool:
        """``flag`` on every rank (DDP: a step is skipped everywhere if it is skipped anywhere)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item() > 0)

    def _aux_step(self):
        if self.aux_opt is None:
            return
        for q in self.aux:
            q.requires_grad_(True)
        loss = self.trainable.aux_loss()
        if loss is None:
            return
        self.aux_opt.zero_grad(set_to_none=True)
        loss.backward()
        _allreduce_grads(self.aux, self.world)
        self.aux_opt.step()
        for q in self.aux:
            q.requires_grad_(False)

    def validate(self) -> list[dict] | None:
        for a in self.adapters.values():
            a.bind(self.val_ds)
        rows = validate(self.trainable, self.adapters, self.val_images, self.rates, batch_size=self.cfg.eval_batch_size,
                        pad_to=self.cfg.codec.pad_to, device=self.device, rank=self.rank, world=self.world,
                        progress=self.progress)
        for a in self.adapters.values():
            a.bind(self.train_ds)
        return rows

    def save(self, epoch: int, entry: dict) -> None:
        rng = gather(torch.get_rng_state(), self.world)
        if self.rank != 0:
            return
        net = C.final_state(self.trainable)  # CDF tables rebuilt from the weights being saved
        bad = [k for k, v in net.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise TrainingDiverged(f"epoch {epoch}: the weights are no longer finite ({bad[0]}); nothing saved")
        candidate = self.ckdir / f"epoch_{epoch:03d}.pth"
        save_torch(net, candidate)  # the candidate: a plain state dict, loadable as the codec's checkpoint
        entry["checkpoint"] = str(candidate.relative_to(self.out))
        self.history = [h for h in self.history if h["epoch"] < epoch] + [plain(entry)]
        save_torch({"epoch": epoch, "model": net, "optimizer": self.opt.state_dict(),
                    "aux_optimizer": self.aux_opt.state_dict() if self.aux_opt else None,
                    "schedule": self.schedule.state_dict(), "rng": rng, "history": self.history,
                    "losses": {t: loss.state_dict() for t, loss in self.losses.items()},
                    "config": plain(self.cfg.to_dict()), "init": self.init}, self.ckdir / STATE)
        self.write_log()
        plot_history(self.history, self.out / "plot.png")

    def write_log(self, pareto: list | None = None) -> None:
        write_json(self.out / "log.json", {"schema": "icm.train-log/1", "config": self.cfg.to_dict(),
                                           "world_size": self.world, "init": self.init, "epochs": self.history,
                                           **({"pareto": pareto} if pareto is not None else {})})

    # -- the whole run -----------------------------------------------------------------------------
    def run(self) -> dict | None:
        trained = []
        for epoch in range(self.start, self.cfg.epochs + 1):
            if (epoch - 1) * self.steps_per_epoch >= self.total_steps:
                break  # stop_after reached
            entry = self.train_epoch(epoch)
            t0 = time.time()
            entry["val"] = self.validate()
            entry["val_seconds"] = time.time() - t0
            self.save(epoch, entry)
            _barrier(self.world)
            trained.append(epoch)
            if self.rank == 0 and self.progress:
                tqdm.write(_summary_line(entry))
            if self.on_epoch_end is not None:
                self.on_epoch_end(epoch, entry)
        self.write_final()
        pareto = self.final() if self.cfg.reevaluate else None
        if self.rank != 0:
            return None
        return {"out": str(self.out), "trained_epochs": trained, "start_epoch": self.start, "history": self.history,
                "pareto": pareto, "model": str(self.out / C.FINAL), "export": self.cfg.export}

    def write_final(self) -> None:
        """OUT/model.pth (the last weights, CDF tables rebuilt: what a later stage's ``init`` reads) and,
        with ``export``, the same weights in fp16 in the shipped format."""
        if self.rank != 0 or not self.history:
            return
        state = C.final_state(self.trainable)
        save_torch(state, self.out / C.FINAL)
        if self.cfg.export:
            export = Path(self.cfg.export)
            export.parent.mkdir(parents=True, exist_ok=True)
            save_torch(C.half_state(state), export)

    def final(self) -> list[dict] | None:
        front = select_front(candidates(self.history)) if self.rank == 0 else None
        if self.world > 1:
            box = [front]
            torch.distributed.broadcast_object_list(box, src=0)
            front = box[0]
        if not front:
            return []

        def export(epoch):
            weights = self.out / "checkpoints" / f"epoch_{epoch:03d}.pth"
            options = C.export_options(self.trainable, self.cfg.codec, weights,
                                       self.out / "pareto" / f"epoch_{epoch:03d}" / "weights", write=self.rank == 0)
            _barrier(self.world)
            return options

        rows = reevaluate(self.cfg, front, export, self.out, progress=self.progress)
        if self.rank == 0:
            write_json(self.out / "pareto.json", {"schema": "icm.train-pareto/1", "codec": self.cfg.codec.name,
                                                  "candidates": len(candidates(self.history)), "front": rows})
            self.write_log(rows)
        return rows


# may differ on resume: where results go and how they are checked, not what was trained
RESUMABLE_CHANGES = {"out", "export", "epochs", "reevaluate", "device", "eval_batch_size"}


def _changed_keys(saved: dict, now: dict) -> list[str]:
    saved = _with_defaults(saved)
    return sorted(k for k in set(saved) | set(now) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


def _with_defaults(saved: dict) -> dict:
    """A saved config with the keys added to TrainConfig / CodecConfig since it was written set to their
    defaults: the run trained with those, so a finished run still resumes after an upgrade."""
    def filled(values: dict, cls) -> dict:
        out = dict(values)
        for f in dataclasses.fields(cls):
            if f.name in out:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = plain(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = plain(f.default_factory())
        return out
    saved = filled(saved, TrainConfig)
    if isinstance(saved.get("codec"), dict):
        saved["codec"] = filled(saved["codec"], CodecConfig)
    return saved


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _summary_line(entry: dict) -> str:
    parts = [f"epoch {entry['epoch']}: loss {_num(entry['total'], '.4g')}"]
    if entry.get("skipped_steps"):
        parts[0] += f" ({entry['skipped_steps']} non-finite step(s) skipped)"
    for r in entry.get("val") or []:
        parts.append(f"{r['rate_key']}: {_num(r['est_bpp'], '.4f')} bpp, score {_num(r['score'], '.4g')}")
    return "; ".join(parts)


def train(cfg: TrainConfig, resume: bool = True, progress: bool = True, on_epoch_end=None) -> dict | None:
    """Train (or resume) the run described by ``cfg``; returns a summary on rank 0, None elsewhere."""
    run = Run(cfg, resume=resume, progress=progress, on_epoch_end=on_epoch_end)
    summary = run.run()
    # only on success: a failed rank never reaches a barrier, and its peers are stopped. Every rank leaves
    # together: rank 1 used to return (and exit, tearing its gloo pairs down) while rank 0 was still
    # writing, and a CI run saw a rank die of SIGABRT in gloo's threads. The group stays up for a chain's
    # next run (re-initialising it under torchrun hangs); `icm train` tears it down after the last one
    # (teardown_process_group).
    leave_together()
    return summary


def teardown_process_group() -> None:
    """End of a torchrun job: every rank reaches this, then the group is destroyed in order."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
