"""The one datatype table: every row agrees with numpy, tritonclient's enum and its own lookups."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from perfkit import datatypes as dt
from perfkit.model_repo import InvalidModelConfig
from perfkit.model_repo import config as mcfg


@pytest.mark.parametrize("row", dt.DATATYPES, ids=lambda r: r.v2)
def test_each_row_agrees_with_numpy_and_tritonclient(row: dt.Datatype):
    assert mc.DataType.Value(row.config) > 0
    assert mcfg.v2_datatype(mc.DataType.Value(row.config)) == row.v2
    if row.numpy is None:
        assert row.v2 == "BF16"
        assert row.v2 not in dt.NP_BY_V2
        return
    assert np.dtype(triton_to_np_dtype(row.v2)) == row.numpy
    assert np_to_triton_dtype(row.numpy) == row.v2
    assert dt.V2_BY_NP[row.numpy] == row.v2
    assert dt.V2_BY_NP_NAME[str(row.numpy)] == row.v2
    if row.byte_size is None:
        assert row.v2 == "BYTES"
    else:
        assert row.numpy.itemsize == row.byte_size


def test_lookups_and_their_error():
    assert dt.by_v2("fp32") is dt.BY_V2["FP32"]
    assert dt.by_config("TYPE_STRING").v2 == "BYTES"
    with pytest.raises(dt.UnknownDatatype, match="unknown datatype 'FLOAT'; expected one of BF16"):
        dt.by_v2("FLOAT")
    with pytest.raises(dt.UnknownDatatype, match="TYPE_INVALID has no KServe v2 equivalent"):
        dt.by_config("TYPE_INVALID")
    # The config module names the same error in its own terms.
    with pytest.raises(InvalidModelConfig, match="TYPE_INVALID has no KServe v2 equivalent"):
        mcfg.v2_datatype(mc.TYPE_INVALID)
    assert issubclass(dt.UnknownDatatype, ValueError)
