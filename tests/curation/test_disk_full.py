"""Disk full: a root on a small tmpfs (a real mount; root only). The run stops with an error naming the path,
leaves no partial part or clip, and a re-run after freeing space ends identical to a clean run."""
import os
import subprocess

import pyarrow.parquet as pq
import pytest

from curation import tables
from curation.config import load_config
from curation.pipeline import run_stages
from curation.storage import DiskFull, Storage
from curation.synth import Scene, make_video


@pytest.fixture
def small_mount(tmp_path):
    """A 160 KiB tmpfs; yields (path, resize(kib))."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (this test runs where it may, e.g. CI containers run as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mount -t tmpfs is not allowed here: {r.stderr.strip()}")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mnt)], check=True)

    yield str(mnt), resize
    subprocess.run(["umount", str(mnt)], check=True)


def test_write_bytes_disk_full_leaves_nothing(small_mount):
    mnt, _ = small_mount
    st = Storage(os.path.join(mnt, "root"))
    with pytest.raises(DiskFull) as e:
        st.write_bytes("videos/part-big.parquet", os.urandom(400_000))
    assert f"writing {mnt}/root/videos/part-big.parquet" in str(e.value) and "no space left" in str(e.value)
    assert os.listdir(os.path.join(mnt, "root", "videos")) == []  # neither the part nor its temporary file


def snapshot(root: str) -> tuple:
    st = Storage(root)
    clips = sorted((c["clip_id"], c["status"], c["frames"], c["bytes"], c["path"])
                   for c in tables.read_table(st, "clips", tables.CLIPS).to_pylist())
    videos = sorted((os.path.basename(v["source"]), v["frames"], v["error"])
                    for v in tables.read_table(st, "videos", tables.VIDEOS).to_pylist())
    return videos, clips


@pytest.mark.heavy
def test_run_on_full_disk_then_resume(ray_local, tmp_path, small_mount):
    mnt, resize = small_mount
    raw = tmp_path / "raw"
    os.makedirs(raw)
    for k in range(6):
        make_video(str(raw / f"v{k}.mp4"), [Scene(36, 2, k), Scene(36, 3, k + 9)], 160, 96, 24.0)

    def cfg_for(root: str):
        p = tmp_path / f"{os.path.basename(root)}.yaml"
        p.write_text(f"root: {root}\ninputs: ['{raw}/*']\nray: {{num_cpus: 2, progress: false}}\n"
                     "split: {min_clip_s: 0.5, crf: 10}\n")
        return load_config(str(p))

    clean = cfg_for(str(tmp_path / "clean"))
    run_stages(clean, ["probe", "split"])
    cfg = cfg_for(os.path.join(mnt, "root"))
    with pytest.raises(Exception) as e:
        run_stages(cfg, ["probe", "split"])
    assert "no space left on device writing " + mnt in str(e.value), str(e.value)[-2000:]
    # Nothing partial: no temporary files, every part reads, every clip file in the root is whole.
    names = [os.path.join(d, f) for d, _, fs in os.walk(cfg.root) for f in fs]
    assert not [n for n in names if ".tmp-" in os.path.basename(n)], names
    for n in names:
        if n.endswith(".parquet"):
            pq.read_table(n)
    sizes = {c[4]: c[3] for c in snapshot(str(tmp_path / "clean"))[1] if c[4]}
    for n in names:
        if n.endswith(".mp4"):
            assert os.path.getsize(n) == sizes[os.path.relpath(n, cfg.root)]
    resize(64 * 1024)  # space freed
    run_stages(cfg, ["probe", "split"])
    assert snapshot(cfg.root) == snapshot(clean.root)
