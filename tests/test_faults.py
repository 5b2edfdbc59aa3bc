"""Issue 29: run-time faults. A dying worker or launcher, a full disk, a damaged cache entry, two runs
on one --out, a bad --out and, for `icm train`, a kill during a checkpoint write, a full disk during
the export and a damaged state.pt. Each ends in one line (exit 1 for a fault of the run, 2 for the
user's input), without a traceback or a leftover temporary file, and a rerun with room gives the
results of an undisturbed run (metrics and bpp; timings aside).

The faults are made real where the machine allows (a small tmpfs, mounted as root) and otherwise
injected at the atomic writer by tests/fault_hook.py, installed as ``sitecustomize`` so that it runs
in every process of a run, the --workers ranks too."""

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fault_hook
from conftest import ICM, run_icm
from test_evaluate_failures import _dist

EXPERIMENT = """
tasks = ["colour"]
anchors = []
reference = "jpeg"
dataset = "{dataset}"
samples_in_report = 1

[[codecs]]
name = "jpeg"
rates = [{{ quality = 20 }}, {{ quality = 80 }}]
"""


@pytest.fixture(scope="module")
def setup(tiny_shapes, tmp_path_factory):
    """The plugin environment with the fault hook, the experiment, and one undisturbed run."""
    root = tmp_path_factory.mktemp("faults")
    env = _dist(root)
    shutil.copy(fault_hook.__file__, root / "sitecustomize.py")
    config = root / "experiment.toml"
    config.write_text(EXPERIMENT.format(dataset=tiny_shapes))
    clean = root / "clean"
    proc = evaluate(env, config, clean, workers=2)
    assert proc.returncode == 0, proc.stderr
    return env, config, outcome(clean)


def setup_dir(setup) -> Path:
    return setup[1].parent / "clean"


def evaluate(env, config, out, workers=2, fault=None):
    extra = {"ICM_FAULT": fault} if fault else {}
    return run_icm("evaluate", "--config", config, "--out", out, "--workers", workers, "--no-progress",
                   env={**env, **extra})


def outcome(out: Path):
    """What must not depend on how the run got there: every point's bpp and quality, every metric."""
    r = json.loads((out / "results.json").read_text())
    points = {(p["codec"], p["rate_key"]): (p["images"], p["bpp"], p["est_bpp"], p["psnr"], p["ms_ssim"])
              for p in r["points"]}
    return points, r["metrics"]


