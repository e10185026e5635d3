"""train.py and generate.py through their real command lines, on tiny made-up data with a tiny
random encoder (--bert none): checkpoint, kill, resume exactly, translate, and every bad input
gets a one-line error or warning instead of a traceback."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parent.parent
TINY_MODEL = ["--bert", "none", "--dec-width", "24", "--dec-layers", "1", "--dec-heads", "3", "--dec-ffn", "40",
              "--src-vocab", "80", "--tgt-vocab", "80", "--warmup", "5", "--batch-tokens", "120", "--seed", "3",
              "--dec-max-len", "24"]


def write_tiny_data(folder: Path, n_train: int = 240) -> Path:
    """A made-up word-for-word language: enough for the CLIs to run, not to learn much."""
    rng = random.Random(0)
    words = {"dog": "hund", "cat": "katze", "sees": "sieht", "likes": "mag", "the": "der", "a": "ein",
             "big": "gross", "small": "klein"}
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", 12), ("test", 12)):
        src = [" ".join(rng.choice(list(words)) for _ in range(rng.randint(2, 6))) + "." for _ in range(n)]
        tgt = [" ".join(words[w.strip(".")] for w in s.split()) + "." for s in src]
        (folder / f"{split}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder


def run(script: str, *args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True,
                            text=True, cwd=ROOT, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    run("train.py", "--data", data, "--out", out, "--epochs", "3", "--save-every", "4", *TINY_MODEL)
    return out


def wait_for_step(state_path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training finished before it could be interrupted"
        try:
            if torch.load(state_path, weights_only=True)["step"] >= step:
                return
        except (FileNotFoundError, RuntimeError, EOFError):
            pass  # not written yet
        time.sleep(0.02)
    raise TimeoutError(f"{state_path} never reached step {step}")


# -----------------------------------------------------------------------------
# the happy path: train, kill, resume, translate


def test_run_folder_has_everything(trained):
    for name in ("config.json", "source_tokenizer.json", "target_tokenizer.json", "model.safetensors",
                 "last.safetensors", "trainer_state.pt", "metrics.jsonl", "metrics.json"):
        assert (trained / name).is_file(), name
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    valid = [m for m in metrics if m["split"] == "valid"]
    assert [m["epoch"] for m in valid] == [1, 2, 3]
    assert {"loss", "ppl", "bleu", "chrf", "bleu_signature"} <= set(valid[0])
    train_steps = [m["step"] for m in metrics if m["split"] == "train"]
    assert train_steps and train_steps == list(range(10, valid[-1]["step"] + 1, 10))  # --log-every 10
    assert "bleu" in json.loads((trained / "metrics.json").read_text())["test"]


def test_plot_draws_the_curves_of_a_run_folder(tmp_path, trained):
    pytest.importorskip("matplotlib")  # a test extra: installed by pip install -e ".[test]"
    out = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "minibert.plot", str(trained), "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, "-m", "minibert.plot", str(tmp_path), "--out", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert one_line_error(missing) == f"error: {tmp_path / 'metrics.jsonl'}: no such file " \
                                      f"(is {tmp_path} a train.py run folder?)"


def test_random_encoders_train_at_the_full_rate_and_pretrained_ones_gently():
    sys.path.insert(0, str(ROOT))
    from train import parse_args
    pretrained, random_init, scratch = parse_args([]), parse_args(["--no-pretrained"]), parse_args(["--bert", "none"])
    assert (pretrained.freeze_encoder, pretrained.encoder_lr_scale) == (True, 0.05)
    assert (random_init.freeze_encoder, random_init.encoder_lr_scale) == (False, 1.0)
    assert (scratch.freeze_encoder, scratch.encoder_lr_scale) == (False, 1.0)
    assert parse_args(["--no-freeze-encoder", "--encoder-lr-scale", "0.1"]).encoder_lr_scale == 0.1


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, data, trained):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "3",
           "--save-every", "4", *TINY_MODEL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(out / "trainer_state.pt", 4, proc)  # the first checkpoint, mid-epoch 1 (~20 steps)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 0 and state["batch"] > 0, "the kill should land mid-epoch"
    result = run("train.py", "--out", out, "--resume")
    assert "resuming at epoch 1" in result.stderr
    a, b = load_file(trained / "last.safetensors"), load_file(out / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    metrics = lambda run_dir: [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics(out) == metrics(trained)


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, data):
    out = tmp_path / "interrupted"
    # Far more epochs than the test waits for, so the run cannot end before Ctrl-C arrives.
    cmd = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "500",
           "--save-every", "2", *TINY_MODEL]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(out / "trainer_state.pt", 4, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "--resume" in stderr
    assert torch.load(out / "trainer_state.pt", weights_only=True)["step"] >= 4
    run("train.py", "--out", out, "--resume", "--max-steps", "8")


def test_generate_gives_one_line_per_input_line(trained, tmp_path):
    source = tmp_path / "in.en"
    source.write_text("the dog sees a cat.\n\nthe small cat.\n", encoding="utf-8")
    out = tmp_path / "out.de"
    run("generate.py", "--checkpoint", trained, "--input", source, "--output", out, "--beam", "3", "--nbest", "2")
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[3] == ""  # three lines, newline-terminated
    assert lines[1] == "" and " ||| " in lines[0]
    stdin = run("generate.py", "--checkpoint", trained, input="a dog.\n\n")
    assert stdin.stdout.split("\n") == [stdin.stdout.split("\n")[0], "", ""]
    args = run("generate.py", "--checkpoint", trained, "--sample", "--top-p", "0.9", "the cat.", "a dog.")
    assert len(args.stdout.splitlines()) == 2


def test_generate_draws_the_cross_attention(trained, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "attention.png"
    run("generate.py", "--checkpoint", trained, "--attention", png, "the big dog likes the cat.")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_two_processes_on_cpu(tmp_path, data):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(ROOT / "train.py"), "--data", str(data), "--out", str(out), "--epochs", "1",
                             "--device", "cpu", *TINY_MODEL], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world 2" in result.stderr
    assert result.stderr.count("test: BLEU") == 1  # only rank 0 logs
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()


# -----------------------------------------------------------------------------
# bad input: one clear line, nothing half-written


def test_mismatched_line_counts(tmp_path, data):
    bad = write_tiny_data(tmp_path / "d")
    (bad / "train.de").write_text("ein hund.\n", encoding="utf-8")
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "train.en has 240 lines but" in line and "train.de has 1" in line


def test_invalid_utf8_names_file_and_line(tmp_path):
    bad = write_tiny_data(tmp_path / "d")
    lines = (bad / "valid.en").read_bytes().split(b"\n")
    lines[4] = b"the dog \xff\xfe sees."
    (bad / "valid.en").write_bytes(b"\n".join(lines))
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "valid.en, line 5: invalid UTF-8" in line


def test_empty_file(tmp_path):
    bad = write_tiny_data(tmp_path / "d")
    (bad / "train.de").write_text("", encoding="utf-8")
    line = one_line_error(run("train.py", "--data", bad, "--out", tmp_path / "r", *TINY_MODEL, check=False))
    assert "train.de: file is empty" in line


def test_overlong_sentence_is_truncated_with_a_counted_warning(tmp_path, trained):
    long = "the dog " * 400 + "sees."
    result = run("generate.py", "--checkpoint", trained, "--max-len", "8", long, "the cat.", long)
    assert "warning: 2 input lines are longer than BERT's 512 positions and were truncated" in result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_missing_and_foreign_checkpoints(tmp_path, data):
    line = one_line_error(run("generate.py", "--checkpoint", tmp_path / "nothing", "hi", check=False))
    assert "nothing: no such run folder" in line
    foreign = tmp_path / "gpt2"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"model_type": "gpt2"}')
    (foreign / "model.safetensors").write_bytes(b"")
    line = one_line_error(run("generate.py", "--checkpoint", foreign, "hi", check=False))
    assert "gpt2/config.json: not a minibert run config" in line
    line = one_line_error(run("train.py", "--data", data, "--out", tmp_path / "r", "--bert", foreign, check=False))
    assert "model_type is 'gpt2', not a BERT checkpoint" in line


def test_unwritable_output_folder(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(run("train.py", "--data", data, "--out", blocker / "run", *TINY_MODEL, check=False))
    assert "a-file/run: cannot write the run folder" in line


def test_resume_without_a_run_is_an_error(tmp_path):
    line = one_line_error(run("train.py", "--out", tmp_path / "empty", "--resume", check=False))
    assert "nothing to resume" in line
