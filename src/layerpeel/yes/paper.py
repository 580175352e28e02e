"""The YES paper's four experiments: train the MLP, check the YES bounds every epoch, write the run."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerpeel.config import ConfigBase
from layerpeel.errors import ConfigError, DataError, LayerpeelError
from layerpeel.io import append_jsonl, atomic_write_json
from layerpeel.models import MLP, MLPConfig
from layerpeel.monitor import Monitor, MonitorConfig, YesAnalysis, YesData, every
from layerpeel.yes.bounds import VERDICT_WORDS, to_db

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class YesTask:
    """One experiment's data (rows are samples) and training recipe."""

    name: str  # registry name
    title: str  # one line for the figure and the summary
    x_train: torch.Tensor  # (N, n) float32
    y_train: torch.Tensor  # (N, m) float32
    x_test: torch.Tensor  # (N_test, n)
    y_test: torch.Tensor  # (N_test, m)
    optimizer: str  # "adam" or "sgd"
    lr: float  # learning rate
    epochs: int  # default number of epochs
    notes: list[str]  # what is [paper] and what is [design], one statement each
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None  # test metrics


# Default epochs per task, picked so that each demo takes about a minute on one CPU thread.
DEFAULT_EPOCHS = {"synthetic": 300, "denoise": 300, "image": 300, "digits": 150}
# (input width, output width m, most samples the task has) of each task's data
TASK_SHAPES = {
    "synthetic": (20, 100, None),
    "denoise": (20, 20, None),
    "image": (128, 64, None),
    "digits": (64, 100, 1797),
}
TaskBuilder = Callable[[np.random.Generator, int], YesTask]  # (rng, n_samples or 0) -> task
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Add a task builder to `TASKS` under `name`."""

    def wrap(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = fn
        return fn

    return wrap


def _split(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shuffle, then 80 % train / 20 % test: x_train, y_train, x_test, y_test as float32."""
    idx = rng.permutation(len(x))
    cut = int(round(0.8 * len(x)))
    tr, te = idx[:cut], idx[cut:]
    f = torch.float32
    return (
        torch.tensor(x[tr], dtype=f),
        torch.tensor(y[tr], dtype=f),
        torch.tensor(x[te], dtype=f),
        torch.tensor(y[te], dtype=f),
    )


@register_task("synthetic")
def synthetic_task(rng: np.random.Generator, n_samples: int) -> YesTask:
    """Synthetic y = |A x|, x in R^20 ~ N(0, I), A in R^{100 x 20} with entries N(0, 1/m)."""
    n, m, total = 20, 100, n_samples or 1000
    a = rng.normal(0.0, 1.0 / math.sqrt(m), size=(m, n))
    x = rng.standard_normal((total, n))
    x_train, y_train, x_test, y_test = _split(x, np.abs(x @ a.T), rng)
    return YesTask(
        name="synthetic",
        title="synthetic y = |Ax| (n=20, m=100, L=5)",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        optimizer="adam",
        lr=1e-3,
        epochs=DEFAULT_EPOCHS["synthetic"],
        notes=[
            "[paper] y = |Ax|, x ~ N(0, I_20), A in R^{100x20} with N(0, 1/m) entries, 1000 "
            "samples, 80/20 split, 5 layers of width m = 100, Adam 1e-3, StepLR(50, 0.9), batch 50",
            "[design] 300 epochs by default",
        ],
    )


