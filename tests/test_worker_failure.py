"""A DALI external-source worker that dies mid-epoch gives a clear error in bounded time."""
import subprocess
import sys
import textwrap
import time

from conftest import write_jpeg_folder

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from orderdp_dali import DALIPlanIterator, SampleIndex, make_policy, WorkerError
    from orderdp_dali.pipelines import ImagePipelineConfig

    def worker_pids():
        me, kids = os.getpid(), []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{p}/stat").read()
                cmd = open(f"/proc/{p}/cmdline").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me and "spawn_main" in cmd:
                kids.append(int(p))
        return kids

    if __name__ == "__main__":
        index = SampleIndex.scan(sys.argv[1], cache_dir=sys.argv[2])
        it = DALIPlanIterator(index, make_policy("full", len(index)), 2, device="cpu", num_threads=1,
                              py_workers=2, pipeline_config=ImagePipelineConfig(crop=16, val_resize=16))
        try:
            for step, batch in enumerate(it):
                if step == 1:
                    for pid in worker_pids():
                        os.kill(pid, signal.SIGKILL)
                    print("KILLED", flush=True)
        except WorkerError as e:
            print("WORKER_ERROR", e, flush=True)
            sys.exit(3)
        print("NO_ERROR", flush=True)
    """
)


def test_killed_worker_raises_within_60s(tmp_path):
    root = write_jpeg_folder(tmp_path / "train", classes=2, per_class=40)
    script = tmp_path / "kill_worker.py"
    script.write_text(SCRIPT)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), str(root), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=180,
    )
    out = proc.stdout
    assert "KILLED" in out, proc.stderr[-2000:]
    assert proc.returncode == 3 and "WORKER_ERROR" in out, (out, proc.stderr[-2000:])
    assert "worker process" in out and "died" in out
    # generous bound: interpreter start and DALI's spawn of its workers happen before the kill
    assert time.monotonic() - start < 60 + 30
