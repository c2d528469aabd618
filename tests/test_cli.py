"""The CLI frame: version, help, and the one-line error contract."""

import subprocess
import sys

import pytest

import medvol
from medvol import cli
from medvol.errors import MedvolError


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medvol {medvol.__version__}"


def test_every_command_has_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: medvol" in capsys.readouterr().out


def test_medvol_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def failing(args):
        raise MedvolError("missing file: /nowhere/x.nii.gz")

    monkeypatch.setattr(cli, "build_parser", lambda: _FixedParser(failing))
    assert cli.main(["anything"]) == 2
    err = capsys.readouterr().err
    assert err == "medvol anything: error: missing file: /nowhere/x.nii.gz\n"


class _FixedParser:
    def __init__(self, func):
        self.func = func

    def parse_args(self, argv):
        import argparse

        return argparse.Namespace(command=argv[0], func=self.func)


def test_import_is_light():
    code = ("import sys, medvol, medvol.cli; "
            "heavy = [m for m in ('SimpleITK', 'itk', 'nibabel', 'monai', 'napari', 'pytorch_fid')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