@register_task("denoise")
def denoise_task(rng: np.random.Generator, n_samples: int) -> YesTask:
    """20-dim signals: 50 clean signals x 20 noisy copies (sigma 0.2); input noisy, target clean."""
    dim, copies, sigma = 20, 20, 0.2
    n_clean = max(1, (n_samples or 1000) // copies)
    clean = rng.standard_normal((n_clean, dim))
    y = np.repeat(clean, copies, axis=0)
    x = y + sigma * rng.standard_normal(y.shape)
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    return YesTask(
        name="denoise",
        title="signal denoising (n=m=20, sigma 0.2, L=5)",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        optimizer="sgd",
        lr=0.05,
        epochs=DEFAULT_EPOCHS["denoise"],
        notes=[
            "[paper] 20-dim signals, 50 clean signals x 20 noisy copies, noise sigma 0.2, SGD, "
            "5 layers",
            "[design] clean signals ~ N(0, I_20); input = clean + 0.2 N(0, I), target = clean; "
            "width m = 20; plain SGD lr 0.05 with StepLR(50, 0.9), batch 50; 80/20 split over "
            "all 1000 noisy samples; 300 epochs",
        ],
    )


@register_task("image")
def image_task(rng: np.random.Generator, n_samples: int) -> YesTask:
    """8x8 patches of an image that ships with scikit-learn, from noisy phaseless measurements."""
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:  # pragma: no cover - scikit-learn is in the dev extra
        raise DataError("the image demo needs scikit-learn: pip install scikit-learn") from None
    img = load_sample_image("china.jpg").astype(np.float64).mean(axis=2) / 255.0  # (427, 640)
    total, p, n_meas, sigma = n_samples or 1000, 8, 128, 0.05
    rows = rng.integers(0, img.shape[0] - p + 1, total)
    cols = rng.integers(0, img.shape[1] - p + 1, total)
    win = np.lib.stride_tricks.sliding_window_view(img, (p, p))  # (H-7, W-7, 8, 8)
    y = win[rows, cols].reshape(total, p * p)  # (total, 64) clean patches in [0, 1]
    a = rng.normal(0.0, 1.0 / p, size=(n_meas, p * p))  # entries N(0, 1/64)
    x = np.abs(y @ a.T) + sigma * rng.standard_normal((total, n_meas))
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    # Standardize each measurement with the training statistics: it speeds up Adam and changes
    # no bound (an affine map per input feature keeps the row space of [X; 1]).
    mu, sd = x_train.mean(0), x_train.std(0)
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    return YesTask(
        name="image",
        title="image patches from phaseless measurements (n=128, m=64, L=5)",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        optimizer="adam",
        lr=1e-3,
        epochs=DEFAULT_EPOCHS["image"],
        notes=[
            "[paper] image patch denoising from phaseless measurements, 8x8 patches, m = 64, "
            "5 layers",
            "[design] image: scikit-learn's china.jpg (grey = mean of RGB / 255); 1000 random "
            "8x8 patches x; input = |A x| + 0.05 N(0, I) with A in R^{128x64}, N(0, 1/64) "
            "entries, standardized with the training statistics; target = the clean patch; "
            "Adam 1e-3, StepLR(50, 0.9), batch 50; 80/20 split; 300 epochs",
        ],
    )


def _digit_accuracy(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy of argmax over the diagonal of the predicted 10x10 matrix."""
    diag = torch.arange(10) * 11  # positions of (d, d) in vec(e_d e_d^T)
    ok = pred[:, diag].argmax(1) == y[:, diag].argmax(1)
    return {"test_accuracy": float(ok.float().mean())}


@register_task("digits")
def digits_task(rng: np.random.Generator, n_samples: int) -> YesTask:
    """scikit-learn's 8x8 digits (in place of MNIST), target vec(e_d e_d^T)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is in the dev extra
        raise DataError("the digits demo needs scikit-learn: pip install scikit-learn") from None
    data = load_digits()
    x, d = data.data / 16.0, data.target  # (1797, 64) in [0, 1], digits 0..9
    if n_samples:
        keep = rng.permutation(len(x))[:n_samples]
        x, d = x[keep], d[keep]
    y = np.zeros((len(x), 100))
    y[np.arange(len(x)), d * 11] = 1.0  # vec(e_d e_d^T): a single 1 at (d, d)
    x_train, y_train, x_test, y_test = _split(x, y, rng)
    return YesTask(
        name="digits",
        title="digits 8x8 (sklearn, in place of MNIST), target vec(e_d e_d^T) (n=64, m=100, L=5)",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        optimizer="adam",
        lr=1e-3,
        epochs=DEFAULT_EPOCHS["digits"],
        notes=[
            "[paper] digit classification with target vec(e_d e_d^T), 5 layers (on MNIST)",
            "[design] scikit-learn's 8x8 digits (1797 images, pixels / 16) in place of MNIST, "
            "so nothing is downloaded; width m = 100; Adam 1e-3, StepLR(50, 0.9), batch 50; "
            "80/20 split; 150 epochs",
        ],
        score=_digit_accuracy,
    )


@dataclasses.dataclass
class YesDemoConfig(ConfigBase):
    """One yes-demo run: which task, how long, and the bound settings."""

    task: str = "synthetic"  # one of TASKS
    epochs: int = 0  # training epochs; 0 = the task's default
    seed: int = 0  # seeds the data, the initialization and the batches
    n_samples: int = 0  # samples before the 80/20 split; 0 = the task's default
    n_layers: int = 5  # L, Linear layers of the MLP (the paper uses 5)
    batch_size: int = 50  # mini-batch size (the paper's 50)
    max_anchors: int | None = None  # cap on the anchor subset size; None = full enumeration

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        for name, low in (("epochs", 0), ("seed", 0), ("n_samples", 0), ("n_layers", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.n_samples and self.n_samples < 10:
            raise ConfigError(f"n_samples must be 0 (default) or >= 10, got {self.n_samples}")
        if self.max_anchors is not None and (
            not isinstance(self.max_anchors, int) or self.max_anchors < 0
        ):
            raise ConfigError(f"max_anchors must be None or >= 0, got {self.max_anchors!r}")


def memory_estimate(cfg: YesDemoConfig) -> int:
    """Bytes a run needs at least, roughly: the task's data and the YES check's float64 features.

    Per sample: the float64 data as drawn and split (3 copies of inputs and outputs), and the
    hidden features with the walk's working buffers (about L + 4 arrays of width m).
    """
    n_in, m, most = TASK_SHAPES[cfg.task]
    n = cfg.n_samples or 1000
    if most is not None:
        n = min(n, most)
    return n * 8 * (3 * (n_in + m) + (cfg.n_layers + 4) * m)


@dataclasses.dataclass
class YesDemoResult:
    """What a finished run wrote and where it ended."""

    out_dir: Path  # the run folder
    rows: list[dict[str, Any]]  # the metrics.jsonl rows, one per check (epoch 0 = initialization)
    summary: dict[str, Any]  # also in summary.json
    figures: list[Path]  # yes_cloud.png and yes_cloud.svg


def run_yes_demo(
    cfg: YesDemoConfig,
    out_dir: str | Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> YesDemoResult:
    """Train the task's MLP, check the YES bounds on the training set every epoch, write the run.

    Writes `config.json`, `metrics.jsonl` (one flushed row per epoch, epoch 0 = initialization),
    `summary.json` and the YES-cloud figure `yes_cloud.{png,svg}` into `out_dir`.
    """
    from layerpeel.report.yes_figure import plot_yes_cloud

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    task = TASKS[cfg.task](rng, cfg.n_samples)
    epochs = cfg.epochs or task.epochs
    torch.manual_seed(cfg.seed)
    n_in, m = task.x_train.shape[1], task.y_train.shape[1]
    model = MLP(MLPConfig(n_in=n_in, width=m, n_layers=cfg.n_layers))
    if task.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=task.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=task.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.9)
    cfg.to_json(out / "config.json")
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    (out / "monitor.jsonl").unlink(missing_ok=True)
    # the training monitor computes the YES check of every epoch (events in monitor.jsonl)
    monitor = Monitor(
        model,
        YesData(task.x_train, task.y_train, cfg.max_anchors),
        out,
        MonitorConfig(warmup=0, max_overhead=None),
        schedule=every(1),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for epoch in range(epochs + 1):
        if epoch:
            _train_epoch(model, opt, task, cfg.batch_size, gen)
            sched.step()
        row = _check(model, monitor, task, epoch)
        row["seconds"] = time.perf_counter() - start
        append_jsonl(metrics, row)
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
    seconds = time.perf_counter() - start
    title = f"{task.title}: final {rows[-1]['verdict']}"
    monitor.close()
    figures = plot_yes_cloud(rows, out / "yes_cloud", title=title)
    summary = _summary(cfg, task, epochs, rows, seconds, model)
    atomic_write_json(out / "summary.json", summary)
    logger.info("yes-demo %s: %s in %.1f s", cfg.task, rows[-1]["verdict"], seconds)
    return YesDemoResult(out, rows, summary, figures)


def _train_epoch(
    model: MLP, opt: torch.optim.Optimizer, task: YesTask, batch: int, gen: torch.Generator
) -> None:
    """One pass over the shuffled training set in mini-batches; loss = mean of summed sq. error."""
    model.train()
    n = task.x_train.shape[0]
    perm = torch.randperm(n, generator=gen)
    for s in range(0, n, batch):
        idx = perm[s : s + batch]
        loss = (model(task.x_train[idx]) - task.y_train[idx]).square().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _check(model: MLP, monitor: Monitor, task: YesTask, epoch: int) -> dict[str, Any]:
    """The metrics row of one epoch: the monitor's YES check on the training set, the test loss."""
    event = monitor.step(epoch)
    analysis = monitor.analysis
    if event is None or not isinstance(analysis, YesAnalysis) or analysis.last is None:
        raise LayerpeelError(
            f"the YES check failed at epoch {epoch}; see {monitor.run_dir / 'monitor_errors'}"
        )
    model.eval()
    pred = model(task.x_test)
    test_loss = float((pred - task.y_test).double().square().sum(1).mean())
    row = dict(analysis.last, epoch=epoch)
    row.update(test_loss=test_loss, test_loss_db=to_db(test_loss))
    if task.score is not None:
        row.update(task.score(pred, task.y_test))
    return row


def _summary(
    cfg: YesDemoConfig,
    task: YesTask,
    epochs: int,
    rows: list[dict[str, Any]],
    seconds: float,
    model: MLP,
) -> dict[str, Any]:
    last = rows[-1]
    n_layers = cfg.n_layers
    return {
        "config": cfg.to_dict(),
        "task": task.title,
        "notes": task.notes,
        "epochs": epochs,
        "n_train": int(task.x_train.shape[0]),
        "n_test": int(task.x_test.shape[0]),
        "model": model.config.to_dict(),
        "final": last,
        "verdict": last["verdict"],
        "verdict_words": VERDICT_WORDS[last["verdict"]],
        "final_train_loss_db": last["train_loss_db"],
        "yes0_db": to_db(last["yes0_min"]),
        f"yes{n_layers - 1}_db": to_db(last["yes_min"][-1]),
        "first_green_epoch": next((r["epoch"] for r in rows if r["verdict"] == "green"), None),
        "seconds": seconds,
        "seconds_per_epoch": seconds / max(epochs, 1),
    }
