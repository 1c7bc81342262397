"""Execute every notebook on a small sample (OV_SAMPLE) so CI fails when one breaks."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["01-eda", "02-graph-visualisation", "03-model-analysis"])
def test_notebook_executes(name, trained, monkeypatch):
    models_dir, _, _ = trained
    monkeypatch.setenv("OV_SAMPLE", "60")
    monkeypatch.setenv("OV_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure produced"
    text = "".join(o.get("text", "") for o in outputs)
    assert "skipped" not in text, "the model cells should run with the tiny trained run"