def one_error_line(proc, code: int, fragment: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("icm: error")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    print(f"fault: exit {proc.returncode}: {errors[0]}")  # shown with -s: the fault table of issue 29
    return errors[0]


def temporaries(out: Path) -> list[Path]:
    return sorted(out.rglob(".*.tmp"))


def processes_writing(out: Path) -> list[int]:
    """Processes whose command line names ``out`` (orphaned workers would)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out).encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


# -- the pieces ---------------------------------------------------------------------------------------------
def test_the_launcher_names_a_worker_killed_by_a_signal(monkeypatch, capfd):
    from icm.evaluation import workers

    script = "import os, signal, time; os.environ['RANK'] == '1' and os.kill(os.getpid(), signal.SIGKILL); time.sleep(30)"
    monkeypatch.setattr(workers, "worker_command", lambda argv: [sys.executable, "-c", script])
    start = time.monotonic()
    assert workers.launch(["evaluate"], 2) == 1
    assert time.monotonic() - start < 20  # rank 0 is stopped, not waited for
    assert capfd.readouterr().err.strip().splitlines() == [
        "icm: error: worker rank 1 was killed by SIGKILL (the kernel's out-of-memory killer sends it: `dmesg` says "
        "if it did); run again to resume from what is written"]


def test_a_full_disk_during_a_write_leaves_no_temporary_file_and_names_the_file(tmp_path, monkeypatch):
    from icm.bitstream import WRITTEN, atomic_write_bytes
    from icm.faults import fault_line

    atomic_write_bytes(tmp_path / "a.bin", b"x" * 1500)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "b.bin", b"y" * 10)
    assert caught.value.filename == str(tmp_path / "b.bin") and WRITTEN[0] >= 1500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    line = fault_line(caught.value)
    assert line.startswith(f"no space left on device writing {tmp_path}/b.bin (") and "this run had written" in line
    assert fault_line(OSError(errno.EROFS, "Read-only file system", "/x")) == "cannot write /x: Read-only file system"
    assert fault_line(FileNotFoundError(errno.ENOENT, "No such file", "/x")) is None  # a bug keeps its traceback


def test_only_the_temporary_files_of_writers_that_are_gone_are_removed(tmp_path):
    from icm.faults import remove_stale_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, live = int(gone.stdout), os.getppid()
    (tmp_path / "a" / "b").mkdir(parents=True)
    stale = tmp_path / "a" / "b" / f".x.icm.{dead}.abcd1234.tmp"
    kept = [tmp_path / "a" / f".y.pkl.{live}.abcd1234.tmp", tmp_path / ".notes.tmp", tmp_path / "z.tmp"]
    for f in [stale, *kept]:
        f.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and all(f.exists() for f in kept)


# -- evaluate: dying processes ------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["kill:.icm:1:1", "kill:.pkl:4:0"])  # rank 1 at its first file, rank 0 later
def test_a_killed_worker_is_named_with_its_signal_and_a_rerun_resumes(setup, tmp_path, fault):
    env, config, clean = setup
    out = tmp_path / "o"
    proc = evaluate(env, config, out, fault=fault)
    rank = fault.rsplit(":", 1)[1]
    one_error_line(proc, 1, f"worker rank {rank} was killed by SIGKILL")
    rerun = evaluate(env, config, out, workers=1)  # a run resumes with any number of workers
    assert rerun.returncode == 0, rerun.stderr
    assert outcome(out) == clean and not temporaries(out)


@pytest.mark.parametrize("fault", ["kill-launcher:/scores/:1:0"])
def test_a_killed_launcher_takes_its_workers_along_and_a_rerun_resumes(setup, tmp_path, fault):
    env, config, clean = setup
    out = tmp_path / "o"
    proc = evaluate(env, config, out, fault=fault)
    assert proc.returncode == -9, proc.stderr
    deadline = time.monotonic() + 10
    while processes_writing(out) and time.monotonic() < deadline:  # the kernel stops them (PR_SET_PDEATHSIG)
        time.sleep(0.1)
    assert not processes_writing(out)
    assert not (out / "results.json").exists()
    rerun = evaluate(env, config, out, workers=1)  # a run resumes with any number of workers
    assert rerun.returncode == 0, rerun.stderr
    assert outcome(out) == clean and not temporaries(out)


def test_a_write_cut_short_by_a_kill_leaves_nothing_after_the_rerun(setup, tmp_path):
    env, config, clean = setup
    out = tmp_path / "o"
    proc = evaluate(env, config, out, workers=1, fault="kill-midwrite:.pkl:3")
    assert proc.returncode == -9 and len(temporaries(out)) == 1
    rerun = evaluate(env, config, out, workers=1)
    assert rerun.returncode == 0, rerun.stderr
    assert outcome(out) == clean and not temporaries(out)


# -- evaluate: a full disk ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["enospc:.quality.json:2:0", "enospc:.pkl:3:1"])
def test_a_full_disk_names_the_file_and_a_rerun_with_room_resumes(setup, tmp_path, fault):
    env, config, clean = setup
    out = tmp_path / "o"
    proc = evaluate(env, config, out, fault=fault)
    line = one_error_line(proc, 1, "no space left on device writing " + str(out))
    assert fault.split(":")[1] in line and " had written " in line and "free there" in line
    assert not temporaries(out)
    rerun = evaluate(env, config, out, workers=1)  # a run resumes with any number of workers
    assert rerun.returncode == 0, rerun.stderr
    assert outcome(out) == clean and not temporaries(out)


@pytest.fixture
def mount():
    """mount(folder, options) a tmpfs, unmounted afterwards; skips where mounting is not allowed."""
    mounted = []

    def do(folder: Path, options: str):
        folder.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (the injected ENOSPC cases cover the full disk)")
        mounted.append(folder)
        return folder

    yield do
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_is_foreseen_named_and_resumed_after_making_room(setup, tmp_path, mount):
    env, config, clean = setup
    disk = mount(tmp_path / "disk", "size=160k")
    out = disk / "o"
    proc = evaluate(env, config, out)
    one_error_line(proc, 1, "no space left on device writing " + str(out))
    warning = [ln for ln in proc.stderr.splitlines() if ln.startswith("icm: warning: this run will write about")]
    assert len(warning) == 1 and "is free there" in warning[0], proc.stderr
    assert not temporaries(out)
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    rerun = evaluate(env, config, out, workers=1)  # a run resumes with any number of workers
    assert rerun.returncode == 0 and "icm: warning: this run will write" not in rerun.stderr, rerun.stderr
    assert outcome(out) == clean and not temporaries(out)


def test_the_space_estimate_is_near_what_the_cache_takes(setup, tmp_path):
    """The estimate before coding against the blocks the undisturbed run's cache takes on disk."""
    import toy_task
    from icm.datasets import load_dataset
    from icm.evaluation.config import load_experiment
    from icm.evaluation.cache import Cache, image_key, model_key
    from icm.evaluation.engine import Engine
    from icm.evaluation.space import cache_estimate
    from icm.images import load_image

    cache = setup_dir(setup) / "cache"
    used = sum(f.stat().st_blocks * 512 for f in cache.rglob("*") if f.is_file() and "plots" not in f.parts)
    exp = load_experiment(setup[1])
    exp.out = str(tmp_path / "empty")
    engine = Engine(exp, progress=False)
    adapters = {"colour": toy_task.MeanColour()}
    mkeys = {"colour": model_key(adapters["colour"])}
    originals = {s["id"]: (img, image_key(img)) for s in load_dataset(exp.dataset, exp.split).images
                 for img in [load_image(s["file_name"])]}
    need, files = cache_estimate(engine, engine.codec_points(), adapters, mkeys, originals)
    assert files == sum(1 for f in cache.rglob("*") if f.is_file() and "plots" not in f.parts)
    assert 0.8 * used <= need <= 1.25 * used, (need, used)
    engine.cache = Cache(cache)  # on the finished run's folder nothing is left to write
    assert cache_estimate(engine, engine.codec_points(), adapters, mkeys, originals) == (0, 0)


# -- evaluate: damaged cache, two runs, a bad --out ------------------------------------------------------------
def test_each_kind_of_damaged_cache_entry_is_remade(toy, tiny_shapes, tmp_path):
    """In-process (the cache is the same code either way), with a learned codec for the .est.json."""
    from icm.evaluation.config import CodecSpec, Experiment, TaskSpec
    from icm.evaluation.run import evaluate as run

    exp = lambda: Experiment(tasks=[TaskSpec("colour")], dataset=str(tiny_shapes), out=str(tmp_path / "o"),  # noqa: E731
                             reference="jpeg", samples_in_report=1,
                             codecs=[CodecSpec("jpeg", rates=[{"quality": 20}, {"quality": 80}]),
                                     CodecSpec("bmshj2018-factorized", rates=[{"quality": 1}], options={"weights": "random"})])
    run(exp(), progress=False)
    clean = outcome(tmp_path / "o")
    cache = tmp_path / "o" / "cache"
    first = lambda pattern: sorted(cache.rglob(pattern))[0]  # noqa: E731
    first("bitstreams/jpeg/quality=20/*.icm").write_bytes(first("bitstreams/jpeg/quality=20/*.icm").read_bytes()[:-9])
    first("bitstreams/jpeg/quality=80/*.quality.json").write_text('{"of": "x", "psnr"')
    est = first("bitstreams/bmshj2018-factorized/*/*.est.json")
    est.write_text("not json")
    first("predictions/*/original/*/*/*.pkl").write_bytes(b"\x80\x04garbled")
    first("scores/colour/*.json").write_text("{garbled")
    counters = run(exp(), progress=False)["counters"]
    assert (counters["encodes"], counters["decodes"], counters["predictions"], counters["scores"]) == (1, 2, 1, 1)
    assert not counters["failures"] and json.loads(est.read_text())["bits"] > 0
    assert outcome(tmp_path / "o") == clean and not temporaries(tmp_path / "o")


def test_two_runs_on_one_out_both_finish_with_the_same_results(setup, tmp_path):
    """Started together on a folder holding an earlier run's outputs (not its cache): both set those
    aside, code the same files and write the same results."""
    env, config, clean = setup
    out = tmp_path / "o"
    shutil.copytree(setup_dir(setup), out, ignore=shutil.ignore_patterns("cache"))
    cmd = [*ICM, "evaluate", "--config", str(config), "--out", str(out), "--workers", "1", "--no-progress"]
    procs = [subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0 and "Traceback" not in err, err
    assert outcome(out) == clean and not temporaries(out)


def test_an_out_that_is_a_file_is_refused_before_any_model_loads(setup, tmp_path):
    env, config, _ = setup
    (tmp_path / "file").write_text("not a folder")
    for out, says in ((tmp_path / "file", "not a folder"), (tmp_path / "file" / "o", "is a file")):
        proc = evaluate(env, config, out)
        one_error_line(proc, 2, f"--out {out}: ")
        assert says in proc.stderr
    assert (tmp_path / "file").read_text() == "not a folder"


def test_an_out_that_cannot_be_written_is_refused_before_any_model_loads(setup, tmp_path, mount):
    env, config, _ = setup
    readonly = mount(tmp_path / "ro", "size=1m,ro")
    one_error_line(evaluate(env, config, readonly / "o"), 2, "cannot write there (Read-only file system)")


# -- train ------------------------------------------------------------------------------------------------------
TRAIN = """
dataset = "{dataset}"
tasks = ["colour"]
epochs = 3
batch_size = 2
eval_batch_size = 2
lr = 1e-4
out = "{out}"
export = "{out}/export/model.pth"
reevaluate = false
val_limit = 2

[codec]
name = "bmshj2018-factorized"
quality = 1
options = {{ weights = "random" }}

[losses]
rate = 0.01
mse = 1.0
"distill:colour" = 0.5
"""


@pytest.fixture(scope="module")
def trained(setup, tiny_shapes, tmp_path_factory):
    """A training config and its undisturbed run's final weights."""
    env = setup[0]
    root = tmp_path_factory.mktemp("train")
    config = root / "run.toml"
    config.write_text(TRAIN.format(dataset=tiny_shapes, out=root / "clean"))
    proc = run_icm("train", config, "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    return env, config, weights(root / "clean")


def train(env, config, out, *args, fault=None):
    text = config.read_text().replace(str(config.parent / "clean"), str(out))
    path = out.parent / f"{out.name}.toml"
    path.write_text(text)
    return run_icm("train", path, "--no-progress", *args, env={**env, **({"ICM_FAULT": fault} if fault else {})})


def weights(out: Path) -> dict:
    return {name: torch.load(out / name, weights_only=True) for name in ("checkpoints/epoch_003.pth", "export/model.pth")}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                        for x, y in zip(a.values(), b.values()))


def test_train_killed_during_a_checkpoint_write_resumes_to_the_same_weights(trained, tmp_path):
    env, config, clean = trained
    out = tmp_path / "run"
    proc = train(env, config, out, fault="kill-midwrite:state.pt:2")  # during epoch 2's state
    assert proc.returncode == -9 and [f.name.split(".")[1] for f in temporaries(out)] == ["state"]
    rerun = train(env, config, out)
    assert rerun.returncode == 0 and "resumed at epoch 2" in rerun.stdout, rerun.stderr
    assert same(weights(out), clean) and not temporaries(out)


def test_train_full_disk_during_the_export_is_one_line_and_a_rerun_exports(trained, tmp_path):
    env, config, clean = trained
    out = tmp_path / "run"
    proc = train(env, config, out, fault="enospc:export/model.pth:1")
    one_error_line(proc, 1, f"no space left on device writing {out}/export/model.pth")
    assert not (out / "export" / "model.pth").exists() and not temporaries(out)
    rerun = train(env, config, out)
    assert rerun.returncode == 0 and "resumed at epoch 4" in rerun.stdout, rerun.stderr
    assert same(weights(out), clean)


def test_train_refuses_a_damaged_state_in_one_line(trained, tmp_path):
    env, config, _ = trained
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    one_error_line(train(env, config, out), 1, f"{out}/checkpoints/state.pt is damaged")
    fresh = train(env, config, out, "--no-resume", "--epochs", "1")
    assert fresh.returncode == 0 and "resumed" not in fresh.stdout, fresh.stderr


def test_train_refuses_a_bad_out_before_any_model_loads(trained, tmp_path):
    env, config, _ = trained
    (tmp_path / "file").write_text("")
    one_error_line(run_icm("train", config, "--out", tmp_path / "file", env=env), 2, "--out")
    config_export = tmp_path / "x.toml"
    config_export.write_text(config.read_text().replace(f'export = "{config.parent}/clean/export/model.pth"',
                                                        f'export = "{tmp_path}/file/model.pth"'))
    one_error_line(run_icm("train", config_export, "--out", tmp_path / "o", env=env), 2, "export")
