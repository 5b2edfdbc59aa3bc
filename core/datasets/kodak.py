"""The Kodak set: 24 photographs of 768x512 (PNG), the field's standard test set for image codecs.

Fetched from the address CompressAI and most papers use, and every image checked against the list
below: its size and the sha256 of its decoded RGB pixels (HxWx3 uint8, row-major), so a copy saved
with other PNG compression or metadata still matches. The images carry no labels: tasks run on them
label-free (``--label-free``), or not at all (``--tasks none``).
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from icm.bitstream import atomic_write_bytes
from icm.errors import UserError

URL = "http://r0k.us/graphics/kodak/kodak/{name}"  # ICM_KODAK_URL replaces it (a mirror), {name} is kodimNN.png

# name: (width, height, sha256 of the decoded RGB pixels)
IMAGES = {
    "kodim01.png": (768, 512, "a00210743353594464ac67e680a41710f484444ca5f9dfddeb570de25c428273"),
    "kodim02.png": (768, 512, "ae5a495df4ec40e0941265440ccf98973915b4190ab803e37a23ca93dd43a07e"),
    "kodim03.png": (768, 512, "234e61f585503f2a44400f5561131e8a512ef2c15328cd83d5cdbf10e2616cf2"),
    "kodim04.png": (512, 768, "e88e788fca00e6c723bb66ff45edb8cb56091ee284dcb73e3909834f2c96eeb6"),
    "kodim05.png": (768, 512, "ed3d1ee770909d3b27903b52ce19ee59a9bf24621a7bf1fb57b90677da880cb6"),
    "kodim06.png": (768, 512, "7f45158999fa297d1cfbd292b3e2f3f5b27770701c3473155c211c3f512cc97f"),
    "kodim07.png": (768, 512, "4e3664bf6fe865b49f15f7b554efa7dbecaf73ae0e8699f2e307bf07849f1264"),
    "kodim08.png": (768, 512, "889c3740e4ed54ca53d11ae735a44d15fa24fe312b3bd1609a80618a4092c208"),
    "kodim09.png": (512, 768, "f8453140e63a42301a6dbebb849a3cc40d34e4e59580eb1f372f7f5460df0dbe"),
    "kodim10.png": (512, 768, "fabe11b5c4f028394e093a5b5907e5fabc8072da0d5334fb3a38547a7e1be842"),
    "kodim11.png": (768, 512, "ab4dd9bf8431e717d33892b3ba03c63bfea3c7fa72c2610010de7df3c194c075"),
    "kodim12.png": (768, 512, "f412db2168e599949aac26bd3264f111b23a684f30a21cfd320e9e95bc69bbae"),
    "kodim13.png": (768, 512, "875703d56fb9396f478b5d7d3b18e2b77c17147a685c6dc2567e1c574aaf01e3"),
    "kodim14.png": (768, 512, "2bd5029ee75ac1697542e5b05624e8afe186e3250abd7513d6a806b52084c2f0"),
    "kodim15.png": (768, 512, "b5353e7511277009922ecbdebfc6418fec53aa1b2a08d44fc957a7540825697b"),
    "kodim16.png": (768, 512, "ed21745fd32fce95cc2c6af7fc52b1b15e590c7a14ab18ab34bd65ecaf955ac7"),
    "kodim17.png": (512, 768, "566bc866664e9b06dc86e2654051b454844efe17322dbf7e24156d8243f1943e"),
    "kodim18.png": (512, 768, "3475af71066f3ca8206eb12cfc989ebe9c6e44820a96604e88ae018606e1f7bd"),
    "kodim19.png": (512, 768, "7956408ef24222d37ac53f579bd24d5b2c3557b16c657e8b71c1b6ae9f18de1b"),
    "kodim20.png": (768, 512, "666ce8f2db5566a123bb081e70618f6f4c4253df960f3b41bb9dcc3dd134f3cf"),
    "kodim21.png": (768, 512, "2d6902daf7c4486b7c8c04d834091841a2b38c8f0c81cd7a963a6510b34a2a6a"),
    "kodim22.png": (768, 512, "f430842120c108b67725ada96b8b7b2a914f6a0915eacd5595064c6c1a5d70a0"),
    "kodim23.png": (768, 512, "81992a83592267e69125666f3e3e04c1819529b4c4c1e55fde0a6a741bac4219"),
    "kodim24.png": (768, 512, "e3e3ccc3e795b82a3da66934409dfe98ce0f5aadc6d7767543c506453599bb98"),
}


def pixel_digest(data: bytes | Path) -> tuple[int, int, str]:
    """(width, height, sha256 of the decoded RGB pixels) of a PNG given as bytes or a path."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        pixels = np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return pixels.shape[1], pixels.shape[0], hashlib.sha256(pixels.tobytes()).hexdigest()


def check(name: str, data: bytes | Path, where: str) -> None:
    """One-line UserError unless ``data`` decodes to the Kodak image ``name``."""
    try:
        got = pixel_digest(data)
    except (OSError, ValueError) as exc:
        raise UserError(f"{where}: not a readable image ({exc}); {_REFETCH}") from None
    width, height, digest = IMAGES[name]
    if got[:2] != (width, height):
        raise UserError(f"{where}: {got[0]}x{got[1]} pixels, Kodak's {name} has {width}x{height}; {_REFETCH}")
    if got[2] != digest:
        raise UserError(f"{where}: its pixels are not Kodak's {name} (sha256 differs from icm's list); {_REFETCH}")


_REFETCH = "delete it and run `icm data kodak` to fetch it again"


def fetch(folder: Path) -> list[str]:
    """Download the images missing from ``folder``, each checked before it is written; returns their names."""
    fetched = []
    for name in IMAGES:
        path = folder / name
        if path.is_file():
            continue
        url = os.environ.get("ICM_KODAK_URL", URL).format(name=name)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise UserError(f"kodak: cannot download {url} ({reason}); to use a local copy of the 24 PNGs, set "
                            f"ICM_DATA to a folder holding kodak/ (icm looked in {folder}), or pass --dataset FOLDER") from None
        check(name, data, url)
        atomic_write_bytes(path, data)
        fetched.append(name)
    return fetched


def verify(folder: Path) -> list[Path]:
    """The 24 image paths in ``folder``, each checked against the list; a missing or wrong one is one line."""
    paths = [folder / name for name in IMAGES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{folder}: {len(missing)} Kodak image(s) missing ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}); run `icm data kodak` to fetch them")
    for p in paths:
        check(p.name, p, str(p))
    return paths


def load(folder: Path):
    """The Kodak set in ``folder`` as a label-free :class:`~icm.datasets.Dataset` (split ``val``)."""
    from icm.datasets import Dataset

    records = [{"id": i, "file_name": str(p), "width": IMAGES[p.name][0], "height": IMAGES[p.name][1]}
               for i, p in enumerate(verify(folder))]
    return Dataset("kodak", folder, "val", records, images_dir=folder)
