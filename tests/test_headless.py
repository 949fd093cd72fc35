"""`make demo`'s terminal: the job's log relayed live, a failed cell's error as one line first and last."""

import nbformat
import pytest

from mocolab.ui import headless


def test_headless_relays_the_log_and_puts_a_failure_first_and_last(tmp_path, capsys):
    notebook = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    notebook.cells = [
        nbformat.v4.new_code_cell("log = ''\nfail = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "open(log, 'a').write('epoch 1/1  loss 6.5\\n')\n"
            "if fail:\n    raise FileNotFoundError('no CIFAR-10 in data')"
        ),
    ]
    nbformat.write(notebook, tmp_path / "job.ipynb")
    log = tmp_path / "log.txt"
    assert (
        headless.main(
            [str(tmp_path / "job.ipynb"), str(tmp_path / "out.ipynb"), "-p", "log", str(log), "--log", str(log)]
        )
        == 0
    )
    assert "epoch 1/1  loss 6.5" in capsys.readouterr().out
    code = headless.main(
        [
            str(tmp_path / "job.ipynb"),
            str(tmp_path / "out2.ipynb"),
            "-p",
            "log",
            str(log),
            "-p",
            "fail",
            "True",
            "--hint",
            "FileNotFoundError=make demo DATASET=imagefolder ...",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[0] == "FAILED: FileNotFoundError: no CIFAR-10 in data" and err[1].strip().startswith("make demo")
    assert any("Traceback" in line or "---" in line for line in err[2:-3])
    assert "FAILED: FileNotFoundError: no CIFAR-10 in data" in err[-3]


def test_a_command_line_error_is_one_line_first_and_last_with_the_traceback_between(tmp_path, capsys):
    from mocolab.ui import cli
    from mocolab.__main__ import main

    missing = tmp_path / "nowhere"
    assert (
        cli.run(
            main,
            [
                "--preset",
                "cifar10_cpu",
                "dataset=imagefolder",
                f"data_root={missing}",
                f"output_dir={tmp_path / 'run'}",
                "gpus=0",
            ],
            prog="python -m mocolab",
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"python -m mocolab: DatasetError: data_root {missing} does not exist")
    assert err[1].startswith("Traceback") and err[-1] == err[0]
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it propagates as Python reports it
        cli.run(lambda argv: 1 / 0)
