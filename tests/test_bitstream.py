import pytest

from icm.bitstream import Bitstream, atomic_write_bytes
from icm.errors import BitstreamError


def make():
    return Bitstream("bmshj2018-hyperprior", "cai1.2", bytes.fromhex("0123456789abcdef"), 300, 200,
                     {"quality": 3}, {"main": b"\x01" * 1000, "hyper": b"\x02" * 70})


def test_round_trip_keeps_every_field():
    bs = make()
    back = Bitstream.from_bytes(bs.to_bytes())
    assert back == bs


def test_bpp_counts_the_whole_file_header_included():
    bs = make()
    data = bs.to_bytes()
    assert len(data) > 1070  # payloads alone
    assert bs.bpp() == len(data) * 8 / (300 * 200)
    # a task-only decode that skips a stream is charged only for what it reads
    assert bs.bpp(["main"]) == len(bs.to_bytes(["main"])) * 8 / 60000 < bs.bpp()


def test_header_is_small():
    bs = Bitstream("jpeg", "1", b"", 256, 256, {"quality": 50}, {"main": b""})
    assert len(bs.to_bytes()) <= 44  # 0.005 bpp on a 256x256 image


def test_every_truncation_is_refused():
    data = make().to_bytes()
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data[:n])


@pytest.mark.parametrize("position", [0, 4, 10, 30, 500, -5, -1])
def test_any_flipped_byte_is_refused(position):
    data = bytearray(make().to_bytes())
    data[position] ^= 0x40
    with pytest.raises(BitstreamError):
        Bitstream.from_bytes(bytes(data))


def test_appended_garbage_is_refused():
    with pytest.raises(BitstreamError):
        Bitstream.from_bytes(make().to_bytes() + b"\x00")


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "a.icm"
    n = make().save(target)
    assert target.stat().st_size == n
    assert [p.name for p in target.parent.iterdir()] == ["a.icm"]
    assert Bitstream.load(target) == make()


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")


    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # write fails midway
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_load_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(BitstreamError, match="cannot read"):
        Bitstream.load(tmp_path / "nope.icm")
