"""Issue 9: label-free mode on a bare folder of photos (``{"images_dir": ...}``) with every shipped
task: each makes its pseudo ground truth from its own predictions on the uncompressed photos."""

import json

from conftest import run_icm
from icm.images import save_image

TASKS = ("det", "inst", "panoptic", "seg", "pose", "cls")


def test_label_free_on_a_folder_of_photos_runs_every_task(natural_images, tmp_path):
    for i, photo in enumerate(natural_images):
        save_image(photo, tmp_path / "photos" / f"{i}.png")
    (tmp_path / "photos.json").write_text(json.dumps({"images_dir": "photos"}))
    proc = run_icm("evaluate", "--dataset", tmp_path / "photos.json", "--label-free", "--tasks", ",".join(TASKS),
                   "--anchors", "jpeg", "--reference", "jpeg", "--codec", "jpeg", "--rates", "20", "--no-progress",
                   "--strict", "--out", tmp_path / "o", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["counters"]["failures"] == [] and set(results["metrics"]) == set(TASKS)
    for task in TASKS:
        primary = results["tasks"][task]["primary"]
        clean = results["metrics"][task]["original@none"]
        # against its own predictions the uncompressed point is perfect, or undefined (with a note) when the
        # model found nothing confident enough on these photos to serve as ground truth
        assert clean[primary] == 1.0 or (clean[primary] is None and clean["note"]), (task, clean)
        assert set(results["metrics"][task]) == {"original@none", "jpeg@quality=20"}
