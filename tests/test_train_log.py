"""train_log: metrics.csv written as the run goes (resumed runs keep their earlier rows), the loss curve."""

import csv

from astrosr.train_log import COLUMNS, MetricsLog, write_config, write_json


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_metrics_log_appends_and_resume_keeps_earlier_rows(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        log.add({"step": step, "loss": 1.0 / step, "val_tile_mse": 0.5 if step == 2 else None, "other": 1})
    rows = _rows(tmp_path / "metrics.csv")
    assert list(rows[0]) == COLUMNS and [r["loss"] for r in rows] == ["1", "0.5", "0.333333"]
    assert [r["val_tile_mse"] for r in rows] == ["", "0.5", ""]
    resumed = MetricsLog(tmp_path, resume_step=2)
    resumed.add({"step": 3, "loss": 0.25})
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "metrics.csv")] == [("1", "1"), ("2", "0.5"), ("3", "0.25")]
    MetricsLog(tmp_path)
    assert _rows(tmp_path / "metrics.csv") == []


def test_loss_curve_config_and_summary_files(tmp_path):
    log = MetricsLog(tmp_path)
    log.add({"step": 1, "loss": 0.5, "val_mse": 0.01})
    log.add({"step": 2, "loss": 0.4})
    log.plot()
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_config(tmp_path / "config.yaml", {"b": 1, "a": [1, 2]}, "made here")
    assert (tmp_path / "config.yaml").read_text() == "# made here\nb: 1\na:\n- 1\n- 2\n"
    write_json(tmp_path / "s.json", {"path": tmp_path})
    assert (tmp_path / "s.json").read_text() == f'{{\n  "path": "{tmp_path}"\n}}\n'
