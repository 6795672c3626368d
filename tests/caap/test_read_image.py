"""``caap explain``'s image reader on integer pixel formats (issue 18): 16-bit greyscale is scaled by 65535,
32-bit integer pixels (no defined full scale) are refused in one line instead of clipped as if 16-bit."""
import re

import numpy as np
import pytest
from PIL import Image

from caap import cli
from analysis.cli import main


def test_32_bit_integer_tiff_is_refused_not_clipped(tmp_path):
    path = tmp_path / "i32.tif"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4000).astype(np.int32), "I").save(path)  # values to 252000
    assert Image.open(path).mode == "I"
    with pytest.raises(cli.UsageError, match=rf"cannot read image '{re.escape(str(path))}': 32-bit integer pixels "
                                             rf"\(values 0..252000\) have no defined full scale; save it as an 8- or "
                                             rf"16-bit PNG"):
        cli.read_image(path)
    small = tmp_path / "i32_small.tif"  # in the 16-bit range, but still 32 bits per sample: no full scale either
    Image.fromarray(np.full((8, 8), 1000, np.int32), "I").save(small)
    with pytest.raises(cli.UsageError, match="32-bit integer pixels"):
        cli.read_image(small)


def test_sixteen_bit_files_keep_their_scaling(tmp_path):
    for name, array in (("g16.png", np.uint16), ("g16.tif", np.uint16)):
        Image.fromarray(np.full((5, 6), round(0.6 * 65535), array)).save(tmp_path / name)
        assert np.all(np.asarray(cli.read_image(tmp_path / name)) == round(0.6 * 255))
    pgm = tmp_path / "g16.pgm"  # PIL hands 16-bit PGM over as mode 'I' (values 0..65535): still 16-bit
    pgm.write_bytes(b"P5 2 1 65535\n" + np.array([0, round(0.6 * 65535)], ">u2").tobytes())
    assert Image.open(pgm).mode == "I"
    assert np.asarray(cli.read_image(pgm))[0, :, 0].tolist() == [0, round(0.6 * 255)]


def test_cli_prints_one_line(tmp_path, capsys):
    path = tmp_path / "i32.tif"
    Image.fromarray(np.full((8, 8), 255000, np.int32), "I").save(path)
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"caap: cannot read image '{path}': 32-bit integer pixels")
