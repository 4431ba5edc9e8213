"""The neuinv command and the benchmark script run end to end and say what they measured."""
import json
import subprocess
import sys
from pathlib import Path

import neuinv.cli

ROOT = Path(__file__).resolve().parents[1]


def test_demo_shows_accuracy_speed_and_the_guard(capsys):
    assert neuinv.cli.main(["demo", "--n", "4", "--batch", "300"]) == 0
    out = capsys.readouterr().out
    assert "torch.linalg.inv" in out and "x torch" in out
    assert "A[3] singular     : exact path" in out and "NOT certified" in out
    assert "raised LinAlgError" in out and "A[3]" in out
    assert "learned guess + Newton-Schulz" in out and "outside the box" in out


def test_info_lists_every_backend(capsys):
    assert neuinv.cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "cpp", "cuda"):
        assert f"\n  {name}" in out


def test_train_keeps_the_best_validation_epoch_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    out_file = tmp_path / "small.pt"
    assert neuinv.cli.main(["train", "--dataset", "paper-2x2-1st", "--hidden", "8", "--steps", "2000",
                            "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "of 2 (best on 10000 fresh validation matrices)" in out and "saved" in out
    model = neuinv.learned.models.InverseMLP.load(out_file)
    assert model.metadata["training"]["selection"] == "best of 2 epochs on 10000 validation matrices"
    assert model.metadata["dataset"] == "paper-2x2-1st"


def test_reproduce_quick_prints_our_error_beside_the_papers(capsys):
    """`neuinv reproduce --quick` for one Table 1 entry: says it is quick, prints the paper's number beside
    ours and their ratio, and the network it trained beats the zero guess on the same test set."""
    from neuinv.learned.data import paper_sampler
    from neuinv.learned.paper import evaluation_batch

    assert neuinv.cli.main(["reproduce", "--quick", "--table", "1", "--dataset", "paper-16x16",
                            "--model", "2-FC"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("QUICK run")
    row = next(line for line in out.splitlines() if line.startswith("| 1 | 2-FC | paper-16x16 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    error, paper, ratio = float(cells[3].split()[0]), float(cells[4]), float(cells[5])
    assert paper == 0.000168 and cells[3].endswith("(1)")
    assert abs(ratio - error / paper) <= 0.01 * ratio
    test, _ = evaluation_batch("paper-16x16", paper_sampler("paper-16x16").center)
    assert error < test.inverse.abs().mean().item()


def test_throughput_script_prints_baselines_and_roofline(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--quick", "--device", "cpu", "--sizes", "3",
         "--dtypes", "float64", "--max-batch", "50", "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, check=True)
    assert "| roofline |" in result.stdout
    for method in ("torch.linalg.inv", "torch.linalg.solve(A, I)", "numpy.linalg.inv", "neuinv auto (exact path)",
                   "neuinv torch, warm start 1e-3"):
        assert f"| {method} |" in result.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["copy_bandwidth_bytes_per_second"] > 0
    timed = [row for row in data["rows"] if "note" not in row]  # a missing optional baseline gets a note instead
    assert {"torch.linalg.inv", "neuinv auto (exact path)"} <= {row["method"] for row in timed}
    assert all(0 < row["roofline_fraction"] for row in timed)
    assert all(row["note"].startswith(("not installed", "failed:")) for row in data["rows"] if "note" in row)
